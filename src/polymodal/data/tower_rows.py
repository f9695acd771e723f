"""Cached frozen-tower outputs as training items: the cache's rows, their datasets and how a batch stacks them.

A frozen tower's outputs over a set are computed once (``recipes/frozen_towers.py``) and held as a
:class:`CachedTower`: named tensors with one row per distinct input (an image, a text) and, for every input the
task indexes (a record, a question, a caption), its row. The datasets here yield those rows in place of pixels;
:func:`stack_rows` turns a batch of rows into the model's forward keywords (``image_tokens``, ``image_pooled``,
``text_tokens``, ``text_token_mask``…), as the uncached path would have shaped them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from polymodal.data.records import EpochSeeded, ImageTextSet
from polymodal.data.tokenizers import TextTokenizer

__all__ = ["CachedCaptionCollator", "CachedCaptionDataset", "CachedIndexDataset", "CachedTower", "collate_cached_index",
           "stack_rows"]

MASK_SUFFIX = "_token_mask"


@dataclass
class CachedTower:
    """One frozen tower's outputs over a set's distinct inputs.

    Attributes:
        parts: batch key → tensor with one row per distinct input: ``{m}_tokens (R, N, F)`` (16-bit),
            ``{m}_token_mask (R, N)`` (bool; text towers, and image towers that have one), ``{m}_pooled (R, F)``
            (16-bit), for modality ``m`` — whichever the model reads.
        rows: ``(K,)`` long: input ``k``'s row in ``parts`` (a record's image, a question, a caption).
    """

    parts: dict[str, torch.Tensor]
    rows: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> dict[str, torch.Tensor]:
        """The cached outputs of input ``index``."""
        row = int(self.rows[index])
        return {name: tensor[row] for name, tensor in self.parts.items()}

    def nbytes(self) -> int:
        """Memory held by the cached outputs."""
        return sum(tensor.numel() * tensor.element_size() for tensor in self.parts.values())


def stack_rows(rows: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One dict of cached outputs per sample → batch tensors.

    Floating parts come back as float32 (they are stored in 16 bits; the run's autocast decides the model's own
    precision). A modality with a token mask (text, padded in the cache to the context length) is trimmed to the
    batch's longest real sequence: the shape the tokenizer gives the uncached path, since padding trails.
    """
    batch = {name: torch.stack([row[name] for row in rows]) for name in rows[0]}
    for name in [name for name in batch if name.endswith(MASK_SUFFIX)]:
        mask, tokens = batch[name], name[: -len(MASK_SUFFIX)] + "_tokens"
        real = mask.any(dim=0).nonzero()
        length = int(real.max()) + 1 if len(real) else 1
        batch[name] = mask[:, :length]
        if tokens in batch:
            batch[tokens] = batch[tokens][:, :length]
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in batch.items()}


class CachedCaptionDataset(EpochSeeded, Dataset):
    """Yields ``(cached image outputs, caption)``: one item per record, a caption drawn per epoch (as
    :class:`~polymodal.data.pair_dataset.ImageCaptionDataset` draws it for pixels)."""

    def __init__(self, dataset: ImageTextSet, images: CachedTower, seed: int = 0) -> None:
        empty = [r.key for r in dataset.records if not r.captions]
        if empty:
            raise ValueError(f"{dataset.name}: {len(empty)} records have no caption (first: {empty[0]})")
        if len(images) != len(dataset):
            raise ValueError(f"{len(images)} cached image rows for the {len(dataset)} records of {dataset.name}")
        super().__init__(seed)
        self.dataset, self.images = dataset, images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], str]:
        return self.images.row(index), self.caption(self.dataset.records[index].captions, index)


class CachedCaptionCollator:
    """Stacks cached image outputs and tokenizes captions (teacher forcing on a frozen image tower)."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[dict[str, torch.Tensor], str]]) -> dict[str, torch.Tensor]:
        rows, captions = zip(*batch)
        return {**stack_rows(rows), **self.tokenizer(list(captions))}


class CachedIndexDataset(Dataset):
    """Yields ``(cached image outputs, index)`` for every record: self-critical training on a frozen image tower
    (the references are looked up by index)."""

    def __init__(self, images: CachedTower) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        return self.images.row(index), index


def collate_cached_index(batch: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    rows, indices = zip(*batch)
    return {**stack_rows(rows), "image_index": torch.tensor(indices, dtype=torch.long)}
