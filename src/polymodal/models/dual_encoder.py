"""CLIP-style dual encoder composed from injected towers and heads.

    image ─► image_encoder ─► pooled (B, F_img) ─► image_head ─► (B, D) ─► L2 norm ─► image_features
    text  ─► text_encoder  ─► pooled (B, F_txt) ─► text_head  ─► (B, D) ─► L2 norm ─► text_features

Frozen towers make the pooled tower outputs a pure function of the input, so they can be computed once and
cached; ``forward`` then takes ``image_tower_features`` / ``text_tower_features`` instead of pixels and tokens.

The family ``dual_encoder`` (presets ``clip-*``, ``siglip-tiny``, ``lit-effnet-minilm``): config
:class:`DualEncoderConfig`, builder :func:`build_dual_encoder`, loss CLIP's InfoNCE or SigLIP.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.encoders.base import is_frozen
from polymodal.encoders.build import build_encoder
from polymodal.heads.ensemble import ZeroShotEnsembleHead
from polymodal.heads.projection import LinearProjection, ResidualProjection
from polymodal.layers.transformer import Transformer
from polymodal.losses import ClipLoss, SigLipLoss
from polymodal.models.family import LossOptions, ModelFamily
from polymodal.typed_config import ConfigError, dataclass_from_mapping

# CLIP clamps its learnable temperature so logits never exceed 100 x cosine.
MAX_LOGIT_SCALE = math.log(100.0)


class DualEncoder(nn.Module):
    """Two towers, two projection heads and a learnable temperature (and a bias for SigLIP).

    Args:
        image_encoder: maps ``image (B,3,H,W)`` to an ``EncoderOutput``.
        text_encoder: maps ``input_ids, attention_mask (B,L)`` to an ``EncoderOutput``.
        image_head: maps pooled image features ``(B, F_img)`` to ``(B, D)``.
        text_head: maps pooled text features ``(B, F_txt)`` to ``(B, D)``.
        init_logit_scale: initial log temperature (CLIP: ln(1/0.07)).
        init_logit_bias: if given, the model also learns a logit bias (SigLIP) and returns ``logit_bias``.
        max_logit_scale: the log temperature is clamped to ``[0, max_logit_scale]`` (CLIP: ln 100); None leaves it
            unbounded, as SigLIP trains it (its released checkpoints sit above ln 100).

    A tower locked with :func:`polymodal.encoders.base.freeze` before it is passed in stays locked; when both
    are, their pooled outputs can be cached (``image_frozen`` / ``text_frozen``).
    """

    # GradCache caches the gradients of these batch outputs (train/grad_cache.py).
    embedding_outputs = ("image_features", "text_features")
    # FSDP gathers parameters around ``forward`` only; evaluation embeds through these methods too.
    fsdp_forward_methods = ("encode_image", "encode_text")

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        image_head: nn.Module,
        text_head: nn.Module,
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: float | None = None,
        max_logit_scale: float | None = MAX_LOGIT_SCALE,
    ) -> None:
        super().__init__()
        self.max_logit_scale = max_logit_scale
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_head = image_head
        self.text_head = text_head
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))

    @property
    def image_frozen(self) -> bool:
        return is_frozen(self.image_encoder)

    @property
    def text_frozen(self) -> bool:
        return is_frozen(self.text_encoder)

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
        clamped to ``exp(max_logit_scale)``) and, for SigLIP models, ``logit_bias`` — exactly the contrastive losses'
        keywords."""
        output = {
            "image_features": self.encode_image(image, image_tower_features),
            "text_features": self.encode_text(input_ids, attention_mask, text_tower_features),
            "logit_scale": self.temperature(),
        }
        if self.logit_bias is not None:
            output["logit_bias"] = self.logit_bias
        return output

    def temperature(self) -> torch.Tensor:
        """``exp(logit_scale)``, the log clamped to ``max_logit_scale`` as the loss sees it: what cosine
        similarities are multiplied by before a softmax."""
        log_scale = self.logit_scale
        if self.max_logit_scale is not None:
            log_scale = log_scale.clamp(max=self.max_logit_scale)
        return log_scale.exp()

    # Hooks the training loop calls (models/family.py).
    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Keep the temperature in CLIP's range after every update (unless the model leaves it unbounded)."""
        if self.max_logit_scale is not None:
            self.logit_scale.clamp_(0, self.max_logit_scale)

    def log_scalars(self) -> dict[str, float]:
        return {"logit_scale": float(self.logit_scale.detach().exp())}

    def fsdp_units(self) -> list[nn.Module]:
        """Every transformer block of the towers: FSDP gathers one block's parameters at a time."""
        return [block for module in self.modules() if isinstance(module, Transformer) for block in module.blocks]


