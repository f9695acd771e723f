"""FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimizer state sharded over ranks.

The standard FSDP2 recipe: each unit the model names through its ``fsdp_units()`` hook (a dual encoder: every
transformer block of its towers) is sharded on its own (its parameters are all-gathered just before it runs and
freed after), then the whole model is the root unit for what remains (embeddings, norms, heads). A model without
the hook is one unit. Works on CPU with gloo as well as on CUDA with NCCL.

The scalar temperature ``logit_scale`` (and SigLIP's ``logit_bias``) stays out of the shards: ``fully_shard``
refuses 0-d parameters, and changing their shape would break every saved checkpoint. They stay replicated, and a
gradient hook averages their gradients over ranks, as DDP would.

Checkpoints (``save_fsdp_checkpoint``): every rank writes its shards of the model and optimizer with
``torch.distributed.checkpoint`` into ``step_N/sharded/``; rank 0 also writes the gathered full weights as the usual
``model.safetensors`` (so ``polymodal eval``/``embed`` and a non-FSDP resume read it like any checkpoint) next to
``config.json``, ``tokenizer.json`` and ``train_state.pt``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

from polymodal.data.tokenizers import TextTokenizer
from polymodal.train.checkpoint import TrainPosition, checkpoint_path, save_checkpoint

__all__ = ["SHARDED", "load_sharded_state", "save_fsdp_checkpoint", "shard_model"]

SHARDED = "sharded"  # the DCP folder inside a checkpoint directory


def _replicated_params(model: nn.Module) -> set[nn.Parameter]:
    """The 0-d parameters ``fully_shard`` cannot shard (the temperature and SigLIP bias)."""
    return {param for param in model.parameters() if param.dim() == 0}


def _average_grad_over_ranks(param: torch.Tensor) -> None:
    # Runs after each backward adds into .grad; averaging a sum of already-averaged and new local terms
    # is still the average of the sums (the averaged part is equal on every rank), so accumulation is exact.
    assert param.grad is not None
    dist.all_reduce(param.grad, op=dist.ReduceOp.AVG)


def shard_model(model: nn.Module) -> nn.Module:
    """Apply ``fully_shard`` to every unit of ``model.fsdp_units()``, then to the whole model; returns ``model``
    (sharded in place: its parameters become ``DTensor`` shards, its forward gathers them).

    Needs an initialised process group; every rank must call it with identically initialised weights.
    """
    if not dist.is_initialized():
        raise RuntimeError("train.fsdp needs a process group: start the run with torchrun (or --nproc N)")
    for unit in model.fsdp_units() if hasattr(model, "fsdp_units") else []:
        fully_shard(unit)
    replicated = _replicated_params(model)
    for param in replicated:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(_average_grad_over_ranks)
    fully_shard(model, ignored_params=replicated)
    # FSDP gathers parameters around ``forward`` only; a model names the other methods that run on them.
    for method in getattr(model, "fsdp_forward_methods", ()):
        register_fsdp_forward_method(model, method)
    return model


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights gathered on CPU: filled on rank 0, empty elsewhere. Collective: call on every rank."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_fsdp_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    tokenizer: TextTokenizer | None,
    position: TrainPosition,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    data_state: dict[str, Any] | None = None,
) -> Path:
    """Save a checkpoint of a sharded model from every rank (collective); rank 0 writes all but the shards.

    The shards go first into a hidden folder that every rank can name, then rank 0 moves them into the staging
    directory of :func:`save_checkpoint`, which renames the whole checkpoint into place at once as usual.
    """
    final = checkpoint_path(run_dir, position.step)
    shards = final.parent / f".{SHARDED}-{final.name}"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(shards, ignore_errors=True)  # a previous attempt that crashed
    dist.barrier()
    weights = full_model_state(model)
    dcp.save(
        {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)},
        checkpoint_id=str(shards),
    )
    if rank == 0:
        # The optimizer state lives in the shards; train_state.pt keeps the scheduler, scaler, position and RNG.
        save_checkpoint(
            run_dir, model, tokenizer, position, None, scheduler, scaler, data_state=data_state,
            model_state=weights, add_files=lambda staging: shutil.move(str(shards), str(staging / SHARDED)),
        )
    dist.barrier()  # no rank goes on (or reads the checkpoint) before it exists
    return final


def load_sharded_state(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the model and optimizer shards of an FSDP checkpoint into the sharded ``model`` and its ``optimizer``.

    DCP reshards on load, so the run may resume with another number of processes.
    """
    folder = checkpoint / SHARDED
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{checkpoint} has no {SHARDED}/ folder: it was not saved by an FSDP run (train.fsdp: true). "
            "Resume it with train.fsdp: false, or start the FSDP run afresh"
        )
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
