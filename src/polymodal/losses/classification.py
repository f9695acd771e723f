"""Losses over a fixed set of outputs: VQA's soft-score binary cross-entropy and softmax classification."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def vqa_soft_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``Σ_answers BCE(σ(logit), soft score)`` averaged over questions.

    Each answer is scored independently against its soft score ``min(#annotators/3, 1)`` (Anderson et al. 2018;
    Teney et al. 2018 found this beats a softmax over answers). Summing over answers rather than averaging keeps
    the gradient per answer independent of the vocabulary size.

    Args:
        logits: ``(B, K)`` one logit per answer slot.
        targets: ``(B, K)`` soft scores in [0, 1].
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


class VQALoss(nn.Module):
    """:func:`vqa_soft_bce` as a module; keyword names match a VQA model's outputs (``logits``, ``targets``)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return vqa_soft_bce(logits, targets)


class ClassificationLoss(nn.Module):
    """Softmax cross-entropy with optional label smoothing; keywords ``logits`` ``(B, C)`` and ``labels`` ``(B,)``."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
