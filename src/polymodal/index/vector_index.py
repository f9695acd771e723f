"""A FAISS vector index whose hits carry string keys, saved and loaded as one consistent directory.

FAISS numbers vectors 0, 1, 2, ... in the order they are added; :class:`VectorIndex` keeps the matching
id -> key table (image paths, record keys), so a search answers with keys rather than bare ids.

Cosine search: embeddings are compared by inner product (``metric="ip"``), which is cosine similarity only
when every vector is L2-normalised. ``build(..., normalize=True)`` normalises the vectors it is given and,
because the choice is stored with the index, every later ``add`` and ``search`` too.

Saving and loading go through :mod:`polymodal.index.storage`, which publishes the three files of an index
together or not at all.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from tqdm.auto import tqdm

from polymodal.index.storage import META_FILE, IndexLoadError, read_index_directory, write_index_directory

IndexKind = Literal["flat", "ivf", "hnsw"]
BuildKind = Literal["auto", "flat", "ivf", "hnsw"]
Metric = Literal["ip", "l2"]

_KINDS = ("flat", "ivf", "hnsw")

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
# FAISS k-means wants ~39 training points per centroid; fewer makes it warn and the lists get noisy.
_MIN_POINTS_PER_LIST = 39
_HNSW_M = 32
_HNSW_EF_CONSTRUCTION = 40
_HNSW_EF_SEARCH = 64


@dataclass(frozen=True)
class SearchHit:
    """One search result.

    Attributes:
        key: the string key stored with the vector (e.g. an image path).
        score: inner product for ``metric="ip"`` (higher is closer; cosine similarity for normalised
            vectors), squared L2 distance for ``metric="l2"`` (lower is closer).
        id: position of the vector in the index (0-based, in order of addition).
    """

    key: str
    score: float
    id: int


# Measured with benchmarks/search_scale.py on the 2-core CI machine (README "Search at scale"): exact search
# reads every vector per query (memory-bound: 17 ms at 100k x 512, 170 ms at 1M), so above this many vectors a
# single query would exceed ~2 ms; an IVF index with sqrt(N) lists probing 1% of them (at least 8) answered in
# 0.5 ms at 100k and 1.8 ms at 1M with recall@10 >= 0.97.
AUTO_FLAT_MAX = 10_000
AUTO_MIN_NPROBE = 8
# Rows normalised and added at a time: bounds the extra memory of a build to one chunk, not a copy of all vectors.
ADD_CHUNK = 65_536


def auto_index_parameters(count: int) -> tuple[IndexKind, int | None, int | None]:
    """``kind="auto"``: (kind, nlist, nprobe) for ``count`` vectors, from the measurements above."""
    if count <= AUTO_FLAT_MAX:
        return "flat", None, None
    nlist = default_nlist(count)
    return "ivf", nlist, min(nlist, max(AUTO_MIN_NPROBE, math.ceil(nlist / 100)))


def default_nlist(count: int) -> int:
    """Number of IVF lists for ``count`` training vectors: ~sqrt(count), at least 39 points per list."""
    return max(1, min(round(math.sqrt(count)), count // _MIN_POINTS_PER_LIST))


class VectorIndex:
    """A FAISS index plus its id -> key table; build with :meth:`build` or :meth:`load`.

    Attributes:
        kind: ``"flat"`` (exact), ``"ivf"`` (inverted lists, approximate) or ``"hnsw"`` (graph, approximate).
        metric: ``"ip"`` (inner product) or ``"l2"`` (squared Euclidean distance).
        normalize: whether added vectors and queries are L2-normalised before use.
        model_name: name of the model that produced the vectors (so queries can be embedded the same way).
        checkpoint: checkpoint path or identifier of that model.
        metadata: free JSON-serialisable metadata, saved in ``meta.json``.
    """

    def __init__(
        self,
        index: faiss.Index,
        keys: list[str],
        kind: IndexKind,
        metric: Metric,
        normalize: bool = False,
        model_name: str | None = None,
        checkpoint: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Wrap an existing FAISS index; prefer :meth:`build` or :meth:`load`."""
        if index.ntotal != len(keys):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(keys)} keys were given")
        self._index = index
        self._keys = list(keys)
        self._key_set = set(self._keys)
        self.kind = kind
        self.metric = metric
        self.normalize = normalize
        self.model_name = model_name
        self.checkpoint = checkpoint
        self.metadata = dict(metadata or {})

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        keys: Sequence[str],
        kind: BuildKind = "flat",
        metric: Metric = "ip",
        nlist: int | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        normalize: bool = False,
        model_name: str | None = None,
        checkpoint: str | None = None,
        progress: bool = False,
    ) -> VectorIndex:
        """Build an index over ``vectors`` (N, D), where row i is stored under ``keys[i]``.

        Args:
            vectors: embeddings, shape (N, D); converted to float32. For cosine search they should be
                L2-normalised, or pass ``normalize=True``.
            keys: N distinct strings.
            kind: ``"flat"`` exact search; ``"ivf"`` inverted lists trained on ``vectors`` (``nlist`` lists,
                default :func:`default_nlist`); ``"hnsw"`` a navigable small-world graph; ``"auto"`` the kind
                and parameters :func:`auto_index_parameters` picks for the number of vectors.
            metric: ``"ip"`` inner product or ``"l2"`` squared Euclidean distance.
            nlist: number of IVF lists (``kind="ivf"`` only), 1 <= nlist <= N.
            metadata: free JSON-serialisable metadata to save with the index.
            normalize: L2-normalise these vectors and every later added vector and query.
            model_name: model that produced the vectors, recorded in ``meta.json``.
            checkpoint: that model's checkpoint, recorded in ``meta.json``.
        """
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
        if nlist is not None and kind != "ivf":
            raise ValueError(f"nlist applies to kind='ivf' only, got kind={kind!r}")
        array = np.asarray(vectors)
        if array.ndim == 1:
            array = array[None, :]
        count = array.shape[0] if array.ndim == 2 else 0
        nprobe = None
        if kind == "auto":
            kind, nlist, nprobe = auto_index_parameters(count)
        # Checked (and normalised) in chunks: a build holds one chunk beside the index, not a second copy.
        sample = _as_matrix(array[: max(1, min(count, 256 * (nlist or default_nlist(max(count, 1)))))],
                            expected_dim=None, normalize=normalize, what="vectors")
        dim = sample.shape[1]
        if dim == 0:
            raise ValueError("vectors must have at least one dimension (got D=0)")
        faiss_metric = _METRICS[metric]
        if kind == "flat":
            index: faiss.Index = faiss.IndexFlat(dim, faiss_metric)
        elif kind == "ivf":
            if count == 0:
                raise ValueError("kind='ivf' must be trained: build it from at least one vector")
            nlist = default_nlist(count) if nlist is None else nlist
            if not 1 <= nlist <= count:
                raise ValueError(f"nlist must be between 1 and the number of vectors ({count}), got {nlist}")
            # The quantizer only assigns vectors to lists; it must score with the same metric as the lists.
            quantizer = faiss.IndexFlat(dim, faiss_metric)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)
            # k-means on up to 256 points per list (what FAISS would subsample to anyway).
            index.train(sample)
            # Probing one list in eight keeps recall high on clustered embeddings at a fraction of flat cost.
            index.nprobe = nprobe or max(1, math.ceil(nlist / 8))
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, _HNSW_M, faiss_metric)
            index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = _HNSW_EF_SEARCH
        else:
            raise ValueError(f"kind must be one of {('auto', *_KINDS)}, got {kind!r}")
        result = cls(index, [], kind, metric, normalize, model_name, checkpoint, metadata)
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys must be a sequence of strings (one per vector)")
        if len(keys) != count:
            raise ValueError(f"got {count} vectors but {len(keys)} keys; they must match one to one")
        bar = tqdm(total=count, desc=f"indexing ({kind})", unit="vec", disable=not progress or count < ADD_CHUNK,
                   file=sys.stderr, dynamic_ncols=True)
        for start in range(0, count, ADD_CHUNK):
            chunk = array[start : start + ADD_CHUNK]
            result._add_matrix(_as_matrix(chunk, dim, normalize, "vectors"), keys[start : start + ADD_CHUNK])
            bar.update(len(chunk))
        bar.close()
        return result

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored (a set lookup; :attr:`keys` copies the whole table)."""
        return key in self._key_set

    @property
    def dim(self) -> int:
        """Dimension D of the stored vectors."""
        return int(self._index.d)

    @property
    def keys(self) -> list[str]:
        """A copy of the id -> key table: ``keys[i]`` is the key of id ``i``."""
        return list(self._keys)

    @property
    def nprobe(self) -> int:
        """IVF lists visited per query (``kind="ivf"`` only): higher is slower and closer to exact."""
        return int(self._approximate("ivf").nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = self._approximate("ivf")
        if not 1 <= value <= ivf.nlist:
            raise ValueError(f"nprobe must be between 1 and nlist ({ivf.nlist}), got {value}")
        ivf.nprobe = value

    @property
    def ef_search(self) -> int:
        """HNSW candidates kept per query (``kind="hnsw"`` only): higher is slower and closer to exact."""
        return int(self._approximate("hnsw").hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"ef_search must be >= 1, got {value}")
        self._approximate("hnsw").hnsw.efSearch = value

    def copy(self) -> VectorIndex:
        """An independent copy (vectors, keys, settings): a live service adds to a copy and saves it, then swaps
        it in, so searches never see an item that is not yet on disk and a failed save changes nothing."""
        return VectorIndex(faiss.clone_index(self._index), self._keys, self.kind, self.metric, self.normalize,
                           self.model_name, self.checkpoint, self.metadata)

    def add(self, vectors: np.ndarray, keys: Sequence[str]) -> None:
        """Append vectors (N, D) or one vector (D,) under ``keys``; their ids continue from ``len(self)``."""
        matrix = _as_matrix(vectors, expected_dim=self.dim, normalize=self.normalize, what="vectors")
        self._add_matrix(matrix, keys)

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[SearchHit]]:
        """The ``k`` nearest stored vectors for each query, best first.

        Args:
            queries: shape (Q, D), or (D,) for a single query (still answered as a list of one list).
            k: hits per query, >= 1. With fewer than ``k`` vectors stored every vector is returned;
                ``"ivf"`` and ``"hnsw"`` may return fewer when the probed lists or graph hold fewer.

        Returns:
            One list of :class:`SearchHit` per query.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        matrix = _as_matrix(queries, expected_dim=self.dim, normalize=self.normalize, what="queries")
        if len(self) == 0:
            return [[] for _ in range(matrix.shape[0])]
        scores, ids = self._index.search(matrix, min(int(k), len(self)))
        # FAISS pads with id -1 where it found fewer than k neighbours; those are not hits.
        return [
            [SearchHit(self._keys[i], float(s), int(i)) for s, i in zip(row_scores, row_ids) if i >= 0]
            for row_scores, row_ids in zip(scores, ids)
        ]

    def save(self, directory: str | Path) -> None:
        """Write ``index.faiss``, ``keys.json`` and ``meta.json`` into ``directory`` (created if needed).

        The files are published together (see :mod:`polymodal.index.storage`), so a crash mid-save never
        leaves a directory that :meth:`load` reads as a wrong index.
        """
        meta = {
            "kind": self.kind,
            "metric": self.metric,
            "normalize": self.normalize,
            "model_name": self.model_name,
            "checkpoint": self.checkpoint,
            "metadata": self.metadata,
        }
        write_index_directory(directory, self._index, self._keys, meta)

    @classmethod
    def load(cls, directory: str | Path) -> VectorIndex:
        """Read an index written by :meth:`save`.

        Raises:
            FileNotFoundError: ``directory`` or one of its three files is missing.
            IndexLoadError: a file is corrupt, or the files disagree (a save that crashed between renames).
        """
        index, keys, meta = read_index_directory(directory)
        meta_path = Path(directory) / META_FILE
        kind, metric = meta.get("kind"), meta.get("metric")
        if kind not in _KINDS or metric not in _METRICS:
            raise IndexLoadError(f"{meta_path} has unknown kind {kind!r} or metric {metric!r}")
        if index.metric_type != _METRICS[metric]:
            raise IndexLoadError(f"the FAISS index in {directory} does not use the metric {meta_path} names")
        return cls(
            index, keys, kind, metric, bool(meta.get("normalize", False)),
            meta.get("model_name"), meta.get("checkpoint"), meta.get("metadata"),
        )

    def _add_matrix(self, matrix: np.ndarray, keys: Sequence[str]) -> None:
        """Validate ``keys`` against ``matrix`` (already checked and float32), then append both."""
        if isinstance(keys, (str, bytes)) or not all(isinstance(key, str) for key in keys):
            raise TypeError("keys must be a sequence of strings (one per vector)")
        if len(keys) != matrix.shape[0]:
            raise ValueError(f"got {matrix.shape[0]} vectors but {len(keys)} keys; they must match one to one")
        new_keys = set(keys)
        if len(new_keys) != len(keys):
            raise ValueError("keys must be distinct, got duplicates within this batch")
        clashes = new_keys & self._key_set
        if clashes:
            raise ValueError(f"{len(clashes)} keys are already in the index, e.g. {sorted(clashes)[0]!r}")
        self._index.add(matrix)
        self._keys.extend(keys)
        self._key_set |= new_keys

    def _approximate(self, kind: IndexKind) -> Any:
        """The FAISS index, after checking it is of ``kind`` (nprobe / ef_search exist on one kind each)."""
        if self.kind != kind:
            raise AttributeError(f"this setting applies to kind={kind!r} only, this index is {self.kind!r}")
        return self._index


def _as_matrix(array: np.ndarray, expected_dim: int | None, normalize: bool, what: str) -> np.ndarray:
    """``array`` as a C-contiguous float32 (N, D) matrix, checked and optionally L2-normalised."""
    matrix = np.asarray(array)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise ValueError(f"{what} must have shape (N, D) or (D,), got shape {np.shape(array)}")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise TypeError(f"{what} must be numeric, got dtype {matrix.dtype}")
    if expected_dim is not None and matrix.shape[1] != expected_dim:
        raise ValueError(f"{what} have dimension {matrix.shape[1]}, expected {expected_dim} (the index dimension)")
    # Copy: FAISS needs float32 C order, and normalising must not modify the caller's array.
    matrix = np.array(matrix, dtype=np.float32, order="C")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    if normalize:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        # A zero vector has no direction; leave it zero rather than divide by zero.
        matrix /= np.maximum(norms, np.finfo(np.float32).tiny)
    return matrix
