"""Gated fusion (seed article 001, 4.2.3): learned sigmoid gates decide, per feature, how much of each modality
enters the sum.

The seed gives, for ``x_1, x_2`` of one width::

    multiplicative:  f_mult(x_1, x_2) = x_1 ⊙ σ(W_x [x_1; x_2] + b_x) + x_2 ⊙ σ(W_y [x_1; x_2] + b_y)
    additive:        f_add(x_1, x_2)  = λ_1 ⊙ x_1 + λ_2 ⊙ x_2,   λ_1, λ_2 = σ(W_λ [x_1; x_2] + b_λ)

Read literally, the additive form (one ``W_λ`` whose output splits into ``λ_1, λ_2``) is the multiplicative
form with ``W_λ = [W_x; W_y]``: the same function. What sets additive gating apart in the literature (highway
networks, GMU) is that the gates are *complementary*: ``λ_2 = 1 − λ_1``, so the gate trades one modality for
the other instead of scaling each freely. That is the reading implemented here; :class:`ConvexGate` extends
it to M modalities with a softmax over modalities per feature.

Here ``x_m = h_m' = W_m h_m + b_m``, the pooled vectors projected to ``dim``, since towers differ in width.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput


class ConvexGate(nn.Module):
    """Per-feature convex weights over ``count`` modalities from one input vector: ``(B, F) -> (B, count, dim)``.

    For two modalities ``z = σ(W x + b)`` and the weights are ``(z, 1 − z)``: one gate, as in the GMU paper. For
    more, ``softmax`` over per-modality logits (``W x + b`` reshaped to ``(count, dim)``); with two it would equal
    ``σ(a_1 − a_2)``, the same family with twice the parameters, hence the special case.
    """

    def __init__(self, in_features: int, count: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        if count < 2:
            raise ValueError(f"a gate between modalities needs at least two, got {count}")
        self.count = count
        self.linear = nn.Linear(in_features, dim if count == 2 else count * dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        if self.count == 2:
            z = torch.sigmoid(logits)  # (B, dim)
            return torch.stack([z, 1 - z], dim=1)  # (B, 2, dim)
        return logits.unflatten(-1, (self.count, -1)).softmax(dim=1)  # (B, count * dim) -> (B, count, dim)


class _ProjectedGatedFusion(Fusion):
    """Shared part: every modality's pooled vector projected to ``dim``, stacked ``(B, M, dim)``."""

    uses_tokens = False

    def __init__(self, input_dims: Mapping[str, int], dim: int) -> None:
        super().__init__(input_dims, dim)
        if len(self.input_dims) < 2:
            raise ValueError(f"{type(self).__name__} gates between modalities and needs at least two")
        self.proj = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in self.input_dims.items()})

    def projected(self, features: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """``h_m' = W_m h_m + b_m`` stacked in configured order: ``(B, M, dim)``."""
        return torch.stack([self.proj[name](features[name].pooled) for name in self.input_dims], dim=1)


class GatedMultiplicativeFusion(_ProjectedGatedFusion):
    """``fused = Σ_m h_m' ⊙ σ(G_m [h_1'; ...; h_M'] + c_m)`` (seed 001, 4.2.3 乘性门控).

    Each modality has its own, independent gate (for M = 2, ``G_1 = W_x, G_2 = W_y``), so both can be open or
    shut at once. One ``Linear(M·dim, M·dim)`` holds all ``G_m`` stacked by rows, in configured order.
    """

    def __init__(self, input_dims: Mapping[str, int], dim: int) -> None:
        super().__init__(input_dims, dim)
        count = len(self.input_dims)
        self.gate = nn.Linear(count * dim, count * dim)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        h = self.projected(features)  # (B, M, dim)
        gates = torch.sigmoid(self.gate(h.flatten(1))).unflatten(-1, h.shape[1:])  # (B, M·dim) -> (B, M, dim)
        return FusionOutput(fused=(gates * h).sum(dim=1))


class GatedAdditiveFusion(_ProjectedGatedFusion):
    """``fused = Σ_m λ_m ⊙ h_m'`` with complementary gates (seed 001, 4.2.3 加性门控).

    M = 2: ``λ_1 = σ(W_λ [h_1'; h_2'] + b_λ)``, ``λ_2 = 1 − λ_1``. M > 2: ``λ = softmax_m(W_λ [h_1'; ...] + b_λ)``
    per feature (:class:`ConvexGate`). The gates sum to 1, so the output is a per-feature convex mix.
    """

    def __init__(self, input_dims: Mapping[str, int], dim: int) -> None:
        super().__init__(input_dims, dim)
        count = len(self.input_dims)
        self.gate = ConvexGate(count * dim, count, dim)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        h = self.projected(features)  # (B, M, dim)
        return FusionOutput(fused=(self.gate(h.flatten(1)) * h).sum(dim=1))
