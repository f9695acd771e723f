"""The data side of a run (the edge): datasets or shard streams, the tokenizer, and the training loader.

Under ``torchrun`` every rank builds the same data; the sampler (or the stream) hands each rank its own part of
every global batch, and the tokenizer is built once, on rank 0, and sent to the others.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from polymodal.cli.run_config import DataConfig, OptimConfig
from polymodal.data.pair_dataset import (
    CachedFeatureDataset,
    ImageCaptionCollator,
    ImageCaptionDataset,
    ResumableRandomSampler,
    collate_cached_features,
)
from polymodal.data.records import ImageTextSet
from polymodal.data.shards import INDEX_NAME, CaptionPairStream, read_captions
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import ImagePreprocess, image_transform
from polymodal.distributed import DistInfo


def load_data_spec(spec: Any, skip_bad: bool = False) -> ImageTextSet:
    """A catalog name, a path, or ``{name: ..., split: ..., <loader kwargs>}`` → an :class:`ImageTextSet`."""
    from polymodal.data.catalog import load_dataset

    if isinstance(spec, str):
        return load_dataset(spec, skip_bad=skip_bad)
    if isinstance(spec, dict) and "name" in spec:
        kwargs = dict(spec)
        return load_dataset(kwargs.pop("name"), skip_bad=skip_bad, **kwargs)
    raise ValueError(f"a dataset is a name, a path or a mapping with 'name', got {spec!r}")


def split_train_val(dataset: ImageTextSet, fraction: float, seed: int) -> tuple[ImageTextSet, ImageTextSet]:
    """Hold out ``fraction`` of the images (whole groups, so no scene is on both sides)."""
    groups = sorted({record.group for record in dataset.records})
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, int(round(len(groups) * fraction)))])
    train = [i for i, r in enumerate(dataset.records) if r.group not in held]
    val = [i for i, r in enumerate(dataset.records) if r.group in held]
    return dataset.subset(train, f"{dataset.name}-train"), dataset.subset(val, f"{dataset.name}-val")


def shard_dir_of(spec: Any) -> Path | None:
    """``spec`` as a shard directory (one holding ``shards.json``), or None for any other dataset spec."""
    if isinstance(spec, (str, Path)) and (Path(spec) / INDEX_NAME).is_file():
        return Path(spec)
    return None


@dataclass
class RunData:
    """A run's data: the training pairs in memory (``train_set``) or as a shard stream (``shard_dir``)."""

    train_set: ImageTextSet | None
    shard_dir: Path | None
    val_set: ImageTextSet | None

    def captions(self) -> Iterator[str]:
        """Every training caption, for the tokenizer."""
        if self.shard_dir is not None:
            return read_captions(self.shard_dir)
        return (caption for record in self.train_set.records for caption in record.captions)


def load_run_data(data: DataConfig, seed: int) -> RunData:
    shard_dir = shard_dir_of(data.train)
    train_set = None if shard_dir is not None else load_data_spec(data.train, data.skip_bad)
    val_set = load_data_spec(data.val, data.skip_bad) if data.val else None
    if val_set is None and data.val_fraction > 0:
        if train_set is None:
            raise ValueError(f"data.val_fraction cannot carve a validation set out of the shard stream {shard_dir}: "
                             "give data.val instead")
        train_set, val_set = split_train_val(train_set, data.val_fraction, seed)
    return RunData(train_set, shard_dir, val_set)


def make_tokenizer(model_config: dict[str, Any], train_set: ImageTextSet) -> TextTokenizer:
    """The tokenizer for ``model_config``, trained (if it needs training) on ``train_set``'s captions."""
    return tokenizer_for(model_config, (caption for record in train_set.records for caption in record.captions))


def tokenizer_for(model_config: dict[str, Any], captions: Iterable[str]) -> TextTokenizer:
    """A pretrained text tower brings its tokenizer; a from-scratch tower gets a BPE trained on ``captions``."""
    text = model_config["text"]
    if text["type"] == "minilm":
        from polymodal.encoders.pretrained import minilm_tokenizer_file

        return TextTokenizer.from_file(minilm_tokenizer_file(), int(text["context_length"]))
    return TextTokenizer.train_bpe(captions, vocab_size=int(text["vocab_size"]), context_length=int(text["context_length"]))


def shared_tokenizer(build: Callable[[], TextTokenizer], context_length: int, info: DistInfo) -> TextTokenizer:
    """``build()`` on rank 0, sent to every other rank: all ranks must share one vocabulary, and BPE training
    is not promised to break ties the same way in every process (it also costs each rank a pass over the data)."""
    if not info.is_distributed:
        return build()
    payload = [build().tokenizer.to_str() if info.is_main else None]
    dist.broadcast_object_list(payload, src=0)
    return TextTokenizer(Tokenizer.from_str(payload[0]), context_length)


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


def make_train_loader(
    data: RunData,
    preprocess: ImagePreprocess,
    tokenizer: TextTokenizer,
    opt: OptimConfig,
    shuffle_buffer: int,
    info: DistInfo,
    features: Any = None,
) -> DataLoader:
    """The training loader of this rank: frozen-tower ``features`` (``pipeline.TowerFeatures``) if given, else the
    shard stream, else the in-memory pairs; ``batch_size`` pairs per batch on every rank.

    A map-style dataset gets a :class:`ResumableRandomSampler` sharded over ranks; a stream splits its shards
    over ranks and DataLoader workers itself.
    """
    collate: Any = ImageCaptionCollator(tokenizer)
    train_transform = image_transform(preprocess, train=True)
    if features is not None:
        dataset: Any = CachedFeatureDataset(features.images, features.captions, features.caption_offsets, opt.seed)
        collate = collate_cached_features
    elif data.shard_dir is not None:
        dataset = CaptionPairStream(data.shard_dir, rank=info.rank, world_size=info.world_size,
                                    shuffle_buffer=shuffle_buffer, seed=opt.seed, transform=train_transform)
    else:
        dataset = ImageCaptionDataset(data.train_set, train_transform, opt.seed)
    sampler = None
    if not isinstance(dataset, CaptionPairStream):
        sampler = ResumableRandomSampler(len(dataset), seed=opt.seed, rank=info.rank, world_size=info.world_size)
    # The loader draws its worker seeds from its own generator, not the global RNG: the global RNG drives the
    # augmentations, and a resumed run must find it exactly where the checkpoint left it.
    return DataLoader(
        dataset, batch_size=opt.batch_size, sampler=sampler, collate_fn=collate, num_workers=opt.num_workers,
        drop_last=True, generator=torch.Generator().manual_seed(opt.seed),
    )
