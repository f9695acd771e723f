"""HF transformers ``ViltForQuestionAnswering`` checkpoints → polymodal ``vqa`` models, weight for weight.

ViLT (Kim et al. 2021) has no modality encoders of its own: BERT's embedding layer embeds the question, a patch
convolution (with class token and position table) embeds the image, and one pre-norm transformer reads both.
In polymodal's terms that is a fusion model::

    image  ViT with layers=0, final_norm=False       patch conv (with bias) + class token + position table
    text   EmbeddingTextEncoder ("embeddings")       word + segment 0 + position, LayerNorm
    fusion single_stream, project=False, pool_token="text", pooler=True
           type_embed text / image = rows 0 / 1 of ViLT's modality-type table
    head   Linear, LayerNorm, GELU, Linear (head_norm="before_act"); answers = id2label

What polymodal cannot reproduce is refused, naming the file and field: images at a size other than the one the
position table was trained for (ViLT resamples it bilinearly with corners aligned, polymodal's ViT bicubically),
patch sampling (``max_image_length`` below the patch count draws a random subset), another activation than
GELU, bias-free q/k/v, non-zero dropout (polymodal's fusion has none, so fine-tuning would differ). The image
preprocessing is polymodal's fixed-size one: for a square image it gives the very pixels of HF's
``ViltImageProcessor``; a non-square image is scaled by its shorter side and centre-cropped to a square, where
HF keeps the whole image at its aspect ratio (and pads a batch, with a pixel mask).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from polymodal.data.vqa import AnswerVocab
from polymodal.interop.checkpoint import (
    ImportedCheckpoint,
    Rename,
    hf_checkpoint_directory,
    import_state,
    read_hf_config,
    weight_and_bias,
)
from polymodal.interop.bert_tokenizer import read_bert_tokenizer
from polymodal.interop.hf_files import CONFIG, PREPROCESSOR, RESAMPLE, read_hf_weights
from polymodal.io import read_json
from polymodal.models.fusion_model import build_fusion_model

__all__ = ["load_hf_vilt"]

ARCHITECTURE = "ViltForQuestionAnswering"
# ViltImageProcessor's defaults, for a checkpoint saved without its preprocessor_config.json.
DEFAULT_SIZE, DEFAULT_SIZE_DIVISOR, DEFAULT_MEAN_STD = 384, 32, 0.5
EMBEDDINGS = "vilt.embeddings"
# One row per modality; the table splits it into KEY[row] entries (see _split_modality_types).
MODALITY_TYPES = f"{EMBEDDINGS}.token_type_embeddings.weight"
MODALITY_ROWS = {"text": 0, "image": 1}  # ViltEmbeddings: 0 marks text tokens, 1 image patches
# Constant buffers some transformers versions saved with the weights.
BUFFERS = ("position_ids", "token_type_ids")


def _block(ours: str, theirs: str) -> list[Rename]:
    """One ``ViltLayer`` (pre-norm, separate q/k/v) as a polymodal transformer block."""
    return [
        *weight_and_bias(f"{ours}.norm1", f"{theirs}.layernorm_before"),
        *(Rename(f"{ours}.attn.qkv.{kind}",
                 tuple(f"{theirs}.attention.attention.{part}.{kind}" for part in ("query", "key", "value")))
          for kind in ("weight", "bias")),
        *weight_and_bias(f"{ours}.attn.proj", f"{theirs}.attention.output.dense"),
        *weight_and_bias(f"{ours}.norm2", f"{theirs}.layernorm_after"),
        *weight_and_bias(f"{ours}.mlp.fc1", f"{theirs}.intermediate.dense"),
        *weight_and_bias(f"{ours}.mlp.fc2", f"{theirs}.output.dense"),
    ]


def _table(layers: int, width: int, patches: int) -> list[Rename]:
    """Every tensor of the polymodal model and its ``ViltForQuestionAnswering`` key."""
    text, image, fusion, words = "encoders.text", "encoders.image", "fusion", f"{EMBEDDINGS}.text_embeddings"
    return [
        Rename(f"{text}.token_embed.weight", (f"{words}.word_embeddings.weight",)),
        Rename(f"{text}.pos_embed.weight", (f"{words}.position_embeddings.weight",)),
        Rename(f"{text}.segment_embed.weight", (f"{words}.token_type_embeddings.weight",)),
        *weight_and_bias(f"{text}.norm", f"{words}.LayerNorm"),
        *weight_and_bias(f"{image}.patch_embed.proj", f"{EMBEDDINGS}.patch_embeddings.projection"),
        # Both stored with a leading batch dim, as ours are (the default shape check would leave it out).
        Rename(f"{image}.cls_token", (f"{EMBEDDINGS}.cls_token",), shape=(1, 1, width)),
        Rename(f"{image}.pos_embed.weight", (f"{EMBEDDINGS}.position_embeddings",), shape=(1, 1 + patches, width)),
        *(Rename(f"{fusion}.type_embed.{name}", (f"{MODALITY_TYPES}[{row}]",)) for name, row in MODALITY_ROWS.items()),
        *(rename for i in range(layers) for rename in _block(f"{fusion}.transformer.blocks.{i}",
                                                              f"vilt.encoder.layer.{i}")),
        *weight_and_bias(f"{fusion}.norm", "vilt.layernorm"),
        *weight_and_bias(f"{fusion}.pooler", "vilt.pooler.dense"),
        # ViLT's classifier is Sequential(Linear, LayerNorm, GELU, Linear); ours has a Dropout before the last.
        *weight_and_bias("heads.fused.0", "classifier.0"),
        *weight_and_bias("heads.fused.1", "classifier.1"),
        *weight_and_bias("heads.fused.4", "classifier.3"),
    ]


def _split_modality_types(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with ViLT's modality-type table as one ``KEY[row]`` entry per row, since polymodal keeps one
    vector per modality (a table of another width or more rows is then named by the shape check or as a left-over
    row)."""
    if MODALITY_TYPES not in state or state[MODALITY_TYPES].dim() != 2:
        return state
    state = dict(state)
    for row, vector in enumerate(state.pop(MODALITY_TYPES)):
        state[f"{MODALITY_TYPES}[{row}]"] = vector
    return state


