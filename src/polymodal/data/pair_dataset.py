"""The contrastive task's torch datasets and collates over an :class:`ImageTextSet`: (image, caption) pairs.

Each image is seen once per epoch with one of its captions, chosen deterministically from (seed, epoch, index)
so a resumed run sees exactly the batches the interrupted run would have seen.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from polymodal.data.records import ImageTextSet, caption_choice
from polymodal.data.tokenizers import TextTokenizer


class ImageCaptionDataset(Dataset):
    """Yields ``(image_tensor, caption)``: one item per image, a caption drawn per epoch."""

    def __init__(
        self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor], seed: int = 0
    ) -> None:
        empty = [r.key for r in dataset.records if not r.captions]
        if empty:
            raise ValueError(f"{dataset.name}: {len(empty)} records have no caption (first: {empty[0]})")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def caption_index(self, index: int) -> int:
        captions = self.dataset.records[index].captions
        return caption_choice(self.seed, self.epoch, index, len(captions))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        record = self.dataset.records[index]
        return self.transform(self.dataset.image(index)), record.captions[self.caption_index(index)]


class CachedFeatureDataset(Dataset):
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
        self.image_features = image_features
        self.text_features = text_features
        self.caption_offsets = caption_offsets
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.image_features.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = int(self.caption_offsets[index]), int(self.caption_offsets[index + 1])
        choice = start + caption_choice(self.seed, self.epoch, index, end - start)
        return self.image_features[index], self.text_features[choice]


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
