"""The index a running service searches and adds to, and the store of the images added through it.

Adding never changes the index being searched: :meth:`LiveIndex.add` copies it, adds to the copy, saves the
copy with the index's atomic save (a staging folder swapped in whole, :mod:`polymodal.index.storage`) and only
then swaps the copy in. So a search never sees an item that is not yet on disk, a failed save changes nothing,
a kill at any moment leaves the last saved index loadable, and every add a client saw acknowledged survives a
restart. Adds are serialised by a lock and each one copies the previous result, so concurrent adds lose nothing.

Uploaded images are kept re-encoded from pixels (never the uploaded bytes) in a folder beside the index, under
their content hash: the only names on disk are ones the service made.
"""
from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.index import SearchHit, VectorIndex
from polymodal.io import atomic_path

__all__ = ["LiveIndex", "UploadStore"]


class UploadStore:
    """Images added through the service: ``DIR/<first 16 hex digits of SHA-256>.png``, at most
    ``max_side`` pixels a side. Their index keys read ``upload/<digest>-<name>``, where ``name`` is the uploaded
    file's base name reduced to letters, digits, ``.``, ``_`` and ``-`` (for people reading results only: the
    file on disk is found by the digest)."""

    PREFIX = "upload/"
    _KEY = re.compile(r"^upload/([0-9a-f]{16})-")

    def __init__(self, directory: str | Path, max_side: int = 512) -> None:
        self.directory = Path(directory)
        self.max_side = max_side

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    def key_for(self, digest: str, file_name: str | None) -> str:
        # Both separators count: a Windows client sends "C:\\photos\\cat.png".
        base = re.split(r"[\\/]", file_name or "")[-1]
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:64] or "image"
        return f"{self.PREFIX}{digest}-{name}"

    def digest_of(self, key: str) -> str | None:
        match = self._KEY.match(key)
        return match.group(1) if match else None

    def put(self, digest: str, image: Image.Image) -> None:
        """Keep ``image`` (written atomically, before the index that names it is saved)."""
        path = self.directory / f"{digest}.png"
        if path.is_file():
            return
        kept = image.copy()
        kept.thumbnail((self.max_side, self.max_side))
        with atomic_path(path) as tmp:
            kept.save(tmp, format="PNG")

    def open(self, key: str) -> Image.Image | None:
        """The kept image of an upload key (None for another key)."""
        digest = self.digest_of(key)
        if digest is None:
            return None
        with Image.open(self.directory / f"{digest}.png", formats=["PNG"]) as image:
            return image.convert("RGB")


class LiveIndex:
    """A :class:`VectorIndex` saved at ``directory`` that is searched and appended to while a service runs."""

    def __init__(self, directory: str | Path, index: VectorIndex) -> None:
        self.directory = Path(directory)
        self._index = index
        self._writer = threading.Lock()

    @classmethod
    def empty(cls, directory: str | Path, dim: int, checkpoint: str) -> LiveIndex:
        """A new, empty exact cosine index of dimension ``dim`` for ``directory`` (written at the first add)."""
        return cls(directory, VectorIndex.build(np.zeros((0, dim), np.float32), [], kind="flat", normalize=True,
                                                checkpoint=checkpoint))

    @property
    def index(self) -> VectorIndex:
        """The index as last saved (replaced whole by each add, so it can be read without a lock)."""
        return self._index

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def search(self, vectors: np.ndarray, k: int) -> list[list[SearchHit]]:
        return self._index.search(vectors, k)

    def add(self, vectors: np.ndarray, keys: Sequence[str]) -> int:
        """Append and save; returns the new size. Raises ``ValueError`` for a key already stored (nothing is
        added then) or vectors of another dimension."""
        with self._writer:
            updated = self._index.copy()
            updated.add(vectors, keys)
            updated.save(self.directory)
            self._index = updated
            return len(updated)
