"""Shared by the tests that run trainings (imported as ``tests.run_helpers``; not a test module)."""
import json
from pathlib import Path

import yaml


def write_yaml(path: Path, config: dict) -> Path:
    """Write a run config as YAML, as a user would, and return its path."""
    path.write_text(yaml.safe_dump(config))
    return path


def read_log(run: Path) -> list[dict]:
    """Every record of a run's ``metrics.jsonl``, in order."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
