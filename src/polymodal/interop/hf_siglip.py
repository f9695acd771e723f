"""HF transformers ``SiglipModel`` directories ↔ polymodal dual encoders, weight for weight.

SigLIP's towers, in polymodal's options: the image tower is our ViT without a class token (``class_token=False``),
with a biased patch projection and no LayerNorm before the blocks, its final LayerNorm (HF's ``post_layernorm``)
followed by multihead attention pooling (``pool="map"``: a learned probe, attention, a residual MLP), and no
projection after it (``image_projection="none"``). The text tower is bidirectional (``causal=False``), pooled at
its last position (``pool="last"``: texts are padded to the context length), then a linear head with a bias
(``projection_bias``). Both use the tanh GELU (``act="gelu_tanh"``, HF's ``gelu_pytorch_tanh``). The logits are
``exp(logit_scale) * cos + logit_bias`` with an unbounded temperature (``max_logit_scale: null``).

Layout changes: HF keeps separate q/k/v projections in the blocks (our fused ``qkv``), one fused in-projection in
the pooling head (our separate ``q`` and ``kv``), and its scalars as ``(1,)`` tensors (ours 0-d).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.interop.checkpoint import (
    ImportedCheckpoint,
    Rename,
    export_state,
    hf_checkpoint_directory,
    hf_tower_options,
    import_state,
    read_hf_config,
    require_config,
    weight_and_bias,
)
from polymodal.interop.hf_clip import hf_block, hf_tower
from polymodal.interop.hf_files import (
    BUFFERS,
    CONFIG,
    PREPROCESSOR,
    RESAMPLE,
    WEIGHTS,
    read_hf_weights,
    read_processor_settings,
    square_size,
)
from polymodal.interop.siglip_tokenizer import read_siglip_tokenizer, write_siglip_tokenizer
from polymodal.io import atomic_path, write_json
from polymodal.models.dual_encoder import DualEncoder, build_dual_encoder

__all__ = ["export_hf_siglip", "load_hf_siglip"]

# HF's activation names ↔ ours.
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
# SigLIP's processor defaults (HF's SiglipImageProcessor), for a directory saved without one.
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
BICUBIC = 3


def _table(image_layers: int, text_layers: int, width: int) -> list[Rename]:
    """Every tensor of a polymodal SigLIP-shaped dual encoder and its HF ``SiglipModel`` key(s); ``width`` is the
    image tower's (the pooling head's fused in-projection holds three blocks of that many rows)."""
    image, text = "image_encoder", "text_encoder"
    vision, text_model = "vision_model", "text_model"
    pool, head = f"{image}.attn_pool", f"{vision}.head"
    in_proj = f"{head}.attention.in_proj"
    return [
        *weight_and_bias(f"{image}.patch_embed.proj", f"{vision}.embeddings.patch_embedding"),
        Rename(f"{image}.pos_embed.weight", (f"{vision}.embeddings.position_embedding.weight",)),
        *(rename for i in range(image_layers)
          for rename in hf_block(f"{image}.transformer.blocks.{i}", f"{vision}.encoder.layers.{i}")),
        *weight_and_bias(f"{image}.norm", f"{vision}.post_layernorm"),
        Rename(f"{pool}.pool.query", (f"{head}.probe",), shape=(1, 1, width)),
        Rename(f"{pool}.pool.attn.q.weight", (f"{in_proj}_weight",), shape=(3 * width, width), first_row=0),
        Rename(f"{pool}.pool.attn.kv.weight", (f"{in_proj}_weight",), shape=(3 * width, width), first_row=width),
        Rename(f"{pool}.pool.attn.q.bias", (f"{in_proj}_bias",), shape=(3 * width,), first_row=0),
        Rename(f"{pool}.pool.attn.kv.bias", (f"{in_proj}_bias",), shape=(3 * width,), first_row=width),
        *weight_and_bias(f"{pool}.pool.attn.proj", f"{head}.attention.out_proj"),
        *weight_and_bias(f"{pool}.norm", f"{head}.layernorm"),
        *weight_and_bias(f"{pool}.mlp.fc1", f"{head}.mlp.fc1"),
        *weight_and_bias(f"{pool}.mlp.fc2", f"{head}.mlp.fc2"),
        Rename(f"{text}.token_embed.weight", (f"{text_model}.embeddings.token_embedding.weight",)),
        Rename(f"{text}.pos_embed", (f"{text_model}.embeddings.position_embedding.weight",)),
        *(rename for i in range(text_layers)
          for rename in hf_block(f"{text}.transformer.blocks.{i}", f"{text_model}.encoder.layers.{i}")),
        *weight_and_bias(f"{text}.norm", f"{text_model}.final_layer_norm"),
        *weight_and_bias("text_head.proj", f"{text_model}.head"),
        Rename("logit_scale", ("logit_scale",), shape=(1,)),
        Rename("logit_bias", ("logit_bias",), shape=(1,)),
    ]




def _preprocess(directory: Path, image_size: int) -> dict[str, Any]:
    """The image processor's square resize (no crop), interpolation and statistics (SigLIP's defaults when the
    directory has no processor config)."""
    processor, file = read_processor_settings(directory)
    if processor.get("do_center_crop", False):
        raise ValueError(f"{file}: do_center_crop = true is not supported (SigLIP resizes whole images)")
    if not processor.get("do_resize", True):
        raise ValueError(f"{file}: do_resize = false is not supported (the tower reads a fixed size)")
    resample = processor.get("resample", BICUBIC)
    if resample not in RESAMPLE:
        raise ValueError(f"{file}: resample = {resample!r} is not supported (2 bilinear, 3 bicubic)")
    return {"image_size": square_size(processor.get("size", image_size), file, "size"), "resize_mode": "squash",
            "interpolation": RESAMPLE[resample], "mean": list(processor.get("image_mean", SIGLIP_MEAN)),
            "std": list(processor.get("image_std", SIGLIP_STD))}


def _polymodal_config(directory: Path) -> dict[str, Any]:
    """The dual-encoder config of the HF SigLIP checkpoint in ``directory``, after checking it is one we reproduce."""
    from transformers import SiglipConfig

    file = directory / CONFIG
    read_hf_config(directory, "siglip", "SiglipModel")
    # HF writes only the values that differ from its defaults: the config class fills in the rest.
    hf = SiglipConfig.from_pretrained(str(directory))
    vision, text = hf.vision_config, hf.text_config
    if not vision.vision_use_head:
        raise ValueError(f"{file}: vision_config.vision_use_head = false is not supported (SiglipModel pools "
                         "with its head)")
    if text.projection_size != vision.hidden_size:
        raise ValueError(f"{file}: text_config.projection_size = {text.projection_size} differs from "
                         f"vision_config.hidden_size = {vision.hidden_size}; the two embeddings must match")
    image_size = square_size(vision.image_size, file, "vision_config.image_size")
    image_options = hf_tower_options(vision, "vision_config", file, ACTIVATIONS)
    text_options = hf_tower_options(text, "text_config", file, ACTIVATIONS)
    return {
        "family": "dual_encoder",
        "description": f"Imported from the HF SiglipModel checkpoint {directory.name}.",
        "embed_dim": vision.hidden_size,
        "loss": "siglip",
        # SigLIP's initial values (the paper's t' = ln 10, b = -10); the checkpoint's own replace them.
        "init_logit_scale": math.log(10.0),
        "init_logit_bias": -10.0,
        "max_logit_scale": None,
        "image_projection": "none",
        "text_projection": "linear",
        "projection_bias": True,
        "image": {"type": "vit", "image_size": image_size,
                  "patch_size": square_size(vision.patch_size, file, "vision_config.patch_size"),
                  "in_channels": vision.num_channels, **image_options, "class_token": False,
                  "pool": "map", "preprocess": _preprocess(directory, image_size)},
        "text": {"type": "transformer", "vocab_size": text.vocab_size, "context_length": text.max_position_embeddings,
                 **text_options, "causal": False, "pool": "last"},
    }


def load_hf_siglip(path_or_name: str | Path) -> ImportedCheckpoint:
    """Load an HF ``SiglipModel`` checkpoint as a polymodal dual encoder.

    Args:
        path_or_name: a directory ``save_pretrained`` wrote, or a hub name (``"google/siglip-base-patch16-224"``)
            when the hub (or its local cache) can provide it.

    Returns:
        the model (eval mode; its ``config`` records the towers' options and the checkpoint's preprocessing)
        and the checkpoint's own tokenizer, padding every text to the context length as SigLIP was trained.

    Raises:
        ValueError: naming the file and key: not a checkpoint directory, not a SigLIP config, an option polymodal
            does not reproduce, a missing / extra / wrongly shaped tensor.
    """
    directory = hf_checkpoint_directory(path_or_name)
    config = _polymodal_config(directory)
    state, file = read_hf_weights(directory)
    model = build_dual_encoder(config, where=str(directory / CONFIG), for_loading=True)
    image, text = config["image"], config["text"]
    import_state(model, _table(image["layers"], text["layers"], image["width"]), state, file, ignored=BUFFERS)
    tokenizer = read_siglip_tokenizer(directory, text["context_length"])
    if tokenizer.vocab_size > text["vocab_size"]:
        raise ValueError(f"{directory / 'tokenizer_config.json'}: {tokenizer.vocab_size} tokens, more than "
                         f"text_config.vocab_size = {text['vocab_size']}")
    return ImportedCheckpoint(model.eval(), tokenizer)


def _check_exportable(config: dict[str, Any], tokenizer: TextTokenizer) -> None:
    """Refuse, naming the config key, a polymodal dual encoder that HF's ``SiglipModel`` cannot express."""
    required = {
        "image.type": "vit", "image.class_token": False, "image.pool": "map", "image.pre_norm": False,
        "image.patch_bias": True, "image.pos_embed": "learned", "image.final_norm": True,
        "text.type": "transformer", "text.causal": False, "text.pool": "last",
        "image_projection": "none", "text_projection": "linear", "projection_bias": True,
        "image.preprocess.resize_mode": "squash",
    }
    defaults = {"image.class_token": True, "image.pool": "cls", "image.pre_norm": False, "image.patch_bias": True,
                "image.pos_embed": "learned", "image.final_norm": True, "text.causal": False, "text.pool": "mean",
                "image_projection": "linear", "text_projection": "linear", "projection_bias": False,
                "image.preprocess.resize_mode": "shortest"}
    require_config(config, required, defaults, "HF's SiglipModel")
    if config.get("init_logit_bias") is None:
        raise ValueError("config key init_logit_bias = None: HF's SiglipModel has a logit bias")
    if not tokenizer.pad_to_context:
        raise ValueError("the tokenizer pads to the longest text: HF's SiglipModel reads texts padded to the context "
                         "length (TextTokenizer(..., pad_to_context=True))")


