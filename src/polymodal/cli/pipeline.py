"""Build everything a run needs from a :class:`RunConfig` (the edge), then hand built parts to the library."""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from polymodal.cli.run_config import RunConfig, run_config_to_dict
from polymodal.data.pair_dataset import (
    CachedFeatureDataset,
    ImageCaptionCollator,
    ImageCaptionDataset,
    ResumableRandomSampler,
    collate_cached_features,
)
from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.factory import build_model, get_model_config
from polymodal.losses import ClipLoss, SigLipLoss
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tasks.embed import FeatureCache, all_captions, feature_cache_dir, map_images, map_texts
from polymodal.tasks.retrieval import evaluate_retrieval, retrieval_from_embeddings
from polymodal.train.checkpoint import (
    TrainPosition,
    load_model,
    load_tokenizer,
    load_train_state,
    resolve_checkpoint,
    save_checkpoint,
)
from polymodal.train.fit import fit
from polymodal.precision import resolve_precision
from polymodal.train.loop import LoopSettings, total_steps
from polymodal.train.metrics_log import MetricsLog
from polymodal.train.optim import create_optimizer
from polymodal.train.schedule import warmup_cosine


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data_spec(spec: Any, skip_bad: bool = False) -> ImageTextSet:
    """A catalog name, a path, or ``{name: ..., split: ..., <loader kwargs>}`` → an :class:`ImageTextSet`."""
    from polymodal.data.catalog import load_dataset

    if isinstance(spec, str):
        return load_dataset(spec, skip_bad=skip_bad)
    if isinstance(spec, dict) and "name" in spec:
        kwargs = dict(spec)
        return load_dataset(kwargs.pop("name"), skip_bad=skip_bad, **kwargs)
    raise ValueError(f"a dataset is a name, a path or a mapping with 'name', got {spec!r}")


def model_config_of(config: RunConfig) -> dict[str, Any]:
    return get_model_config(config.model) if isinstance(config.model, str) else copy.deepcopy(config.model)


def make_tokenizer(model_config: dict[str, Any], train_set: ImageTextSet) -> TextTokenizer:
    """A pretrained text tower brings its tokenizer; a from-scratch tower gets a BPE trained on the captions."""
    text = model_config["text"]
    if text["type"] == "minilm":
        from polymodal.encoders.pretrained import minilm_tokenizer_file

        return TextTokenizer.from_file(minilm_tokenizer_file(), int(text["context_length"]))
    captions = [caption for record in train_set.records for caption in record.captions]
    return TextTokenizer.train_bpe(captions, vocab_size=int(text["vocab_size"]), context_length=int(text["context_length"]))


def make_loss(model_config: dict[str, Any], label_smoothing: float = 0.0) -> nn.Module:
    kind = model_config.get("loss", "clip")
    if kind == "clip":
        return ClipLoss(label_smoothing=label_smoothing)
    if kind == "siglip":
        return SigLipLoss()
    raise ValueError(f"model config 'loss' must be clip or siglip, got {kind!r}")


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
        FeatureCache.key("image", model.config["image"], model.preprocess, dataset.name, keys),
        lambda: map_images(
            model.image_tower_features, dataset, transform, device, progress=progress, desc=f"image tower · {dataset.name}"
        ),
    )
    texts = cache.get_or_compute(
        FeatureCache.key("text", model.config["text"], dataset.name, captions),
        lambda: map_texts(model.text_tower_features, tokenizer, captions, device, progress=progress, desc="text tower"),
    )
    return TowerFeatures(images, texts, offsets)


def uses_feature_cache(model: DualEncoder, config: RunConfig) -> bool:
    return config.train.cache_features and model.image_frozen and model.text_frozen


@torch.no_grad()
def evaluate_cached(model: DualEncoder, features: TowerFeatures, dataset: ImageTextSet) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    images = model.encode_image(image_tower_features=features.images.to(device)).float().cpu()
    texts = model.encode_text(text_tower_features=features.captions.to(device)).float().cpu()
    return retrieval_from_embeddings(images, texts, dataset)


@dataclass
class TrainResult:
    model: DualEncoder
    tokenizer: TextTokenizer
    checkpoint: Path
    position: TrainPosition
    train_set: ImageTextSet
    val_set: ImageTextSet | None


