"""Multi-process facts and collectives: the one tested place for rank / world-size logic.

Runtime facts (rank, world size, device) live in :class:`DistInfo`, built from torchrun's environment at call time
and never written into a config. Losses ask :func:`get_rank` / :func:`get_world_size` when they run, so the same
loss object works in a single process and under ``torchrun``.

Gradient convention (the one open_clip and DDP share): every rank computes a loss over the features gathered
from all ranks; :func:`gather_with_grad` routes to each rank the sum over ranks of the gradient w.r.t. its slice,
and DDP then averages parameter gradients over ranks. Together these give the gradient of the single-process
loss over the concatenated batch.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "barrier",
    "build_on_main_rank",
    "cleanup",
    "gather_no_grad",
    "gather_with_grad",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "main_rank_first",
    "rank_offset_labels",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a run.

    Attributes:
        rank: global rank, 0 … world_size - 1.
        local_rank: rank on this machine; picks the GPU.
        world_size: number of processes in the run.
        device: where this process keeps its model and batches.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and evaluates."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device_type: str | None = None) -> DistInfo:
        """Read torchrun's ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` now; unset means a single process.

        Args:
            device_type: ``"cpu"``, ``"cuda"``, …; default ``"cuda"`` when a GPU is visible, else ``"cpu"``.
                An accelerator device gets index ``LOCAL_RANK`` (one process per GPU).
        """
        rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world_size})")
        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device("cpu") if device_type == "cpu" else torch.device(device_type, local_rank)
        return cls(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun set up; a no-op returning a single-process ``DistInfo`` without torchrun.

    Args:
        backend: ``"nccl"`` (GPU processes) or ``"gloo"`` (CPU processes); default nccl when CUDA is available.
            The device follows the backend: nccl → ``cuda:LOCAL_RANK``, gloo → CPU.

    Returns:
        This process's ``DistInfo``. Calling again after the group exists returns the same facts.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    info = DistInfo.from_env(device_type="cuda" if backend == "nccl" else "cpu")
    if not info.is_distributed:
        return info
    if info.device.type == "cuda":
        # Before the group exists, so NCCL binds each process to its own GPU rather than all to GPU 0.
        torch.cuda.set_device(info.device)
    if not dist.is_initialized():
        # MASTER_ADDR / MASTER_PORT come from the environment (env:// rendezvous, as torchrun sets them).
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def cleanup() -> None:
    """Leave the process group (if any), so the process exits without NCCL / gloo teardown warnings."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if not info.is_distributed:
        return
    if info.device.type == "cuda":
        dist.barrier(device_ids=[info.device.index])  # NCCL: name the GPU, or it guesses one
    else:
        dist.barrier()


@contextmanager
def main_rank_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first (filling on-disk caches), then the other ranks (which find them filled)."""
    if not info.is_main:
        barrier(info)
    yield
    if info.is_main:
        barrier(info)


def build_on_main_rank(build: Callable[[], T], info: DistInfo) -> T:
    """``build()`` on rank 0 only, its (picklable) result sent to every other rank.

    For things every rank must share exactly and whose construction is not promised to be deterministic
    across processes (a BPE vocabulary breaks ties by hash order), or costs each rank a pass over the data.
    """
    if not info.is_distributed:
        return build()
    payload: list[Any] = [build() if info.is_main else None]
    dist.broadcast_object_list(payload, src=0)
    return payload[0]


def get_rank() -> int:
    """This process's rank in the initialised group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Processes in the initialised group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the summed gradient of its own slice.

    Written out (rather than ``torch.distributed.nn.functional.all_gather``, deprecated in recent PyTorch) with
    the two collectives every backend has: ``all_gather`` forward, ``all_reduce`` + slice backward.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)  # (W * B, ...)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> torch.Tensor:
        # Every rank's loss may depend on every slice: sum the gradients over ranks, keep our rows.
        # Cloned because all_reduce works in place and autograd may hold grad_output elsewhere.
        grad = grad_output.clone(memory_format=torch.contiguous_format)  # (W * B, ...)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)  # (B, ...)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, differentiable w.r.t. every slice.

    Args:
        tensor: ``(B, ...)``; B must be the same on every rank (use ``drop_last=True``).

    Returns:
        ``(W * B, ...)`` with rank r's rows at ``r * B : (r + 1) * B``; ``tensor`` itself in a single process.
    """
    if get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather_with_grad`, but only this rank's slice carries gradient (open_clip's default path).

    The other ranks' rows are constants here, so each rank's features receive only the gradient of its own
    loss: for a global loss that is exactly ``d loss / d local features`` (and, after DDP averages, parameter
    gradients ``1 / world_size`` of the single-process ones); for a local loss it drops the terms in which other
    ranks' rows use ours, an approximation (open_clip keeps the live slice only for the global loss; keeping it
    for the local loss too adds the exact gradient of our rows against our own columns).

    Args:
        tensor: ``(B, ...)``, same B on every rank.

    Returns:
        ``(W * B, ...)``; rows ``rank * B : (rank + 1) * B`` are ``tensor`` itself, with its graph.
    """
    world_size = get_world_size()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    with torch.no_grad():
        dist.all_gather(parts, tensor.contiguous())
    parts[get_rank()] = tensor
    return torch.cat(parts)  # (W * B, ...)


def rank_offset_labels(local_batch: int, rank: int, device: torch.device | None = None) -> torch.Tensor:
    """Column of each local row's positive among the gathered ``W * B`` columns: ``rank * B + i``. ``(B,)`` long."""
    return torch.arange(local_batch, device=device, dtype=torch.long) + rank * local_batch
