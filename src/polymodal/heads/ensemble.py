"""Output-space ensemble of a head's zero-shot part and its fine-tuned whole.

    x ─► head.zero_shot(x) ─► L2 norm ─► x √w        ┐
    x ─► head(x)           ─► L2 norm ─► x √(1 − w)  ┴─► concat  (B, 2D), unit norm

Both towers wrapped alike make every image–text dot product ``w · cos_zero_shot + (1 − w) · cos_fine_tuned``:
one vector per item, so a single index serves the ensemble. ``w = 0`` is the fine-tuned model, ``w = 1`` the
training-free bridge. Training runs at ``w = 0``; :func:`polymodal.train.ensemble_weight.select_ensemble_weight`
picks ``w`` afterwards. Fine-tuning on one domain (emoji) overfits it, and the zero-shot half keeps the
bridge's transfer to other domains (photos).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroShotEnsembleHead(nn.Module):
    """Wraps a head that has a ``zero_shot(x)`` part; ``ensemble_weight`` (a buffer, saved with the weights)
    sets the zero-shot share of every similarity."""

    def __init__(self, head: nn.Module, ensemble_weight: float = 0.0) -> None:
        super().__init__()
        if not hasattr(head, "zero_shot"):
            raise ValueError(f"{type(head).__name__} has no zero_shot part to ensemble with")
        self.head = head
        self.register_buffer("ensemble_weight", torch.tensor(float(ensemble_weight)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.ensemble_weight
        zero_shot = F.normalize(self.head.zero_shot(features), dim=-1)  # (B, D)
        tuned = F.normalize(self.head(features), dim=-1)  # (B, D)
        return torch.cat([weight.sqrt() * zero_shot, (1 - weight).sqrt() * tuned], dim=-1)  # (B, 2D)
