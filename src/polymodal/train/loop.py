"""The training loop, top to bottom: AMP, gradient accumulation, clipping, logging and checkpoints in view.

The loop receives a built model, data loader and loss (open_clip's ``train_one_epoch(model, data, loss, ...)``);
building those from a config happens once, at the edge (``cli/``).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from polymodal.models.dual_encoder import MAX_LOGIT_SCALE
from polymodal.precision import autocast_context
from polymodal.train.checkpoint import TrainPosition
from polymodal.train.metrics_log import MetricsLog


@dataclass
class LoopSettings:
    """How to run the loop (runtime facts only; the model and data come in built).

    Attributes:
        device: where the batches go.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast (``resolve_precision`` turns ``"auto"`` into one).
        accum_steps: micro-batches per optimizer step (plain accumulation: each micro-batch is its own
            contrastive batch, so the negatives are those of the micro-batch, not of the accumulated batch).
        grad_clip: max global gradient norm, or None.
        log_every: optimizer steps between log records.
        checkpoint_every: optimizer steps between checkpoints (0: only when ``fit`` ends).
        max_steps: stop after this many optimizer steps in total (None: run all epochs).
        progress: show a progress bar.
    """

    device: torch.device
    precision: str = "fp32"
    accum_steps: int = 1
    grad_clip: float | None = 1.0
    log_every: int = 10
    checkpoint_every: int = 0
    max_steps: int | None = None
    progress: bool = True


def move_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: TrainPosition,
    settings: LoopSettings,
    scaler: torch.amp.GradScaler | None = None,
    log: MetricsLog | None = None,
    save_checkpoint: Callable[[TrainPosition], Any] | None = None,
) -> TrainPosition:
    """Run the rest of one epoch from ``position`` (which the caller's sampler already skipped to).

    Returns the updated position. Each optimizer step: forward under autocast, loss in fp32, backward,
    every ``accum_steps`` micro-batches unscale → clip → step → schedule → clamp temperature.
    """
    model.train()
    device, accum = settings.device, settings.accum_steps
    steps_in_epoch = steps_per_epoch(loader, accum)
    bar = tqdm(
        total=steps_in_epoch,
        initial=position.batch_in_epoch // accum,
        desc=f"epoch {position.epoch}",
        disable=not settings.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    optimizer.zero_grad(set_to_none=True)
    window_loss, window_samples, window_steps, window_data_time = 0.0, 0, 0, 0.0
    window_start = tick = time.perf_counter()
    for micro_index, batch in enumerate(loader):
        if position.batch_in_epoch // accum >= steps_in_epoch:
            break  # a trailing partial accumulation group would step with a smaller batch: drop it
        window_data_time += time.perf_counter() - tick
        batch = move_to(batch, device)
        with autocast_context(settings.precision, device):
            output = model(**batch)
        # Contrastive logits need full precision: a bf16 softmax over the batch loses the small differences.
        loss = loss_fn(**{key: value.float() for key, value in output.items()})
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {position.step} (epoch {position.epoch})")
        (scaler.scale(loss / accum) if scaler is not None else loss / accum).backward()
        position.batch_in_epoch += 1
        window_loss += loss.item() / accum
        window_samples += next(iter(batch.values())).shape[0]
        if position.batch_in_epoch % accum != 0:
            tick = time.perf_counter()
            continue

        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip) if settings.grad_clip else None
        )
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        position.step += 1
        window_steps += 1
        bar.update(1)

        if position.step % settings.log_every == 0 or position.batch_in_epoch // accum == steps_in_epoch:
            elapsed = time.perf_counter() - window_start
            record = {
                "step": position.step,
                "epoch": position.epoch,
                "loss": window_loss / window_steps,
                "lr": optimizer.param_groups[-1]["lr"],
                "logit_scale": float(model.logit_scale.detach().exp()),
                "samples_per_s": window_samples / max(elapsed, 1e-9),
                "data_time_s": window_data_time / window_steps,
                "step_time_s": elapsed / window_steps,
            }
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_s']:.0f}")
            if log is not None:
                log.write(record)
            window_loss, window_samples, window_steps, window_data_time = 0.0, 0, 0, 0.0
            window_start = time.perf_counter()
        if save_checkpoint is not None and settings.checkpoint_every and position.step % settings.checkpoint_every == 0:
            save_checkpoint(position)
        if settings.max_steps is not None and position.step >= settings.max_steps:
            break
        tick = time.perf_counter()
    bar.close()
    return position


def steps_per_epoch(loader: torch.utils.data.DataLoader, accum_steps: int) -> int:
    """Optimizer steps in a full epoch; counted from the dataset, not ``len(loader)``, because a resumed
    epoch's loader skips the batches already seen. Partial batches are dropped (``drop_last=True``)."""
    batches = len(loader.dataset) // (loader.batch_size or 1)
    steps = batches // accum_steps
    if steps == 0:
        raise ValueError(
            f"{len(loader.dataset)} samples make {batches} full batches of {loader.batch_size}, fewer than "
            f"accum_steps={accum_steps}: lower batch_size or accum_steps"
        )
    return steps


def total_steps(loader: torch.utils.data.DataLoader, accum_steps: int, epochs: int, max_steps: int | None) -> int:
    total = steps_per_epoch(loader, accum_steps) * epochs
    return min(total, max_steps) if max_steps else total


def is_finished(position: TrainPosition, epochs: int, max_steps: int | None) -> bool:
    return position.epoch >= epochs or (max_steps is not None and position.step >= max_steps)


