"""open_clip CLIP checkpoints (OpenAI-style ViT image tower + causal text transformer) ↔ polymodal dual encoders,
weight for weight.

An open_clip checkpoint is a state dict (``torch.save`` or safetensors) plus the model config that built it:
one of open_clip's bundled configs by name (``"ViT-B-32-quickgelu"``) or the config mapping itself
(``{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "preprocess_cfg"}``), or a directory in open_clip's
``local-dir:`` / hub layout (``open_clip_config.json`` + ``open_clip_model.safetensors``), which
:func:`export_open_clip` writes. Config keys whose value changes the architecture away from OpenAI's CLIP
(ResNet or timm towers, attentional pooling, layer scale, custom blocks, HF text towers) are refused by name
rather than approximated.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import CLIP_MEAN, CLIP_STD
from polymodal.interop.checkpoint import (
    ImportedCheckpoint,
    Rename,
    export_state,
    import_state,
    read_state_file,
    require_config,
    weight_and_bias,
)
from polymodal.interop.clip_tokenizer import open_clip_tokenizer
from polymodal.io import atomic_path, read_json, write_json
from polymodal.layers import QuickGELU
from polymodal.models.dual_encoder import DualEncoder, build_dual_encoder

__all__ = ["export_open_clip", "load_open_clip"]

# open_clip's directory layout (``create_model("local-dir:DIR")``, its hub repositories): the config holds
# ``model_cfg`` and ``preprocess_cfg``; the weights are the first of these names found.
CONFIG, CONFIG_KEY = "open_clip_config.json", "model_cfg"
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
# open_clip's LayerNorm epsilon (PyTorch's default), which its configs cannot change.
NORM_EPS = 1e-5

# Per config section: keys polymodal reads, keys that must keep the value OpenAI's CLIP has (anything else
# would change the computation), and keys that do not affect inference. Other keys are refused as unknown.
_USED = {
    "": {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale", "preprocess_cfg"},
    "vision_cfg": {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"},
    "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id"},
    "preprocess_cfg": {"size", "mean", "std", "interpolation", "resize_mode"},
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
    "preprocess_cfg": {"mode": "RGB"},
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
    resize_mode = preprocess.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        raise ValueError(f"{where}: preprocess_cfg.resize_mode = {resize_mode!r} is not supported (shortest, squash)")
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
                                 "resize_mode": resize_mode, "mean": list(preprocess.get("mean", CLIP_MEAN)),
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


def _read_config_file(file: Path) -> dict[str, Any]:
    """An open_clip model config saved as JSON: bare, or open_clip's ``{"model_cfg", "preprocess_cfg"}`` (its
    ``preprocess_cfg`` folded into the model config, as polymodal reads it)."""
    saved = read_json(file, "open_clip model config")
    if not isinstance(saved, Mapping):
        raise ValueError(f"{file}: an open_clip model config is a JSON object")
    if CONFIG_KEY in saved:
        if not isinstance(saved[CONFIG_KEY], Mapping):
            raise ValueError(f"{file}: {CONFIG_KEY} must be a mapping")
        return {**saved[CONFIG_KEY], "preprocess_cfg": saved.get("preprocess_cfg", {})}
    if file.name == CONFIG:
        raise ValueError(f"{file}: missing key {CONFIG_KEY} (the open_clip model config)")
    return dict(saved)


def _model_config(checkpoint: Path, model_config: str | Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The model config to build and where it comes from (for errors): the one given (a model name open_clip
    bundles, a JSON file, a mapping) or the checkpoint's own ``open_clip_config.json`` (in its directory, or
    beside its weights file)."""
    if model_config is None:
        file = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / CONFIG
        if not file.is_file():
            raise ValueError(f"{checkpoint}: an open_clip checkpoint needs its model config (an open_clip model name "
                             f"such as ViT-B-32, or its JSON), and there is no {file}")
        return _read_config_file(file), str(file)
    if isinstance(model_config, str) and model_config.endswith(".json"):
        return _read_config_file(Path(model_config)), model_config
    if isinstance(model_config, str):
        import open_clip

        where = f"open_clip model config {model_config!r}"
        found = open_clip.get_model_config(model_config)
        if found is None:
            raise ValueError(f"{where}: no such config in open_clip (see open_clip.list_models())")
        return found, where
    return dict(model_config), "open_clip model config"


def _directory_weights(directory: Path) -> Path:
    for name in WEIGHTS:
        if (directory / name).is_file():
            return directory / name
    raise ValueError(f"{directory / WEIGHTS[0]}: missing (nor {', '.join(WEIGHTS[1:])})")


def load_open_clip(checkpoint: str | Path, model_config: str | Mapping[str, Any] | None = None) -> ImportedCheckpoint:
    """Load an open_clip CLIP checkpoint as a polymodal dual encoder with open_clip's preprocessing and tokenizer.

    Args:
        checkpoint: the weights (``.safetensors``, or a ``torch.save``'d state dict, possibly wrapped in
            ``{"state_dict": ...}`` with DDP's ``module.`` prefixes, as open_clip's training saves them), or a
            directory in open_clip's layout (``open_clip_config.json`` + ``open_clip_model.safetensors``).
        model_config: an open_clip model name (its bundled config), a JSON file of the model config, or the
            mapping itself; by default the ``open_clip_config.json`` of the checkpoint's directory.

    Raises:
        ValueError: naming the config key or the checkpoint file and tensor key that polymodal cannot reproduce.
    """
    checkpoint = Path(checkpoint)
    model_config, where = _model_config(checkpoint, model_config)
    if checkpoint.is_dir():
        checkpoint = _directory_weights(checkpoint)
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


