"""Pieces several verbs share: loading a checkpoint with its tokenizer and transform, printing JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from PIL import Image

from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.models.dual_encoder import DualEncoder
from polymodal.train.checkpoint import load_model, load_tokenizer, resolve_checkpoint


@dataclass
class LoadedModel:
    model: DualEncoder
    tokenizer: TextTokenizer
    transform: Callable[[Image.Image], torch.Tensor]
    checkpoint: Path


def load_checkpoint(path: str | Path, device: str = "auto") -> LoadedModel:
    """A checkpoint or run directory → eval-mode model, its tokenizer and its eval image transform."""
    from polymodal.cli.pipeline import resolve_device

    checkpoint = resolve_checkpoint(path)
    model = load_model(checkpoint, device=resolve_device(device)).eval()
    return LoadedModel(model, load_tokenizer(checkpoint), image_transform(model.preprocess), checkpoint)


def run_config_beside(checkpoint: Path) -> dict[str, Any] | None:
    """The ``run_config.yaml`` of the run a checkpoint belongs to (``RUN/checkpoints/step_N``), if any."""
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        path = folder / "run_config.yaml"
        if path.is_file():
            return yaml.safe_load(path.read_text(encoding="utf-8"))
    return None


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))
