"""The one output type every encoder returns, so fusion and projection code never asks which tower it got."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncoderOutput:
    """What an encoder returns for one modality.

    Attributes:
        tokens: per-position features, shape ``(B, N, D)``; for CNNs the flattened feature map.
        pooled: one vector per sample, shape ``(B, D)``.
        mask: ``(B, N)`` bool, True where ``tokens`` holds a real position; None when every position is real.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor | None = None
