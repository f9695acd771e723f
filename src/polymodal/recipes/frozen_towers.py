"""Frozen towers run once: the outputs of locked towers, cached on disk across runs.

* A dual encoder whose two towers are locked (LiT-style): their pooled outputs are a pure function of the input,
  so a run computes them once per dataset and trains the heads on the cache (:func:`tower_features`); one epoch
  then costs milliseconds.
* Any other family with a locked tower (a captioner's image tower, a fusion model's image or text tower):
  :func:`image_tower_outputs` / :func:`text_tower_outputs` keep the parts of an ``EncoderOutput`` the model reads
  (per-position ``tokens`` with their ``mask``, and/or ``pooled``) once per distinct image (record key) or
  distinct text, in 16 bits (:func:`storage_dtype`), under the batch keys the models' ``forward`` accepts
  instead of pixels or token ids (``image_tokens``, ``image_token_mask``, ``image_pooled``, ``text_*``).

The cache lives under ``$POLYMODAL_CACHE/features`` (default ``~/.cache/polymodal``), keyed by a hash of the
tower config, the preprocessing, the record keys, the captions and the first image's pixels (the newer caches
also hash the tower's weights and the tokenizer, so a frozen tower that was randomly initialised, or a
tokenizer trained on the data, never reads another run's features).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.tower_rows import CachedTower
from polymodal.data.transforms import ImagePreprocess, image_transform
from polymodal.encoders.base import EncoderOutput
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

__all__ = ["CachedTower", "TowerFeatures", "embed_cached", "evaluate_cached", "has_frozen_towers",
           "image_tower_outputs", "module_fingerprint", "storage_dtype", "text_tower_outputs", "tower_features"]

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
        return _run_image_tower(model.image_encoder, lambda output: output.pooled, dataset, transform, device,
                                precision, progress)

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


def _run_image_tower(encoder: nn.Module, select, dataset: ImageTextSet, transform, device: torch.device,
                     precision: str, progress: bool, dtype: torch.dtype | None = torch.float32):
    """``select(encoder(image))`` over every image of ``dataset``; the tower is compiled for inference when the set
    is large enough to repay the compile."""
    compile_tower = len(dataset) >= COMPILE_FROM_IMAGES
    tower = InferenceCompiled(encoder) if compile_tower else encoder
    return map_images(lambda image: select(tower(image)), dataset, transform, device, precision=precision,
                      progress=progress, desc=f"image tower · {dataset.name}", same_shape=compile_tower, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# Token-level caches (captioner, fusion models)
# ---------------------------------------------------------------------------------------------------------------

TOKENS, POOLED = "tokens", "pooled"


def storage_dtype(precision: str) -> torch.dtype:
    """What cached tower outputs are stored as: 16 bits, to halve the memory of per-position tokens (4,000
    EfficientNet-Lite0 images: 49 x 1280 x 2 bytes each, 0.50 GB instead of 1.0 GB).

    A tower that ran in bf16 (or fp16) is stored in that dtype, which loses nothing; one that ran in fp32 is stored
    in fp16, whose 10-bit mantissa keeps ~3 significant digits (bf16 keeps ~2) — ample for bounded tower outputs
    (EfficientNet's ReLU6 map lies in [0, 6], MiniLM's post-LayerNorm states within ±10). A batch whose values
    overflow fp16 stays fp32 (see :func:`_store`).
    """
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _store(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if tensor.dtype == dtype or not tensor.is_floating_point():
        return tensor
    if dtype == torch.float16 and tensor.numel() and tensor.abs().max() > torch.finfo(torch.float16).max:
        return tensor.float()  # out of fp16's range: kept exact (torch.cat then promotes the whole part)
    return tensor.to(dtype)


def module_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (names, shapes, dtypes, bytes): a frozen tower's weights
    decide its outputs, and a randomly initialised one has no config that names them (~0.2 s for MiniLM)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _named_parts(output: EncoderOutput, modality: str, parts: Sequence[str], dtype: torch.dtype,
                 mask: torch.Tensor | None = None, length: int | None = None) -> dict[str, torch.Tensor]:
    """The ``parts`` of one batch's ``output`` under their batch keys; ``length``: pad tokens and mask to it."""
    named = {}
    if TOKENS in parts:
        tokens, mask = output.tokens, output.mask if output.mask is not None else mask
        if length is not None:
            tokens = F.pad(tokens, (0, 0, 0, length - tokens.shape[1]))
            mask = F.pad(mask.bool(), (0, length - mask.shape[1]))  # padding positions are not real
        named[f"{modality}_tokens"] = _store(tokens, dtype)
        if mask is not None:
            named[f"{modality}_token_mask"] = mask.bool()
    if POOLED in parts:
        named[f"{modality}_pooled"] = _store(output.pooled, dtype)
    return named


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    parts = tuple(sorted(set(parts)))
    if not parts or not set(parts) <= {TOKENS, POOLED}:
        raise ValueError(f"parts must name 'tokens' and/or 'pooled', got {parts}")
    return parts


