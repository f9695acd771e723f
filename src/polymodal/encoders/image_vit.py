"""Vision Transformer image encoder (Dosovitskiy et al. 2021), trained from scratch.

Layout and parameter shapes follow timm's ``VisionTransformer`` (class token with its own position
embedding, pre-norm blocks, final LayerNorm), so weights map across by renaming keys only. Three options,
off by default, give OpenAI CLIP's image tower (HF ``CLIPVisionModel``, open_clip's ``VisionTransformer``):
a LayerNorm before the blocks (``pre_norm``), a bias-free patch projection (``patch_bias=False``) and
QuickGELU (``act="quick_gelu"``); its ``ln_post`` is our final norm and its class-token pooling is ``pool="cls"``.
Two more give SigLIP's (HF ``SiglipVisionModel``): no class token (``class_token=False``) and multihead attention
pooling (``pool="map"``), with the tanh GELU (``act="gelu_tanh"``).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.layers import (
    Activation,
    AttentionPoolHead,
    LearnedPosEmbed2d,
    PatchEmbed,
    SinCosPosEmbed2d,
    Transformer,
)


class ViTImageEncoder(nn.Module):
    """``image (B, C, H, W) -> EncoderOutput(tokens (B, 1 + N, D), pooled (B, D), mask None)``.

    ``tokens`` holds the CLS token first, then the ``N = (H/p)*(W/p)`` patches row-major, all after the final
    LayerNorm. ``pooled`` is the CLS token (``pool="cls"``), the mean of the patch tokens (``pool="mean"``,
    CLS excluded) or a learned query's attention over every token followed by an MLP (``pool="map"``,
    :class:`~polymodal.layers.AttentionPoolHead`). Any image size divisible by ``patch_size`` works: learned
    position embeddings are resampled, sin-cos ones recomputed. ``class_token=False`` leaves the CLS token out
    (``tokens (B, N, D)``), for towers pooled by ``mean`` or ``map``.

    ``pre_norm`` adds a LayerNorm after the position embedding (CLIP's ``ln_pre``); ``patch_bias`` gives the
    patch projection a bias; ``act`` is the blocks' MLP activation; ``norm_eps`` every LayerNorm's epsilon;
    ``final_norm=False`` drops the final LayerNorm (with ``layers=0``: ViLT's patch embeddings, position included).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 32,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        pool: Literal["cls", "mean", "map"] = "cls",
        pos_embed: Literal["learned", "sincos"] = "learned",
        in_channels: int = 3,
        dropout: float = 0.0,
        pre_norm: bool = False,
        patch_bias: bool = True,
        act: Activation = "gelu",
        norm_eps: float = 1e-5,
        final_norm: bool = True,
        class_token: bool = True,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean", "map"):
            raise ValueError(f"pool must be 'cls', 'mean' or 'map', got {pool!r}")
        if pool == "cls" and not class_token:
            raise ValueError("pool='cls' needs class_token=True")
        image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_size = image_size  # (H, W) the position table is sized for
        self.width = width
        self.pool = pool
        self.patch_embed = PatchEmbed(patch_size, in_channels, width, bias=patch_bias)
        grid_size = self.patch_embed.grid_size(*image_size)
        self.num_prefix_tokens = int(class_token)
        self.cls_token = None
        if class_token:
            # Near-zero start (timm): the CLS token begins as "no content" and learns what to gather.
            self.cls_token = nn.Parameter(torch.empty(1, 1, width))
            nn.init.normal_(self.cls_token, std=1e-6)
        if pos_embed == "learned":
            self.pos_embed: nn.Module = LearnedPosEmbed2d(width, grid_size, num_prefix_tokens=self.num_prefix_tokens)
        elif pos_embed == "sincos":
            self.pos_embed = SinCosPosEmbed2d(width, grid_size, num_prefix_tokens=self.num_prefix_tokens)
        else:
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        self.pos_drop = nn.Dropout(dropout)
        # Identity when off: adds no parameters, so existing checkpoints keep their keys.
        self.norm_pre = nn.LayerNorm(width, eps=norm_eps) if pre_norm else nn.Identity()
        self.transformer = Transformer(width, layers, heads, mlp_ratio, drop=dropout, norm_eps=norm_eps, act=act)
        # Off for a tower of patch embeddings only (ViLT: the shared transformer after the fusion normalises).
        self.norm = nn.LayerNorm(width, eps=norm_eps) if final_norm else nn.Identity()
        # Only when used: a module left unused would still add keys to every checkpoint.
        self.attn_pool = AttentionPoolHead(width, heads, mlp_ratio, act, norm_eps) if pool == "map" else None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations during backward to save memory."""
        self.transformer.grad_checkpointing = enable

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        grid_size = self.patch_embed.grid_size(image.shape[-2], image.shape[-1])
        x = self.patch_embed(image)  # (B, N, D)
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        x = self.norm_pre(self.pos_drop(self.pos_embed(x, grid_size)))
        tokens = self.norm(self.transformer(x))  # (B, P + N, D), P = num_prefix_tokens
        if self.pool == "cls":
            pooled = tokens[:, 0]
        elif self.pool == "map":
            pooled = self.attn_pool(tokens)
        else:
            pooled = tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return EncoderOutput(tokens=tokens, pooled=pooled, mask=None)
