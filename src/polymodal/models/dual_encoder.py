"""CLIP-style dual encoder composed from injected towers and heads.

    image ─► image_encoder ─► pooled (B, F_img) ─► image_head ─► (B, D) ─► L2 norm ─► image_features
    text  ─► text_encoder  ─► pooled (B, F_txt) ─► text_head  ─► (B, D) ─► L2 norm ─► text_features

Frozen towers make the pooled tower outputs a pure function of the input, so they can be computed once and
cached; ``forward`` then takes ``image_tower_features`` / ``text_tower_features`` instead of pixels and tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# CLIP clamps its learnable temperature so logits never exceed 100 x cosine.
MAX_LOGIT_SCALE = math.log(100.0)


def freeze(module: nn.Module) -> None:
    """Stop gradients into ``module`` (LiT-style locked tower)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)


class DualEncoder(nn.Module):
    """Two towers, two projection heads and a learnable temperature (and a bias for SigLIP).

    Args:
        image_encoder: maps ``image (B,3,H,W)`` to an ``EncoderOutput``.
        text_encoder: maps ``input_ids, attention_mask (B,L)`` to an ``EncoderOutput``.
        image_head: maps pooled image features ``(B, F_img)`` to ``(B, D)``.
        text_head: maps pooled text features ``(B, F_txt)`` to ``(B, D)``.
        init_logit_scale: initial log temperature (CLIP: ln(1/0.07)).
        init_logit_bias: if given, the model also learns a logit bias (SigLIP) and returns ``logit_bias``.
        freeze_image / freeze_text: lock a tower (its parameters get no gradient).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        image_head: nn.Module,
        text_head: nn.Module,
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: float | None = None,
        freeze_image: bool = False,
        freeze_text: bool = False,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_head = image_head
        self.text_head = text_head
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))
        self.image_frozen = freeze_image
        self.text_frozen = freeze_text
        if freeze_image:
            freeze(image_encoder)
        if freeze_text:
            freeze(text_encoder)

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        # A locked tower stays in eval mode: BatchNorm statistics and dropout must not change under it.
        if self.image_frozen:
            self.image_encoder.eval()
        if self.text_frozen:
            self.text_encoder.eval()
        return self

    def image_tower_features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled image-tower output ``(B, F_img)``: what a feature cache stores."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_frozen):
            return self.image_encoder(image).pooled

    def text_tower_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled text-tower output ``(B, F_txt)``: what a feature cache stores."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.text_frozen):
            return self.text_encoder(input_ids, attention_mask).pooled

    def encode_image(
        self,
        image: torch.Tensor | None = None,
        image_tower_features: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Image embeddings ``(B, D)`` from pixels or from cached tower features."""
        if image_tower_features is None:
            if image is None:
                raise ValueError("encode_image needs `image` or `image_tower_features`")
            image_tower_features = self.image_tower_features(image)
        features = self.image_head(image_tower_features)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_tower_features: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Text embeddings ``(B, D)`` from token ids or from cached tower features."""
        if text_tower_features is None:
            if input_ids is None:
                raise ValueError("encode_text needs `input_ids` (+ `attention_mask`) or `text_tower_features`")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_tower_features = self.text_tower_features(input_ids, attention_mask)
        features = self.text_head(text_tower_features)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self,
        image: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_tower_features: torch.Tensor | None = None,
        text_tower_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns ``image_features (B,D)``, ``text_features (B,D)`` (unit norm), ``logit_scale`` (exp'd,
        clamped to 100) and, for SigLIP models, ``logit_bias`` — exactly the contrastive losses' keywords."""
        output = {
            "image_features": self.encode_image(image, image_tower_features),
            "text_features": self.encode_text(input_ids, attention_mask, text_tower_features),
            "logit_scale": self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp(),
        }
        if self.logit_bias is not None:
            output["logit_bias"] = self.logit_bias
        return output
