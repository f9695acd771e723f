"""Attention-weighted fusion over modalities (seed article 003, 4.1).

The seed scores each modality against a target ``y``: ``α_i = exp(s(x_i, y)) / Σ_j exp(s(x_j, y))``. With no
target modality singled out, ``y`` is a learned context vector ``w`` and ``s`` the additive (Bahdanau) score,
as in hierarchical attention networks (seed article 004, 4.2.1 writes the same form,
``α_ij = softmax_j(e_ij)``, ``e_ij = f_att(h_i, z_j)``)::

    h_m' = W_m h_m + b_m                    (pooled vectors brought to one width)
    e_m  = w^T tanh(W_a h_m' + b_a)         (one score per modality and sample)
    α    = softmax_m(e)                     (B, M), sums to 1 over modalities
    fused = Σ_m α_m h_m'

Unlike the gated families, one scalar weight per modality (not per feature), so ``α`` is readable: it is returned
as ``FusionOutput.weights``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput


class AttentionWeightedFusion(Fusion):
    """``fused = Σ_m softmax_m(w^T tanh(W_a h_m' + b_a)) h_m'`` with ``h_m' = W_m h_m + b_m``.

    Args:
        attn_dim: width of the scoring layer ``W_a``; defaults to ``dim``.
    """

    uses_tokens = False

    def __init__(self, input_dims: Mapping[str, int], dim: int, attn_dim: int | None = None) -> None:
        super().__init__(input_dims, dim)
        attn_dim = attn_dim or dim
        self.proj = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in self.input_dims.items()})
        self.score_hidden = nn.Linear(dim, attn_dim)
        self.context = nn.Linear(attn_dim, 1, bias=False)  # w: a bias would shift every score alike, a no-op

    def scores(self, projected: torch.Tensor) -> torch.Tensor:
        """``e_m = w^T tanh(W_a h_m' + b_a)``: ``(B, M, dim) -> (B, M)``."""
        return self.context(torch.tanh(self.score_hidden(projected))).squeeze(-1)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        projected = torch.stack([self.proj[name](features[name].pooled) for name in self.input_dims], dim=1)
        weights = self.scores(projected).softmax(dim=1)  # (B, M)
        fused = (weights.unsqueeze(-1) * projected).sum(dim=1)  # (B, M, dim) -> (B, dim)
        return FusionOutput(fused=fused, weights=weights)
