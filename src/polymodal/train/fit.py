"""Epochs around :func:`train_one_epoch`: deterministic reshuffling, resume mid-epoch, per-epoch evaluation."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from polymodal.train.checkpoint import TrainPosition
from polymodal.train.data_position import seek
from polymodal.train.loop import LoopSettings, is_finished, train_one_epoch, unwrap_model
from polymodal.train.metrics_log import MetricsLog


def fit(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: LoopSettings,
    epochs: int,
    position: TrainPosition | None = None,
    scaler: torch.amp.GradScaler | None = None,
    log: MetricsLog | None = None,
    save_checkpoint: Callable[[TrainPosition], Any] | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    data_state: dict[str, Any] | None = None,
) -> TrainPosition:
    """Train until ``epochs`` (or ``settings.max_steps``) starting from ``position``.

    Each epoch the loader is pointed at ``position`` (``data_position.seek``): a sampler reshuffles from
    ``(seed, epoch)`` and skips the samples already consumed; a stream starts its epoch or, mid-epoch, loads
    ``data_state``. Under DDP every rank calls this with the same arguments except ``log`` and
    ``save_checkpoint`` (rank 0 only); ``evaluate`` receives the unwrapped model on every rank.
    """
    position = position or TrainPosition()
    while not is_finished(position, epochs, settings.max_steps):
        batches = seek(loader, position, data_state)
        first_step = position.step
        position = train_one_epoch(
            model, loader, loss_fn, optimizer, scheduler, position, settings, batches,
            scaler=scaler, log=log, save_checkpoint=save_checkpoint,
        )
        if position.step - first_step < batches // settings.accum_steps:
            break  # stopped by max_steps mid-epoch
        if evaluate is not None:
            metrics = evaluate(unwrap_model(model))
            if log is not None:
                log.write({"step": position.step, "epoch": position.epoch, **{f"val/{k}": v for k, v in metrics.items()}})
        position = TrainPosition(step=position.step, epoch=position.epoch + 1, samples_in_epoch=0)
        if save_checkpoint is not None:
            save_checkpoint(position)
    return position
