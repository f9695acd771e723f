"""Low-rank bilinear fusion: MLB (Kim et al., 2017, "Hadamard Product for Low-rank Bilinear Pooling").

A full bilinear map ``f_k = h_1^T W_k h_2`` needs ``d_1 · d_2 · dim`` weights. Writing every ``W_k`` as
``U diag(P_k) V^T`` with rank ``r`` turns it into a Hadamard product in an r-dimensional joint space::

    fused = P^T (tanh(U^T h_1 + b_U) ⊙ tanh(V^T h_2 + b_V)) + b_P

MLB puts the ``tanh`` on each factor; MUTAN (Ben-younes et al., 2017) is the same pattern with a rank-constrained
Tucker core, i.e. a sum of such terms. More than two modalities multiply all factors:
``fused = P^T (∘_m tanh(U_m^T h_m + b_m)) + b_P``. Compared with :class:`polymodal.fusion.tensor.TensorFusion` there
is no appended 1, so there are no unimodal terms: every output is a genuine interaction of all modalities.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput


class BilinearFusion(Fusion):
    """``fused = P^T (∘_m tanh(U_m^T h_m + b_m)) + b_P`` over the pooled vectors.

    Args:
        rank: width ``r`` of the joint space the factors meet in; defaults to ``dim`` (MLB uses a few thousand
            for VQA, where ``dim`` is the answer-head input).
    """

    uses_tokens = False

    def __init__(self, input_dims: Mapping[str, int], dim: int, rank: int | None = None) -> None:
        super().__init__(input_dims, dim)
        rank = rank or dim
        self.factors = nn.ModuleDict({name: nn.Linear(width, rank) for name, width in self.input_dims.items()})
        self.out = nn.Linear(rank, dim)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        joint = None
        for name in self.input_dims:
            factor = self.factors[name](features[name].pooled).tanh()  # (B, r)
            joint = factor if joint is None else joint * factor
        return FusionOutput(fused=self.out(joint))
