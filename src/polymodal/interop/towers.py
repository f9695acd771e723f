"""A pretrained tower, by config, inside any family: one tower of a trained checkpoint — polymodal's own, an HF
transformers CLIP (or any HF text encoder such as BERT), an open_clip file — frozen or fine-tuned::

    "image": {"type": "checkpoint", "path": "clip-vit-b-32/", "frozen": true}
    "text":  {"type": "checkpoint", "path": "bert-base-uncased/", "context_length": 40}

:func:`build_model_with_towers` rewrites such a section into the tower's own polymodal section (``vit`` with
its sizes and preprocessing, ``transformer``, ``hf_text`` with the HF config inline, ...) plus
``weights_from: {"path", "tower"}``, builds the model with its family's builder, then copies the source's
weights into the tower. The model's ``config.json`` therefore describes the architecture completely: a saved
model loads through :func:`polymodal.load_model` without the source checkpoint. The text tower's tokenizer is
the source's (:func:`tower_tokenizer`). This sits in ``interop/`` (above ``models/`` and ``encoders/``) because
reading a source needs the importers, which build models themselves.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.typed_config import ConfigError, check_value

__all__ = ["build_model_with_towers", "resolve_checkpoint_towers", "tower_tokenizer"]

# Keys of a `checkpoint` section that name the source, and the tower options it may add (the architecture is
# the source's).
SOURCE_KEYS = ("path", "tower", "open_clip_config")
SECTION_OPTIONS = ("frozen", "grad_checkpointing", "preprocess", "context_length")
# The source's own tower options are not inherited: the new model decides whether to freeze or checkpoint.
INHERITED_OPTIONS_DROPPED = ("frozen", "grad_checkpointing", "weights_from")

@dataclass(frozen=True)
class TowerSource:
    """One tower of a checkpoint: its polymodal section, its weights and (text towers) its tokenizer."""

    spec: dict[str, Any]
    state: dict[str, torch.Tensor]
    tokenizer: TextTokenizer | None


def _encoder_of(model: nn.Module, tower: str) -> nn.Module | None:
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, nn.ModuleDict):
        return encoders[tower] if tower in encoders else None
    return getattr(model, f"{tower}_encoder", None)


def _hf_text_source(directory: Path, tower: str) -> TowerSource:
    """An HF text encoder directory (BERT, RoBERTa, MiniLM, ...): its config inline, its weights, its
    ``tokenizer.json``."""
    from transformers import AutoConfig, AutoModel

    if tower != "text":
        raise ValueError(f"{directory / 'config.json'}: an image tower cannot come from this HF checkpoint; image "
                         "towers come from CLIP, open_clip or polymodal checkpoints")
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"{directory}: no tokenizer.json (save the model with its fast tokenizer)")
    hf_config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    model = AutoModel.from_pretrained(str(directory), local_files_only=True)
    state = {key: value for key, value in model.state_dict().items() if not key.startswith("pooler.")}
    context_length = int(getattr(hf_config, "max_position_embeddings", 512))
    spec = {"type": "hf_text", "hf_config": hf_config.to_diff_dict(), "context_length": context_length}
    tokenizer = TextTokenizer.from_file(tokenizer_file, context_length)
    return TowerSource(spec, {f"model.{key}": value for key, value in state.items()}, tokenizer)


@lru_cache(maxsize=2)  # a fresh build reads each source twice: once to resolve the section, once for weights
def _read_source(path: str, tower: str, open_clip_config: str | None) -> TowerSource:
    from polymodal.interop.auto import HF_IMPORTERS, checkpoint_kind, load_checkpoint

    kind = checkpoint_kind(path)
    if kind.startswith("hf:") and kind.removeprefix("hf:") not in HF_IMPORTERS:
        return _hf_text_source(Path(path), tower)
    imported = load_checkpoint(path, json.loads(open_clip_config) if open_clip_config else None)
    encoder = _encoder_of(imported.model, tower)
    config = getattr(imported.model, "config", {})
    if encoder is None or tower not in config:
        raise ValueError(f"{path}: the checkpoint has no {tower} tower")
    spec = {key: value for key, value in config[tower].items() if key not in INHERITED_OPTIONS_DROPPED}
    return TowerSource(spec, {key: value.detach().clone() for key, value in encoder.state_dict().items()},
                       imported.tokenizer if tower == "text" else None)


def _source_of(weights_from: Mapping[str, Any], modality: str, where: str) -> TowerSource:
    check_value(dict, weights_from, f"{modality}.weights_from", where)
    unknown = sorted(set(weights_from) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {modality}.{unknown[0]}; known keys: {', '.join(SOURCE_KEYS)}")
    if "path" not in weights_from:
        raise ConfigError(f"{where}: missing key {modality}.path (the checkpoint to take the tower from)")
    check_value(str, weights_from["path"], f"{modality}.path", where)
    tower = weights_from.get("tower", modality)
    if tower not in ("image", "text"):
        raise ConfigError(f"{where}: {modality}.tower = {tower!r} is not one of: image, text")
    open_clip_config = weights_from.get("open_clip_config")
    serialised = None if open_clip_config is None else json.dumps(open_clip_config, sort_keys=True)
    return _read_source(str(Path(weights_from["path"]).expanduser().resolve()), tower, serialised)


def resolve_section(modality: str, section: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A ``checkpoint`` section → the source tower's own section + this section's tower options +
    ``weights_from``; any other section unchanged."""
    if section.get("type") != "checkpoint":
        return dict(section)
    known = ("type", *SOURCE_KEYS, *SECTION_OPTIONS)
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key {modality}.{unknown[0]}: a checkpoint tower takes its architecture "
                          f"from the checkpoint; known keys: {', '.join(known[1:])}")
    weights_from = {key: section[key] for key in SOURCE_KEYS if key in section}
    source = _source_of(weights_from, modality, where)
    options = {key: value for key, value in section.items() if key not in SOURCE_KEYS and key != "type"}
    preprocess = {**source.spec.get("preprocess", {}), **options.pop("preprocess", {})}
    resolved = {**source.spec, **options, "weights_from": weights_from}
    if preprocess:
        resolved["preprocess"] = preprocess
    return resolved


