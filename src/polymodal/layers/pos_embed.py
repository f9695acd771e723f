"""Absolute position embeddings for a 2-D patch grid: learned (ViT, CLIP) or fixed sin-cos (MoCo v3, MAE).

Both modules share one call, ``pos(x, grid_size)``, where ``x`` is ``(B, P + gh*gw, D)`` with ``P`` prefix
tokens (CLS) first, so the ViT can switch between them by config. Both adapt to a grid other than the one
they were built for: the learned table is resampled, the fixed one recomputed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sincos_2d_pos_embed(dim: int, grid_size: tuple[int, int], temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos table, ``(gh*gw, dim)``, row-major over the grid; MAE's formula.

    The first half of the channels encodes the column, the second half the row; each half is
    ``[sin(pos * w), cos(pos * w)]`` over ``dim / 4`` geometrically spaced frequencies ``w``.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos 2-D position embedding needs dim divisible by 4, got {dim}")
    gh, gw = grid_size
    # float64 so the table is exact to float32 whatever the grid size (large positions times high frequencies).
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )  # (gh, gw) each
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (gh*gw, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (gh*gw, dim/2)

    return torch.cat([embed_1d(cols), embed_1d(rows)], dim=1).float()  # (gh*gw, dim)


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int],
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Resize a learned ``(1, P + oh*ow, D)`` table to a new grid, ``(1, P + nh*nw, D)``.

    The grid part is treated as a D-channel image and resized bicubically (antialiased, as timm does, so
    shrinking averages rather than aliases); prefix-token embeddings carry no position and are kept as is.
    """
    oh, ow = old_size
    nh, nw = new_size
    D = pos_embed.shape[-1]
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = grid.reshape(1, oh, ow, D).permute(0, 3, 1, 2)  # (1, D, oh, ow)
    # Interpolate in float32: bicubic kernels are not implemented for every low-precision dtype.
    grid = F.interpolate(grid.float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, D).to(pos_embed.dtype)  # (1, nh*nw, D)
    return torch.cat([prefix, grid], dim=1)


class LearnedPosEmbed2d(nn.Module):
    """A learned embedding for every prefix token and grid cell, resampled when the grid changes."""

    def __init__(self, dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.weight = nn.Parameter(torch.empty(1, num_prefix_tokens + grid_size[0] * grid_size[1], dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Add position to ``x (B, P + gh*gw, D)`` laid out on ``grid_size``."""
        pos = self.weight
        if tuple(grid_size) != self.grid_size:
            pos = resample_abs_pos_embed(pos, grid_size, self.grid_size, self.num_prefix_tokens)
        return x + pos


class SinCosPosEmbed2d(nn.Module):
    """Fixed 2-D sin-cos embedding; prefix tokens get zeros (they have no place on the grid)."""

    def __init__(self, dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        # Not persistent: the table is a pure function of the config, so checkpoints need not carry it.
        self.register_buffer("table", self._build(self.grid_size), persistent=False)

    def _build(self, grid_size: tuple[int, int]) -> torch.Tensor:
        grid = sincos_2d_pos_embed(self.dim, grid_size)  # (gh*gw, D)
        prefix = grid.new_zeros(self.num_prefix_tokens, self.dim)  # (P, D)
        return torch.cat([prefix, grid])[None]  # (1, P + gh*gw, D)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Add position to ``x (B, P + gh*gw, D)`` laid out on ``grid_size``."""
        pos = self.table if tuple(grid_size) == self.grid_size else self._build(tuple(grid_size)).to(x.device)
        return x + pos
