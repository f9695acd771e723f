"""HF transformers ``CLIPModel`` directories ↔ polymodal dual encoders, weight for weight.

An HF CLIP directory (``save_pretrained``) holds ``config.json``, the weights (``model.safetensors``, sharded
safetensors or ``pytorch_model.bin``), the tokenizer and usually ``preprocessor_config.json``. Its towers are
OpenAI's: our ViT with ``pre_norm`` (HF's ``pre_layrnorm``), a bias-free patch projection and the configured
activation; our causal text transformer pooled at the end-of-text token; bias-free projections. The one layout
change is attention: HF keeps separate q/k/v projections, we fuse them into ``qkv``.
"""
from __future__ import annotations

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
    weight_and_bias,
)
from polymodal.interop.clip_tokenizer import read_hf_tokenizer, write_hf_tokenizer
from polymodal.interop.hf_files import (
    BUFFERS,
    CONFIG,
    PREPROCESSOR,
    RESAMPLE,
    WEIGHTS,
    read_hf_weights,
    read_processor_settings,
)
from polymodal.io import atomic_path, read_json, write_json
from polymodal.layers import QuickGELU
from polymodal.models.dual_encoder import DualEncoder, build_dual_encoder

__all__ = ["export_hf_clip", "load_hf_clip"]



def hf_block(ours: str, theirs: str) -> list[Rename]:
    return [
        *weight_and_bias(f"{ours}.norm1", f"{theirs}.layer_norm1"),
        *(Rename(f"{ours}.attn.qkv.{kind}", tuple(f"{theirs}.self_attn.{p}_proj.{kind}" for p in "qkv"))
          for kind in ("weight", "bias")),
        *weight_and_bias(f"{ours}.attn.proj", f"{theirs}.self_attn.out_proj"),
        *weight_and_bias(f"{ours}.norm2", f"{theirs}.layer_norm2"),
        *weight_and_bias(f"{ours}.mlp.fc1", f"{theirs}.mlp.fc1"),
        *weight_and_bias(f"{ours}.mlp.fc2", f"{theirs}.mlp.fc2"),
    ]


def _table(image_layers: int, text_layers: int) -> list[Rename]:
    """Every tensor of a polymodal CLIP-shaped dual encoder and its HF ``CLIPModel`` key(s)."""
    image, text = "image_encoder", "text_encoder"
    vision, text_model = "vision_model", "text_model"
    return [
        Rename(f"{image}.cls_token", (f"{vision}.embeddings.class_embedding",)),
        Rename(f"{image}.patch_embed.proj.weight", (f"{vision}.embeddings.patch_embedding.weight",)),
        Rename(f"{image}.pos_embed.weight", (f"{vision}.embeddings.position_embedding.weight",)),
        *weight_and_bias(f"{image}.norm_pre", f"{vision}.pre_layrnorm"),
        *(rename for i in range(image_layers)
          for rename in hf_block(f"{image}.transformer.blocks.{i}", f"{vision}.encoder.layers.{i}")),
        *weight_and_bias(f"{image}.norm", f"{vision}.post_layernorm"),
        Rename("image_head.proj.weight", ("visual_projection.weight",)),
        Rename(f"{text}.token_embed.weight", (f"{text_model}.embeddings.token_embedding.weight",)),
        Rename(f"{text}.pos_embed", (f"{text_model}.embeddings.position_embedding.weight",)),
        *(rename for i in range(text_layers)
          for rename in hf_block(f"{text}.transformer.blocks.{i}", f"{text_model}.encoder.layers.{i}")),
        *weight_and_bias(f"{text}.norm", f"{text_model}.final_layer_norm"),
        Rename("text_head.proj.weight", ("text_projection.weight",)),
        Rename("logit_scale", ("logit_scale",)),
    ]


def _tower(hf: Any, section: str, file: Path) -> dict[str, Any]:
    """The size and block options shared by both towers, from one HF sub-config."""
    if hf.hidden_act not in ("gelu", "quick_gelu"):
        raise ValueError(f"{file}: {section}.hidden_act = {hf.hidden_act!r} is not supported (gelu, quick_gelu)")
    mlp_ratio = hf.intermediate_size / hf.hidden_size
    if int(hf.hidden_size * mlp_ratio) != hf.intermediate_size:
        raise ValueError(f"{file}: {section}.intermediate_size = {hf.intermediate_size} is not a ratio of "
                         f"hidden_size {hf.hidden_size} that polymodal's blocks reproduce")
    return {"width": hf.hidden_size, "layers": hf.num_hidden_layers, "heads": hf.num_attention_heads,
            "mlp_ratio": mlp_ratio, "act": hf.hidden_act, "norm_eps": hf.layer_norm_eps}