def _siglip_tower(encoder: nn.Module) -> dict[str, Any]:
    """An HF SigLIP sub-config's block sizes and activation, read from the built tower."""
    act = encoder.transformer.blocks[0].mlp.act
    tanh = isinstance(act, nn.GELU) and act.approximate == "tanh"
    return {**hf_tower(encoder), **({"hidden_act": "gelu_pytorch_tanh"} if tanh else {})}


def export_hf_siglip(model: DualEncoder, tokenizer: TextTokenizer, directory: str | Path) -> Path:
    """Write ``model`` (a dual encoder of HF SigLIP's shape, e.g. one :func:`load_hf_siglip` made) and its
    tokenizer as an HF ``SiglipModel`` directory that ``SiglipModel.from_pretrained`` and ``SiglipProcessor`` read.

    Raises:
        ValueError: naming the config key of an option HF's SigLIP cannot express.
    """
    from transformers import SiglipConfig

    directory = Path(directory)
    config = model.config
    _check_exportable(config, tokenizer)
    image, text = model.image_encoder, model.text_encoder
    if image.image_size[0] != image.image_size[1]:
        raise ValueError(f"config key image.image_size = {config['image']['image_size']!r}: HF's SiglipModel "
                         "needs a square image")
    hf = SiglipConfig(
        vision_config={**_siglip_tower(image), "image_size": image.image_size[0],
                       "patch_size": image.patch_embed.patch_size, "num_channels": image.patch_embed.proj.in_channels},
        text_config={**_siglip_tower(text), "vocab_size": text.token_embed.num_embeddings,
                     "max_position_embeddings": text.context_length, "projection_size": config["embed_dim"],
                     "pad_token_id": tokenizer.pad_id, "eos_token_id": tokenizer.eos_id, "bos_token_id": None},
    )
    hf.architectures = ["SiglipModel"]
    directory.mkdir(parents=True, exist_ok=True)
    state = export_state(model, _table(len(image.transformer.blocks), len(text.transformer.blocks), image.width))
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(directory / CONFIG, hf.to_dict())
    preprocess = model.preprocess
    write_json(directory / PREPROCESSOR, {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True, "size": {"height": preprocess.image_size, "width": preprocess.image_size},
        "resample": {name: code for code, name in RESAMPLE.items()}[preprocess.interpolation],
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(preprocess.mean), "image_std": list(preprocess.std),
    })
    write_siglip_tokenizer(tokenizer, directory)
    return directory
