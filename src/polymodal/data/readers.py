"""Readers of on-disk image-text formats, each returning an :class:`ImageTextSet`.

Formats: JSONL and CSV pair files, COCO captions, Karpathy split JSON (Flickr30k / COCO) and the ImageFolder
layout. :func:`read_dataset` picks the reader from the path.

Every reader checks each image at read time (``PIL.Image.verify``: parses the file without decoding the
pixels), so a missing or corrupt image fails here, naming the file and the line, and not at step 5000 of
training. Bad input raises :class:`DataError`; with ``skip_bad=True`` the offending entry is dropped instead
and counted in :attr:`ImageTextSet.skipped`. What counts as one entry: a row (JSONL, CSV), an image or an
annotation entry (COCO), an image entry (Karpathy), an image file (ImageFolder).
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from polymodal.data.records import DataError, ImageTextRecord, ImageTextSet

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
_INT_LABEL = re.compile(r"[0-9]+")


def verify_image(path: Path) -> str | None:
    """Why ``path`` is not a readable image, or ``None`` when it is."""
    if not path.is_file():
        return f"image not found: {path}"
    try:
        with Image.open(path) as image:
            image.verify()
    # Pillow reports corrupt files through many exception types (OSError, SyntaxError, struct.error, ...).
    except Exception as error:  # noqa: BLE001
        return f"image cannot be read: {path} ({type(error).__name__}: {error})"
    return None


class _Builder:
    """Groups captions by image, verifies each image once, and applies the ``skip_bad`` policy."""

    def __init__(self, source: Path, skip_bad: bool) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.skipped = 0
        self._captions: dict[str, list[str]] = {}  # insertion order = order of first appearance
        self._labels: dict[str, int | str] = {}
        self._label_kind: type | None = None
        self._image_errors: dict[str, str | None] = {}

    def reject(self, where: str | int, reason: str) -> None:
        """Raise a :class:`DataError`, or count the entry as skipped."""
        if not self.skip_bad:
            raise DataError(self.source, where, reason)
        self.skipped += 1

    def image_key(self, where: str | int, path: Path) -> str | None:
        """The record key of a verified image, or ``None`` when it was rejected."""
        key = str(path.resolve())
        if key not in self._image_errors:
            self._image_errors[key] = verify_image(path)
        reason = self._image_errors[key]
        if reason is not None:
            self.reject(where, reason)
            return None
        return key

    def add(self, where: str | int, key: str, captions: Iterable[str], label: int | str | None = None) -> None:
        """Attach captions (and optionally a label) to the image ``key``."""
        if label is not None:
            kind = type(label)
            if self._label_kind is not None and kind is not self._label_kind:
                self.reject(where, f"label {label!r} mixes class names and class indices in one file")
                return
            previous = self._labels.get(key)
            if previous is not None and previous != label:
                self.reject(where, f"label {label!r} contradicts label {previous!r} given earlier for this image")
                return
            self._label_kind = kind
            self._labels[key] = label
        self._captions.setdefault(key, []).extend(captions)

    def result(self, name: str) -> ImageTextSet:
        if not self._captions:
            raise DataError(self.source, None, f"no usable records ({self.skipped} skipped as bad)")
        class_names = sorted({str(v) for v in self._labels.values()}) if self._label_kind is str else None
        index = {n: i for i, n in enumerate(class_names or [])}
        records = []
        for key, captions in self._captions.items():
            label = self._labels.get(key)
            if isinstance(label, str):
                label = index[label]
            records.append(ImageTextRecord(key=key, captions=tuple(captions), label=label))
        return ImageTextSet(name=name, records=records, class_names=class_names, skipped=self.skipped)


def _text(entry: Any, field: str) -> str:
    """A required, non-empty string field of a JSON object or CSV row (raises ``ValueError`` with the reason)."""
    if not isinstance(entry, dict):
        raise ValueError(f"expected an object, got {type(entry).__name__}")
    value = entry.get(field)
    if value is None:
        raise ValueError(f"missing field {field!r}")
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"empty {field!r}")
    return value.strip()


def _label(value: Any) -> int | str | None:
    """A class index (a non-negative int, or a string of digits as CSV gives) or a class name; empty: none."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = value.strip()
        return int(value) if _INT_LABEL.fullmatch(value) else value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"label must be a class name or a non-negative integer, got {value!r}")


def _resolve(base: Path, relative: str) -> Path:
    """An image path relative to ``base`` (absolute paths are kept)."""
    path = Path(relative).expanduser()
    return path if path.is_absolute() else base / path


def _add_pair(builder: _Builder, where: int, row: Any, base: Path) -> None:
    """One ``{"image", "caption", "label"?}`` row of a JSONL or CSV file."""
    try:
        image, caption = _text(row, "image"), _text(row, "caption")
        label = _label(row.get("label"))
    except ValueError as error:
        builder.reject(where, str(error))
        return
    key = builder.image_key(where, _resolve(base, image))
    if key is not None:
        builder.add(where, key, [caption], label)


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "no such file")
    return path


