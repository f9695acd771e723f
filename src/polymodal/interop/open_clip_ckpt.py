"""open_clip CLIP checkpoints (OpenAI-style ViT image tower + causal text transformer) → polymodal dual encoders,
weight for weight.

An open_clip checkpoint is a state dict (``torch.save`` or safetensors) plus the model config that built it:
one of open_clip's bundled configs by name (``"ViT-B-32-quickgelu"``) or the config mapping itself
(``{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "preprocess_cfg"}``). Config keys whose value changes
the architecture away from OpenAI's CLIP (ResNet or timm towers, attentional pooling, layer scale, custom
blocks, HF text towers) are refused by name rather than approximated.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polymodal.data.transforms import CLIP_MEAN, CLIP_STD
from polymodal.interop.checkpoint import ImportedCheckpoint, Rename, import_state, read_state_file, weight_and_bias
from polymodal.interop.clip_tokenizer import open_clip_tokenizer
from polymodal.models.dual_encoder import build_dual_encoder

__all__ = ["load_open_clip"]

# Per config section: keys polymodal reads, keys that must keep the value OpenAI's CLIP has (anything else
# would change the computation), and keys that do not affect inference. Other keys are refused as unknown.
_USED = {
    "": {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale", "preprocess_cfg"},
    "vision_cfg": {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"},
    "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id"},
    "preprocess_cfg": {"size", "mean", "std", "interpolation"},
}
_ARCHITECTURE = {"ls_init_value": None, "act_kwargs": None, "norm_kwargs": None, "block_type": None,
                 "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                 "scale_attn": False, "scale_fc": False, "final_ln_after_pool": False}
_FIXED = {
    "": {"init_logit_bias": None, "nonscalar_logit_scale": False},
    "vision_cfg": {**_ARCHITECTURE, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
                   "pool_type": "tok", "timm_model_name": None},
    "text_cfg": {**_ARCHITECTURE, "hf_tokenizer_name": None, "tokenizer_mode": None, "tokenizer_kwargs": None,
                 "embed_cls": False, "no_causal_mask": False, "pool_type": "argmax", "proj_bias": False,
                 "proj_type": "linear", "hf_model_name": None},
    "preprocess_cfg": {"mode": "RGB", "resize_mode": "shortest"},
}
_INFERENCE_IRRELEVANT = {
    "": set(),
    "vision_cfg": {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads",
                   "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"},
    "text_cfg": {"eos_id", "output_tokens", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"},
    "preprocess_cfg": {"fill_color"},
}
# Constants some checkpoints store beside the weights (OpenAI's files; open_clip's attention-mask buffer).
_NON_WEIGHTS = ("attn_mask", "input_resolution", "context_length", "vocab_size")


def _check_section(section: str, values: Mapping[str, Any], where: str) -> None:
    """Refuse the first key of ``values`` that polymodal would not reproduce, naming it."""
    fixed = _FIXED[section]
    for key, value in values.items():
        name = f"{section}.{key}" if section else key
        if key in fixed and value != fixed[key]:
            raise ValueError(f"{where}: {name} = {value!r} is not supported (polymodal reproduces {fixed[key]!r})")
        if key not in fixed and key not in _USED[section] and key not in _INFERENCE_IRRELEVANT[section]:
            raise ValueError(f"{where}: unknown key {name}")


def _square(value: Any, name: str, where: str) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: {name} = {value!r} is not supported (a square size in pixels)")
    return value


def _polymodal_config(model_config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The dual-encoder config of an open_clip model config, after checking every key."""
    for section in ("", "vision_cfg", "text_cfg", "preprocess_cfg"):
        values = model_config if not section else model_config.get(section, {})
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: {section} must be a mapping, got {values!r}")
        _check_section(section, values, where)
    vision, text = model_config["vision_cfg"], model_config["text_cfg"]
    if not isinstance(vision.get("layers", 12), int):
        raise ValueError(f"{where}: vision_cfg.layers = {vision['layers']!r} is a ResNet image tower, which is not "
                         "supported (only ViTs)")
    act = "quick_gelu" if model_config.get("quick_gelu", False) else "gelu"
    image_size = _square(vision.get("image_size", 224), "vision_cfg.image_size", where)
    width = vision.get("width", 768)
    preprocess = model_config.get("preprocess_cfg", {})
    interpolation = preprocess.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"{where}: preprocess_cfg.interpolation = {interpolation!r} is not supported "
                         "(bicubic, bilinear)")
    crop = _square(preprocess.get("size", image_size), "preprocess_cfg.size", where)
    return {
        "family": "dual_encoder",
        "description": "Imported from an open_clip checkpoint.",
        "embed_dim": model_config["embed_dim"],
        "loss": "clip",
        "init_logit_scale": model_config.get("init_logit_scale", 2.6593),
        "image": {"type": "vit", "image_size": image_size,
                  "patch_size": _square(vision.get("patch_size", 16), "vision_cfg.patch_size", where),
                  "width": width, "layers": vision.get("layers", 12), "heads": width // vision.get("head_width", 64),
                  "mlp_ratio": vision.get("mlp_ratio", 4.0), "pool": "cls", "pre_norm": True, "patch_bias": False,
                  "act": act,
                  "preprocess": {"image_size": crop, "resize_size": crop, "interpolation": interpolation,
                                 "mean": list(preprocess.get("mean", CLIP_MEAN)),
                                 "std": list(preprocess.get("std", CLIP_STD))}},
        # open_clip's tokenizer returns no attention mask and pads with id 0: pool at the largest id (the
        # end-of-text token), as open_clip does.
        "text": {"type": "transformer", "vocab_size": text.get("vocab_size", 49408),
                 "context_length": text.get("context_length", 77), "width": text.get("width", 512),
                 "layers": text.get("layers", 12), "heads": text.get("heads", 8),
                 "mlp_ratio": text.get("mlp_ratio", 4.0), "causal": True, "pool": "argmax", "act": act},
    }


