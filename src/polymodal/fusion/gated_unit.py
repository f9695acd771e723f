"""Gated Multimodal Unit, GMU (Arevalo et al., 2017, "Gated Multimodal Units for Information Fusion").

For two modalities, exactly as the paper (no biases)::

    h_m = tanh(W_m x_m)                    each modality's own non-linear view, width dim
    z   = σ(W_z [x_1; x_2])                gate read from the *raw* inputs of all modalities
    fused = z ⊙ h_1 + (1 − z) ⊙ h_2

For M > 2 modalities the paper's complementary pair ``(z, 1 − z)`` becomes a softmax over per-modality gate
logits, per feature: ``z = softmax_m(W_z [x_1; ...; x_M])`` reshaped to ``(M, dim)``, ``fused = Σ_m z_m ⊙ h_m``
(:class:`polymodal.fusion.gated.ConvexGate`).

Seed article 004, 4.2.2 ("多模态门控单元") prints a recurrent gate ``h_t = z_t ⊙ σ(W_z z_t + U_h h_{t−1} + b_h)``;
that is a gated recurrence over time, not the GMU, and is not what this module implements. What separates the
GMU from :class:`polymodal.fusion.gated.GatedAdditiveFusion` is the ``tanh`` on each view and the gate reading
the unprojected inputs.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput
from polymodal.fusion.gated import ConvexGate


class GatedMultimodalUnit(Fusion):
    """``fused = Σ_m z_m ⊙ tanh(W_m x_m)``, ``z = gate(W_z [x_1; ...; x_M])`` with ``(z, 1 − z)`` for two."""

    uses_tokens = False

    def __init__(self, input_dims: Mapping[str, int], dim: int) -> None:
        super().__init__(input_dims, dim)
        if len(self.input_dims) < 2:
            raise ValueError("GatedMultimodalUnit gates between modalities and needs at least two")
        self.proj = nn.ModuleDict({name: nn.Linear(width, dim, bias=False) for name, width in self.input_dims.items()})
        self.gate = ConvexGate(sum(self.input_dims.values()), len(self.input_dims), dim, bias=False)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        views = torch.stack([torch.tanh(self.proj[name](features[name].pooled)) for name in self.input_dims], dim=1)
        z = self.gate(torch.cat(self.pooled(features), dim=-1))  # (B, M, dim)
        return FusionOutput(fused=(z * views).sum(dim=1))  # (B, M, dim) -> (B, dim)
