"""Checkpoints: one directory per save, written whole or not at all.

Layout of ``RUN/checkpoints/step_000500/``: ``model.safetensors`` (weights), ``config.json`` (model config),
``tokenizer.json``, ``train_state.pt`` (optimizer, scheduler, scaler, step/epoch position, RNG states, and a
data stream's own resume position). An FSDP run adds ``sharded/`` (model and optimizer shards, ``train/fsdp.py``)
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
from safetensors.torch import load_file, save_file
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.io import atomic_path, read_json, write_json

WEIGHTS, CONFIG, TOKENIZER, TRAIN_STATE, LATEST = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "train_state.pt",
    "latest",
)


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


def save_weights(model: nn.Module, directory: Path, model_state: dict[str, torch.Tensor] | None = None) -> None:
    """Weights + config (+ tokenizer) only: enough to load the model for inference.

    ``model_state``: the weights to write instead of ``model.state_dict()`` (an FSDP model's gathered full state).
    """
    source = model.state_dict() if model_state is None else model_state
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in source.items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(directory / CONFIG, model.config)


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    tokenizer: TextTokenizer,
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
        save_weights(model, staging, model_state)
        tokenizer.save(staging / TOKENIZER)
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


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, a run directory (its exported ``model/`` first, else the latest
    checkpoint), or a run's ``checkpoints`` folder."""
    path = Path(path)
    for candidate in (path, path / "model", path / "checkpoints"):
        if (candidate / WEIGHTS).is_file():
            return candidate
        if (candidate / LATEST).is_file():
            latest = candidate / (candidate / LATEST).read_text(encoding="utf-8").strip()
            if (latest / WEIGHTS).is_file():
                return latest
            raise FileNotFoundError(f"{candidate / LATEST} points to {latest}, which has no {WEIGHTS}")
    raise FileNotFoundError(f"no checkpoint at {path} (expected {WEIGHTS} or checkpoints/{LATEST})")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` (strict)."""
    from polymodal.factory import build_model

    checkpoint = resolve_checkpoint(path)
    config = read_json(checkpoint / CONFIG, "model config")
    # Pretrained towers are rebuilt from their packages' files first, then overwritten by the saved weights.
    model = build_model(config, for_loading=True)
    state = load_file(str(checkpoint / WEIGHTS), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint / WEIGHTS} does not match {checkpoint / CONFIG}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device)


def load_tokenizer(path: str | Path) -> TextTokenizer:
    checkpoint = resolve_checkpoint(path)
    config = read_json(checkpoint / CONFIG, "model config")
    return TextTokenizer.from_file(checkpoint / TOKENIZER, int(config["text"]["context_length"]))


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
