"""Pieces several verbs share: reading the run config beside a checkpoint, loading a model for one task,
printing JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def run_config_beside(checkpoint: Path) -> dict[str, Any] | None:
    """The ``run_config.yaml`` of the run a checkpoint belongs to (``RUN/checkpoints/step_N``), if any."""
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        path = folder / "run_config.yaml"
        if path.is_file():
            return yaml.safe_load(path.read_text(encoding="utf-8"))
    return None


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def load_task_model(checkpoint: str, device: str, task: str, verb: str, noun: str):
    """``load_for_inference(checkpoint, device)``, refused with a one-line error unless the model's family
    serves ``task``: "``polymodal VERB`` needs a NOUN"."""
    from polymodal.model_io import load_for_inference
    from polymodal.models.registry import family_of

    loaded = load_for_inference(checkpoint, device)
    held = family_of(loaded.model.config).task
    if held != task:
        raise ValueError(f"{loaded.directory} holds a {held} model; `polymodal {verb}` needs a {noun}")
    return loaded
