"""Shared by the tests that run trainings (imported as ``tests.run_helpers``; not a test module)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def write_yaml(path: Path, config: dict) -> Path:
    """Write a run config as YAML, as a user would, and return its path."""
    path.write_text(yaml.safe_dump(config))
    return path


def read_log(run: Path) -> list[dict]:
    """Every record of a run's ``metrics.jsonl``, in order."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def polymodal_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``polymodal ARGS`` in a fresh interpreter, as a user runs it; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "polymodal.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``polymodal ARGS`` through ``polymodal.cli.main`` in this interpreter: its exit status (argparse's refusals
    included) and what it wrote to stderr. A traceback there is always a failure: bad input gets one line."""
    from polymodal.cli.main import main

    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    return int(code or 0), stderr


def export_splits(name: str, root: Path, sizes: dict[str, int], file_format: str) -> None:
    """``polymodal data export NAME`` for every split, into ``root/SPLIT``."""
    for split, size in sizes.items():
        done = polymodal_cli("data", "export", name, "--split", split, "--size", str(size), "--to",
                             str(root / split), "--format", file_format)
        assert done.returncode == 0, done.stderr


def train_with_cli(root: Path, config: dict, *overrides: str) -> None:
    """Write ``config`` to ``root/run.yaml`` and ``polymodal train`` it (with ``--set`` overrides)."""
    write_yaml(root / "run.yaml", config)
    done = polymodal_cli("train", str(root / "run.yaml"), *overrides, "--no-progress")
    assert done.returncode == 0, done.stderr
