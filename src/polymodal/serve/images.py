"""The image behind an index key, for thumbnails and for questions about a search result.

A key is resolved, in order, from the service's upload store, from the data sets the index was built from (the
records' own loaders: an emoji font, a generated scene), or, for keys that are absolute paths (what
``polymodal embed`` records for files on disk), from that file. The service asks only for keys that are in its
index, so a client can never name a file: a key that is not indexed is refused before it reaches this module.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from polymodal.data.records import ImageTextSet, open_image_file
from polymodal.serve.live_index import UploadStore

__all__ = ["ImageSource"]


class ImageSource:
    """Key → image, and key → JPEG thumbnail (kept in a bounded most-recently-used cache).

    Args:
        datasets: the sets whose records' images the index holds.
        uploads: where images added through the service are kept.
        thumbnail_side: longest side of a thumbnail, in pixels.
        cache_size: thumbnails kept in memory.
    """

    def __init__(self, datasets: Sequence[ImageTextSet], uploads: UploadStore, thumbnail_side: int = 256,
                 cache_size: int = 4096) -> None:
        self.uploads = uploads
        self.thumbnail_side = thumbnail_side
        self._records = {record.key: (dataset, i) for dataset in datasets for i, record in enumerate(dataset.records)}
        self._thumbnails: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def open(self, key: str) -> Image.Image:
        """The RGB image of ``key``. Raises ``LookupError`` when no source has it."""
        uploaded = self.uploads.open(key)
        if uploaded is not None:
            return uploaded
        if key in self._records:
            dataset, position = self._records[key]
            return dataset.image(position)
        if Path(key).is_absolute() and Path(key).is_file():
            return open_image_file(key)
        raise LookupError(f"no image source holds {key!r}; start the server with --images naming the data set the "
                          "index was built from")

    def title(self, key: str) -> str:
        """A short name for people: the record's first caption ("broken heart"), else the file or upload name."""
        if key in self._records:
            dataset, position = self._records[key]
            captions = dataset.records[position].captions
            if captions:
                return captions[0]
        if self.uploads.digest_of(key) is not None:
            return key.split("-", 1)[1]
        return key.replace("\\", "/").rsplit("/", 1)[-1]

    def thumbnail(self, key: str) -> bytes:
        """``key``'s image as a JPEG of at most ``thumbnail_side`` pixels a side."""
        with self._lock:
            cached = self._thumbnails.get(key)
            if cached is not None:
                self._thumbnails.move_to_end(key)
                return cached
        image = self.open(key)
        # Only shrunk: a small image (an emoji, a 32-pixel scene) is sent as it is and the browser scales it,
        # rather than sending the same pixels enlarged in more bytes.
        image.thumbnail((self.thumbnail_side, self.thumbnail_side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._lock:
            self._thumbnails[key] = data
            while len(self._thumbnails) > self._cache_size:
                self._thumbnails.popitem(last=False)
        return data
