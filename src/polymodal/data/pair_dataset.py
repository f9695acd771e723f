"""The contrastive task's torch datasets and collates over an :class:`ImageTextSet`: (image, caption) pairs.

Each image is seen once per epoch with one of its captions, chosen deterministically from (seed, epoch, index)
so a resumed run sees exactly the batches the interrupted run would have seen.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from polymodal.data.records import EpochSeeded, ImageTextSet
from polymodal.data.tokenizers import TextTokenizer


class ImageCaptionDataset(EpochSeeded, Dataset):
    """Yields ``(image_tensor, caption)``: one item per image, a caption drawn per epoch."""

    def __init__(
        self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor], seed: int = 0
    ) -> None:
        empty = [r.key for r in dataset.records if not r.captions]
        if empty:
            raise ValueError(f"{dataset.name}: {len(empty)} records have no caption (first: {empty[0]})")
        super().__init__(seed)
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self.transform(self.dataset.image(index)), self.caption(self.dataset.records[index].captions, index)


class CachedFeatureDataset(EpochSeeded, Dataset):
    """Yields ``(image_tower_features, text_tower_features)`` rows precomputed by frozen towers.

    Args:
        image_features: ``(N_images, F_img)``, row i for record i.
        text_features: ``(N_captions, F_txt)``, the captions of all records in order.
        caption_offsets: ``(N_images + 1,)``, captions of record i are rows ``offsets[i]:offsets[i+1]``.
    """

    def __init__(
        self, image_features: torch.Tensor, text_features: torch.Tensor, caption_offsets: torch.Tensor, seed: int = 0
    ) -> None:
        if caption_offsets.numel() != image_features.shape[0] + 1:
            raise ValueError(
                f"caption_offsets has {caption_offsets.numel()} entries, expected {image_features.shape[0] + 1}"
            )
        super().__init__(seed)
        self.image_features = image_features
        self.text_features = text_features
        self.caption_offsets = caption_offsets

    def __len__(self) -> int:
        return self.image_features.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = int(self.caption_offsets[index]), int(self.caption_offsets[index + 1])
        rows = range(start, end)
        return self.image_features[index], self.text_features[self.caption(rows, index)]


class ImageCaptionCollator:
    """Stacks images and tokenizes captions into the model's forward keywords."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[tuple[torch.Tensor, str]]) -> dict[str, torch.Tensor]:
        images, captions = zip(*batch)
        return {"image": torch.stack(images), **self.tokenizer(list(captions))}


def collate_cached_features(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    image_features, text_features = zip(*batch)
    return {"image_tower_features": torch.stack(image_features), "text_tower_features": torch.stack(text_features)}
