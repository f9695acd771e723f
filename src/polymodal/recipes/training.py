"""``run_training``: a run config → data, tokenizer, model, loss, loader, evaluator → ``train/fit`` → checkpoints.

This is the one place a run is assembled (the CLI, notebooks and ``torchrun`` all call it). Which model, loss
and task a run has comes from the model config's ``family`` (``models/registry.py``); what data the task feeds
the model and how it is scored comes from ``recipes/tasks.py``; ``train/`` receives them built.

Under ``torchrun`` every rank runs :func:`run_training`: each trains on its share of every global batch
(``train.batch_size`` is per rank) in a ``DistributedDataParallel`` model (or, with ``train.fsdp``, a model sharded
with FSDP2), and rank 0 alone logs, evaluates and writes the run directory (under FSDP every rank takes part in
evaluating and checkpointing, whose gathers are collective, while rank 0 still writes all but the shards).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.distributed import DistInfo, barrier, build_on_main_rank, cleanup, init_distributed
from polymodal.factory import get_model_config, preset_where
from polymodal.models.family import LossOptions
from polymodal.interop.towers import build_model_with_towers, tower_tokenizer
from polymodal.models.registry import DEFAULT_FAMILY, family_of
from polymodal.model_io import load_model, load_model_config, load_tokenizer, resolve_model_dir
from polymodal.io import clean_leftovers, output_directory, write_bytes
from polymodal.precision import resolve_precision
from polymodal.recipes.config import RunConfig, run_config_to_dict
from polymodal.recipes.data import load_run_data, make_train_loader
from polymodal.recipes.tasks import TASKS, RunContext
from polymodal.runtime import resolve_device, seed_everything
from polymodal.train.checkpoint import (
    NoValidCheckpointError,
    TrainPosition,
    checkpoint_path,
    find_resume_checkpoint,
    load_train_state,
    save_checkpoint,
)
from polymodal.train.data_position import data_state, epoch_batches
from polymodal.train.fit import fit
from polymodal.train.fsdp import SHARDED, load_sharded_state, save_fsdp_checkpoint, shard_model
from polymodal.train.loop import LoopSettings, total_steps
from polymodal.train.metrics_log import MetricsLog
from polymodal.train.optim import create_optimizer
from polymodal.train.schedule import warmup_cosine

__all__ = ["TrainResult", "model_config_of", "pretrained_dir", "run_training"]

log = logging.getLogger("polymodal")


def pretrained_dir(config: RunConfig) -> Path | None:
    """The model (or run) directory the run starts from, when ``model`` names one rather than a preset:
    fine-tuning, e.g. self-critical training of a captioner trained with cross-entropy."""
    if isinstance(config.model, str) and Path(config.model).is_dir():
        return resolve_model_dir(config.model)
    return None


def model_config_of(config: RunConfig) -> tuple[dict[str, Any], str]:
    """The run's model config and how errors name it (the preset file, the starting model's ``config.json``, or
    the run config's ``model``)."""
    start = pretrained_dir(config)
    if start is not None:
        return load_model_config(start), str(start / "config.json")
    if isinstance(config.model, str):
        return get_model_config(config.model), preset_where(config.model)
    return copy.deepcopy(config.model), "run config model"


@dataclass
class TrainResult:
    """What a finished run leaves in memory (the checkpoint on disk holds the same model).

    Attributes:
        model: the trained model (unwrapped; on rank 0 of a run the whole model).
        tokenizer: its tokenizer (None for a model that reads no text).
        checkpoint: the final checkpoint directory (loadable with ``polymodal.load_model``).
        position: where training stopped (step, epoch, samples of that epoch).
        train_set / val_set: the data in memory (``train_set`` is None when the run streamed shards).
        dist: this process's place in the run (rank 0 wrote the checkpoint).
    """

    model: nn.Module
    tokenizer: TextTokenizer | None
    checkpoint: Path
    position: TrainPosition
    train_set: ImageTextSet | None
    val_set: ImageTextSet | None
    dist: DistInfo


