"""Multi-head self- and cross-attention on top of ``F.scaled_dot_product_attention``.

Masks follow one convention across polymodal: a *key padding mask* is ``(B, N)`` bool with True where the
position holds a real token. SDPA's boolean ``attn_mask`` uses the same polarity (True = may attend), so the
padding mask only needs broadcasting, never inverting.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_attn_mask(key_padding_mask: torch.Tensor | None, causal: bool = False) -> torch.Tensor | None:
    """Turn a ``(B, N)`` key padding mask (True = real) and a causal flag into an SDPA boolean mask.

    Returns None when nothing is masked, or when only the causal mask applies: the caller then passes
    ``is_causal=True`` so SDPA may pick its fused kernels. Otherwise the mask has shape ``(B, 1, N, N)``
    with causality (self-attention, so queries and keys share positions) or ``(B, 1, 1, N)`` without;
    True where a query may attend to a key.
    """
    if key_padding_mask is None:
        return None
    mask = key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, N)
    if causal:
        n = key_padding_mask.shape[1]
        past = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()  # (N, N), True = not future
        mask = mask & past  # (B, 1, N, N)
    # A query with no key left to attend to would softmax over nothing and return NaN, which then leaks
    # through every later layer and through pooling (NaN * 0 = NaN). This happens for an all-padding
    # sequence, or with causality plus left padding. Let such rows attend everywhere instead: their output
    # is meaningless but finite, and it sits at a padded position that pooling ignores.
    return mask | ~mask.any(dim=-1, keepdim=True)


class Attention(nn.Module):
    """Multi-head self-attention: ``x (B, N, D) -> (B, N, D)``.

    The fused ``qkv`` projection stores its rows as ``[q; k; v]`` (heads contiguous inside each), the layout
    of ``nn.MultiheadAttention.in_proj_weight`` and timm's ``Attention.qkv``, so weights map one to one.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Attend over ``x``.

        Args:
            x: ``(B, N, D)`` input.
            mask: optional ``(B, N)`` key padding mask, True (or 1) = real token.
            causal: if True, position ``i`` attends only to positions ``<= i``.
        """
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, N, hs)
        attn_mask = make_attn_mask(mask, causal)
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop if self.training else 0.0,
            is_causal=causal and attn_mask is None,
        )  # (B, nh, N, hs)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(x))


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from ``x (B, N, D)``, keys/values from ``context (B, M, Dc)``."""

    def __init__(
        self,
        dim: int,
        context_dim: int | None = None,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        # Context may come from another modality with its own width; project it straight to head space.
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend from ``x`` to ``context``; ``context_mask`` is ``(B, M)``, True (or 1) = real."""
        B, N, D = x.shape
        M = context.shape[1]
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, N, hs)
        kv = self.kv(context).reshape(B, M, 2, self.num_heads, self.head_dim)  # (B, M, 2, nh, hs)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, nh, M, hs)
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=make_attn_mask(context_mask),
            dropout_p=self.attn_drop if self.training else 0.0,
        )  # (B, nh, N, hs)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(x))