def _hf_config(directory: Path) -> Any:
    """The checkpoint's ``ViltConfig``, after checking ``config.json`` describes a ViLT VQA model."""
    from transformers import ViltConfig

    read_hf_config(directory, "vilt", ARCHITECTURE)
    # HF writes only the values that differ from its defaults: the config class fills in the rest.
    return ViltConfig.from_pretrained(str(directory))


def square_size(value: Any, file: Path, key: str) -> int:
    """An image or patch size: an int, or a ``[n, n]`` pair."""
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ValueError(f"{file}: {key} = {value!r}: polymodal reproduces ViLT with square images and patches")


def _mlp_ratio(hf: Any) -> float:
    """The MLP's hidden width as a multiple of the model width, as polymodal's blocks take it."""
    return hf.intermediate_size / hf.hidden_size


def _check_reproducible(hf: Any, file: Path, patches: int) -> None:
    """Refuse, naming the field, a ViLT option polymodal's blocks do not compute the same way."""
    refusals = {
        "hidden_act": (hf.hidden_act != "gelu", "only 'gelu'"),
        "qkv_bias": (not hf.qkv_bias, "only true (q/k/v projections with bias)"),
        "hidden_dropout_prob": (hf.hidden_dropout_prob != 0, "only 0: polymodal's single-stream fusion has no "
                                                             "dropout, so fine-tuning would differ"),
        "attention_probs_dropout_prob": (hf.attention_probs_dropout_prob != 0, "only 0, for the same reason"),
        "modality_type_vocab_size": (hf.modality_type_vocab_size != 2, "only 2 (text, one image)"),
        "max_image_length": (0 < hf.max_image_length < patches,
                             f"fewer than the image's {patches} patches: ViLT would keep a random subset"),
        "intermediate_size": (int(hf.hidden_size * _mlp_ratio(hf)) != hf.intermediate_size,
                              f"not a ratio of hidden_size {hf.hidden_size} that polymodal's blocks reproduce"),
    }
    for key, (refused, supported) in refusals.items():
        if refused:
            raise ValueError(f"{file}: {key} = {getattr(hf, key)!r} is not supported ({supported})")