def read_pairs_jsonl(path: str | Path, skip_bad: bool = False) -> ImageTextSet:
    """Read a JSON-lines file of ``{"image": path, "caption": text, "label"?: name | index}`` rows.

    Image paths are relative to the JSONL file's folder (absolute paths allowed). Rows naming the same image
    become one record with several captions. Blank lines are ignored. Labels are class indices (integers or
    strings of digits) or class names, one kind per file; names become sorted ``class_names``.
    """
    path = _existing_file(path)
    builder = _Builder(path, skip_bad)
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            builder.reject(number, f"not valid JSON ({error.msg}, column {error.colno})")
            continue
        _add_pair(builder, number, row, path.parent)
    return builder.result(path.stem)


def read_pairs_csv(path: str | Path, skip_bad: bool = False) -> ImageTextSet:
    """Read a CSV file with a header naming ``image`` and ``caption`` columns (``label`` optional).

    Same semantics as :func:`read_pairs_jsonl`; a label of digits is a class index, anything else a name.
    """
    path = _existing_file(path)
    builder = _Builder(path, skip_bad)
    reader = csv.DictReader(_text_lines(path))
    missing = [c for c in ("image", "caption") if c not in (reader.fieldnames or [])]
    if missing:
        # A bad header makes every row unreadable, so it is fatal even with skip_bad.
        raise DataError(path, 1, f"header lacks column(s) {missing}; found {reader.fieldnames}")
    for row in reader:
        _add_pair(builder, reader.line_num, row, path.parent)
    return builder.result(path.stem)


