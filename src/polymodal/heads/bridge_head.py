"""An image head that starts as the ConSE bridge and learns a residual on top of it.

    pooled (B, F) ─► tower.classify ─► ImageNet logits ─► ConSEBridge ─► (B, D) ─┐
          └──────────────────────────► residual Linear (zero at init) ─► (B, D) ─┴─► sum

At initialisation the model *is* the training-free bridge, so training starts from a model that already
transfers to real photos; the residual only adds what the paired training data teaches.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from polymodal.heads.conse import ConSEBridge, build_imagenet_class_embeddings, imagenet_class_names
from polymodal.tasks.embed import FeatureCache, feature_cache_dir
from polymodal.tasks.prompt_templates import resolve_templates


class ConSEImageHead(nn.Module):
    """``pooled image-tower features (B, F) -> (B, D)`` in the text tower's space.

    Args:
        classify: the image tower's ImageNet classifier (kept as a plain callable, not a submodule, so its
            weights stay owned — and saved — by the tower alone).
        bridge: maps ImageNet logits to the probability-weighted class-name embedding.
        in_features: F, the pooled image-feature size.
    """

    def __init__(self, classify: Callable[[torch.Tensor], torch.Tensor], bridge: ConSEBridge, in_features: int) -> None:
        super().__init__()
        self._classify = classify
        self.bridge = bridge
        self.residual = nn.Linear(in_features, bridge.width)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)

    @torch.no_grad()
    def zero_shot(self, pooled: torch.Tensor) -> torch.Tensor:
        """The frozen, training-free part: the ConSE embedding ``(B, D)``."""
        return self.bridge(self._classify(pooled))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.zero_shot(pooled) + self.residual(pooled)


def build_conse_image_head(
    image_encoder: nn.Module,
    text_encoder: nn.Module,
    embed_dim: int,
    top_k: int = 10,
    temperature: float = 1.0,
    embed_class_names: bool = True,
    templates: str | Sequence[str] = "bridge",
) -> ConSEImageHead:
    """Embed the 1000 ImageNet class names with the text tower and wrap the image tower's classifier.

    ``embed_class_names=False`` leaves the class embeddings as zeros, for a caller that loads them from a
    checkpoint next (embedding 1000 names x T prompts costs the text tower 1000 T sentences).
    ``templates``: a set of :data:`polymodal.tasks.prompt_templates.TEMPLATE_SETS` by name, or a list.
    The embeddings are cached on disk (see :func:`polymodal.tasks.embed.feature_cache_dir`).
    """
    if not hasattr(image_encoder, "classify"):
        raise ValueError(f"bridge 'conse' needs an ImageNet-classifying image tower, got {type(image_encoder).__name__}")
    if not hasattr(text_encoder, "encode_text"):
        raise ValueError(f"bridge 'conse' needs a pretrained text tower with encode_text, got {type(text_encoder).__name__}")
    if text_encoder.width != embed_dim:
        raise ValueError(f"with a ConSE bridge the joint space is the text tower's: embed_dim must be {text_encoder.width}")
    if embed_class_names:
        cache = FeatureCache(feature_cache_dir())
        prompts = resolve_templates(templates)
        key = FeatureCache.key("imagenet-class-names", type(text_encoder).__name__, prompts)
        class_embeddings = cache.get_or_compute(
            key, lambda: build_imagenet_class_embeddings(text_encoder.encode_text, prompts))
    else:
        class_embeddings = torch.zeros(len(imagenet_class_names()), text_encoder.width)  # (1000, D)
    return ConSEImageHead(image_encoder.classify, ConSEBridge(class_embeddings, top_k, temperature), image_encoder.width)