def _open_clip_block(ours: str, theirs: str) -> list[Rename]:
    return [
        *weight_and_bias(f"{ours}.norm1", f"{theirs}.ln_1"),
        Rename(f"{ours}.attn.qkv.weight", (f"{theirs}.attn.in_proj_weight",)),
        Rename(f"{ours}.attn.qkv.bias", (f"{theirs}.attn.in_proj_bias",)),
        *weight_and_bias(f"{ours}.attn.proj", f"{theirs}.attn.out_proj"),
        *weight_and_bias(f"{ours}.norm2", f"{theirs}.ln_2"),
        *weight_and_bias(f"{ours}.mlp.fc1", f"{theirs}.mlp.c_fc"),
        *weight_and_bias(f"{ours}.mlp.fc2", f"{theirs}.mlp.c_proj"),
    ]


def _table(config: dict[str, Any], custom_text: bool) -> list[Rename]:
    """Every tensor of the polymodal model and its open_clip key; a ``custom_text`` model keeps its text tower
    under ``text.``."""
    image, text, theirs = "image_encoder", "text_encoder", "text." if custom_text else ""
    return [
        Rename(f"{image}.cls_token", ("visual.class_embedding",)),
        Rename(f"{image}.patch_embed.proj.weight", ("visual.conv1.weight",)),
        Rename(f"{image}.pos_embed.weight", ("visual.positional_embedding",)),
        *weight_and_bias(f"{image}.norm_pre", "visual.ln_pre"),
        *(rename for i in range(config["image"]["layers"])
          for rename in _open_clip_block(f"{image}.transformer.blocks.{i}", f"visual.transformer.resblocks.{i}")),
        *weight_and_bias(f"{image}.norm", "visual.ln_post"),
        Rename("image_head.proj.weight", ("visual.proj",), transpose=True),
        Rename(f"{text}.token_embed.weight", (f"{theirs}token_embedding.weight",)),
        Rename(f"{text}.pos_embed", (f"{theirs}positional_embedding",)),
        *(rename for i in range(config["text"]["layers"])
          for rename in _open_clip_block(f"{text}.transformer.blocks.{i}", f"{theirs}transformer.resblocks.{i}")),
        *weight_and_bias(f"{text}.norm", f"{theirs}ln_final"),
        Rename("text_head.proj.weight", (f"{theirs}text_projection",), transpose=True),
        Rename("logit_scale", ("logit_scale",)),
    ]


def load_open_clip(checkpoint: str | Path, model_config: str | Mapping[str, Any]) -> ImportedCheckpoint:
    """Load an open_clip CLIP checkpoint as a polymodal dual encoder with open_clip's preprocessing and tokenizer.

    Args:
        checkpoint: the weights (``.safetensors``, or a ``torch.save``'d state dict, possibly wrapped in
            ``{"state_dict": ...}`` with DDP's ``module.`` prefixes, as open_clip's training saves them).
        model_config: an open_clip model name (its bundled config) or the model config mapping.

    Raises:
        ValueError: naming the config key or the checkpoint file and tensor key that polymodal cannot reproduce.
    """
    checkpoint = Path(checkpoint)
    if isinstance(model_config, str):
        import open_clip

        where = f"open_clip model config {model_config!r}"
        found = open_clip.get_model_config(model_config)
        if found is None:
            raise ValueError(f"{where}: no such config in open_clip (see open_clip.list_models())")
        model_config = found
    else:
        where = "open_clip model config"
    model_config = copy.deepcopy(dict(model_config))
    config = _polymodal_config(model_config, where)
    tokenizer = open_clip_tokenizer(config["text"]["context_length"], model_config["text_cfg"].get("pad_id", 0))
    if tokenizer.vocab_size > config["text"]["vocab_size"]:
        raise ValueError(f"{where}: text_cfg.vocab_size = {config['text']['vocab_size']} is smaller than "
                         f"open_clip's tokenizer ({tokenizer.vocab_size} tokens)")
    model = build_dual_encoder(config, where=where, for_loading=True)
    state = read_state_file(checkpoint)
    import_state(model, _table(config, model_config.get("custom_text", False)), state, checkpoint,
                 ignored=_NON_WEIGHTS)
    return ImportedCheckpoint(model.eval(), tokenizer)