def _size(value: Any, file: Path, key: str) -> int:
    """A processor size: an int, or HF's ``{"shortest_edge": n}`` / square ``{"height": n, "width": n}``."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if value.get("height") == value.get("width") and value.get("height") is not None:
            return int(value["height"])
    raise ValueError(f"{file}: {key} = {value!r} is not a square size polymodal's preprocessing reproduces")


def _preprocess(directory: Path, image_size: int) -> dict[str, Any]:
    """The image processor's resize, crop, interpolation and statistics (CLIP's defaults when there is none)."""
    processor, file = read_processor_settings(directory)
    if not processor:
        return {"image_size": image_size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                "resize_size": image_size, "interpolation": "bicubic", "crop_offset": "floor"}
    resample = processor.get("resample", 3)
    if resample not in RESAMPLE:
        raise ValueError(f"{file}: resample = {resample!r} is not supported (2 bilinear, 3 bicubic)")
    resize = _size(processor.get("size", image_size), file, "size")
    crop = _size(processor["crop_size"], file, "crop_size") if processor.get("do_center_crop", True) else resize
    # HF floors the centre crop's offset where torchvision rounds it: one pixel apart on odd margins.
    return {"image_size": crop, "mean": list(processor.get("image_mean", CLIP_MEAN)),
            "std": list(processor.get("image_std", CLIP_STD)), "resize_size": resize,
            "interpolation": RESAMPLE[resample], "crop_offset": "floor"}


def _polymodal_config(directory: Path) -> dict[str, Any]:
    """The dual-encoder config of the HF checkpoint in ``directory``, after checking it is one we can reproduce."""
    file = directory / CONFIG
    if not file.is_file():
        raise ValueError(f"{file}: missing; {directory} is not an HF checkpoint directory")
    raw = read_json(file, "HF model config")
    if raw.get("model_type") != "clip":
        raise ValueError(f"{file}: model_type = {raw.get('model_type')!r} is not supported (only 'clip')")
    from transformers import CLIPConfig

    # HF writes only the values that differ from its defaults: the config class fills in the rest.
    hf = CLIPConfig.from_pretrained(str(directory))
    vision, text = hf.vision_config, hf.text_config
    preprocess = _preprocess(directory, vision.image_size)
    return {
        "family": "dual_encoder",
        "description": f"Imported from the HF CLIPModel checkpoint {directory.name}.",
        "embed_dim": hf.projection_dim,
        "loss": "clip",
        "init_logit_scale": hf.logit_scale_init_value,
        "image": {"type": "vit", "image_size": vision.image_size, "patch_size": vision.patch_size,
                  "in_channels": vision.num_channels, **_tower(vision, "vision_config", file), "pool": "cls",
                  "pre_norm": True, "patch_bias": False, "preprocess": preprocess},
        # HF pools at the first end-of-text id; configs from before transformers 4.31 (eos_token_id 2) at the
        # largest id. Our "eos" (last real token) is the first end-of-text token of every tokenized text.
        "text": {"type": "transformer", "vocab_size": text.vocab_size, "context_length": text.max_position_embeddings,
                 **_tower(text, "text_config", file), "causal": True,
                 "pool": "argmax" if text.eos_token_id == 2 else "eos"},
    }



def load_hf_clip(directory: str | Path) -> ImportedCheckpoint:
    """Load the HF ``CLIPModel`` checkpoint saved in ``directory`` as a polymodal dual encoder.

    Returns:
        the model (eval mode; its ``config`` records the towers' options and the checkpoint's preprocessing)
        and the checkpoint's own tokenizer.

    Raises:
        ValueError: naming the file and key: not a checkpoint directory, not a CLIP config, an option polymodal
            does not reproduce, a missing / extra / wrongly shaped tensor.
    """
    directory = Path(directory)
    config = _polymodal_config(directory)
    state, file = read_hf_weights(directory)
    model = build_dual_encoder(config, where=str(directory / CONFIG), for_loading=True)
    import_state(model, _table(config["image"]["layers"], config["text"]["layers"]), state, file, ignored=BUFFERS)
    tokenizer = read_hf_tokenizer(directory, config["text"]["context_length"])
    if tokenizer.vocab_size > config["text"]["vocab_size"]:
        raise ValueError(f"{directory / 'tokenizer.json'}: {tokenizer.vocab_size} tokens, more than "
                         f"text_config.vocab_size = {config['text']['vocab_size']}")
    return ImportedCheckpoint(model.eval(), tokenizer)


def _check_exportable(config: dict[str, Any]) -> None:
    """Refuse, naming the config key, a polymodal dual encoder that HF's ``CLIPModel`` cannot express."""
    required = {
        "image.type": "vit", "image.pool": "cls", "image.pre_norm": True, "image.patch_bias": False,
        "image.pos_embed": "learned", "text.type": "transformer", "text.causal": True,
    }
    defaults = {"image.pos_embed": "learned", "image.pre_norm": False, "image.patch_bias": True}
    for key, value in required.items():
        section, name = key.split(".")
        actual = config.get(section, {}).get(name, defaults.get(key))
        if actual != value:
            raise ValueError(f"config key {key} = {actual!r}: HF's CLIPModel needs {value!r}")
    if config["text"].get("pool") not in ("eos", "argmax"):
        raise ValueError(f"config key text.pool = {config['text'].get('pool')!r}: HF's CLIPModel pools at the "
                         "end-of-text token ('eos' or 'argmax')")
    if config.get("bridge") is not None or config.get("init_logit_bias") is not None:
        raise ValueError("config key bridge / init_logit_bias: HF's CLIPModel has linear heads and no logit bias")


