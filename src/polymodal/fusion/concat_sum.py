"""The two simplest feature-level fusions: concatenation and element-wise sum (seed article 001, 4.2.1-4.2.2).

Both are linear in each modality, so on their own (without ``hidden``) they cannot model interactions such as
"the answer depends on image *and* text jointly": a linear head on top stays linear in each input.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput
from polymodal.layers.mlp import Mlp


class ConcatFusion(Fusion):
    """``fused = W [h_1; h_2; ...; h_M] + b``, or ``MLP([h_1; ...; h_M])`` when ``hidden`` is set.

    The seed's ``f_concat(x_1, x_2) = [x_1; x_2]`` followed by a projection to ``dim`` (the concatenation alone
    has width ``Σ D_m``, which depends on the towers). ``h_m`` are the pooled vectors in ``input_dims`` order.

    Args:
        hidden: width of a GELU hidden layer (``Linear -> GELU -> Linear``); None for the single linear map.
    """

    uses_tokens = False

    def __init__(self, input_dims: Mapping[str, int], dim: int, hidden: int | None = None) -> None:
        super().__init__(input_dims, dim)
        total = sum(self.input_dims.values())
        self.proj = nn.Linear(total, dim) if hidden is None else Mlp(total, hidden, dim)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        return FusionOutput(fused=self.proj(torch.cat(self.pooled(features), dim=-1)))  # (B, Σ D_m) -> (B, dim)


class SumFusion(Fusion):
    """``fused = Σ_m W_m h_m + b``.

    The seed's ``f_sum(x_1, x_2) = x_1 + x_2`` assumes equal widths; the per-modality maps ``W_m`` (no bias each,
    one shared ``b``: per-modality biases would only add up to it) bring every modality to ``dim`` first.
    """

    uses_tokens = False

    def __init__(self, input_dims: Mapping[str, int], dim: int) -> None:
        super().__init__(input_dims, dim)
        self.proj = nn.ModuleDict({name: nn.Linear(width, dim, bias=False) for name, width in self.input_dims.items()})
        self.bias = nn.Parameter(torch.zeros(dim))

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        fused = sum(self.proj[name](features[name].pooled) for name in self.input_dims)
        return FusionOutput(fused=fused + self.bias)
