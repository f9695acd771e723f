"""The data side of a run (the edge): datasets or shard streams, and the training loader over a task's dataset.

Under ``torchrun`` every rank builds the same data; the sampler (or the stream) hands each rank its own part of
every global batch.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from polymodal.data.catalog import load_data_spec, split_train_val
from polymodal.data.records import ImageTextSet
from polymodal.data.sampler import ResumableRandomSampler
from polymodal.data.shards import INDEX_NAME, read_captions
from polymodal.data.vqa import load_vqa_spec
from polymodal.distributed import DistInfo
from polymodal.recipes.config import DataConfig, OptimConfig

__all__ = ["RunData", "load_run_data", "make_train_loader", "shard_dir_of"]


def shard_dir_of(spec: Any) -> Path | None:
    """``spec`` as a shard directory (one holding ``shards.json``), or None for any other dataset spec."""
    if isinstance(spec, (str, Path)) and (Path(spec) / INDEX_NAME).is_file():
        return Path(spec)
    return None


@dataclass
class RunData:
    """A run's data: the training records in memory (``train_set``) or as a shard stream (``shard_dir``)."""

    train_set: ImageTextSet | None
    shard_dir: Path | None
    val_set: ImageTextSet | None

    def captions(self) -> Iterator[str]:
        """Every training caption (and question), for training a tokenizer."""
        if self.shard_dir is not None:
            return read_captions(self.shard_dir)
        return (text for record in self.train_set.records
                for text in (*record.captions, *([record.question] if record.question else [])))


def load_run_data(data: DataConfig, seed: int, questions: bool = False) -> RunData:
    """The run's datasets; ``questions``: read them as VQA sets (one record per question, with its answers)."""
    # A few-shot spec (``shots_per_class``) draws its records with the run's seed.
    load = load_vqa_spec if questions else functools.partial(load_data_spec, seed=seed)
    shard_dir = None if questions else shard_dir_of(data.train)
    train_set = None if shard_dir is not None else load(data.train, data.skip_bad)
    val_set = load(data.val, data.skip_bad) if data.val else None
    if val_set is None and data.val_fraction > 0:
        if train_set is None:
            raise ValueError(f"data.val_fraction cannot carve a validation set out of the shard stream {shard_dir}: "
                             "give data.val instead")
        train_set, val_set = split_train_val(train_set, data.val_fraction, seed)
    return RunData(train_set, shard_dir, val_set)


def make_train_loader(dataset: Dataset | IterableDataset, collate: Callable[[list[Any]], dict[str, torch.Tensor]],
                      opt: OptimConfig, info: DistInfo) -> DataLoader:
    """This rank's training loader over a task's dataset: ``batch_size`` samples per batch on every rank.

    A map-style dataset gets a :class:`ResumableRandomSampler` sharded over ranks; a stream splits its shards
    over ranks and DataLoader workers itself.
    """
    sampler = None
    if not isinstance(dataset, IterableDataset):
        sampler = ResumableRandomSampler(len(dataset), seed=opt.seed, rank=info.rank, world_size=info.world_size)
    # The loader draws its worker seeds from its own generator, not the global RNG: the global RNG drives the
    # augmentations, and a resumed run must find it exactly where the checkpoint left it.
    return DataLoader(
        dataset, batch_size=opt.batch_size, sampler=sampler, collate_fn=collate, num_workers=opt.num_workers,
        drop_last=True, generator=torch.Generator().manual_seed(opt.seed),
    )
