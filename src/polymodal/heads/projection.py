"""Projection heads: tower features ``(B, F)`` → joint embedding space ``(B, D)``."""
from __future__ import annotations

import torch
from torch import nn


class LinearProjection(nn.Module):
    """CLIP's projection: one bias-free linear map."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, out_features, bias=False)
        nn.init.normal_(self.proj.weight, std=in_features**-0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class ResidualProjection(nn.Module):
    """``x + W x`` with ``W`` starting at zero, so training starts from the tower's own embedding space.

    Used when a pretrained text tower's space already is the joint space (LiT-style): the head begins as the
    identity and only learns the correction the training data asks for.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.correction = nn.Linear(dim, dim)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def zero_shot(self, features: torch.Tensor) -> torch.Tensor:
        """The untrained part: the tower's own embedding."""
        return features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.correction(features)
