"""The on-disk form of a vector index: three files that are published together or not at all.

A saved index is a directory holding::

    index.faiss   the FAISS index (vectors; ids are positions 0..count-1)
    keys.json     the id -> key table: a JSON list whose position i holds the key of id i
    meta.json     format, dim, count, the SHA-256 of the other two files, and the caller's own fields

All three are first written under temporary names, then renamed into place with ``meta.json`` last.
Because ``meta.json`` names the exact bytes of the other two it is the commit point: a crash while writing
leaves the previous index untouched, and a crash between renames makes :func:`read_index_directory` fail
with an error naming the file that disagrees, so mixed data is never loaded.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import faiss

from polymodal.io import atomic_path, read_json

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
    directory = Path(directory)
    # atomic_path renames its temporary file when its block exits, innermost first: so all three files are
    # complete before the first rename, and meta.json (the outermost) is renamed last.
    with atomic_path(directory / META_FILE) as meta_tmp:
        with atomic_path(directory / KEYS_FILE) as keys_tmp:
            with atomic_path(directory / INDEX_FILE) as index_tmp:
                faiss.write_index(index, str(index_tmp))
                keys_tmp.write_text(json.dumps(keys, ensure_ascii=False), encoding="utf-8")
                full_meta = {
                    **meta,
                    "format": FORMAT_VERSION,
                    "dim": int(index.d),
                    "count": int(index.ntotal),
                    "sha256": {INDEX_FILE: _sha256(index_tmp), KEYS_FILE: _sha256(keys_tmp)},
                }
                meta_tmp.write_text(json.dumps(full_meta, indent=2, ensure_ascii=False), encoding="utf-8")


def read_index_directory(directory: str | Path) -> tuple[faiss.Index, list[str], dict[str, Any]]:
    """Read what :func:`write_index_directory` wrote, checking the three files against each other.

    Returns:
        The FAISS index, the id -> key table and the full ``meta.json`` object.

    Raises:
        FileNotFoundError: ``directory`` or one of its three files is missing.
        IndexLoadError: a file is corrupt, or the files disagree (e.g. a save that crashed between renames).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"index directory {directory} does not exist")
    meta_path, keys_path, index_path = (directory / name for name in (META_FILE, KEYS_FILE, INDEX_FILE))
    meta = _read_json(meta_path)
    _check_meta(meta, meta_path)
    for path in (keys_path, index_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        # meta.json is renamed into place last, so a file whose checksum differs comes from another save.
        if _sha256(path) != meta["sha256"][path.name]:
            raise IndexLoadError(
                f"{path} does not match {meta_path} (checksum differs): a save was interrupted or the files "
                "come from different saves; save or build the index again"
            )
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


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
