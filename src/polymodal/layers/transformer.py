"""Pre-norm transformer block and stack, shared by the ViT and the text transformer."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from polymodal.layers.attention import Attention
from polymodal.layers.mlp import Activation, Mlp


class Block(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``.

    Normalising the branch input rather than the residual stream keeps the stream an identity path, which is
    what lets deep stacks train without warm-up tricks (GPT-2, ViT, CLIP). Names match timm's ``Block``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_eps: float = 1e-5,
        act: Activation = "gelu",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, act=act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """``x (B, N, D)``; ``mask (B, N)`` True = real token; ``causal`` hides later positions."""
        x = x + self.attn(self.norm1(x), mask=mask, causal=causal)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of pre-norm blocks (no final norm: each encoder owns its own).

    Set ``grad_checkpointing = True`` to recompute each block's activations in the backward pass instead of
    storing them: memory per block drops to its input, at the cost of one extra forward.
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_eps: float = 1e-5,
        act: Activation = "gelu",
    ) -> None:
        super().__init__()
        self.width = width
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, qkv_bias, drop, attn_drop, norm_eps, act) for _ in range(layers)
        )
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """``x (B, N, D) -> (B, N, D)``; ``mask (B, N)`` True = real token; ``causal`` hides later positions."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # Non-reentrant checkpointing handles kwargs, inputs without grad, and restores the RNG so
                # dropout draws the same masks on recompute.
                x = checkpoint(block, x, mask, causal, use_reentrant=False)
            else:
                x = block(x, mask, causal)
        return x


def init_weights(module: nn.Module) -> None:
    """ViT/BERT initialisation: truncated-normal(0.02) linear weights, zero biases; LayerNorm keeps (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