def _text_lines(path: Path) -> list[str]:
    """The file's lines (newlines kept, for the csv module); a UTF-8 byte-order mark (Excel's CSVs) is dropped."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    except UnicodeDecodeError as error:
        raise DataError(path, None, f"not UTF-8 text ({error.reason} at byte {error.start})") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads("".join(_text_lines(path)))
    except json.JSONDecodeError as error:
        raise DataError(path, None, f"not valid JSON ({error.msg} at line {error.lineno})") from None


def _entries(data: Any, path: Path, field: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get(field), list):
        raise DataError(path, None, f"expected a JSON object with a list {field!r}")
    return data[field]


def read_coco_captions(
    annotations_json: str | Path, image_dir: str | Path | None = None, skip_bad: bool = False
) -> ImageTextSet:
    """Read COCO captions (``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``).

    Args:
        annotations_json: e.g. ``annotations/captions_val2017.json``.
        image_dir: folder the ``file_name`` entries are relative to; defaults to the JSON file's folder.
        skip_bad: drop bad image / annotation entries instead of raising.

    Records follow the order of ``images``; images without any caption are left out.
    """
    path = _existing_file(annotations_json)
    return _coco_from_data(_load_json(path), path, image_dir, skip_bad)


def _coco_from_data(data: Any, path: Path, image_dir: str | Path | None, skip_bad: bool) -> ImageTextSet:
    base = Path(image_dir) if image_dir is not None else path.parent
    builder = _Builder(path, skip_bad)
    files: dict[Any, tuple[str, str]] = {}  # image id -> (where, file name)
    for i, entry in enumerate(_entries(data, path, "images")):
        where = f"images[{i}]"
        try:
            file_name = _text(entry, "file_name")
            if not isinstance(entry.get("id"), (int, str)):
                raise ValueError("missing field 'id' (an integer or string)")
            if entry["id"] in files:
                raise ValueError(f"duplicate image id {entry['id']!r}")
        except ValueError as error:
            builder.reject(where, str(error))
            continue
        files[entry["id"]] = (where, file_name)
    captions: dict[Any, list[str]] = {}
    for j, entry in enumerate(_entries(data, path, "annotations")):
        try:
            caption = _text(entry, "caption")
            if not isinstance(entry.get("image_id"), (int, str)) or entry["image_id"] not in files:
                raise ValueError(f"image_id {entry.get('image_id')!r} is not in 'images'")
        except ValueError as error:
            builder.reject(f"annotations[{j}]", str(error))
            continue
        captions.setdefault(entry["image_id"], []).append(caption)
    for image_id, (where, file_name) in files.items():
        if image_id in captions and (key := builder.image_key(where, _resolve(base, file_name))) is not None:
            builder.add(where, key, captions[image_id])
    return builder.result(path.stem)


def _splits(split: str | Iterable[str] | None) -> set[str] | None:
    return {split} if isinstance(split, str) else (set(split) if split is not None else None)


def read_karpathy(
    json_path: str | Path,
    image_root: str | Path | None = None,
    split: str | Iterable[str] | None = None,
    skip_bad: bool = False,
) -> ImageTextSet:
    """Read a Karpathy split file (``dataset_flickr30k.json``, ``dataset_coco.json``, ...).

    Args:
        json_path: ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}``.
        image_root: folder holding the images (``filepath``/``filename`` below it); defaults to the JSON's
            folder.
        split: keep only these splits (``"train"``, ``"val"``, ``"test"``; COCO also has ``"restval"``, which
            Karpathy's own training added to train: pass ``["train", "restval"]``). ``None`` keeps all.
        skip_bad: drop bad image entries instead of raising.
    """
    path = _existing_file(json_path)
    return _karpathy_from_data(_load_json(path), path, image_root, split, skip_bad)


def _karpathy_from_data(
    data: Any, path: Path, image_root: str | Path | None, split: str | Iterable[str] | None, skip_bad: bool
) -> ImageTextSet:
    base = Path(image_root) if image_root is not None else path.parent
    wanted = _splits(split)
    builder = _Builder(path, skip_bad)
    seen_splits: set[str] = set()
    for i, entry in enumerate(_entries(data, path, "images")):
        where = f"images[{i}]"
        try:
            file_name = _text(entry, "filename")
            entry_split = entry.get("split")
            seen_splits.add(str(entry_split))
            if wanted is not None and entry_split not in wanted:
                continue
            sentences = entry.get("sentences")
            if not isinstance(sentences, list) or not sentences:
                raise ValueError("missing or empty 'sentences'")
            captions = [_text(s, "raw") for s in sentences]
        except ValueError as error:
            builder.reject(where, str(error))
            continue
        folder = entry.get("filepath") or ""
        key = builder.image_key(where, base / folder / file_name)
        if key is not None:
            builder.add(where, key, captions)
    if wanted is not None and not wanted & seen_splits:
        raise DataError(path, None, f"no images in split {sorted(wanted)}; the file has {sorted(seen_splits)}")
    name = str(data.get("dataset") or path.stem)
    return builder.result(name if split is None else f"{name}-{'+'.join(sorted(wanted or ()))}")


def read_image_folder(
    root: str | Path, template: str = "a photo of a {}.", skip_bad: bool = False
) -> ImageTextSet:
    """Read the ImageFolder layout: ``root/<class>/<image>``, one folder per class.

    Class names come from the folder names (sorted, as torchvision does, underscores shown as spaces); each
    image gets one caption, ``template.format(class name)``, its class index as ``label`` and its class name
    as ``group``. Files whose suffix is not an image suffix are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, None, "no such directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(root, None, "no class folders (expected root/<class>/<image>)")
    class_names = [folder.name.replace("_", " ") for folder in folders]
    builder = _Builder(root, skip_bad)
    for label, (folder, name) in enumerate(zip(folders, class_names)):
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            where = str(image.relative_to(root))
            if (key := builder.image_key(where, image)) is not None:
                builder.add(where, key, [template.format(name)], label)
    images = builder.result(root.name)
    # Labels were given as indices, so the builder leaves class names to us; keep empty classes too.
    images.class_names = class_names
    # Every image of a class has the same caption, so any of them is a correct retrieval for it.
    images.records = [replace(r, group=class_names[r.label]) for r in images.records]
    return images


def read_dataset(path: str | Path, split: str | None = None, skip_bad: bool = False) -> ImageTextSet:
    """Read any supported format, choosing the reader from the path.

    ``.jsonl`` → :func:`read_pairs_jsonl`; ``.csv`` → :func:`read_pairs_csv`; ``.json`` → COCO captions
    (keys ``images`` and ``annotations``) or Karpathy split (``images`` entries with ``sentences``, images
    below the JSON's folder); a directory → :func:`read_image_folder` (``root/<split>`` when ``split`` is
    given). ``split`` also filters Karpathy files; other formats hold one split per file.
    """
    path = Path(path)
    if path.is_dir():
        if split is not None:
            if not (path / split).is_dir():
                raise DataError(path, None, f"no folder for split {split!r}")
            path = path / split
        return read_image_folder(path, skip_bad=skip_bad)
    if not path.exists():
        raise DataError(path, None, "no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = _load_json(path)
        images = data.get("images") if isinstance(data, dict) else None
        if isinstance(images, list) and isinstance(data.get("annotations"), list):
            _no_split(path, split, "COCO captions")
            return _coco_from_data(data, path, None, skip_bad)
        if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
            return _karpathy_from_data(data, path, None, split, skip_bad)
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(
            path, None, "JSON is neither COCO captions (keys 'images' and 'annotations') nor a Karpathy split "
            f"('images' entries with 'sentences'); found {found}"
        )
    readers = {".jsonl": read_pairs_jsonl, ".csv": read_pairs_csv}
    if suffix not in readers:
        raise DataError(path, None, "cannot tell the format: expected .jsonl, .csv, .json or a directory")
    _no_split(path, split, suffix)
    return readers[suffix](path, skip_bad=skip_bad)


def _no_split(path: Path, split: str | None, kind: str) -> None:
    if split is not None:
        raise DataError(path, None, f"a {kind} file holds one split; got split={split!r} (pass that split's file)")
