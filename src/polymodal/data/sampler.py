"""The sampler every map-style training set uses: one shared permutation per epoch, resumable mid-epoch."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableRandomSampler"]


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
