"""Training checkpoints: one directory per save, written whole or not at all.

A checkpoint is a model directory (``models/saving.py``: ``model.safetensors``, ``config.json``,
``tokenizer.json``, ``preprocess.json``) plus ``train_state.pt`` (optimizer, scheduler, scaler, step/epoch
position, RNG states, and a data stream's own resume position), in ``RUN/checkpoints/step_000500/``. This module
owns only the training state; the model's files are written by :func:`polymodal.models.saving.save_model`. An FSDP run adds ``sharded/`` (model and optimizer shards, ``train/fsdp.py``)
and keeps its optimizer state there only.
``RUN/checkpoints/latest`` names the newest complete one. A save writes into a hidden temporary directory and
renames it into place, then rewrites ``latest``: a crash at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.io import atomic_path
from polymodal.models.saving import LATEST, WEIGHTS, save_model

TRAIN_STATE = "train_state.pt"


@dataclass
class TrainPosition:
    """Where training stands: optimizer steps taken, current epoch, and samples of that epoch already consumed.

    ``samples_in_epoch`` counts over all ranks (global batch x micro-batches), so a checkpoint written by one world
    size can be resumed by another at the same place in the epoch.
    """

    step: int = 0
    epoch: int = 0
    samples_in_epoch: int = 0


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    tokenizer: TextTokenizer | None,
    position: TrainPosition,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    keep_last: int = 2,
    data_state: dict[str, Any] | None = None,
    model_state: dict[str, torch.Tensor] | None = None,
    add_files: Callable[[Path], Any] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_NNNNNN`` atomically, point ``latest`` at it, prune old ones.

    ``data_state`` is a streaming dataset's own record of its position (``None`` for a sampler, which resumes
    from ``position`` alone). ``model_state`` replaces ``model.state_dict()`` as the saved weights, and
    ``add_files(staging)`` puts further files into the checkpoint before it is renamed into place (both for
    FSDP, ``train/fsdp.py``).
    """
    final = checkpoint_path(run_dir, position.step)
    folder = final.parent
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
    try:
        save_model(model, staging, tokenizer, model_state)
        torch.save(
            {
                "position": asdict(position),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": _rng_state(),
                "data": data_state,
            },
            staging / TRAIN_STATE,
        )
        if add_files is not None:
            add_files(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    with atomic_path(folder / LATEST) as tmp:
        tmp.write_text(final.name + "\n", encoding="utf-8")
    for old in sorted(folder.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where :func:`save_checkpoint` puts the checkpoint of ``step``."""
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def resolve_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint ``RUN/checkpoints/latest`` names (or ``run_dir`` itself when it is a checkpoint)."""
    run_dir = Path(run_dir)
    if (run_dir / TRAIN_STATE).is_file():
        return run_dir
    folder = run_dir / "checkpoints"
    if not (folder / LATEST).is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected checkpoints/{LATEST})")
    latest = folder / (folder / LATEST).read_text(encoding="utf-8").strip()
    if not (latest / WEIGHTS).is_file() or not (latest / TRAIN_STATE).is_file():
        raise FileNotFoundError(f"{folder / LATEST} points to {latest}, which is not a whole checkpoint")
    return latest


def load_train_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainPosition, dict[str, Any] | None]:
    """Restore optimizer/scheduler/scaler/RNG from a checkpoint; return where training stood and the data
    stream's saved position (``None`` when there was none)."""
    checkpoint = resolve_checkpoint(path)
    state = torch.load(checkpoint / TRAIN_STATE, map_location="cpu", weights_only=False)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    return TrainPosition(**state["position"]), state["data"]
