"""Ways to turn token features ``(B, N, D)`` plus a padding mask ``(B, N)`` (True = real) into ``(B, D)``."""
from __future__ import annotations

import torch
from torch import nn

from polymodal.layers.attention import CrossAttention
from polymodal.layers.mlp import Activation, Mlp


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over real positions: ``(B, N, D), (B, N) -> (B, D)``; a sequence with no real token gives zeros."""
    if mask is None:
        return x.mean(dim=1)
    mask = mask.bool().unsqueeze(-1)  # (B, N, 1)
    # masked_fill rather than multiply: padded features may be non-finite, and inf * 0 = NaN.
    total = x.masked_fill(~mask, 0.0).sum(dim=1)  # (B, D)
    count = mask.sum(dim=1).clamp(min=1).to(x.dtype)  # (B, 1)
    return total / count


def first_token(x: torch.Tensor) -> torch.Tensor:
    """The first position (CLS): ``(B, N, D) -> (B, D)``."""
    return x[:, 0]


def last_valid_token(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last real position (EOS under a causal mask, as CLIP's text tower): ``(B, N, D) -> (B, D)``.

    Finds the last True in ``mask`` rather than ``mask.sum() - 1``, so left padding works too. A sequence
    with no real token returns position 0.
    """
    if mask is None:
        return x[:, -1]
    positions = torch.arange(mask.shape[1], device=mask.device)  # (N,)
    last = (mask.bool() * positions).argmax(dim=1)  # (B,)
    return x[torch.arange(x.shape[0], device=x.device), last]


def ordered_slots(x: torch.Tensor, mask: torch.Tensor | None, slots: int) -> torch.Tensor:
    """The first ``slots`` positions side by side, padded ones zeroed: ``(B, N, D), (B, N) -> (B, slots·D)``.

    Unlike a mean, the result keeps which position said what, so a read-out can tell "A ... B" from "B ... A".
    Shorter sequences are zero-filled; a real token past ``slots`` raises a ValueError rather than being dropped.
    """
    if mask is not None:
        x = x.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
        if x.shape[1] > slots and bool(mask[:, slots:].any()):
            longest = int(mask.bool().sum(dim=1).max())
            raise ValueError(f"slots={slots} is shorter than a sequence with {longest} real tokens; raise slots")
    elif x.shape[1] > slots:
        raise ValueError(f"slots={slots} is shorter than the {x.shape[1]} tokens given; raise slots")
    x = torch.nn.functional.pad(x[:, :slots], (0, 0, 0, slots - min(x.shape[1], slots)))
    return x.flatten(1)


class AttentionPool(nn.Module):
    """A learned query attends over the tokens (Set Transformer's PMA, CoCa's attentional pooler).

    Unlike mean or CLS pooling it learns *which* tokens matter per sample, at the cost of one attention layer.
    """

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attn = CrossAttention(dim, num_heads=num_heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, D)``, ``mask (B, N)`` True = real -> ``(B, D)``."""
        query = self.query.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return self.attn(query, x, context_mask=mask)[:, 0]


class AttentionPoolHead(nn.Module):
    """Multihead attention pooling (MAP, SigLIP's image pooling): :class:`AttentionPool`, then a residual MLP on
    the pooled vector, ``p + mlp(norm(p))``, so the pooled output gets a feed-forward step of its own as every
    token got in the blocks before it.

    ``num_heads``, ``mlp_ratio``, ``act`` and ``norm_eps`` are the tower's own (SigLIP shares them with its blocks).
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, act: Activation = "gelu",
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.pool = AttentionPool(dim, num_heads)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, N, D)``, ``mask (B, N)`` True = real -> ``(B, D)``."""
        pooled = self.pool(x, mask)  # (B, D)
        return pooled + self.mlp(self.norm(pooled))
