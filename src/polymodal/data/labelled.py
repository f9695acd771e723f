"""The classification task's torch dataset and collate: labelled images, with a caption when the set has one.

A multimodal classifier reads the image and a text about it (a caption, a product title, a post); an image-only
classifier reads the image. Items are ``(image_tensor, caption or None, label)``; the collate stacks images,
tokenizes captions when it has a tokenizer, and stacks labels as ``labels``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from polymodal.data.records import EpochSeeded, ImageTextSet
from polymodal.data.tokenizers import TextTokenizer

__all__ = ["LabelledImageCollator", "LabelledImageDataset"]


class LabelledImageDataset(EpochSeeded, Dataset):
    """Yields ``(image_tensor, caption | None, label)``: one item per record, a caption drawn per epoch.

    Raises:
        ValueError: the set has no class names, or a record has no label (named by key).
    """

    def __init__(
        self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor], seed: int = 0
    ) -> None:
        if not dataset.class_names:
            raise ValueError(f"{dataset.name}: a classification set needs class names (records with labels)")
        unlabelled = [record.key for record in dataset.records if record.label is None]
        if unlabelled:
            raise ValueError(f"{dataset.name}: {len(unlabelled)} records have no label (first: {unlabelled[0]})")
        super().__init__(seed)
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str | None, int]:
        record = self.dataset.records[index]
        caption = self.caption(record.captions, index) if record.captions else None
        return self.transform(self.dataset.image(index)), caption, int(record.label)


class LabelledImageCollator:
    """Items → ``{"image", "labels"}`` plus ``input_ids`` / ``attention_mask`` when given a tokenizer."""

    def __init__(self, tokenizer: TextTokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[torch.Tensor, str | None, int]]) -> dict[str, torch.Tensor]:
        images, captions, labels = zip(*batch)
        out = {"image": torch.stack(images), "labels": torch.tensor(labels, dtype=torch.long)}
        if self.tokenizer is not None:
            # A record without a caption reads as empty text: the model sees only its special tokens.
            out.update(self.tokenizer([caption or "" for caption in captions]))
        return out
