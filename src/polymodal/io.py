"""Crash-safe file writes: everything polymodal saves goes through here.

Three guarantees, each relied on by checkpoints, embedding outputs, indexes, exports and shards:

- **atomic**: a file is written under a temporary name in its own folder and renamed onto its name, so a reader
  sees the old file or the complete new one, never a torn write (:func:`atomic_path`);
- **durable**: the file is flushed to disk (``fsync``) before the rename and the folder after it, so the rename
  survives a power loss, not only a process crash (set ``POLYMODAL_FSYNC=0`` to trade that for speed);
- **together**: files that only make sense as a set (vectors + keys + meta, an index, a checkpoint's files) are
  written into a staging folder with a manifest of their sizes and SHA-256, and the folder is swapped in whole
  (:func:`atomic_directory`, :func:`publish_together`); a reader checks every file against the manifest
  (:func:`verify_manifest`, :func:`verify_published`), so a torn or mixed set is refused, never loaded.

:func:`crash_point` marks the moments between individual writes where a test may kill the process
(``POLYMODAL_FAULT=NAME[@N]``: exit at the N-th time NAME is reached), so every crash point is tested
deterministically rather than by timing luck.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "FAULT_EXIT_CODE",
    "atomic_directory",
    "atomic_path",
    "clean_leftovers",
    "crash_point",
    "file_sha256",
    "newest_verified",
    "output_directory",
    "publish_together",
    "read_json",
    "recover_directory",
    "verify_published",
    "verify_files",
    "verify_manifest",
    "write_bytes",
    "write_json",
    "write_manifest",
]

MANIFEST = "manifest.json"
FAULT_ENV = "POLYMODAL_FAULT"
FAULT_EXIT_CODE = 86  # what a process killed at a crash point exits with (tests tell it from a real failure)
_fault_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Test-only fault injection: exit at once (no cleanup, as SIGKILL) when ``POLYMODAL_FAULT`` names this point.

    ``POLYMODAL_FAULT=checkpoint.manifest@2`` exits the second time the point ``checkpoint.manifest`` is reached.
    Without the variable this is a dictionary lookup.
    """
    target = os.environ.get(FAULT_ENV)
    if not target:
        return
    point, _, nth = target.partition("@")
    if point != name:
        return
    _fault_hits[name] += 1
    if _fault_hits[name] == int(nth or 1):
        os._exit(FAULT_EXIT_CODE)


