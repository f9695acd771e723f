"""Cross-attention fusion: the query modality's tokens (default text) attend to the context modality's tokens
(default image): seed article 004, 3.2.2 (图文交叉注意力), the cross-attention sub-layer of fusion encoders such as
ALBEF's; with ``self_attention=True`` each layer is ALBEF's whole fusion layer.

Each layer is a pre-norm residual block, with ``Attention(Q, K, V) = softmax(Q K^T / √d_k) V`` per head::

    x = x + SelfAttn(LN_s(x))                            only with self_attention=True; keys: real query tokens
    x = x + CrossAttn(Q = LN_q(x), K = V = LN_c(c))      keys from the context's real tokens only
    x = x + MLP(LN(x))

with ``x = P_q T_query`` and ``c = P_c T_context`` both projected to ``dim`` (the context is projected once and
shared by all layers). After a final LayerNorm, ``fused`` pools the query stream: the mean over its real tokens
(``pool="mean"``), its first token (``pool="first"``, for encoders that emit a CLS token), or its first ``slots``
positions side by side, padding zeroed, through one linear map (``pool="slots"``)::

    fused = W [x_1; x_2; ...; x_slots] + b,     W: (dim, slots·dim)

Without self-attention the query tokens never read each other, so each query position's output depends on that
position and the context alone, and a relation between two things the words found ("is the circle left of the
square?") has to come out of the per-token MLPs and the pooled sum. Self-attention lets the words exchange what
they found before pooling. Neither helps with a relation between two named things: a mean is the same for
"A ... B" and "B ... A" up to what the text tower's positions leave in the tokens, so on the shapes world's "is A
left of B?" the mean-pooled read-out stays at chance. ``pool="slots"`` keeps each word's read of the image in its
own place, where ``x_A - x_B`` is a linear function of the read-out; a tiny model learns the relation with it
(tests/fusion/test_learning.py); on the shapes world it learns one relation with appended position channels but not
yet the world's own mixed questions (docs/position_curriculum.md).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.fusion.base import Fusion, FusionOutput, bool_mask, check_choice, check_roles, pool_tokens
from polymodal.layers.attention import Attention, CrossAttention
from polymodal.layers.mlp import Mlp
from polymodal.layers.pooling import ordered_slots
from polymodal.layers.transformer import init_weights


class CrossAttentionBlock(nn.Module):
    """Pre-norm ``x + CrossAttn(LN(x), LN(context))`` then ``x + MLP(LN(x))``: ``(B, N, D), (B, M, D) -> (B, N, D)``,
    optionally after ``x + SelfAttn(LN(x))`` (ALBEF's fusion layer).

    Also the co-attention sub-layer of :class:`polymodal.fusion.co_attention.CoAttentionFusion` (ViLBERT's Co-TRM).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, self_attention: bool = False) -> None:
        super().__init__()
        if self_attention:
            self.norm_self = nn.LayerNorm(dim)
            self.self_attn = Attention(dim, num_heads=heads)
        else:
            self.norm_self = self.self_attn = None
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads=heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``context_mask (B, M)``, ``mask (B, N)``: True = real token; padded ones are never attended to."""
        if self.self_attn is not None:
            x = x + self.self_attn(self.norm_self(x), mask=mask)
        x = x + self.attn(self.norm1(x), self.norm_context(context), context_mask=context_mask)
        return x + self.mlp(self.norm2(x))


class CrossAttentionFusion(Fusion):
    """Stacked :class:`CrossAttentionBlock` from ``query`` tokens to ``context`` tokens; returns the query stream.

    Args:
        query: modality whose tokens ask (and are returned as ``tokens``, with its mask).
        context: modality whose tokens are attended to.
        layers: number of blocks.
        heads: attention heads; must divide ``dim``.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        pool: ``"mean"`` (over real query tokens), ``"first"`` or ``"slots"`` (the first ``slots`` positions in
            order, projected to ``dim``).
        self_attention: query tokens also attend to each other in every layer, before the cross-attention.
        slots: with ``pool="slots"``, how many query positions the read-out keeps: at least the longest query
            (a text tower's ``context_length``).
    """

    uses_tokens = True

    def __init__(
        self,
        input_dims: Mapping[str, int],
        dim: int,
        query: str = "text",
        context: str = "image",
        layers: int = 1,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        pool: str = "mean",
        self_attention: bool = False,
        slots: int | None = None,
    ) -> None:
        super().__init__(input_dims, dim)
        check_roles(self.input_dims, query=query, context=context)
        check_choice("pool", pool, ("mean", "first", "slots"))
        if (pool == "slots") != (slots is not None) or (slots is not None and slots < 1):
            raise ValueError(f"pool='slots' needs slots >= 1 and other pools none; got pool={pool!r}, slots={slots!r}")
        self.query, self.context, self.pool, self.slots = query, context, pool, slots
        self.query_proj = nn.Linear(self.input_dims[query], dim)
        self.context_proj = nn.Linear(self.input_dims[context], dim)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(dim, heads, mlp_ratio, self_attention) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.slot_proj = nn.Linear(slots * dim, dim) if slots else None
        self.apply(init_weights)

    def fuse(self, features: Mapping[str, EncoderOutput]) -> FusionOutput:
        query, context = features[self.query], features[self.context]
        x = self.query_proj(query.tokens)  # (B, N_q, dim)
        c = self.context_proj(context.tokens)  # (B, N_c, dim)
        context_mask, mask = bool_mask(context), bool_mask(query)
        for block in self.blocks:
            x = block(x, c, context_mask, mask)
        x = self.norm(x)
        if self.slot_proj is not None:
            fused = self.slot_proj(ordered_slots(x, mask, self.slots))
        else:
            fused = pool_tokens(x, mask, self.pool)
        return FusionOutput(fused=fused, tokens=x, mask=mask)