def split_train_val(dataset: ImageTextSet, fraction: float, seed: int) -> tuple[ImageTextSet, ImageTextSet]:
    """Hold out ``fraction`` of the images (whole groups, so no scene is on both sides)."""
    groups = sorted({record.group for record in dataset.records})
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, int(round(len(groups) * fraction)))])
    train = [i for i, r in enumerate(dataset.records) if r.group not in held]
    val = [i for i, r in enumerate(dataset.records) if r.group in held]
    return dataset.subset(train, f"{dataset.name}-train"), dataset.subset(val, f"{dataset.name}-val")


def run_training(config: RunConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Build data, tokenizer, model, loss and optimizer from ``config``, train, and save checkpoints in ``out``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    opt = config.train
    seed_everything(opt.seed)
    device = resolve_device(opt.device)
    precision = resolve_precision(opt.precision, device)

    train_set = load_data_spec(config.data.train, config.data.skip_bad)
    val_set = load_data_spec(config.data.val, config.data.skip_bad) if config.data.val else None
    if val_set is None and config.data.val_fraction > 0:
        train_set, val_set = split_train_val(train_set, config.data.val_fraction, opt.seed)

    resume_from = None
    if resume:
        try:
            resume_from = resolve_checkpoint(out)
        except FileNotFoundError:
            resume_from = None  # nothing saved yet: a fresh start is the honest resume
    elif (out / "checkpoints").exists() or (out / "metrics.jsonl").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another `out`")
    if resume_from is not None:
        model = load_model(resume_from, device=device)
        tokenizer = load_tokenizer(resume_from)
    else:
        model_config = model_config_of(config)
        tokenizer = make_tokenizer(model_config, train_set)
        model = build_model(model_config).to(device)
    with (out / "run_config.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(run_config_to_dict(config), handle, sort_keys=False)

    cached = uses_feature_cache(model, config)
    if cached:
        features = tower_features(model, tokenizer, train_set, device, progress)
        train_data: Any = CachedFeatureDataset(features.images, features.captions, features.caption_offsets, opt.seed)
        collate: Any = collate_cached_features
        val_features = tower_features(model, tokenizer, val_set, device, progress) if val_set is not None else None
    else:
        train_data = ImageCaptionDataset(train_set, image_transform(model.preprocess, train=True), opt.seed)
        collate = ImageCaptionCollator(tokenizer)
    if len(train_data) < opt.batch_size:
        raise ValueError(f"training set has {len(train_data)} images, fewer than batch_size={opt.batch_size}")
    sampler = ResumableRandomSampler(len(train_data), seed=opt.seed)
    # The loader draws its worker seeds from its own generator, not the global RNG: the global RNG drives the
    # augmentations, and a resumed run must find it exactly where the checkpoint left it.
    loader = DataLoader(
        train_data, batch_size=opt.batch_size, sampler=sampler, collate_fn=collate, num_workers=opt.num_workers,
        drop_last=True, generator=torch.Generator().manual_seed(opt.seed),
    )

    optimizer = create_optimizer(model, lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = warmup_cosine(optimizer, opt.warmup_steps, total_steps(loader, opt.accum_steps, opt.epochs, opt.max_steps))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    position = TrainPosition()
    if resume_from is not None:
        position = load_train_state(resume_from, optimizer, scheduler, scaler)

    def evaluate(trained: nn.Module) -> dict[str, float]:
        if val_set is None:
            return {}
        if cached:
            return evaluate_cached(trained, val_features, val_set)
        return evaluate_retrieval(trained, tokenizer, val_set, image_transform(model.preprocess), progress=False)

    settings = LoopSettings(
        device=device, precision=precision, accum_steps=opt.accum_steps, grad_clip=opt.grad_clip,
        log_every=opt.log_every, checkpoint_every=opt.checkpoint_every, max_steps=opt.max_steps, progress=progress,
    )
    save = partial(_save, out, model, tokenizer, optimizer, scheduler, scaler)
    position = fit(
        model, loader, make_loss(model.config, opt.label_smoothing), optimizer, scheduler, settings, opt.epochs,
        position=position, scaler=scaler, log=MetricsLog(out / "metrics.jsonl"), save_checkpoint=save,
        evaluate=evaluate,
    )
    checkpoint = save(position)
    return TrainResult(model, tokenizer, checkpoint, position, train_set, val_set)


def _save(out, model, tokenizer, optimizer, scheduler, scaler, position: TrainPosition) -> Path:
    return save_checkpoint(out, model, tokenizer, position, optimizer, scheduler, scaler)
