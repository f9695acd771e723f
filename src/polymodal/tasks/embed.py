"""Batched embedding of images and texts with any dual encoder, plus an on-disk cache for frozen towers."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from polymodal.data.records import ImageTextSet
from polymodal.data.tokenizers import TextTokenizer
from polymodal.io import atomic_path
from polymodal.precision import autocast_context


class _ImageOnly(Dataset):
    def __init__(self, dataset: ImageTextSet, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.dataset.image(index))


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def map_images(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: ImageTextSet,
    transform: Callable[[Image.Image], torch.Tensor],
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "embed images",
) -> torch.Tensor:
    """Apply ``encode`` to every image of ``dataset`` in batches; returns ``(N, D)`` float32 on the CPU."""
    # A private generator: evaluation in the middle of training must not advance the global RNG.
    loader = DataLoader(_ImageOnly(dataset, transform), batch_size=batch_size, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    outputs = []
    for images in tqdm(loader, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True):
        with autocast_context(precision, device):
            outputs.append(encode(images.to(device)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


@torch.no_grad()
def map_texts(
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tokenizer: TextTokenizer,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "embed texts",
) -> torch.Tensor:
    """Apply ``encode(input_ids, attention_mask)`` to ``texts`` in batches; returns ``(N, D)`` float32 on the CPU."""
    outputs = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, file=sys.stderr, dynamic_ncols=True):
        tokens = tokenizer(list(texts[start : start + batch_size]))
        with autocast_context(precision, device):
            outputs.append(encode(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def require_embedding(model: torch.nn.Module, method: str) -> None:
    """Refuse, with a message a user can act on, a model that does not embed (e.g. a classifier)."""
    if not hasattr(model, method):
        family = getattr(model, "config", {}).get("family", type(model).__name__)
        raise ValueError(f"a {family} model has no {method}: embedding and search need a dual encoder")


def embed_images(model: torch.nn.Module, dataset: ImageTextSet, transform, **kwargs) -> torch.Tensor:
    """Unit-norm image embeddings ``(N, D)`` of every image in ``dataset``."""
    require_embedding(model, "encode_image")
    return map_images(lambda image: model.encode_image(image), dataset, transform, _model_device(model), **kwargs)


def embed_texts(model: torch.nn.Module, tokenizer: TextTokenizer, texts: Sequence[str], **kwargs) -> torch.Tensor:
    """Unit-norm text embeddings ``(N, D)``."""
    require_embedding(model, "encode_text")
    return map_texts(
        lambda ids, mask: model.encode_text(ids, mask), tokenizer, texts, _model_device(model), **kwargs
    )


def all_captions(dataset: ImageTextSet) -> tuple[list[str], list[str], torch.Tensor]:
    """Every caption in record order, each caption's group, and offsets: record i owns ``offsets[i]:offsets[i+1]``."""
    captions, groups, offsets = [], [], [0]
    for record in dataset.records:
        captions.extend(record.captions)
        groups.extend([record.group] * len(record.captions))
        offsets.append(len(captions))
    return captions, groups, torch.tensor(offsets, dtype=torch.long)


def feature_cache_dir() -> Path:
    """Where frozen-tower outputs are cached: ``$POLYMODAL_CACHE/features`` (default ``~/.cache/polymodal``)."""
    return Path(os.environ.get("POLYMODAL_CACHE", Path.home() / ".cache" / "polymodal")) / "features"


class FeatureCache:
    """Frozen-tower outputs saved as safetensors under a key that hashes everything they depend on.

    The key covers the tower config, the preprocessing and every record key + caption, so a changed dataset
    or tower never reads stale features.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(*parts: object) -> str:
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8"))
        return digest.hexdigest()[:20]

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = self.directory / f"{key}.safetensors"
        if path.is_file():
            return load_file(str(path))["features"]
        features = compute().contiguous()
        with atomic_path(path) as tmp:
            save_file({"features": features}, str(tmp))
        return features
