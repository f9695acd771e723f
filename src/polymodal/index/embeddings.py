"""An embedding directory: what ``polymodal embed`` writes and ``polymodal index build`` reads.

    embeddings.safetensors   "image_embeddings": (N, D) float32, row i for keys[i]
    keys.json                the N record keys (image paths) in row order
    meta.json                checkpoint, its weights' SHA-256, dataset, count, dim, and the SHA-256 and size of the
                             other two files

The three appear as one unit: the vectors and keys are written and renamed first, ``meta.json`` last
(:func:`polymodal.io.publish_together`), and :func:`load_embeddings` checks all three against each other, so
the vectors of one run are never indexed with the keys or model of another.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from polymodal.io import output_directory, publish_together, read_json, recover_directory, verify_published

__all__ = ["Embeddings", "load_embeddings", "save_embeddings"]

VECTORS, KEYS, META = "embeddings.safetensors", "keys.json", "meta.json"
TENSOR = "image_embeddings"


@dataclass
class Embeddings:
    """Vectors ``(N, D)``, their keys and the metadata of the run that made them (``checkpoint``,
    ``weights_sha256``, ``dataset``)."""

    vectors: torch.Tensor
    keys: list[str]
    meta: dict[str, Any]


def save_embeddings(directory: str | Path, vectors: torch.Tensor, keys: list[str], meta: dict[str, Any]) -> Path:
    """Write an embedding directory atomically as one unit; ``meta`` gains ``count`` and ``dim``."""
    if vectors.ndim != 2 or vectors.shape[0] != len(keys):
        raise ValueError(f"{vectors.shape[0] if vectors.ndim else 0} vectors of shape {tuple(vectors.shape)} "
                         f"for {len(keys)} keys")
    directory = output_directory(directory, "--out")
    vectors = vectors.float().contiguous().cpu()
    publish_together(
        directory,
        {VECTORS: lambda tmp: save_file({TENSOR: vectors}, str(tmp)),
         KEYS: lambda tmp: tmp.write_text(json.dumps(keys, ensure_ascii=False), encoding="utf-8")},
        META,
        {**meta, "count": int(vectors.shape[0]), "dim": int(vectors.shape[1])},
        fault="embed",
    )
    return directory


def load_embeddings(directory: str | Path) -> Embeddings:
    """Read an embedding directory, checking that vectors, keys and meta come from the same save.

    Raises:
        FileNotFoundError: the directory or one of its files is missing ("run polymodal embed first").
        ValueError: a file is torn or from another save, or counts and dimensions disagree.
    """
    directory = recover_directory(directory)
    meta_path = directory / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {directory} is not an embedding directory "
                                "(run `polymodal embed` first)")
    meta = read_json(meta_path, "embedding metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("count"), int) or not isinstance(meta.get("dim"), int):
        raise ValueError(f"{meta_path} lacks integer 'count' and 'dim': not written by `polymodal embed`")
    mismatch = verify_published(directory, meta, (VECTORS, KEYS), meta_path)
    if mismatch is not None:
        raise ValueError(f"{mismatch}; run `polymodal embed` again")
    try:
        vectors = load_file(str(directory / VECTORS))[TENSOR]
    except (SafetensorError, KeyError, OSError) as error:
        raise ValueError(f"{directory / VECTORS}: no readable {TENSOR!r} tensor ({error})") from None
    keys = read_json(directory / KEYS, "key table")
    if not isinstance(keys, list) or len(keys) != meta["count"] or tuple(vectors.shape) != (meta["count"], meta["dim"]):
        raise ValueError(f"{directory}: {len(keys) if isinstance(keys, list) else 'no'} keys and vectors of shape "
                         f"{tuple(vectors.shape)} disagree with {meta_path} (count {meta['count']}, dim {meta['dim']})")
    return Embeddings(vectors, keys, meta)