def run_training(config: RunConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Build data, tokenizer, model, loss and optimizer from ``config``, train, and save checkpoints in ``out``.

    Args:
        config: from :func:`polymodal.load_run_config` (a file, a dict, or the defaults).
        resume: continue from ``out``'s latest checkpoint at the exact batch it stopped.
        progress: show progress bars (rank 0 only).

    Joins the process group when started by ``torchrun`` (gloo on CPU, NCCL on CUDA) and leaves it at the end.
    """
    device = resolve_device(config.train.device)
    owns_group = not dist.is_initialized()  # a caller that made the group keeps it
    info = init_distributed("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(config, resume, progress and info.is_main, info, info.device if info.is_distributed else device)
    finally:
        if owns_group:
            cleanup()


def _build_model(config: RunConfig, device: torch.device, resume_from: Path | None) -> nn.Module:
    saved = resume_from or pretrained_dir(config)
    if saved is not None:
        return load_model(saved, device=device)
    return build_model_with_towers(*model_config_of(config)).to(device)


def _build_tokenizer(model: nn.Module, corpus: Any, info: DistInfo, saved: Path | None) -> TextTokenizer | None:
    """The saved model's tokenizer (on resume, or when starting from a saved model); else, for a model that
    reads text, its text tower's tokenizer."""
    if saved is not None:
        return load_tokenizer(saved)
    if model.config.get("text") is None:
        return None
    # Rank 0 builds it, the others receive it: all ranks must share one vocabulary.
    return build_on_main_rank(lambda: tower_tokenizer(model.config["text"], corpus), info)


def _train(config: RunConfig, resume: bool, progress: bool, info: DistInfo, device: torch.device) -> TrainResult:
    out, opt = Path(config.out), config.train
    if opt.fsdp and not info.is_distributed:
        raise ValueError("train.fsdp shards the model over processes: start the run with --nproc N (N >= 2) "
                         "or torchrun")
    output_directory(out, "out")
    # The same seed on every rank: identical initial weights (DDP also broadcasts rank 0's) and augmentation RNG
    # streams that stay in step, so the RNG state rank 0 saves resumes every rank.
    seed_everything(opt.seed)
    precision = resolve_precision(opt.precision, device)
    resume_from = _resume_checkpoint(out, resume, info)
    if resume_from is not None:
        _refuse_model_change(config, resume_from)
    model = _build_model(config, device, resume_from)  # first: a bad model config stops before data is read
    family = family_of(model.config)
    data = load_run_data(config.data, opt.seed, questions=family.task == "vqa")
    tokenizer = _build_tokenizer(model, data.captions, info, resume_from or pretrained_dir(config))
    if info.is_main:
        write_bytes(out / "run_config.yaml", yaml.safe_dump(run_config_to_dict(config), sort_keys=False).encode("utf-8"))

    task = TASKS[family.task](RunContext(config, data, model, tokenizer, info, device, progress))
    loader = make_train_loader(*task.train_data(), opt, info)
    steps_per_epoch = epoch_batches(loader) // opt.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"one epoch gives each of {info.world_size} process(es) fewer than batch_size x accum_steps "
                         f"= {opt.batch_size} x {opt.accum_steps} samples: lower them")
    if opt.grad_cache_micro_batch and not hasattr(model, "embedding_outputs"):
        raise ValueError(f"train.grad_cache_micro_batch: the {family.name} family declares no embedding outputs "
                         "for GradCache; use train.accum_steps instead")

    # Built before sharding: with cached features rank 0 runs the (still whole) towers over the validation set.
    evaluate = task.evaluator()
    if opt.fsdp:
        shard_model(model)  # before the optimizer, which must hold the sharded parameters
    elif resume_from is not None and (resume_from / SHARDED).is_dir():
        raise ValueError(f"{resume_from} was saved by an FSDP run and its optimizer state is sharded: "
                         "resume it with train.fsdp: true")
    optimizer = create_optimizer(model, lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = warmup_cosine(optimizer, opt.warmup_steps, total_steps(steps_per_epoch, opt.epochs, opt.max_steps))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    position, resumed_data = TrainPosition(), None
    if resume_from is not None:
        if opt.fsdp:
            load_sharded_state(resume_from, model, optimizer)
        position, resumed_data = load_train_state(resume_from, None if opt.fsdp else optimizer, scheduler, scaler)
        _apply_resumable_settings(optimizer, scheduler, opt.lr, opt.weight_decay)

    def save(at: TrainPosition) -> Path:
        stream_position = data_state(loader, at)  # a shard stream's own record; None for the sampler
        if opt.fsdp:
            return save_fsdp_checkpoint(out, model, tokenizer, at, optimizer, scheduler, scaler, stream_position)
        return save_checkpoint(out, model, tokenizer, at, optimizer, scheduler, scaler, data_state=stream_position)

    settings = LoopSettings(
        device=device, precision=precision, accum_steps=opt.accum_steps, grad_clip=opt.grad_clip,
        log_every=opt.log_every, checkpoint_every=opt.checkpoint_every, max_steps=opt.max_steps, progress=progress,
        grad_cache_micro_batch=opt.grad_cache_micro_batch,
    )
    trained = model  # an FSDP model is sharded in place and trains as itself
    if info.is_distributed and not opt.fsdp:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          bucket_cap_mb=opt.ddp_bucket_mb,
                                          gradient_as_bucket_view=opt.ddp_gradient_as_bucket_view)
    if opt.compile:
        trained = torch.compile(trained)  # outside DDP, so Dynamo splits the graph at DDP's gradient buckets
    # An FSDP checkpoint gathers weights and writes shards on every rank, so every rank saves; otherwise rank 0.
    saves = info.is_main or opt.fsdp
    loss = family.build_loss(model.config, LossOptions(opt.label_smoothing, opt.local_loss, opt.gather_with_grad))
    if hasattr(task, "training_loss"):  # a task whose training objective depends on its data (SCST's reward)
        loss = task.training_loss(loss)
    position = fit(
        trained, loader, loss, optimizer, scheduler, settings, opt.epochs, position=position, scaler=scaler,
        log=MetricsLog(out / "metrics.jsonl") if info.is_main else None,
        save_checkpoint=save if saves else None, evaluate=evaluate, data_state=resumed_data,
    )
    checkpoint = save(position) if saves else checkpoint_path(out, position.step)
    barrier(info)  # every rank returns once the final checkpoint exists
    return TrainResult(model, tokenizer, checkpoint, position, data.train_set, data.val_set, info)


