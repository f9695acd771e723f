"""Torch datasets and samplers over an :class:`ImageTextSet` for contrastive training.

Each image is seen once per epoch with one of its captions, chosen deterministically from (seed, epoch, index)
so a resumed run sees exactly the batches the interrupted run would have seen.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from polymodal.data.records import ImageTextSet
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
        return random.Random(hash((self.seed, self.epoch, index))).randrange(len(captions))

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
        choice = start + random.Random(hash((self.seed, self.epoch, index))).randrange(end - start)
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


class ResumableRandomSampler(Sampler[int]):
    """A per-epoch permutation seeded by (seed, epoch), shared by every rank, that can start part-way through.

    Rank r takes positions ``r, r + W, r + 2W, ...`` of the permutation (W = ``world_size``). With a per-rank
    batch of B, global batch j is then positions ``[j·B·W, (j+1)·B·W)``: after k global batches exactly the first
    ``k·B·W`` positions are consumed, whatever W was. ``start`` counts those global samples, so a run resumed with
    another world size continues at the same place in the epoch's order. Every rank gets
    ``(length - start) // world_size`` indices (the remainder is dropped), so all ranks step in lockstep.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Begin ``epoch`` after its first ``start`` samples (counted over all ranks)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        end = self.start + len(self) * self.world_size
        return iter(order[self.start + self.rank : end : self.world_size])

    def __len__(self) -> int:
        return max(0, self.length - self.start) // self.world_size
