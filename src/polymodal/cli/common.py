"""Pieces several verbs share: reading the run config beside a checkpoint, printing JSON."""
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
