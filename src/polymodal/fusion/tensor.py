"""Tensor fusion (Zadeh et al., 2017, TFN) and its low-rank factorisation (Liu et al., 2018, LMF).

Tensor fusion takes the outer product of every modality's vector with a 1 appended::

    z = vec(⊗_m [h_m; 1])          size Π_m (d_m + 1)
    fused = W z + b

The appended 1 makes the product hold every lower-order term too: for two modalities ``z`` contains ``h_1``,
``h_2``, every ``h_1[i] h_2[j]`` and the constant. Seed article 004, 4.2.3 writes the bimodal case as a weight
tensor contracted with both inputs, ``T = Σ_ij W_ij ×_1 x_i ×_2 y_j``; ``W z`` is that contraction.

The product's size is exponential in M, so tensor fusion first projects each pooled vector to a small
``proj_dim`` (the paper's per-modality sub-networks). Low-rank fusion never builds ``z``: with ``W`` written as a
sum of ``r`` outer products of per-modality factors ``W_m^{(i)} ∈ R^{(d_m + 1) × dim}``::

    fused = Σ_{i=1..r} ∘_m (W_m^{(i)T} [h_m; 1]) + b      (∘ = element-wise product over modalities)

which equals ``W z + b`` for ``W[a_1, ..., a_M, k] = Σ_i Π_m W_m^{(i)}[a_m, k]``, at cost linear in ``d_m``.
"""
from __future__ import annotations

from collections.abc import Mapping
from math import prod

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput


def _append_one(vector: torch.Tensor) -> torch.Tensor:
    """``(B, d) -> (B, d + 1)``: ``[h; 1]``, created on ``vector``'s device and dtype."""
    return torch.cat([vector, vector.new_ones(vector.shape[0], 1)], dim=-1)


class TensorFusion(Fusion):
    """``fused = W vec(⊗_m [h_m'; 1]) + b`` with ``h_m' = P_m h_m`` (or ``h_m`` when ``proj_dim`` is None).

    Args:
        proj_dim: width each pooled vector is projected to before the product (keeps ``Π (proj_dim + 1)``
            small: 289 features for two modalities at 16); None multiplies the raw pooled vectors.
    """

    uses_tokens = False

    def __init__(self, input_dims: Mapping[str, int], dim: int, proj_dim: int | None = 16) -> None:
        super().__init__(input_dims, dim)
        if proj_dim is None:
            self.proj = None
            widths = list(self.input_dims.values())
        else:
            self.proj = nn.ModuleDict({name: nn.Linear(width, proj_dim) for name, width in self.input_dims.items()})
            widths = [proj_dim] * len(self.input_dims)
        self.out = nn.Linear(prod(width + 1 for width in widths), dim)

    def product(self, features: Mapping[str, EncoderOutput]) -> torch.Tensor:
        """The pre-projection vector ``z = vec(⊗_m [h_m'; 1])``: ``(B, Π_m (d_m + 1))``, row-major in modality order
        (the first modality's index varies slowest, as ``torch.outer(a, b).flatten()``)."""
        self.check(features)
        z = None
        for name in self.input_dims:
            pooled = features[name].pooled
            vector = _append_one(pooled if self.proj is None else self.proj[name](pooled))  # (B, d + 1)
            # (B, P, 1) * (B, 1, d + 1) -> (B, P * (d + 1)): the running product gains one mode per modality.
            z = vector if z is None else (z.unsqueeze(-1) * vector.unsqueeze(1)).flatten(1)
        return z

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        return FusionOutput(fused=self.out(self.product(features)))


class LowRankTensorFusion(Fusion):
    """``fused = Σ_{i=1..r} ∘_m (W_m^{(i)T} [h_m; 1]) + b`` (Liu et al., 2018).

    The factors of modality ``m`` are one registered parameter ``factors[m]`` of shape ``(r, d_m + 1, dim)``:
    a plain Python list of tensors (a known pitfall of LMF re-implementations) would be invisible to ``.parameters()``,
    so never trained, saved or moved by ``.to()``.

    Args:
        rank: the number ``r`` of rank-one terms (the paper finds small ranks enough).
    """

    uses_tokens = False

    def __init__(self, input_dims: Mapping[str, int], dim: int, rank: int = 4) -> None:
        super().__init__(input_dims, dim)
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.rank = rank
        self.factors = nn.ParameterDict(
            {name: nn.Parameter(torch.empty(rank, width + 1, dim)) for name, width in self.input_dims.items()}
        )
        self.bias = nn.Parameter(torch.zeros(dim))
        for name, width in self.input_dims.items():
            # Unit-variance inputs give unit-variance factor outputs, so each product term starts O(1) whatever
            # M is (Xavier init on the 3-d tensor would shrink them with rank and dim instead).
            nn.init.normal_(self.factors[name], std=(width + 1) ** -0.5)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        product = None
        for name in self.input_dims:
            vector = _append_one(features[name].pooled)  # (B, d + 1)
            term = torch.einsum("bd,rdk->brk", vector, self.factors[name])  # (B, r, dim)
            product = term if product is None else product * term
        return FusionOutput(fused=product.sum(dim=1) + self.bias)  # (B, r, dim) -> (B, dim)