def _resume_checkpoint(out: Path, resume: bool, info: DistInfo) -> Path | None:
    """The checkpoint to continue from, None for a fresh start; refuses to train over an earlier run, and never
    starts afresh over a run that holds checkpoints (when none verifies it stops instead).

    Rank 0 alone inspects and tidies the checkpoint folder (it sets rejected checkpoints aside) and tells the
    other ranks what it chose, or the error every rank then raises.
    """
    if not resume:
        if (out / "checkpoints").exists() or (out / "metrics.jsonl").exists():
            raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another `out`")
        return None

    def choose() -> tuple[Path | None, str | None]:
        clean_leftovers(out)  # temporary files of a write the crash interrupted (run_config.yaml, ...)
        try:
            choice = find_resume_checkpoint(out)
        except NoValidCheckpointError as error:
            return None, str(error)
        for path, reason in choice.skipped:
            log.warning("--resume: skipped %s (%s); set aside as %s", path.name, reason, f"rejected-{path.name}")
        if choice.checkpoint is None:
            log.warning("--resume: %s holds no checkpoint yet; starting from step 0", out)
        else:
            log.info("--resume: continuing from %s", choice.checkpoint)
        return choice.checkpoint, None

    checkpoint, error = build_on_main_rank(choose, info)
    if error is not None:
        raise NoValidCheckpointError(error)
    return checkpoint


def _refuse_model_change(config: RunConfig, checkpoint: Path) -> None:
    """A resumed run trains the checkpoint's model; a run config that asks for another one is an error."""
    # A config without "family" (written before families existed) means a dual encoder.
    wanted = {"family": DEFAULT_FAMILY, **model_config_of(config)[0]}
    saved = {"family": DEFAULT_FAMILY, **load_model_config(checkpoint)}
    # Training fills in what the data decides (a VQA model's answer list): not a change of model.
    filled_by_training = ("description", "answers", "class_names", "bos_id", "eos_id", "pad_id")
    changed = sorted(key for key in set(_flat(wanted)) | set(_flat(saved))
                     if key.split(".")[0] not in filled_by_training and _flat(wanted).get(key) != _flat(saved).get(key))
    if changed:
        first = changed[0]
        raise ValueError(f"--resume cannot change the model: model.{first} is {_flat(saved).get(first)!r} in "
                         f"{checkpoint} but {_flat(wanted).get(first)!r} now ({len(changed)} key(s) differ). "
                         f"Resume with the same model, or start a new run in another `out`")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _apply_resumable_settings(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float, weight_decay: float) -> None:
    """Loading the optimizer and scheduler state restores the old learning rate and weight decay; the run
    config's values win (the schedule keeps its position)."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    factors = [factor(scheduler.last_epoch) for factor in scheduler.lr_lambdas]
    for group, factor in zip(optimizer.param_groups, factors):
        group["initial_lr"] = lr
        group["lr"] = lr * factor
        if group["weight_decay"]:
            group["weight_decay"] = weight_decay