def resolve_checkpoint_towers(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``config`` with every ``{"type": "checkpoint", ...}`` modality section resolved (:func:`resolve_section`)."""
    return {key: resolve_section(key, value, where) if isinstance(value, Mapping) and key in ("image", "text")
            else value for key, value in config.items()}


def _load_tower_weights(encoder: nn.Module, weights_from: Mapping[str, Any], modality: str, where: str) -> None:
    """Copy the source tower's weights into ``encoder`` (built from the resolved section). A shape that differs
    (e.g. a longer ``context_length`` than the source's position table) is refused, naming the tensor."""
    source = _source_of(weights_from, modality, where)
    ours = encoder.state_dict()
    for key, value in source.state.items():
        if key in ours and ours[key].shape != value.shape:
            raise ConfigError(f"{where}: {modality} tower from {weights_from['path']}: {key} has shape "
                              f"{tuple(value.shape)} there, {tuple(ours[key].shape)} in this config")
    missing, unexpected = encoder.load_state_dict(source.state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{where}: {modality} tower from {weights_from['path']} does not fit: missing "
                          f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")


def build_model_with_towers(config: Mapping[str, Any], where: str = "model config") -> nn.Module:
    """Build the model ``config`` describes, its ``checkpoint`` tower sections resolved and their source weights
    loaded (the model's ``config`` holds the resolved sections)."""
    from polymodal.models.registry import build_model

    resolved = resolve_checkpoint_towers(config, where)
    model = build_model(resolved, where)
    for modality in ("image", "text"):
        section = resolved.get(modality)
        if isinstance(section, Mapping) and "weights_from" in section:
            encoder = _encoder_of(model, modality)
            if encoder is None:
                raise ConfigError(f"{where}: a {resolved.get('family')} model has no {modality} tower to load")
            _load_tower_weights(encoder, section["weights_from"], modality, where)
    return model


def tower_tokenizer(text_spec: Mapping[str, Any], corpus: Callable[[], Iterable[str]],
                    where: str = "model config") -> TextTokenizer:
    """The tokenizer a text section reads: a checkpoint tower's own (truncating to the section's
    ``context_length``), else :func:`polymodal.encoders.build.build_tokenizer`'s."""
    from polymodal.encoders.build import build_tokenizer

    text_spec = resolve_section("text", text_spec, where)
    if "weights_from" not in text_spec:
        return build_tokenizer(text_spec, corpus, where)
    context_length = text_spec.get("context_length")
    check_value(int, context_length, "text.context_length", where, {"min": 2})
    source = _source_of(text_spec["weights_from"], "text", where)
    if source.tokenizer is None:
        raise ConfigError(f"{where}: {text_spec['weights_from']['path']} has no tokenizer")
    # A copy: the cached source's tokenizer must keep its own padding and truncation settings.
    inner = Tokenizer.from_str(source.tokenizer.tokenizer.to_str())
    return TextTokenizer(inner, context_length, pad_to_context=source.tokenizer.pad_to_context)
