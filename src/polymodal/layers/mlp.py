"""The position-wise feed-forward network of a transformer block."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Activation = Literal["gelu", "quick_gelu", "gelu_tanh"]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the sigmoid approximation of GELU that OpenAI's CLIP was trained with, so its
    checkpoints (and open_clip's ``-quickgelu`` ones) need it to reproduce their outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: Activation) -> nn.Module:
    """The activation called ``name``: ``"gelu"`` (exact, erf), ``"quick_gelu"`` or ``"gelu_tanh"``."""
    if name == "gelu":
        # Exact (erf) GELU, as in BERT, ViT and CLIP; the tanh approximation would break parity with them.
        return nn.GELU()
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu_tanh":
        # The tanh approximation SigLIP was trained with (HF's "gelu_pytorch_tanh"), needed for its parity.
        return nn.GELU(approximate="tanh")
    raise ValueError(f"activation must be 'gelu', 'quick_gelu' or 'gelu_tanh', got {name!r}")


class Mlp(nn.Module):
    """``Linear -> activation -> Dropout -> Linear -> Dropout``: ``(..., D) -> (..., out_features or D)``.

    Attribute names (``fc1``, ``fc2``) match timm's ``Mlp`` so ViT weights map across unchanged.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        drop: float = 0.0,
        act: Activation = "gelu",
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = make_activation(act)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