def hf_tower(encoder: nn.Module) -> dict[str, Any]:
    """An HF sub-config's block sizes, read from the built tower (so config keys left at their defaults count)."""
    block = encoder.transformer.blocks[0]
    return {"hidden_size": encoder.width, "num_hidden_layers": len(encoder.transformer.blocks),
            "num_attention_heads": block.attn.num_heads, "intermediate_size": block.mlp.fc1.out_features,
            "hidden_act": "quick_gelu" if isinstance(block.mlp.act, QuickGELU) else "gelu",
            "layer_norm_eps": encoder.norm.eps}


def export_hf_clip(model: DualEncoder, tokenizer: TextTokenizer, directory: str | Path) -> Path:
    """Write ``model`` (a dual encoder of HF CLIP's shape, e.g. one :func:`load_hf_clip` made) and its tokenizer
    as an HF ``CLIPModel`` directory that ``CLIPModel.from_pretrained`` and ``CLIPProcessor`` read.

    Raises:
        ValueError: naming the config key of a tower option HF's CLIP cannot express.
    """
    from transformers import CLIPConfig

    directory = Path(directory)
    config = model.config
    _check_exportable(config)
    image, text = model.image_encoder, model.text_encoder
    if image.image_size[0] != image.image_size[1]:
        raise ValueError(f"config key image.image_size = {config['image']['image_size']!r}: HF's CLIPModel needs a "
                         "square image")
    if config["text"]["pool"] == "argmax" and tokenizer.eos_id != tokenizer.vocab_size - 1:
        # HF pools at the first end-of-text id, which is the largest id only when the vocabulary ends with it.
        raise ValueError("config key text.pool = 'argmax': the tokenizer's end-of-text id is not its largest id, "
                         "so HF's CLIPModel would pool elsewhere")
    hf = CLIPConfig(
        projection_dim=config["embed_dim"],
        logit_scale_init_value=config.get("init_logit_scale", 2.6593),
        vision_config={**hf_tower(image), "image_size": image.image_size[0],
                       "patch_size": image.patch_embed.patch_size, "num_channels": image.patch_embed.proj.in_channels},
        text_config={**hf_tower(text), "vocab_size": text.token_embed.num_embeddings,
                     "max_position_embeddings": text.context_length, "bos_token_id": tokenizer.bos_id,
                     "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id},
    )
    hf.architectures = ["CLIPModel"]
    directory.mkdir(parents=True, exist_ok=True)
    state = export_state(model, _table(len(image.transformer.blocks), len(text.transformer.blocks)))
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(directory / CONFIG, hf.to_dict())
    preprocess = model.preprocess
    write_json(directory / PREPROCESSOR, {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": preprocess.resize_size or preprocess.image_size},
        "resample": {name: code for code, name in RESAMPLE.items()}[preprocess.interpolation],
        "do_center_crop": True, "crop_size": {"height": preprocess.image_size, "width": preprocess.image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(preprocess.mean), "image_std": list(preprocess.std), "do_convert_rgb": True,
    })
    write_hf_tokenizer(tokenizer, directory)
    return directory
