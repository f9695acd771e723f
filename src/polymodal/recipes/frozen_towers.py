"""Frozen towers run once: the pooled outputs of a dual encoder's locked towers, cached on disk across runs.

When both towers of a dual encoder are locked (LiT-style), their pooled outputs are a pure function of the
input, so a run computes them once per dataset and trains the heads on the cache; one epoch then costs
milliseconds. The cache lives under ``$POLYMODAL_CACHE/features`` (default ``~/.cache/polymodal``), keyed by a
hash of the tower config, the preprocessing, the record keys, the captions and the first image's pixels.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.precision import resolve_precision
from polymodal.tasks.embed import (
    FeatureCache,
    InferenceCompiled,
    all_captions,
    feature_cache_dir,
    map_images,
    map_texts,
)
from polymodal.tasks.retrieval import retrieval_from_embeddings

__all__ = ["TowerFeatures", "embed_cached", "evaluate_cached", "has_frozen_towers", "tower_features"]

# Below this many images, compiling the image tower (~7 s) costs more than it saves (~6 ms per image).
COMPILE_FROM_IMAGES = 1024


@dataclass
class TowerFeatures:
    """Frozen-tower outputs of one dataset: ``images (N, F_img)``, ``captions (M, F_txt)`` and offsets
    (record i owns caption rows ``caption_offsets[i]:caption_offsets[i+1]``)."""

    images: torch.Tensor
    captions: torch.Tensor
    caption_offsets: torch.Tensor


def has_frozen_towers(model: nn.Module) -> bool:
    """Whether ``model`` is a dual encoder whose two towers are both locked (so their outputs can be cached)."""
    return bool(getattr(model, "image_frozen", False) and getattr(model, "text_frozen", False))


def tower_features(
    model: nn.Module, tokenizer: TextTokenizer, dataset: ImageTextSet, device: torch.device, progress: bool
) -> TowerFeatures:
    """Run the frozen towers of a dual encoder once over ``dataset`` (cached on disk across runs).

    The towers run in bf16 where the device runs it fast (``precision: auto``: features within cosine 0.998 of
    fp32), and the image tower is compiled for inference when the set is large enough to repay the compile.
    """
    cache = FeatureCache(feature_cache_dir())
    captions, _, offsets = all_captions(dataset)
    keys = [record.key for record in dataset.records]
    transform = image_transform(model.preprocess)
    precision = resolve_precision("auto", device)
    model.eval()

    def image_features() -> torch.Tensor:
        compile_tower = len(dataset) >= COMPILE_FROM_IMAGES
        tower = InferenceCompiled(model.image_encoder) if compile_tower else model.image_encoder
        return map_images(lambda image: tower(image).pooled, dataset, transform, device, precision=precision,
                          progress=progress, desc=f"image tower · {dataset.name}", same_shape=compile_tower)

    images = cache.get_or_compute(
        # The first image's pixels stand in for how the set renders (e.g. openmoji's image_size), which the
        # record keys alone do not show.
        FeatureCache.key("image", model.config["image"], model.preprocess, dataset.name, keys, _first_pixels(dataset),
                         precision),
        image_features,
    )
    texts = cache.get_or_compute(
        FeatureCache.key("text", model.config["text"], dataset.name, captions, precision),
        lambda: map_texts(model.text_tower_features, tokenizer, captions, device, precision=precision,
                          progress=progress, desc="text tower"),
    )
    return TowerFeatures(images, texts, offsets)


def _first_pixels(dataset: ImageTextSet) -> str:
    return hashlib.sha256(dataset.image(0).tobytes()).hexdigest() if len(dataset) else ""


@torch.no_grad()
def embed_cached(model: nn.Module, features: TowerFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image and caption embeddings ``(N, D)``, ``(M, D)`` from cached tower outputs (on the CPU)."""
    model.eval()
    device = next(model.parameters()).device
    images = model.encode_image(image_tower_features=features.images.to(device)).float().cpu()
    texts = model.encode_text(text_tower_features=features.captions.to(device)).float().cpu()
    return images, texts


def evaluate_cached(model: nn.Module, features: TowerFeatures, dataset: ImageTextSet) -> dict[str, float]:
    """Retrieval metrics of ``dataset`` from its cached tower outputs."""
    return retrieval_from_embeddings(*embed_cached(model, features), dataset)