@dataclass
class DualEncoderConfig:
    """A dual encoder's config (a preset's JSON).

    Attributes:
        embed_dim: size of the joint embedding space.
        image / text: the towers (``polymodal.encoders.build``: ``type`` + its arguments + tower options).
        loss: ``clip`` (symmetric InfoNCE) or ``siglip`` (pairwise sigmoid; learns ``logit_bias`` too).
        init_logit_scale: initial log temperature (CLIP: ln(1/0.07) = 2.6593).
        init_logit_bias: if set, the model learns a logit bias from this value (SigLIP: -10).
        max_logit_scale: upper clamp of the log temperature (ln 100); null: unbounded (SigLIP's checkpoints).
        image_projection / text_projection: ``linear`` (CLIP's head) or ``none``, where the tower's pooled output
            already is the joint space (SigLIP's image tower, pooled by its attention head; its width must then
            be ``embed_dim``).
        projection_bias: the linear heads have a bias (SigLIP's text head).
        bridge: ``{"type": "conse", "top_k", "temperature", "templates"}``: the image head starts as the training-free ConSE
            bridge into the text tower's space (needs an ImageNet-classifying image tower and a pretrained
            text tower), both heads wrapped in a zero-shot ensemble; ``templates`` names the prompt set the
            1,000 ImageNet class names are embedded with (``tasks/prompt_templates.py``).
    """

    embed_dim: int = field(metadata={"min": 1})
    image: dict[str, Any]
    text: dict[str, Any]
    family: Literal["dual_encoder"] = "dual_encoder"
    description: str = ""
    loss: Literal["clip", "siglip"] = "clip"
    init_logit_scale: float = 2.6593
    init_logit_bias: float | None = None
    bridge: dict[str, Any] | None = None
    max_logit_scale: float | None = MAX_LOGIT_SCALE
    image_projection: Literal["linear", "none"] = "linear"
    text_projection: Literal["linear", "none"] = "linear"
    projection_bias: bool = False


def build_dual_encoder(config: dict[str, Any], where: str = "model config", for_loading: bool = False) -> DualEncoder:
    """Build a :class:`DualEncoder` from a config dict (``for_loading``: skip embedding the bridge's class names,
    which the checkpoint is about to overwrite)."""
    spec = dataclass_from_mapping(DualEncoderConfig, config, where)
    image = build_encoder("image", spec.image, where)
    text = build_encoder("text", spec.text, where)
    if spec.bridge is not None and (spec.image_projection, spec.text_projection, spec.projection_bias) != (
            "linear", "linear", False):
        raise ConfigError(f"{where}: bridge builds both heads itself; image_projection, text_projection and "
                          "projection_bias do not apply to it")
    if spec.bridge is not None:
        from polymodal.heads.bridge_head import build_conse_image_head

        options = {key: value for key, value in spec.bridge.items() if key != "type"}
        if spec.bridge.get("type") != "conse":
            raise ConfigError(f"{where}: bridge.type = {spec.bridge.get('type')!r} is not one of: conse")
        # Both heads ensemble their zero-shot part with the fine-tuned whole (weight 0 while training).
        image_head: nn.Module = ZeroShotEnsembleHead(build_conse_image_head(
            image.encoder, text.encoder, spec.embed_dim, embed_class_names=not for_loading, **options))
        text_head: nn.Module = ZeroShotEnsembleHead(ResidualProjection(spec.embed_dim))
    else:
        image_head = _projection(spec.image_projection, image.encoder.width, spec, "image", where)
        text_head = _projection(spec.text_projection, text.encoder.width, spec, "text", where)
    model = DualEncoder(image.encoder, text.encoder, image_head, text_head, spec.init_logit_scale,
                        spec.init_logit_bias, spec.max_logit_scale)
    model.config = copy.deepcopy(config)
    model.preprocess = image.preprocess
    return model


def _projection(kind: str, width: int, spec: DualEncoderConfig, modality: str, where: str) -> nn.Module:
    """One tower's head into the joint space: a linear map (with a bias if the config asks), or none."""
    if kind == "none":
        if width != spec.embed_dim:
            raise ConfigError(f"{where}: {modality}_projection = 'none' needs the {modality} tower's width ({width}) "
                              f"to equal embed_dim ({spec.embed_dim})")
        return nn.Identity()
    head = LinearProjection(width, spec.embed_dim)
    if spec.projection_bias:
        # LinearProjection is CLIP's bias-free map; the bias starts at zero, so only training moves it.
        head.proj.bias = nn.Parameter(torch.zeros(spec.embed_dim))
    return head


def build_contrastive_loss(config: dict[str, Any], options: LossOptions) -> nn.Module:
    """CLIP's loss with open_clip's gathering options, or SigLIP's (which always gathers with gradients)."""
    if config.get("loss", "clip") == "siglip":
        return SigLipLoss()
    return ClipLoss(label_smoothing=options.label_smoothing, local_loss=options.local_loss,
                    gather_with_grad=options.gather_with_grad)


DUAL_ENCODER = ModelFamily("dual_encoder", build_dual_encoder, build_contrastive_loss, task="contrastive")
