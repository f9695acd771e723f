"""FiLM: feature-wise linear modulation (Perez et al., 2018, "FiLM: Visual Reasoning with a General Conditioning
Layer").

One modality (the condition, default text) predicts a per-channel scale and shift that modulate every token of
another (the target, default image)::

    Δγ, β = split(W c + b)                   c: the condition's pooled vector, γ = 1 + Δγ
    x̃_n   = γ ⊙ x_n + β                      for every target token x_n, width D_target
    tokens = P x̃_n + b_P                     (B, N, dim)
    fused  = mean of tokens over real positions

Predicting ``Δγ`` rather than ``γ`` and starting ``W, b`` at zero makes the layer start as the identity
modulation (the unconditioned network) instead of a random rescaling that zeroes or flips channels; conditioning
is learned from there.

The layer is FiLM alone, without the ReLU that follows it inside the paper's FiLM-ed residual blocks: here nothing
else comes before pooling, and a lone ReLU turns each channel into a hinge that dies for a condition value (all
``γ x + β < 0``, so no gradient reaches ``W`` to revive it). Since the modulation is affine per channel and ``P``
linear, ``fused = P(γ ⊙ mean(x) + β) + b_P``: the interaction with the condition is the bilinear term
``γ ⊙ mean(x)``; the non-linearity belongs to whatever consumes ``fused`` or ``tokens``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput, bool_mask, check_roles
from polymodal.layers.pooling import masked_mean


class FiLMFusion(Fusion):
    """Modulate the ``target`` modality's tokens with ``(γ, β)`` predicted from the ``condition``'s pooled vector.

    Args:
        condition: modality whose pooled vector predicts ``(γ, β)``.
        target: modality whose tokens are modulated; its mask decides which tokens are pooled.
    """

    uses_tokens = True

    def __init__(
        self, input_dims: Mapping[str, int], dim: int, condition: str = "text", target: str = "image"
    ) -> None:
        super().__init__(input_dims, dim)
        check_roles(self.input_dims, condition=condition, target=target)
        self.condition, self.target = condition, target
        target_dim = self.input_dims[target]
        self.film = nn.Linear(self.input_dims[condition], 2 * target_dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.proj = nn.Linear(target_dim, dim)

    def reads_tokens(self, modality: str) -> bool:
        """Only the target's tokens are read; the condition gives its pooled vector."""
        return modality == self.target

    def film_params(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(γ, β)``, each ``(B, D_target)``, from the condition's pooled vector ``(B, D_condition)``."""
        delta_gamma, beta = self.film(condition).chunk(2, dim=-1)
        return 1 + delta_gamma, beta

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        target = features[self.target]
        gamma, beta = self.film_params(features[self.condition].pooled)
        modulated = gamma.unsqueeze(1) * target.tokens + beta.unsqueeze(1)  # (B, N, D_target)
        tokens = self.proj(modulated)  # (B, N, dim)
        mask = bool_mask(target)
        return FusionOutput(fused=masked_mean(tokens, mask), tokens=tokens, mask=mask)
