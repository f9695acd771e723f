"""The classification task's torch dataset and collate: labelled images, with a caption when the set has one.

A multimodal classifier reads the image and a text about it (a caption, a product title, a post); an image-only
classifier reads the image. Items are ``(image_tensor, caption or None, label)``; the collate stacks images,
tokenizes captions when it has a tokenizer, and stacks labels as ``labels``. With frozen towers run once ahead of
training (:class:`CachedLabelledDataset`), the image and/or the caption is its tower's cached outputs instead.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from polymodal.data.records import EpochSeeded, ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.tower_rows import CachedTower, stack_rows

__all__ = ["CachedLabelledDataset", "LabelledImageCollator", "LabelledImageDataset", "check_labelled", "record_texts"]


def check_labelled(dataset: ImageTextSet) -> None:
    """Raise a ValueError unless the set has class names and every record a label (naming the first without)."""
    if not dataset.class_names:
        raise ValueError(f"{dataset.name}: a classification set needs class names (records with labels)")
    unlabelled = [record.key for record in dataset.records if record.label is None]
    if unlabelled:
        raise ValueError(f"{dataset.name}: {len(unlabelled)} records have no label (first: {unlabelled[0]})")


class LabelledImageDataset(EpochSeeded, Dataset):
    """Yields ``(image_tensor, caption | None, label)``: one item per record, a caption drawn per epoch.

    Raises:
        ValueError: the set has no class names, or a record has no label (named by key).
    """

    def __init__(
        self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor], seed: int = 0
    ) -> None:
        check_labelled(dataset)
        super().__init__(seed)
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str | None, int]:
        record = self.dataset.records[index]
        caption = self.caption(record.captions, index) if record.captions else None
        return self.transform(self.dataset.image(index)), caption, int(record.label)


def record_texts(dataset: ImageTextSet) -> tuple[list[str], list[int]]:
    """The texts a classifier may read, in record order: each record's captions, or ``""`` for a record without
    one (what the collate gives it); and offsets (record i owns ``texts[offsets[i]:offsets[i+1]]``)."""
    texts, offsets = [], [0]
    for record in dataset.records:
        texts.extend(record.captions or [""])
        offsets.append(len(texts))
    return texts, offsets


class CachedLabelledDataset(LabelledImageDataset):
    """:class:`LabelledImageDataset` whose image and/or caption is a frozen tower's cached outputs.

    Args:
        images: the image tower's outputs, ``images.row(i)`` for record i; None: pixels through ``transform``.
        texts: the text tower's outputs over :func:`record_texts`; the caption is drawn per epoch as the
            uncached dataset draws it. None: the caption text.
    """

    def __init__(self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor] | None, seed: int = 0,
                 images: CachedTower | None = None, texts: CachedTower | None = None) -> None:
        super().__init__(dataset, transform, seed)
        self.images, self.texts = images, texts
        self.offsets = record_texts(dataset)[1]
        if images is not None and len(images) != len(dataset):
            raise ValueError(f"{len(images)} cached image rows for the {len(dataset)} records of {dataset.name}")
        if texts is not None and len(texts) != self.offsets[-1]:
            raise ValueError(f"{len(texts)} cached text rows for the {self.offsets[-1]} texts of {dataset.name}")

    def __getitem__(self, index: int) -> tuple:
        record = self.dataset.records[index]
        image = self.images.row(index) if self.images is not None else self.transform(self.dataset.image(index))
        if self.texts is not None:
            caption = self.texts.row(self.caption(range(self.offsets[index], self.offsets[index + 1]), index))
        else:
            caption = self.caption(record.captions, index) if record.captions else None
        return image, caption, int(record.label)


class LabelledImageCollator:
    """Items → ``{"image", "labels"}`` plus ``input_ids`` / ``attention_mask`` when given a tokenizer; cached tower
    outputs (dict items) are stacked under their own keys instead."""

    def __init__(self, tokenizer: TextTokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[torch.Tensor, str | None, int]]) -> dict[str, torch.Tensor]:
        images, captions, labels = zip(*batch)
        out = {"labels": torch.tensor(labels, dtype=torch.long)}
        out.update(stack_rows(images) if isinstance(images[0], dict) else {"image": torch.stack(images)})
        if isinstance(captions[0], dict):
            out.update(stack_rows(captions))
        elif self.tokenizer is not None:
            # A record without a caption reads as empty text: the model sees only its special tokens.
            out.update(self.tokenizer([caption or "" for caption in captions]))
        return out
