"""Cut an image into non-overlapping patches and embed each one: the ViT tokenizer."""
from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """``image (B, C, H, W) -> tokens (B, N, D)`` with ``N = (H / p) * (W / p)``, row-major over the grid.

    A Conv2d whose kernel equals its stride is exactly a shared linear map applied to each flattened patch,
    and it is what timm and open_clip use, so weights map across unchanged.
    """

    def __init__(self, patch_size: int = 16, in_channels: int = 3, embed_dim: int = 768, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` for an image of this size; raises if the patches would not tile it."""
        p = self.patch_size
        if height % p or width % p:
            # A strided conv would silently drop the border; fail loudly instead.
            raise ValueError(f"image size {height}x{width} is not divisible by patch size {p}")
        return height // p, width // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grid_size(x.shape[-2], x.shape[-1])
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, gh*gw, D)