@torch.no_grad()
def image_tower_outputs(encoder: nn.Module, tower_config: dict, preprocess: ImagePreprocess, dataset: ImageTextSet,
                        device: torch.device, parts: Sequence[str], precision: str = "fp32",
                        progress: bool = False) -> CachedTower:
    """A frozen image tower run once per distinct image of ``dataset`` (records sharing a ``key`` show one
    image: a VQA set has a record per question), cached on disk; ``rows[i]`` is record i's image.

    Args:
        tower_config: the model's config section of the tower (part of the cache key).
        preprocess: the pixels the tower reads (the evaluation transform: cached features are not augmented).
        parts: ``"tokens"`` (with the mask, if the tower has one) and/or ``"pooled"``: what the model reads.
        precision: autocast of the tower (the run's ``train.precision``, resolved), which also picks the
            stored dtype (:func:`storage_dtype`).
    """
    parts = _check_parts(parts)
    row_of: dict[object, int] = {}  # image key -> row
    shown_by, rows = [], []  # the first record of every distinct image; every record's row
    for index, record in enumerate(dataset.records):
        if record.key not in row_of:
            row_of[record.key] = len(shown_by)
            shown_by.append(index)
        rows.append(row_of[record.key])
    distinct = dataset.subset(shown_by)
    dtype = storage_dtype(precision)
    key = FeatureCache.key("image-tower", tower_config, module_fingerprint(encoder), preprocess, dataset.name,
                           [record.key for record in distinct.records], _first_pixels(distinct), precision, parts,
                           str(dtype))
    encoder.eval()

    def compute() -> dict[str, torch.Tensor]:
        return _run_image_tower(encoder, lambda output: _named_parts(output, "image", parts, dtype), distinct,
                                image_transform(preprocess), device, precision, progress, dtype=None)

    return CachedTower(FeatureCache(feature_cache_dir()).get_or_compute_parts(key, compute),
                       torch.tensor(rows, dtype=torch.long))


@torch.no_grad()
def text_tower_outputs(encoder: nn.Module, tower_config: dict, tokenizer: TextTokenizer, texts: Sequence[str],
                       device: torch.device, parts: Sequence[str], precision: str = "fp32",
                       progress: bool = False) -> CachedTower:
    """A frozen text tower run once per distinct text of ``texts`` (VQA questions repeat across images), cached
    on disk; ``rows[k]`` is ``texts[k]``'s row. Tokens and mask are padded to the tokenizer's ``context_length``
    (the mask is False there); collates trim each batch to its longest text again.

    Args: as :func:`image_tower_outputs`; the tokenizer is part of the key (a BPE trained on the data differs
    run to run).
    """
    parts = _check_parts(parts)
    first: dict[str, int] = {}
    rows = torch.tensor([first.setdefault(text, len(first)) for text in texts], dtype=torch.long)
    distinct = list(first)
    dtype = storage_dtype(precision)
    tokenizer_hash = hashlib.sha256(tokenizer.tokenizer.to_str().encode("utf-8")).hexdigest()
    key = FeatureCache.key("text-tower", tower_config, module_fingerprint(encoder), tokenizer_hash,
                           tokenizer.context_length, distinct, precision, parts, str(dtype))
    encoder.eval()

    def encode(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        output = encoder(input_ids, attention_mask)
        return _named_parts(output, "text", parts, dtype, mask=attention_mask, length=tokenizer.context_length)

    def compute() -> dict[str, torch.Tensor]:
        return map_texts(encode, tokenizer, distinct, device, precision=precision, progress=progress,
                         desc="text tower", dtype=None)

    return CachedTower(FeatureCache(feature_cache_dir()).get_or_compute_parts(key, compute), rows)


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
