"""The training loop, top to bottom: AMP, gradient accumulation, clipping, logging and checkpoints in view.

The loop receives a built model, data loader and loss (open_clip's ``train_one_epoch(model, data, loss, ...)``);
building those from a config happens once, at the edge (``recipes/``). It knows no model family: the model's
output is the loss's keywords, the loss returns a scalar or named terms with a ``"loss"`` total (each term is
logged), and what differs per family runs through optional model hooks (``models/family.py``):
``after_optimizer_step()`` after every update and ``log_scalars()`` in every log record.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from polymodal.distributed import get_world_size
from polymodal.precision import autocast_context
from polymodal.train.checkpoint import TrainPosition
from polymodal.train.grad_cache import grad_cache_step
from polymodal.train.outputs import batch_size_of, full_precision, loss_terms
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
        grad_cache_micro_batch: rows per forward pass with a graph under GradCache (``train/grad_cache.py``):
            each loader batch stays one contrastive batch (its negatives are the whole batch, gathered over
            ranks), computed in micro-batches to bound activation memory. None: one forward per batch.
    """

    device: torch.device
    precision: str = "fp32"
    accum_steps: int = 1
    grad_clip: float | None = 1.0
    log_every: int = 10
    checkpoint_every: int = 0
    max_steps: int | None = None
    progress: bool = True
    grad_cache_micro_batch: int | None = None

    def __post_init__(self) -> None:
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")
        if self.grad_cache_micro_batch is not None and self.accum_steps != 1:
            raise ValueError(
                "grad_cache_micro_batch and accum_steps > 1 are two ways to split a batch: GradCache keeps the "
                "whole batch's negatives, plain accumulation does not. Choose one (set accum_steps: 1)."
            )


def move_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model itself: DDP keeps its attributes (``config``, hooks) on ``.module``, ``torch.compile`` on
    ``._orig_mod``."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: TrainPosition,
    settings: LoopSettings,
    batches: int,
    scaler: torch.amp.GradScaler | None = None,
    log: MetricsLog | None = None,
    save_checkpoint: Callable[[TrainPosition], Any] | None = None,
) -> TrainPosition:
    """Run the rest of one epoch from ``position`` (which the caller already pointed the loader at).

    Each optimizer step: forward under autocast, loss in fp32, backward (or one GradCache step), every
    ``accum_steps`` micro-batches unscale → clip → step → schedule → the model's ``after_optimizer_step`` hook
    (a dual encoder clamps its temperature there). Under DDP pass the
    ``DistributedDataParallel`` model: gradients are all-reduced once per optimizer step. Throughput is logged as
    open_clip defines it: ``samples_per_s`` = global samples (all ranks) / wall time, data-wait time apart.

    Args:
        batches: micro-batches left in this epoch on this rank (``data_position.seek``); a trailing group of
            fewer than ``accum_steps`` would step with a smaller batch, so it is dropped.

    Returns:
        The updated position (``samples_in_epoch`` counts over all ranks).
    """
    model.train()
    module = unwrap_model(model)
    device, accum, world_size = settings.device, settings.accum_steps, get_world_size()
    steps_left = batches // accum
    bar = tqdm(total=steps_left, desc=f"epoch {position.epoch}", disable=not settings.progress, file=sys.stderr,
               dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    steps_taken = 0
    window_terms: dict[str, float] = {}
    window_samples, window_steps, window_data_time = 0, 0, 0.0
    window_start = tick = time.perf_counter()
    for micro_index, batch in enumerate(loader):
        if micro_index >= steps_left * accum:
            break
        window_data_time += time.perf_counter() - tick
        batch = move_to(batch, device)
        last_micro = (micro_index + 1) % accum == 0
        if settings.grad_cache_micro_batch:
            # One contrastive batch, embedded in micro-batches; the big-batch gradients accumulate in .grad.
            autocast = partial(autocast_context, settings.precision, device)
            terms = grad_cache_step(model, batch, loss_fn, settings.grad_cache_micro_batch, autocast, scaler)
        else:
            # Under DDP, micro-batches before the last of a group keep their gradients local (no all-reduce).
            syncing = last_micro or not isinstance(model, DistributedDataParallel)
            with contextlib.nullcontext() if syncing else model.no_sync():
                with autocast_context(settings.precision, device):
                    output = model(**batch)
                # Contrastive logits need full precision: a bf16 softmax over the batch loses the small differences.
                terms = loss_terms(loss_fn(**full_precision(output)))
                loss = terms["loss"]
                (scaler.scale(loss / accum) if scaler is not None else loss / accum).backward()
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"loss is {terms['loss'].item()} at step {position.step} (epoch {position.epoch})")
        samples = batch_size_of(batch) * world_size  # every rank ran a batch of this size
        position.samples_in_epoch += samples
        for name, value in terms.items():
            window_terms[name] = window_terms.get(name, 0.0) + float(value.detach()) / accum
        window_samples += samples
        if not last_micro:
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
        if hasattr(module, "after_optimizer_step"):
            module.after_optimizer_step()
        position.step += 1
        steps_taken += 1
        window_steps += 1
        bar.update(1)

        if position.step % settings.log_every == 0 or steps_taken == steps_left:
            elapsed = time.perf_counter() - window_start
            record = {
                "step": position.step,
                "epoch": position.epoch,
                **{name: total / window_steps for name, total in window_terms.items()},
                "lr": optimizer.param_groups[-1]["lr"],
                **(module.log_scalars() if hasattr(module, "log_scalars") else {}),
                "samples_per_s": window_samples / max(elapsed, 1e-9),
                "samples_per_s_per_rank": window_samples / world_size / max(elapsed, 1e-9),
                "data_time_s": window_data_time / window_steps,
                "step_time_s": elapsed / window_steps,
            }
            if grad_norm is not None:
                # Under FSDP the norm of sharded gradients is a replicated DTensor: take its (equal) local value.
                record["grad_norm"] = float(grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm)
            bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_s']:.0f}")
            if log is not None:
                log.write(record)
            window_terms = {}
            window_samples, window_steps, window_data_time = 0, 0, 0.0
            window_start = time.perf_counter()
        if save_checkpoint is not None and settings.checkpoint_every and position.step % settings.checkpoint_every == 0:
            save_checkpoint(position)
        if settings.max_steps is not None and position.step >= settings.max_steps:
            break
        tick = time.perf_counter()
    bar.close()
    return position


def total_steps(steps_per_epoch: int, epochs: int, max_steps: int | None) -> int:
    total = steps_per_epoch * epochs
    return min(total, max_steps) if max_steps else total


def is_finished(position: TrainPosition, epochs: int, max_steps: int | None) -> bool:
    return position.epoch >= epochs or (max_steps is not None and position.step >= max_steps)
