"""A model directory: everything needed to use a model again, written by :func:`save_model`.

``DIR/model.safetensors`` (weights), ``DIR/config.json`` (the model config, ``family`` included),
``DIR/tokenizer.json`` (when the model reads text) and ``DIR/preprocess.json`` (when it reads images: size,
mean, std). Every file is written to a temporary name and renamed, so a crash never leaves a torn file.

A training run's checkpoints (``train/checkpoint.py``) are model directories plus training state, so
:func:`load_model` also takes a run directory: its exported ``model/`` first, else ``checkpoints/latest``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.io import atomic_path, crash_point, file_sha256, read_json, recover_directory, write_json
from polymodal.models.registry import build_model
from polymodal.runtime import resolve_device

__all__ = ["LoadedModel", "load_for_inference", "load_model", "load_model_config", "load_tokenizer",
           "resolve_model_dir", "save_model", "weights_sha256"]

WEIGHTS, CONFIG, TOKENIZER, PREPROCESS = "model.safetensors", "config.json", "tokenizer.json", "preprocess.json"
# A run directory's pointer to its newest checkpoint (written by train/checkpoint.py).
LATEST = "latest"


def save_model(
    model: nn.Module,
    directory: str | Path,
    tokenizer: TextTokenizer | None = None,
    model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (and its ``tokenizer``) to ``directory`` so :func:`load_model` rebuilds it exactly.

    Args:
        model: a model built by a registered family (it carries ``config`` and, if it reads images,
            ``preprocess``).
        model_state: the weights to write instead of ``model.state_dict()`` (an FSDP model's gathered state).

    Returns:
        ``directory`` as a ``Path``.
    """
    directory = Path(directory)
    if not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} has no `config`: build models with polymodal.create_model")
    source = model.state_dict() if model_state is None else model_state
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in source.items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    crash_point("model.weights")
    write_json(directory / CONFIG, model.config)
    preprocess = getattr(model, "preprocess", None)
    if preprocess is not None:
        write_json(directory / PREPROCESS, {key: list(value) if isinstance(value, tuple) else value
                                            for key, value in asdict(preprocess).items()})
    if tokenizer is not None:
        tokenizer.save(directory / TOKENIZER)
    return directory


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a model directory, a run directory (its exported ``model/`` first, else its latest checkpoint),
    or a run's ``checkpoints`` folder; return the directory holding the weights."""
    path = Path(path)
    for candidate in (path, path / "model", path / "checkpoints"):
        if (candidate / WEIGHTS).is_file():
            return candidate
        if (candidate / LATEST).is_file():
            # A crash in the middle of replacing that checkpoint leaves it set aside: put it back first.
            latest = recover_directory(candidate / (candidate / LATEST).read_text(encoding="utf-8").strip())
            if (latest / WEIGHTS).is_file():
                return latest
            raise FileNotFoundError(f"{candidate / LATEST} points to {latest}, which has no {WEIGHTS}")
    raise FileNotFoundError(f"no model at {path} (expected {WEIGHTS} or checkpoints/{LATEST})")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``config.json`` with its family's builder and load ``model.safetensors`` (strict).

    The model comes back in eval mode; ``path`` may also be a run directory (see :func:`resolve_model_dir`).
    """
    directory = resolve_model_dir(path)
    config = load_model_config(directory)
    # Pretrained towers are rebuilt from their packages' files first, then overwritten by the saved weights.
    model = build_model(config, where=str(directory / CONFIG), for_loading=True)
    try:
        state = load_file(str(directory / WEIGHTS), device=str(resolve_device(device)))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{directory / WEIGHTS}: cannot read the weights ({error})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS} does not match {directory / CONFIG}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(resolve_device(device)).eval()


def load_tokenizer(path: str | Path) -> TextTokenizer | None:
    """The tokenizer saved beside a model (None for a model that reads no text)."""
    file = resolve_model_dir(path) / TOKENIZER
    return TextTokenizer.from_file(file) if file.is_file() else None


@dataclass
class LoadedModel:
    """A saved model ready for inference: the model (eval mode), its tokenizer and its image transform.

    Attributes:
        model: the rebuilt model on the requested device.
        tokenizer: None when the model reads no text.
        transform: PIL image → normalised tensor, as the model was trained to see it (None without images).
        directory: where the weights were read from.
    """

    model: nn.Module
    tokenizer: TextTokenizer | None
    transform: Callable[[Image.Image], torch.Tensor] | None
    directory: Path


def load_for_inference(path: str | Path, device: str | torch.device = "auto") -> LoadedModel:
    """A model directory or run directory → :class:`LoadedModel` on ``device`` (``auto``: a GPU if there is one)."""
    directory = resolve_model_dir(path)
    model = load_model(directory, device=device)
    preprocess = getattr(model, "preprocess", None)
    transform = image_transform(preprocess) if preprocess is not None else None
    return LoadedModel(model, load_tokenizer(directory), transform, directory)


def load_model_config(path: str | Path) -> dict:
    """The model config saved in a model or run directory (``config.json``)."""
    return read_json(resolve_model_dir(path) / CONFIG, "model config")


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a saved model's weights file: what an embedding or index records, so a query is embedded by
    the very weights that embedded the items."""
    return file_sha256(resolve_model_dir(path) / WEIGHTS)
