"""The position-wise feed-forward network of a transformer block."""
from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """``Linear -> GELU -> Dropout -> Linear -> Dropout``: ``(..., D) -> (..., out_features or D)``.

    Attribute names (``fc1``, ``fc2``) match timm's ``Mlp`` so ViT weights map across unchanged.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        # Exact (erf) GELU, as in BERT, ViT and CLIP; the tanh approximation would break parity with them.
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
