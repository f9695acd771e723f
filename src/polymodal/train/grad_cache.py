"""Contrastive-aware gradient accumulation (GradCache, Gao et al. 2021): a big contrastive batch in little memory.

Plain accumulation runs each micro-batch as its own contrastive batch: its negatives are the micro-batch's, so
the gradients differ from those of the large batch. GradCache keeps the large batch's negatives:

1. embed every micro-batch without a graph and cache the outputs (``(N, D)`` features: small);
2. compute the full-batch loss on the cached outputs and backpropagate to them only → ``d loss / d output``;
3. re-run each micro-batch with a graph and backpropagate ``Σ output · cached gradient``, whose gradient w.r.t.
   the parameters is, by the chain rule, that micro-batch's share of ``d loss / d parameters``.

Peak activation memory is that of one micro-batch; the cost is a second forward pass. The result matches one
big-batch backward exactly when a forward is a pure function of its micro-batch: dropout is replayed with the
RNG state of pass 1 (as ``torch.utils.checkpoint`` does), but BatchNorm in train mode normalises by micro-batch
statistics and updates its running statistics in both passes, so models with BatchNorm only approximate it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import get_device_states, set_device_states

from polymodal.train.outputs import full_precision, loss_terms

__all__ = ["grad_cache_step", "split_batch"]


def split_batch(batch: dict[str, torch.Tensor], micro_batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Cut every ``(N, ...)`` tensor of ``batch`` into consecutive chunks of ``micro_batch_size`` rows (the last
    may be shorter), keeping the batch order."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    sizes = {key: value.shape[0] for key, value in batch.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"batch tensors must share their first dimension, got {sizes}")
    chunks = {key: value.split(micro_batch_size) for key, value in batch.items()}
    return [dict(zip(chunks, parts)) for parts in zip(*chunks.values())]


class _RngState:
    """CPU and accelerator RNG states at one moment, to replay a forward with the same dropout masks."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.cpu_state = torch.get_rng_state()
        accelerators = [t.device.type for t in tensors if t.device.type not in ("cpu", "meta")]
        self.device_type = accelerators[0] if accelerators else None
        self.device_ids, self.device_states = get_device_states(*tensors)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body from the saved states; the surrounding RNG streams are left as they were."""
        with torch.random.fork_rng(devices=self.device_ids, device_type=self.device_type or "cuda"):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.device_ids, self.device_states, device_type=self.device_type)
            yield


def grad_cache_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    loss_fn: Callable[..., torch.Tensor | dict[str, torch.Tensor]],
    micro_batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, torch.Tensor]:
    """Forward and backward one contrastive batch in micro-batches, accumulating the big-batch gradients.

    ``model(**micro_batch)`` must return the loss's keywords (``image_features (b, D)``, ``text_features
    (b, D)``, ``logit_scale`` and optionally ``logit_bias`` as 0-d tensors). Outputs with a batch dimension are
    concatenated over micro-batches; 0-d outputs do not depend on the input and are taken once.

    Under DDP pass the ``DistributedDataParallel`` model: the gradient all-reduce runs once, in the last
    micro-batch's backward (the others run under ``no_sync``), and a gathering loss (``ClipLoss``) makes the
    cached gradients those of the global batch.

    Args:
        model: the (possibly DDP-wrapped) model, in train mode; batches must already be on its device.
        batch: the model's forward keywords, each ``(N, ...)``.
        loss_fn: called as ``loss_fn(**outputs)`` on fp32 outputs of the whole batch.
        micro_batch_size: rows per forward pass with a graph.
        autocast: factory of the mixed-precision context for the model's forward passes.
        scaler: fp16 loss scaler; the backward passes then leave scaled gradients, as ``scaler.scale(loss)
            .backward()`` would.

    Returns:
        The detached full-batch loss terms (``{"loss": total, ...}``). ``.grad`` of every trainable parameter has been increased by
        ``d loss / d parameter`` (times the scaler's scale), as one ``loss.backward()`` over the batch would.
    """
    micro_batches = split_batch(batch, micro_batch_size)

    # 1. Embed without a graph, remembering each micro-batch's RNG state so pass 3 draws the same dropout masks.
    rng_states: list[_RngState] = []
    cached: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for micro in micro_batches:
            rng_states.append(_RngState(list(micro.values())))
            with autocast():
                output = model(**micro)
            # detach: a parameter returned as-is (logit_bias) still requires grad under no_grad.
            cached.append({key: value.detach() for key, value in full_precision(output).items()})

    # 2. Full-batch loss on leaves standing in for the outputs; backward stops at them.
    leaves = {
        key: (value if value.ndim == 0 else torch.cat([c[key] for c in cached])).requires_grad_()
        for key, value in cached[0].items()
    }  # features (N, D), scalars 0-d
    loss_parts = loss_terms(loss_fn(**leaves))
    loss = loss_parts["loss"]
    output_grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)))
    grad_slices = {
        key: grad.split(micro_batch_size)
        for key, grad in output_grads.items()
        if grad is not None and leaves[key].ndim > 0
    }  # per micro-batch: (b, D)

    # 3. Replay each micro-batch with a graph; backward of <output, d loss / d output> accumulates parameter grads.
    last = len(micro_batches) - 1
    for index, (micro, rng_state) in enumerate(zip(micro_batches, rng_states)):
        syncing = index == last or not isinstance(model, DistributedDataParallel)
        with contextlib.nullcontext() if syncing else model.no_sync():
            with rng_state.replay(), autocast():
                output = model(**micro)
            terms = [(output[key].float() * grads[index]).sum() for key, grads in grad_slices.items()]
            if index == last:
                # Scalars (logit_scale, logit_bias) are shared by all micro-batches: their gradient goes in once,
                # in the pass DDP synchronises, so every trainable parameter takes part in that all-reduce.
                terms += [
                    output[key].float() * grad
                    for key, grad in output_grads.items()
                    if grad is not None and leaves[key].ndim == 0
                ]
            surrogate = torch.stack(terms).sum()
            (scaler.scale(surrogate) if scaler is not None else surrogate).backward()
    return {name: value.detach() for name, value in loss_parts.items()}
