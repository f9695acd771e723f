"""Top-k accuracy for classification logits (zero-shot or supervised)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["topk_accuracy"]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of samples whose true class is among the k highest logits, for each k.

    Ties are counted against the sample: every other class whose logit equals the true class's logit ranks
    ahead of it, so constant logits never score a hit by luck of sort order (the same rule as the retrieval
    metrics). A k at or above the number of classes C gives 100, i.e. k is clipped to C.

    Args:
        logits: ``(N, C)`` scores; higher means more likely.
        labels: ``(N,)`` integer class indices in ``0..C-1``.
        ks: cut-offs, positive integers.

    Returns:
        ``{"top{k}": percent}`` for each k in ``ks``, in 0..100.
    """
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {tuple(ks)}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with N, C >= 1, got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape (N,) = ({logits.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    num_classes = logits.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got values from {labels.min().item()} to {labels.max().item()}"
        )
    # A NaN true-class logit compares False with everything and would count as rank 0.
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    labels = labels.to(logits.device)
    true_logit = logits.gather(1, labels[:, None].long())  # (N, 1)
    classes_ahead = (logits >= true_logit).sum(dim=1) - 1  # (N,), minus the true class itself
    return {f"top{k}": 100.0 * (classes_ahead < k).double().mean().item() for k in ks}
