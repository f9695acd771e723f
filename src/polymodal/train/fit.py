"""Epochs around :func:`train_one_epoch`: deterministic reshuffling, resume mid-epoch, per-epoch evaluation."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from polymodal.train.checkpoint import TrainPosition
from polymodal.train.loop import LoopSettings, is_finished, steps_per_epoch, train_one_epoch
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
) -> TrainPosition:
    """Train until ``epochs`` (or ``settings.max_steps``) starting from ``position``.

    The loader's sampler and dataset must offer ``set_epoch``; the sampler's ``set_epoch(epoch, start)`` lets a
    resumed run skip the samples the interrupted run had already consumed in that epoch.
    """
    position = position or TrainPosition()
    sampler, dataset = loader.sampler, loader.dataset
    batch_size = loader.batch_size or 1
    while not is_finished(position, epochs, settings.max_steps):
        sampler.set_epoch(position.epoch, start=position.batch_in_epoch * batch_size)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(position.epoch)
        position = train_one_epoch(
            model, loader, loss_fn, optimizer, scheduler, position, settings, scaler, log, save_checkpoint
        )
        if position.batch_in_epoch // settings.accum_steps < steps_per_epoch(loader, settings.accum_steps):
            break  # stopped by max_steps mid-epoch
        if evaluate is not None:
            metrics = evaluate(model)
            if log is not None:
                log.write({"step": position.step, "epoch": position.epoch, **{f"val/{k}": v for k, v in metrics.items()}})
        position = TrainPosition(step=position.step, epoch=position.epoch + 1, batch_in_epoch=0)
        if save_checkpoint is not None:
            save_checkpoint(position)
    return position
