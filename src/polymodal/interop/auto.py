"""One entry point for any checkpoint polymodal reads: its own model directories, HF transformers directories
and open_clip weight files, told apart by what they hold rather than by their names."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polymodal.interop.checkpoint import ImportedCheckpoint
from polymodal.model_io import LoadedModel

__all__ = ["checkpoint_kind", "load_any_for_inference", "load_checkpoint"]

# HF model_type → the importer of that architecture (module, function).
HF_IMPORTERS: dict[str, tuple[str, str]] = {
    "clip": ("polymodal.interop.hf_clip", "load_hf_clip"),
    "siglip": ("polymodal.interop.hf_siglip", "load_hf_siglip"),
    "vilt": ("polymodal.interop.hf_vilt", "load_hf_vilt"),
    "blip": ("polymodal.interop.hf_blip", "load_hf_blip"),
}


def _config_of(directory: Path) -> dict[str, Any]:
    file = directory / "config.json"
    if not file.is_file():
        raise ValueError(f"{directory}: not a checkpoint directory (no config.json): expected a polymodal model "
                         "or run directory, or an HF transformers directory saved with save_pretrained")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return config


def checkpoint_kind(path: str | Path) -> str:
    """``polymodal`` (a model or run directory), ``hf:<model_type>`` (an HF directory) or ``open_clip`` (a weights
    file, or a directory in open_clip's ``local-dir`` layout), refusing anything else with a message naming
    ``path``."""
    from polymodal.interop.open_clip_ckpt import CONFIG as OPEN_CLIP_CONFIG
    from polymodal.model_io import resolve_model_dir

    path = Path(path).expanduser()
    if (path / OPEN_CLIP_CONFIG).is_file():
        return "open_clip"
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".bin", ".safetensors"):
            return "open_clip"
        raise ValueError(f"{path}: a checkpoint file must be an open_clip .pt/.pth/.bin/.safetensors weights file")
    if not path.is_dir():
        raise ValueError(f"{path}: no such checkpoint file or directory")
    if (path / "config.json").is_file():
        config = _config_of(path)
        if "model_type" in config:
            return f"hf:{config['model_type']}"
        # polymodal configs name their family (older ones may not: dual_encoder is the default one).
        if "family" in config or (path / "model.safetensors").is_file():
            return "polymodal"
        raise ValueError(f"{path / 'config.json'}: neither a polymodal config (no 'family') nor an HF one "
                         "(no 'model_type')")
    try:
        model_dir = resolve_model_dir(path)  # a run directory: its final or latest model
    except FileNotFoundError:
        _config_of(path)  # raises: names the directory and what a checkpoint holds
    return checkpoint_kind(model_dir)


def load_checkpoint(path: str | Path, open_clip_config: str | Mapping[str, Any] | None = None) -> ImportedCheckpoint:
    """Any checkpoint as a polymodal model + tokenizer: a polymodal model (or run) directory; an HF directory (or
    hub name, when the hub or its cache has it) of a supported architecture (``HF_IMPORTERS``); open_clip weights
    with ``open_clip_config`` (a model name open_clip knows, a JSON file or the mapping; by default the
    ``open_clip_config.json`` beside them)."""
    from importlib import import_module

    from polymodal.interop.checkpoint import hf_checkpoint_directory
    from polymodal.model_io import load_model, load_tokenizer, resolve_model_dir

    path = hf_checkpoint_directory(path)
    kind = checkpoint_kind(path)
    if open_clip_config is not None and kind != "open_clip":
        raise ValueError(f"{path} is a {kind} checkpoint; an open_clip model config applies to open_clip weights only")
    if kind == "polymodal":
        directory = resolve_model_dir(path)
        return ImportedCheckpoint(load_model(directory), load_tokenizer(directory))
    if kind == "open_clip":
        from polymodal.interop.open_clip_ckpt import load_open_clip

        return load_open_clip(path, open_clip_config)
    model_type = kind.removeprefix("hf:")
    if model_type not in HF_IMPORTERS:
        raise ValueError(f"{Path(path) / 'config.json'}: model_type {model_type!r} is not a supported architecture; "
                         f"supported: {', '.join(sorted(HF_IMPORTERS))}")
    module, function = HF_IMPORTERS[model_type]
    return getattr(import_module(module), function)(path)


def load_any_for_inference(path: str | Path, device: str = "auto",
                           open_clip_config: str | Mapping[str, Any] | None = None) -> LoadedModel:
    """:func:`polymodal.model_io.load_for_inference` for any checkpoint :func:`load_checkpoint` reads: the model
    in eval mode on ``device``, its tokenizer and its image transform."""
    from polymodal.data.transforms import image_transform
    from polymodal.model_io import load_for_inference
    from polymodal.runtime import resolve_device

    if Path(path).exists() and checkpoint_kind(path) == "polymodal":
        return load_for_inference(path, device)
    imported = load_checkpoint(path, open_clip_config)
    preprocess = getattr(imported.model, "preprocess", None)
    return LoadedModel(imported.model.to(resolve_device(device)).eval(), imported.tokenizer,
                       image_transform(preprocess) if preprocess is not None else None, Path(path))