def _check_exportable(model: DualEncoder, tokenizer: TextTokenizer) -> None:
    """Refuse, naming the config key, a polymodal dual encoder open_clip's ``CLIP`` cannot express exactly."""
    config = model.config
    required = {
        "image.type": "vit", "image.class_token": True, "image.pool": "cls", "image.pre_norm": True,
        "image.patch_bias": False, "image.pos_embed": "learned", "image.final_norm": True, "image.norm_eps": NORM_EPS,
        "text.type": "transformer", "text.causal": True, "text.norm_eps": NORM_EPS, "image_projection": "linear",
        "text_projection": "linear", "projection_bias": False, "bridge": None, "init_logit_bias": None,
    }
    defaults = {"image.class_token": True, "image.pool": "cls", "image.pre_norm": False, "image.patch_bias": True,
                "image.pos_embed": "learned", "image.final_norm": True, "image.norm_eps": 1e-5, "text.causal": False,
                "text.norm_eps": 1e-5, "image_projection": "linear", "text_projection": "linear",
                "projection_bias": False}
    require_config(config, required, defaults, "open_clip's CLIP")
    if config["text"].get("pool") not in ("argmax", "eos"):
        # open_clip pools at the largest id, which is the end of text in its vocabulary (checked below).
        raise ValueError(f"config key text.pool = {config['text'].get('pool')!r}: open_clip's CLIP pools at the "
                         "end-of-text token ('argmax' or 'eos')")
    acts = {section: config[section].get("act", "gelu") for section in ("image", "text")}
    if acts["image"] != acts["text"] or acts["image"] not in ("gelu", "quick_gelu"):
        raise ValueError(f"config key text.act = {acts['text']!r}, image.act = {acts['image']!r}: open_clip's CLIP "
                         "has one activation for both towers, gelu or quick_gelu")
    preprocess = model.preprocess
    if preprocess.resize_mode == "shortest" and preprocess.resize_size not in (None, preprocess.image_size):
        raise ValueError(f"config key image.preprocess.resize_size = {preprocess.resize_size}: open_clip resizes to "
                         f"the crop size ({preprocess.image_size}) before cropping")
    context_length = model.text_encoder.context_length
    reference = open_clip_tokenizer(context_length)
    if tokenizer.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        raise ValueError(f"the tokenizer ({tokenizer.vocab_size} tokens) is not open_clip's BPE, which its CLIP "
                         f"always reads ({reference.vocab_size} tokens)")


def _open_clip_tower(encoder: nn.Module) -> dict[str, Any]:
    """The sizes open_clip's tower configs share, read from the built tower."""
    block = encoder.transformer.blocks[0]
    return {"width": encoder.width, "layers": len(encoder.transformer.blocks),
            "mlp_ratio": block.mlp.fc1.out_features / encoder.width}


def export_open_clip(model: DualEncoder, tokenizer: TextTokenizer, directory: str | Path) -> Path:
    """Write ``model`` (a dual encoder of OpenAI CLIP's shape, e.g. one :func:`load_open_clip` or ``load_hf_clip``
    made) in open_clip's directory layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
    ``open_clip_model.safetensors``, which ``open_clip.create_model_and_transforms("local-dir:DIR")`` loads
    strictly. open_clip's CLIP reads its own BPE, so ``tokenizer`` must be that one.

    Raises:
        ValueError: naming the config key of an option open_clip's CLIP cannot express.
    """
    directory = Path(directory)
    _check_exportable(model, tokenizer)
    config, image, text = model.config, model.image_encoder, model.text_encoder
    if image.image_size[0] != image.image_size[1]:
        raise ValueError(f"config key image.image_size = {config['image']['image_size']!r}: open_clip's CLIP needs a "
                         "square image")
    model_cfg = {
        "embed_dim": config["embed_dim"],
        "quick_gelu": isinstance(image.transformer.blocks[0].mlp.act, QuickGELU),
        "init_logit_scale": config.get("init_logit_scale", 2.6593),
        "vision_cfg": {**_open_clip_tower(image), "image_size": image.image_size[0],
                       "patch_size": image.patch_embed.patch_size,
                       "head_width": image.width // image.transformer.blocks[0].attn.num_heads},
        "text_cfg": {**_open_clip_tower(text), "context_length": text.context_length,
                     "vocab_size": text.token_embed.num_embeddings, "heads": text.transformer.blocks[0].attn.num_heads},
    }
    preprocess = model.preprocess
    preprocess_cfg = {"size": preprocess.image_size, "mean": list(preprocess.mean), "std": list(preprocess.std),
                      "interpolation": preprocess.interpolation, "resize_mode": preprocess.resize_mode}
    layers = {"image": {"layers": len(image.transformer.blocks)}, "text": {"layers": len(text.transformer.blocks)}}
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS[0]) as tmp:
        save_file(export_state(model, _table(layers, custom_text=False)), str(tmp))
    write_json(directory / CONFIG, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    return directory
