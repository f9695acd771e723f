"""Training checkpoints: one directory per save, written whole or not at all, verified before it is trusted.

A checkpoint is a model directory (``model_io.py``: ``model.safetensors``, ``config.json``,
``tokenizer.json``, ``preprocess.json``) plus ``train_state.pt`` (optimizer, scheduler, scaler, step/epoch
position, RNG states, and a data stream's own resume position) and ``manifest.json`` (every file's size and
SHA-256, written last), in ``RUN/checkpoints/step_000500/``. This module owns only the training state; the
model's files are written by :func:`polymodal.model_io.save_model`.

A save goes: files into a hidden staging folder (each synced) → manifest → swapped into place
(:func:`polymodal.io.atomic_directory`) → ``latest`` → prune. A crash at any point leaves every earlier checkpoint intact; :func:`find_resume_checkpoint`
takes the newest one whose manifest verifies. An FSDP run adds ``sharded/`` (model and optimizer shards, ``train/fsdp.py``)
and keeps its optimizer state there only.
``RUN/checkpoints/latest`` names the newest complete one. A save writes into a hidden temporary directory and
renames it into place, then rewrites ``latest``: a crash at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.io import atomic_directory, atomic_path, clean_leftovers, crash_point, newest_verified, write_manifest
from polymodal.model_io import LATEST, save_model

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
    with atomic_directory(final, "checkpoint") as staging:  # a second save of the same step replaces it whole
        save_model(model, staging, tokenizer, model_state)
        crash_point("checkpoint.model")
        with atomic_path(staging / TRAIN_STATE) as tmp:
            torch.save(
                {
                    "position": asdict(position),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": _rng_state(),
                    "data": data_state,
                },
                tmp,
            )
        crash_point("checkpoint.train_state")
        if add_files is not None:
            add_files(staging)
        write_manifest(staging, {"step": position.step})
        crash_point("checkpoint.manifest")
    with atomic_path(folder / LATEST) as tmp:  # only now: `latest` never names an incomplete checkpoint
        tmp.write_text(final.name + "\n", encoding="utf-8")
    crash_point("checkpoint.latest")
    # The newest keep_last by step stay, the one just written among them (it is the newest): pruning never
    # removes the last verified checkpoint.
    for old in sorted(folder.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    crash_point("checkpoint.pruned")
    return final


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where :func:`save_checkpoint` puts the checkpoint of ``step``."""
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


@dataclass
class ResumeChoice:
    """What :func:`find_resume_checkpoint` decided.

    Attributes:
        checkpoint: the newest checkpoint that verifies; None when the run has saved none yet.
        skipped: newer checkpoints that did not verify, each with the reason (set aside as ``rejected-step_N``,
            never deleted).
    """

    checkpoint: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


class NoValidCheckpointError(ValueError):
    """A run directory holds checkpoints, but none of them verifies."""


def find_resume_checkpoint(run_dir: str | Path) -> ResumeChoice:
    """The checkpoint ``--resume`` continues from: the newest ``step_*`` whose manifest verifies (every file
    present, with its recorded size and checksum). ``latest`` is not trusted for this: it may name a folder a
    crash removed.

    Newer checkpoints that fail are renamed ``rejected-step_N`` (kept for inspection, out of pruning's way);
    leftovers of a crashed save are removed.

    Raises:
        NoValidCheckpointError: there are checkpoints, and none verifies (nothing is changed then).
    """
    folder = Path(run_dir) / "checkpoints"
    clean_leftovers(folder)
    candidates = sorted(folder.glob("step_*"), reverse=True) if folder.is_dir() else []
    if not candidates:
        return ResumeChoice(None)
    chosen, skipped = newest_verified(candidates)
    if chosen is None:
        reasons = "; ".join(f"{path.name}: {reason}" for path, reason in skipped)
        raise NoValidCheckpointError(f"--resume: no checkpoint in {folder} verifies ({reasons}); nothing was "
                                     "changed. Start a new run in another `out`")
    for path, _ in skipped:
        path.rename(path.with_name(f"rejected-{path.name}"))
    if not (folder / LATEST).is_file() or (folder / LATEST).read_text(encoding="utf-8").strip() != chosen.name:
        with atomic_path(folder / LATEST) as tmp:
            tmp.write_text(chosen.name + "\n", encoding="utf-8")
    return ResumeChoice(chosen, skipped)


def load_train_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainPosition, dict[str, Any] | None]:
    """Restore optimizer/scheduler/scaler/RNG from a checkpoint; return where training stood and the data
    stream's saved position (``None`` when there was none)."""
    checkpoint = Path(path)
    state = torch.load(checkpoint / TRAIN_STATE, map_location="cpu", weights_only=False)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    return TrainPosition(**state["position"]), state["data"]
