"""Late (decision-level) fusion: combine per-branch prediction logits ``(B, C)``, one branch per modality.

This is a head-level combiner, not a :class:`~polymodal.fusion.base.Fusion`: it sees predictions, not features.
The three levels of seed articles 001 (2.2, 3) and 003 (2.3), and how to express each:

* **early** (feature-level): ``logits = head(fusion(features).fused)`` with any ``build_fusion`` kind;
* **late** (decision-level): one head per modality on its pooled features, then
  ``LateFusion(["image", "text"], mode)({"image": head_image(...), "text": head_text(...)})``;
* **hybrid**: both, the early branch being one more branch of the late combiner:
  ``LateFusion(["image", "text", "fused"], mode)({..., "fused": head(fusion(features).fused)})``.

Modes, with ``y_m`` the branch logits::

    mean:      ŷ = (1/M) Σ_m y_m
    weighted:  ŷ = Σ_m softmax(w)_m y_m             w ∈ R^M learned, starts at 0 (= mean)
    gate:      ŷ = Σ_m g_m(x) y_m,  g(x) = softmax(W [x_1; ...; x_K] + b)      per-sample, from features x

Logits rather than probabilities are averaged: under a softmax that is a weighted geometric mean of the branch
distributions (a product of experts), so a confident branch is not diluted by a uniform one as in arithmetic
probability averaging, and the result feeds the usual cross-entropy directly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from polymodal.fusion.base import check_choice, check_modalities


class LateFusion(nn.Module):
    """Combine ``{branch: logits (B, C)}`` into ``(B, C)`` by ``"mean"``, ``"weighted"`` or ``"gate"``.

    Args:
        branches: branch names, in the order of :meth:`weights`' columns.
        mode: ``"mean"``, ``"weighted"`` (learned, input-independent) or ``"gate"`` (learned, per sample).
        feature_dims: ``"gate"`` only: ``{name: width}`` of the pooled features the gate reads (the modalities'
            pooled vectors, and for a hybrid model possibly the fused one); their names need not be branches.
    """

    def __init__(
        self, branches: Sequence[str], mode: str = "mean", feature_dims: Mapping[str, int] | None = None
    ) -> None:
        super().__init__()
        check_choice("mode", mode, ("mean", "weighted", "gate"))
        if len(branches) < 1 or len(set(branches)) != len(branches):
            raise ValueError(f"branches must be distinct names, at least one, got {list(branches)}")
        if (mode == "gate") != (feature_dims is not None):
            raise ValueError("feature_dims is required by mode='gate' and only used by it")
        self.branches, self.mode = list(branches), mode
        self.feature_dims = dict(feature_dims or {})
        if mode == "weighted":
            self.logit_weights = nn.Parameter(torch.zeros(len(self.branches)))
        if mode == "gate":
            self.gate = nn.Linear(sum(self.feature_dims.values()), len(self.branches))

    def weights(
        self, logits: Mapping[str, torch.Tensor], features: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Branch weights ``(B, M)``, non-negative and summing to 1 over branches, in ``branches`` order."""
        check_modalities(logits, self.branches, what="branch")
        reference = logits[self.branches[0]]
        batch = reference.shape[0]
        if self.mode == "mean":
            return reference.new_full((batch, len(self.branches)), 1 / len(self.branches))
        if self.mode == "weighted":
            return self.logit_weights.softmax(dim=0).expand(batch, -1)
        if features is None:
            raise ValueError("mode='gate' needs the pooled features the gate reads")
        check_modalities(features, self.feature_dims, what="feature")
        return self.gate(torch.cat([features[name] for name in self.feature_dims], dim=-1)).softmax(dim=-1)

    def forward(
        self, logits: Mapping[str, torch.Tensor], features: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``{branch: (B, C)}`` (and, for ``"gate"``, ``{name: (B, D)}`` features) -> combined logits ``(B, C)``."""
        weights = self.weights(logits, features)  # (B, M); checks the branch names first
        stacked = torch.stack([logits[name] for name in self.branches], dim=1)  # (B, M, C)
        return (weights.unsqueeze(-1) * stacked).sum(dim=1)