def _preprocess(directory: Path, image_size: int) -> dict[str, Any]:
    """``ViltImageProcessor``'s resize, interpolation and statistics, as the fixed size polymodal resizes to."""
    file = directory / PREPROCESSOR
    processor = read_json(file, "image processor config") if file.is_file() else {}
    for key in ("do_resize", "do_rescale"):
        if not processor.get(key, True):
            raise ValueError(f"{file}: {key} = false is not supported (polymodal always resizes and rescales)")
    if abs(processor.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        raise ValueError(f"{file}: rescale_factor = {processor['rescale_factor']!r} is not supported (only 1/255)")
    resample = processor.get("resample", 3)
    if resample not in RESAMPLE:
        raise ValueError(f"{file}: resample = {resample!r} is not supported (2 bilinear, 3 bicubic)")
    size = processor.get("size", DEFAULT_SIZE)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size
    if not isinstance(shortest, int):
        raise ValueError(f"{file}: size = {size!r} is not supported (an int or {{'shortest_edge': n}})")
    divisor = processor.get("size_divisor", DEFAULT_SIZE_DIVISOR) or 1  # null: no rounding
    side = shortest // divisor * divisor  # a square image's side after ViLT's resize
    if side != image_size:
        raise ValueError(f"{file}: size = {size!r} makes {side}-pixel images, but config.json's image_size is "
                         f"{image_size}: polymodal runs ViLT at the size its position table was trained for")
    normalize = processor.get("do_normalize", True)
    mean = processor.get("image_mean", [DEFAULT_MEAN_STD] * 3) if normalize else [0.0] * 3
    std = processor.get("image_std", [DEFAULT_MEAN_STD] * 3) if normalize else [1.0] * 3
    return {"image_size": side, "resize_size": side, "interpolation": RESAMPLE[resample], "mean": list(mean),
            "std": list(std)}


def _polymodal_config(directory: Path, hf: Any) -> dict[str, Any]:
    """The ``vqa`` family config of the ViLT checkpoint in ``directory``."""
    file = directory / CONFIG
    image_size, patch_size = square_size(hf.image_size, file, "image_size"), square_size(hf.patch_size, file, "patch_size")
    _check_reproducible(hf, file, (image_size // patch_size) ** 2)
    answers = [hf.id2label[i] for i in range(hf.num_labels)]
    try:
        AnswerVocab(tuple(answers))
    except ValueError as error:
        raise ValueError(f"{file}: id2label: {error}") from None
    width, eps = hf.hidden_size, hf.layer_norm_eps
    return {
        "family": "vqa",
        "description": f"Imported from the HF {ARCHITECTURE} checkpoint {directory.name}.",
        "num_outputs": hf.num_labels,
        "answers": answers,
        "image": {"type": "vit", "image_size": image_size, "patch_size": patch_size, "in_channels": hf.num_channels,
                  "width": width, "layers": 0, "pool": "cls", "final_norm": False,
                  "preprocess": _preprocess(directory, image_size)},
        "text": {"type": "embeddings", "vocab_size": hf.vocab_size, "context_length": hf.max_position_embeddings,
                 "width": width, "segments": hf.type_vocab_size, "norm_eps": eps, "pool": "cls"},
        "fusion": {"level": "early", "kind": "single_stream", "dim": width,
                   "options": {"layers": hf.num_hidden_layers, "heads": hf.num_attention_heads,
                               "mlp_ratio": _mlp_ratio(hf), "project": False,
                               "pool_token": "text", "pooler": True, "norm_eps": eps}},
        "head_hidden": 2 * width,
        "head_norm": "before_act",
        "dropout": 0.0,
    }


def load_hf_vilt(path_or_name: str | Path) -> ImportedCheckpoint:
    """Load an HF ``ViltForQuestionAnswering`` checkpoint as a polymodal ``vqa`` model.

    Args:
        path_or_name: a directory ``save_pretrained`` wrote, or a hub name (``dandelin/vilt-b32-finetuned-vqa``)
            when the hub is reachable.

    Returns:
        the model (eval mode; its config holds the answers, from ``id2label``, and the image preprocessing) and
        the checkpoint's own tokenizer.

    Raises:
        ValueError: naming the file and key: not a checkpoint directory, not a ViLT VQA config, an option polymodal
            does not reproduce, a missing / extra / wrongly shaped tensor.
    """
    directory = hf_checkpoint_directory(path_or_name)
    hf = _hf_config(directory)
    config = _polymodal_config(directory, hf)
    state, file = read_hf_weights(directory)
    model = build_fusion_model(config, where=str(directory / CONFIG), for_loading=True)
    image = config["image"]
    table = _table(hf.num_hidden_layers, hf.hidden_size, (image["image_size"] // image["patch_size"]) ** 2)
    import_state(model, table, _split_modality_types(state), file, ignored=BUFFERS)
    tokenizer = read_bert_tokenizer(directory, hf.max_position_embeddings, hf.vocab_size)
    return ImportedCheckpoint(model.eval(), tokenizer)
