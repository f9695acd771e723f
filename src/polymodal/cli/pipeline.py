"""Build everything a run needs from a :class:`RunConfig` (the edge), then hand built parts to the library.

Under ``torchrun`` every rank runs :func:`run_training`: each trains on its share of every global batch
(``train.batch_size`` is per rank) in a ``DistributedDataParallel`` model (or, with ``train.fsdp``, a model sharded
with FSDP2), and rank 0 alone logs, evaluates and writes the run directory (under FSDP every rank takes part in
evaluating and checkpointing, whose gathers are collective, while rank 0 still writes all but the shards). The data side (datasets, shard streams, tokenizer, loader) is in ``pipeline_data``.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from polymodal.cli.pipeline_data import (
    RunData,
    barrier,
    load_data_spec,
    load_run_data,
    main_rank_first,
    make_tokenizer,
    make_train_loader,
    shared_tokenizer,
    split_train_val,
    tokenizer_for,
)
from polymodal.cli.run_config import RunConfig, run_config_to_dict
from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.distributed import DistInfo, cleanup, init_distributed
from polymodal.factory import build_model, get_model_config
from polymodal.losses import ClipLoss, SigLipLoss
from polymodal.models.dual_encoder import DualEncoder
from polymodal.precision import resolve_precision
from polymodal.tasks.embed import FeatureCache, all_captions, feature_cache_dir, map_images, map_texts
from polymodal.tasks.retrieval import evaluate_retrieval, retrieval_from_embeddings
from polymodal.train.checkpoint import (
    TrainPosition,
    checkpoint_path,
    load_model,
    load_tokenizer,
    load_train_state,
    resolve_checkpoint,
    save_checkpoint,
)
from polymodal.train.data_position import data_state, epoch_batches
from polymodal.train.fit import fit
from polymodal.train.fsdp import SHARDED, load_sharded_state, save_fsdp_checkpoint, shard_model
from polymodal.train.loop import LoopSettings, total_steps
from polymodal.train.metrics_log import MetricsLog
from polymodal.train.optim import create_optimizer
from polymodal.train.schedule import warmup_cosine

__all__ = [
    "TowerFeatures",
    "TrainResult",
    "evaluate_cached",
    "load_data_spec",
    "make_loss",
    "make_tokenizer",
    "model_config_of",
    "resolve_device",
    "run_training",
    "seed_everything",
    "split_train_val",
    "tower_features",
]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config_of(config: RunConfig) -> dict[str, Any]:
    return get_model_config(config.model) if isinstance(config.model, str) else copy.deepcopy(config.model)


@dataclass
class TowerFeatures:
    """Frozen-tower outputs of one dataset: ``images (N, F_img)``, ``captions (M, F_txt)`` and offsets."""

    images: torch.Tensor
    captions: torch.Tensor
    caption_offsets: torch.Tensor


def tower_features(
    model: DualEncoder, tokenizer: TextTokenizer, dataset: ImageTextSet, device: torch.device, progress: bool
) -> TowerFeatures:
    """Run the frozen towers once over ``dataset`` (cached on disk across runs)."""
    cache = FeatureCache(feature_cache_dir())
    captions, _, offsets = all_captions(dataset)
    keys = [record.key for record in dataset.records]
    transform = image_transform(model.preprocess)
    model.eval()
    images = cache.get_or_compute(
        # The first image's pixels stand in for how the set renders (e.g. openmoji's image_size), which the
        # record keys alone do not show.
        FeatureCache.key("image", model.config["image"], model.preprocess, dataset.name, keys, _first_pixels(dataset)),
        lambda: map_images(
            model.image_tower_features, dataset, transform, device, progress=progress, desc=f"image tower · {dataset.name}"
        ),
    )
    texts = cache.get_or_compute(
        FeatureCache.key("text", model.config["text"], dataset.name, captions),
        lambda: map_texts(model.text_tower_features, tokenizer, captions, device, progress=progress, desc="text tower"),
    )
    return TowerFeatures(images, texts, offsets)


def _first_pixels(dataset: ImageTextSet) -> str:
    return hashlib.sha256(dataset.image(0).tobytes()).hexdigest() if len(dataset) else ""


def uses_feature_cache(model: DualEncoder, config: RunConfig) -> bool:
    return config.train.cache_features and model.image_frozen and model.text_frozen


@torch.no_grad()
def evaluate_cached(model: DualEncoder, features: TowerFeatures, dataset: ImageTextSet) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    images = model.encode_image(image_tower_features=features.images.to(device)).float().cpu()
    texts = model.encode_text(text_tower_features=features.captions.to(device)).float().cpu()
    return retrieval_from_embeddings(images, texts, dataset)


def make_loss(
    model_config: dict[str, Any], label_smoothing: float = 0.0, local_loss: bool = False, gather_with_grad: bool = False
) -> nn.Module:
    """The model's contrastive loss; CLIP takes open_clip's gathering options, SigLIP always gathers with grad."""
    kind = model_config.get("loss", "clip")
    if kind == "clip":
        return ClipLoss(label_smoothing=label_smoothing, local_loss=local_loss, gather_with_grad=gather_with_grad)
    if kind == "siglip":
        return SigLipLoss()
    raise ValueError(f"model config 'loss' must be clip or siglip, got {kind!r}")


@dataclass
class TrainResult:
    model: DualEncoder
    tokenizer: TextTokenizer
    checkpoint: Path
    position: TrainPosition
    train_set: ImageTextSet | None  # None when the run streamed shards
    val_set: ImageTextSet | None
    dist: DistInfo  # this process's place in the run (rank 0 wrote the checkpoint)


def run_training(config: RunConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Build data, tokenizer, model, loss and optimizer from ``config``, train, and save checkpoints in ``out``.

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


def _train(config: RunConfig, resume: bool, progress: bool, info: DistInfo, device: torch.device) -> TrainResult:
    out, opt = Path(config.out), config.train
    if opt.fsdp and not info.is_distributed:
        raise ValueError("train.fsdp shards the model over processes: start the run with --nproc N (N >= 2) "
                         "or torchrun")
    out.mkdir(parents=True, exist_ok=True)
    # The same seed on every rank: identical initial weights (DDP also broadcasts rank 0's) and augmentation RNG
    # streams that stay in step, so the RNG state rank 0 saves resumes every rank.
    seed_everything(opt.seed)
    precision = resolve_precision(opt.precision, device)
    data = load_run_data(config.data, opt.seed)
    resume_from = _resume_checkpoint(out, resume)
    if resume_from is not None:
        model = load_model(resume_from, device=device)
        tokenizer = load_tokenizer(resume_from)
    else:
        model_config = model_config_of(config)
        context_length = int(model_config["text"]["context_length"])
        tokenizer = shared_tokenizer(lambda: tokenizer_for(model_config, data.captions()), context_length, info)
        model = build_model(model_config).to(device)
    if info.is_main:
        with (out / "run_config.yaml").open("w", encoding="utf-8") as handle:
            yaml.safe_dump(run_config_to_dict(config), handle, sort_keys=False)

    # Frozen towers train on their cached outputs; a shard stream is never held in memory, so its towers run.
    cached = uses_feature_cache(model, config) and data.shard_dir is None
    features = None
    if cached:
        with main_rank_first(info):  # rank 0 fills the on-disk feature cache, the others read it
            features = tower_features(model, tokenizer, data.train_set, device, progress)
    loader = make_train_loader(data, model.preprocess, tokenizer, opt, config.data.shuffle_buffer, info, features)
    steps_per_epoch = epoch_batches(loader) // opt.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"one epoch gives each of {info.world_size} process(es) fewer than batch_size x accum_steps "
                         f"= {opt.batch_size} x {opt.accum_steps} samples: lower them")

    # Built before sharding: with cached features rank 0 runs the (still whole) towers over the validation set.
    evaluate = _evaluator(data, model, tokenizer, cached, device, info, opt.fsdp)
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
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # An FSDP checkpoint gathers weights and writes shards on every rank, so every rank saves; otherwise rank 0.
    saves = info.is_main or opt.fsdp
    position = fit(
        trained, loader, make_loss(model.config, opt.label_smoothing, opt.local_loss, opt.gather_with_grad),
        optimizer, scheduler, settings, opt.epochs, position=position, scaler=scaler,
        log=MetricsLog(out / "metrics.jsonl") if info.is_main else None,
        save_checkpoint=save if saves else None, evaluate=evaluate, data_state=resumed_data,
    )
    checkpoint = save(position) if saves else checkpoint_path(out, position.step)
    barrier(info)  # every rank returns once the final checkpoint exists
    return TrainResult(model, tokenizer, checkpoint, position, data.train_set, data.val_set, info)


def _resume_checkpoint(out: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from, None for a fresh start; refuses to train over an earlier run."""
    if not resume:
        if (out / "checkpoints").exists() or (out / "metrics.jsonl").exists():
            raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another `out`")
        return None
    try:
        return resolve_checkpoint(out)
    except FileNotFoundError:
        return None  # nothing saved yet: a fresh start is the honest resume


def _evaluator(
    data: RunData, model: DualEncoder, tokenizer: TextTokenizer, cached: bool, device: torch.device, info: DistInfo,
    fsdp: bool = False,
) -> Callable[[nn.Module], dict[str, float]]:
    """Validation retrieval on rank 0; the other ranks wait at a barrier rather than inside their next collective.

    Under FSDP every rank evaluates (the same batches, only rank 0's metrics are logged): a sharded forward
    gathers parameters from all ranks, so rank 0 cannot run it alone. Call before the model is sharded.
    """
    evaluates = info.is_main or fsdp
    val_features = None
    if cached and data.val_set is not None and evaluates:
        # Under FSDP rank 0 fills the on-disk feature cache, then the others read it; otherwise rank 0 is alone here.
        with main_rank_first(info) if fsdp else contextlib.nullcontext():
            val_features = tower_features(model, tokenizer, data.val_set, device, progress=False)

    def evaluate(trained: nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if evaluates and data.val_set is not None:
            if val_features is not None:
                metrics = evaluate_cached(trained, val_features, data.val_set)
            else:
                metrics = evaluate_retrieval(trained, tokenizer, data.val_set, image_transform(model.preprocess),
                                             progress=False)
        barrier(info)
        return metrics

    return evaluate
