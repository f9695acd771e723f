"""The on-disk form of a vector index: three files that are published together or not at all.

A saved index is a directory holding::

    index.faiss   the FAISS index (vectors; ids are positions 0..count-1)
    keys.json     the id -> key table: a JSON list whose position i holds the key of id i
    meta.json     format, dim, count, the SHA-256 of the other two files, and the caller's own fields

All three are first written under temporary names and synced, then renamed into place with ``meta.json`` last
(:func:`polymodal.io.publish_together`). Because ``meta.json`` names the exact bytes of the other two it is the
commit point: a crash while writing leaves the previous index untouched, and a crash between renames makes
:func:`read_index_directory` fail with an error naming the file that disagrees, so mixed data is never loaded.
Temporary files a crash left behind are removed by the next save.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss

from polymodal.io import publish_together, read_json, recover_directory, verify_published

INDEX_FILE = "index.faiss"
KEYS_FILE = "keys.json"
META_FILE = "meta.json"
FORMAT_VERSION = 1


class IndexLoadError(ValueError):
    """A saved index directory is corrupt, or its files disagree with each other."""


def write_index_directory(
    directory: str | Path, index: faiss.Index, keys: list[str], meta: dict[str, Any]
) -> None:
    """Save ``index`` with its id -> key table and ``meta`` (JSON-serialisable) into ``directory``.

    ``meta`` gains ``format``, ``dim``, ``count`` and ``sha256``; the directory is created if needed.
    """
    if index.ntotal != len(keys):
        raise ValueError(f"index holds {index.ntotal} vectors but {len(keys)} keys were given")
    keys_text = json.dumps(keys, ensure_ascii=False)
    publish_together(
        Path(directory),
        {INDEX_FILE: lambda tmp: faiss.write_index(index, str(tmp)),
         KEYS_FILE: lambda tmp: tmp.write_text(keys_text, encoding="utf-8")},
        META_FILE,
        {**meta, "format": FORMAT_VERSION, "dim": int(index.d), "count": int(index.ntotal)},
        fault="index",
    )


def read_index_directory(directory: str | Path) -> tuple[faiss.Index, list[str], dict[str, Any]]:
    """Read what :func:`write_index_directory` wrote, checking the three files against each other.

    Returns:
        The FAISS index, the id -> key table and the full ``meta.json`` object.

    Raises:
        FileNotFoundError: ``directory`` or one of its three files is missing.
        IndexLoadError: a file is corrupt, or the files disagree (e.g. a save that crashed between renames).
    """
    directory = recover_directory(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"index directory {directory} does not exist")
    meta_path, keys_path, index_path = (directory / name for name in (META_FILE, KEYS_FILE, INDEX_FILE))
    meta = _read_json(meta_path)
    _check_meta(meta, meta_path)
    for path in (keys_path, index_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
    # meta.json is renamed into place last, so a file whose checksum differs comes from another save.
    mismatch = verify_published(directory, meta, (KEYS_FILE, INDEX_FILE), meta_path)
    if mismatch is not None:
        raise IndexLoadError(f"{mismatch}; save or build the index again")
    keys = _read_json(keys_path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise IndexLoadError(f"{keys_path} must hold a JSON list of distinct strings")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        raise IndexLoadError(f"{index_path} is not a readable FAISS index: {error}") from error
    found = ((keys_path, "count", len(keys)), (index_path, "count", index.ntotal), (index_path, "dim", index.d))
    for path, field, value in found:
        if value != meta[field]:
            raise IndexLoadError(f"{path} has {field}={value} but {meta_path} says {field}={meta[field]}")
    return index, keys, meta


def _check_meta(meta: Any, path: Path) -> None:
    """Raise :class:`IndexLoadError` unless ``meta`` holds the fields this module writes."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise IndexLoadError(f"{path} is not a format-{FORMAT_VERSION} index description")
    if not all(isinstance(meta.get(field), int) for field in ("dim", "count")):
        raise IndexLoadError(f"{path} lacks integer fields 'dim' and 'count'")
    sha = meta.get("sha256")
    if not isinstance(sha, dict) or not all(isinstance(sha.get(name), str) for name in (INDEX_FILE, KEYS_FILE)):
        raise IndexLoadError(f"{path} lacks the checksums of {INDEX_FILE} and {KEYS_FILE}")


def _read_json(path: Path) -> Any:
    try:
        return read_json(path, what="index file")
    except UnicodeDecodeError as error:
        raise IndexLoadError(f"{path}: not UTF-8 text ({error})") from error
    except ValueError as error:  # read_json's syntax error already names the file and position
        raise IndexLoadError(str(error)) from error
