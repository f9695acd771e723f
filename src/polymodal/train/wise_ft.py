"""Weight-space ensembling of a zero-shot model and its fine-tuned version (WiSE-FT, Wortsman et al. 2022).

Our bridge models start as a training-free zero-shot model whose learned parts are residual branches that
begin at zero. Interpolating ``(1 - alpha) * zero + alpha * fine_tuned`` is therefore a scaling of those
residual branches by ``alpha``: ``alpha = 0`` is the bridge, ``alpha = 1`` the fine-tuned model. Fine-tuning
on one domain (emoji) overfits it; a small ``alpha`` keeps most of the in-domain gain and most of the bridge's
transfer to other domains (photos).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

DEFAULT_ALPHAS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def residual_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every zero-initialised residual branch (heads that define ``residual_branch``)."""
    parameters = [p for module in model.modules() if hasattr(module, "residual_branch")
                  for p in module.residual_branch().parameters()]
    if not parameters:
        raise ValueError("the model has no residual heads: WiSE-FT mixing needs a bridge model")
    return parameters


@torch.no_grad()
def mix_residuals(model: nn.Module, alpha: float) -> None:
    """Scale every residual branch by ``alpha`` in place (0 = the zero-shot bridge, 1 = unchanged)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for parameter in residual_parameters(model):
        parameter.mul_(alpha)


@torch.no_grad()
def select_alpha(
    model: nn.Module,
    score: Callable[[nn.Module], float],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    keep: float = 0.9,
) -> tuple[float, dict[float, float]]:
    """The smallest ``alpha`` whose in-domain validation ``score`` keeps ``keep`` of the fine-tuned score.

    Only in-domain validation data decides, so out-of-domain test sets stay untouched. The model is left
    unchanged; returns the chosen alpha and the score of every alpha tried.
    """
    saved = [p.detach().clone() for p in residual_parameters(model)]
    scores: dict[float, float] = {}
    try:
        for alpha in sorted(set(alphas) | {1.0}):
            for parameter, original in zip(residual_parameters(model), saved):
                parameter.copy_(original * alpha)
            scores[alpha] = score(model)
    finally:
        for parameter, original in zip(residual_parameters(model), saved):
            parameter.copy_(original)
    target = keep * scores[1.0]
    chosen = min(alpha for alpha, value in scores.items() if value >= target)
    return chosen, scores
