"""Choosing how much of the zero-shot bridge a fine-tuned model keeps (see ``heads/ensemble.py``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from polymodal.heads.ensemble import ZeroShotEnsembleHead

DEFAULT_WEIGHTS: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def _ensemble_heads(model: nn.Module) -> list[ZeroShotEnsembleHead]:
    heads = [module for module in model.modules() if isinstance(module, ZeroShotEnsembleHead)]
    if not heads:
        raise ValueError("the model has no zero-shot ensemble heads (only bridge models such as lit-effnet-minilm do)")
    return heads


@torch.no_grad()
def set_ensemble_weight(model: nn.Module, weight: float) -> None:
    """Give every ensemble head the zero-shot share ``weight`` (0 = fine-tuned only, 1 = bridge only)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"ensemble weight must be in [0, 1], got {weight}")
    for head in _ensemble_heads(model):
        head.ensemble_weight.fill_(weight)


@torch.no_grad()
def select_ensemble_weight(
    model: nn.Module,
    score: Callable[[nn.Module], float],
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    keep: float = 0.9,
) -> tuple[float, dict[float, float]]:
    """The largest zero-shot share whose in-domain validation ``score`` keeps ``keep`` of the fine-tuned score.

    Only in-domain validation data decides, so out-of-domain test sets stay untouched. The model's current
    weight is restored; returns the chosen weight and the score of every weight tried.
    """
    original = float(_ensemble_heads(model)[0].ensemble_weight)
    scores: dict[float, float] = {}
    try:
        for weight in sorted(set(weights) | {0.0}):
            set_ensemble_weight(model, weight)
            scores[weight] = score(model)
    finally:
        set_ensemble_weight(model, original)
    target = keep * scores[0.0]
    return max(weight for weight, value in scores.items() if value >= target), scores
