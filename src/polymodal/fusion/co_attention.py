"""Two-stream co-attention fusion (ViLBERT, Lu et al. 2019; LXMERT, Tan & Bansal 2019; seed article 004, 5.2.1
and 5.3.1).

Each modality keeps its own stream; in every layer each stream first attends to the *other* stream, then to
itself (ViLBERT's Co-TRM followed by a TRM)::

    a' = a + CrossAttn(LN(a), LN(b));  a' = a' + MLP(LN(a'))       both directions read the same layer input
    b' = b + CrossAttn(LN(b), LN(a));  b' = b' + MLP(LN(b'))       (a, b), not each other's update
    a  = Block(a'),  b = Block(b')                                  self-attention + MLP, pre-norm

Streams start as ``P_m T_m`` (tokens projected to ``dim``) and end with a LayerNorm each. Each is pooled (mean over
real tokens, or first token), and the two pooled vectors are combined:

* ``combine="product"``: ``fused = p_a ⊙ p_b``, ViLBERT's ``h_IMG ⊙ h_CLS`` (no extra parameters, and only a
  genuine interaction of both streams survives);
* ``combine="concat"``: ``fused = W [p_a; p_b] + b``.

``tokens`` is ``[a; b]`` (B, N_a + N_b, dim), the modalities in configured order.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput, bool_mask, check_choice, concat_masks, pool_tokens
from polymodal.fusion.cross_attention import CrossAttentionBlock
from polymodal.layers.transformer import Block, init_weights


class CoAttentionLayer(nn.Module):
    """One two-stream layer: co-attention (each stream to the other) then per-stream self-attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.cross_a = CrossAttentionBlock(dim, heads, mlp_ratio)
        self.cross_b = CrossAttentionBlock(dim, heads, mlp_ratio)
        self.self_a = Block(dim, heads, mlp_ratio)
        self.self_b = Block(dim, heads, mlp_ratio)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, mask_a: torch.Tensor | None, mask_b: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``a (B, N_a, D)``, ``b (B, N_b, D)``, masks True = real -> updated ``(a, b)``."""
        # One tuple assignment: both right-hand sides are evaluated before either stream is replaced.
        a, b = self.cross_a(a, b, mask_b), self.cross_b(b, a, mask_a)
        return self.self_a(a, mask_a), self.self_b(b, mask_b)


class CoAttentionFusion(Fusion):
    """Two streams exchanging information through co-attention; needs exactly two modalities.

    Args:
        layers: co-attention layers.
        heads: attention heads; must divide ``dim``.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        pool: ``"mean"`` (over real tokens) or ``"first"``, applied to both streams.
        combine: ``"product"`` (ViLBERT) or ``"concat"`` (then a linear map to ``dim``).
    """

    uses_tokens = True

    def __init__(
        self,
        input_dims: Mapping[str, int],
        dim: int,
        layers: int = 1,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        pool: str = "mean",
        combine: str = "product",
    ) -> None:
        super().__init__(input_dims, dim)
        if len(self.input_dims) != 2:
            raise ValueError(f"co-attention has two streams, got modalities {self.modalities}")
        check_choice("pool", pool, ("mean", "first"))
        check_choice("combine", combine, ("product", "concat"))
        self.pool, self.combine = pool, combine
        self.proj = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in self.input_dims.items()})
        self.layers = nn.ModuleList(CoAttentionLayer(dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.ModuleDict({name: nn.LayerNorm(dim) for name in self.input_dims})
        self.out = nn.Linear(2 * dim, dim) if combine == "concat" else None
        self.apply(init_weights)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        first, second = self.modalities
        a, b = self.proj[first](features[first].tokens), self.proj[second](features[second].tokens)
        mask_a, mask_b = bool_mask(features[first]), bool_mask(features[second])
        for layer in self.layers:
            a, b = layer(a, b, mask_a, mask_b)
        a, b = self.norm[first](a), self.norm[second](b)
        pooled_a, pooled_b = pool_tokens(a, mask_a, self.pool), pool_tokens(b, mask_b, self.pool)  # (B, dim) each
        if self.out is None:
            fused = pooled_a * pooled_b
        else:
            fused = self.out(torch.cat([pooled_a, pooled_b], dim=-1))
        tokens = torch.cat([a, b], dim=1)  # (B, N_a + N_b, dim)
        return FusionOutput(fused=fused, tokens=tokens, mask=concat_masks([a, b], [mask_a, mask_b]))