def _durable() -> bool:
    return os.environ.get("POLYMODAL_FSYNC", "1") != "0"


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    if not _durable():
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temporary_name(path: Path) -> Path:
    # A unique name of our own rather than mkstemp, whose files are private (0600): saved files get the
    # usual permissions, so checkpoints and indexes stay readable by a team. The ".tmp" suffix and leading dot
    # are what clean_leftovers recognises after a crash.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; sync it and rename it onto ``path`` only if the block succeeds.

    A reader therefore sees either the old file or the complete new one, never a torn write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    write_bytes(path, (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON with an error that names the file and the position of a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, so not JSON") from None


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def clean_leftovers(directory: Path) -> list[Path]:
    """Tidy what an interrupted save left in ``directory``: remove ``.*.tmp`` files and ``.staging-*`` folders,
    and for each ``.replaced-NAME-*`` folder (the old version a swap set aside) put it back when ``NAME`` is
    missing (the crash fell between the two renames), else remove it. Returns what was removed."""
    removed = []
    if not directory.is_dir():
        return removed
    for entry in sorted(directory.iterdir()):
        if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and entry.name.startswith(".staging-"):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif entry.is_dir() and entry.name.startswith(".replaced-"):
            original = directory / entry.name[len(".replaced-"):].rsplit("-", 1)[0]
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            else:
                entry.rename(original)
    return removed


def recover_directory(path: str | Path) -> Path:
    """Undo what a crash left around ``path``: when ``path`` is missing but the old version was set aside by an
    interrupted :func:`atomic_directory`, put it back; remove that save's staging and set-aside folders.
    Only folders of this ``path`` are touched (others in the parent may belong to saves in progress)."""
    path = Path(path)
    if not path.parent.is_dir():
        return path
    for entry in sorted(path.parent.glob(f".replaced-{path.name}-*")):
        if path.exists():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.rename(path)
    for entry in path.parent.glob(f".staging-{path.name}-*"):
        shutil.rmtree(entry, ignore_errors=True)
    return path


@contextmanager
def atomic_directory(path: str | Path, fault: str) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; when the block succeeds, sync everything in it and swap it
    in as ``path`` (an existing ``path`` is renamed aside first and removed once the new one is in place).

    Readers see the old directory or the complete new one at every moment; a crash between the two renames
    leaves the old one aside, and :func:`recover_directory` (which readers call) puts it back. Crash points:
    ``{fault}.staged`` (all written, nothing renamed), ``{fault}.aside`` (old one set aside), ``{fault}.swapped``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    staging = path.parent / f".staging-{path.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                fsync_path(file)
        fsync_path(staging)
        crash_point(f"{fault}.staged")
        aside = None
        if path.exists():
            aside = path.parent / f".replaced-{path.name}-{uuid.uuid4().hex[:8]}"
            path.rename(aside)
            crash_point(f"{fault}.aside")
        staging.rename(path)
        fsync_path(path.parent)
        crash_point(f"{fault}.swapped")
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _file_records(directory: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {name: {"size": (directory / name).stat().st_size, "sha256": file_sha256(directory / name)}
            for name in names}


def verify_files(directory: Path, files: Mapping[str, Mapping[str, Any]], described_by: Path) -> str | None:
    """Why the files of ``directory`` do not match their records (``{name: {size, sha256}}``), or None."""
    for name, record in files.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing (listed in {described_by})"
        size = path.stat().st_size
        if "size" in record and size != record["size"]:
            return f"{path} has {size} bytes, {described_by} recorded {record.get('size')}: a torn or foreign file"
        if file_sha256(path) != record.get("sha256"):
            return f"{path} does not match the checksum in {described_by}: the files come from different saves"
    return None


def write_manifest(directory: Path, extra: Mapping[str, Any] | None = None) -> Path:
    """List every file below ``directory`` (size, SHA-256) in ``directory/manifest.json``, written last.

    Meant for a staging folder of :func:`atomic_directory`, which syncs every file before the folder is renamed in.
    """
    names = sorted(str(path.relative_to(directory)) for path in directory.rglob("*")
                   if path.is_file() and path.name != MANIFEST)
    path = directory / MANIFEST
    write_json(path, {**(extra or {}), "files": _file_records(directory, names)})
    return path


def verify_manifest(directory: Path) -> str | None:
    """Why ``directory`` is not a complete, intact set of files (per its ``manifest.json``), or None if it is."""
    path = directory / MANIFEST
    if not path.is_file():
        return f"{path} is missing: the save did not finish (or an older polymodal wrote it)"
    try:
        manifest = read_json(path, "manifest")
    except ValueError as error:
        return str(error)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{path} lists no files"
    return verify_files(directory, files, path)


def newest_verified(directories: Iterable[Path]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The first of ``directories`` (the caller orders them newest first) whose manifest verifies, and the
    reason each one before it was passed over."""
    skipped = []
    for directory in directories:
        reason = verify_manifest(directory)
        if reason is None:
            return directory, skipped
        skipped.append((directory, reason))
    return None, skipped


def publish_together(
    directory: Path,
    writers: Mapping[str, Callable[[Path], None]],
    manifest_name: str,
    manifest: Mapping[str, Any],
    fault: str,
) -> dict[str, Any]:
    """Write a directory of files that belong together as one unit: ``writers[name](path)`` writes each file into
    a staging folder, then ``manifest_name`` records ``manifest`` plus every file's ``sha256`` and ``size``, then
    the folder is swapped in (:func:`atomic_directory`). After a crash at any point the previous directory is
    still there, whole; a reader checks the files against the manifest (:func:`verify_published`).

    ``directory`` must be new, empty, or an earlier output of the same kind (it holds only these files): it is
    replaced whole, so a folder of unrelated files is refused rather than deleted. Crash points:
    ``{fault}.wrote_{name}`` after each file, then those of :func:`atomic_directory`.
    """
    directory = Path(directory)
    own = {*writers, manifest_name}
    others = sorted(entry.name for entry in directory.iterdir() if entry.name not in own) if directory.is_dir() else []
    if others:
        raise ValueError(f"{directory} holds other files ({others[0]}, ...): give a new or empty directory, or an "
                         "earlier output of this kind, which is replaced whole")
    with atomic_directory(directory, fault) as staging:
        for name, write in writers.items():
            write(staging / name)
            crash_point(f"{fault}.wrote_{name}")
        records = _file_records(staging, writers)
        full = {**manifest, "sha256": {name: r["sha256"] for name, r in records.items()},
                "size": {name: r["size"] for name, r in records.items()}}
        (staging / manifest_name).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return full


def verify_published(
    directory: Path, manifest: Mapping[str, Any], names: Iterable[str], manifest_path: Path
) -> str | None:
    """Why the files ``names`` do not match what :func:`publish_together` recorded in ``manifest``, or None."""
    sha, size = manifest.get("sha256"), manifest.get("size") or {}
    if not isinstance(sha, dict) or not isinstance(size, dict):
        return f"{manifest_path} lacks the checksums of its files"
    records = {name: {"sha256": sha.get(name), **({"size": size[name]} if name in size else {})} for name in names}
    return verify_files(directory, records, manifest_path)


def output_directory(path: str | Path, what: str, empty: bool = False) -> Path:
    """``path`` as a directory to write into (created), checked before any work is done: refuses, naming
    ``what`` (the option, e.g. ``--out``), an existing file, a path that lies under a file, and with ``empty``
    a directory that already holds something."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            where = "is a file" if candidate == path else f"lies under {candidate}, which is a file"
            raise ValueError(f"{what} {path} {where}; give a directory")
    if empty and path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{what} {path} is not empty; pass --overwrite (overwrite=True in Python) to write into it")
    path.mkdir(parents=True, exist_ok=True)
    return path
