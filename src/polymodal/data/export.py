"""Write any :class:`ImageTextSet` (and question/answer records) to files in real, widely read formats.

* ``export_jsonl``: ``images/*.png`` + ``pairs.jsonl``, one ``{"image", "caption", "label"}`` row per caption.
* ``export_coco``: ``images/*.png`` + ``captions.json`` in the COCO captions layout.
* ``export_vqa``: ``images/*.png`` + ``questions.json`` and ``annotations.json`` in the VQA v2 layout.

Image files are named by their 1-based image id (``images/000001.png``), never by the record key: keys are
arbitrary strings (absolute paths, ``shapes/train/000001``) and would make unsafe or clashing file names.
Every file is written to a temporary name and renamed into place, so an interrupted export never leaves a
torn file behind.
"""
from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from polymodal.data.records import DataError, ImageTextSet
from polymodal.io import output_directory, write_bytes, write_json

# Below this many images a progress bar is noise.
PROGRESS_MIN_IMAGES = 100
# Real VQA v2 annotations carry ten human answers per question; generated data has one truth, repeated.
VQA_ANSWERS_PER_QUESTION = 10


class VQARecord(Protocol):
    """A question about the image whose record key is ``key`` (e.g. :class:`polymodal.data.shapes.VQAItem`).

    Read-only properties, so frozen dataclasses satisfy it.
    """

    @property
    def key(self) -> str: ...
    @property
    def question(self) -> str: ...
    @property
    def answer(self) -> str: ...
    @property
    def question_type(self) -> str: ...
    @property
    def answer_type(self) -> str: ...  # VQA v2: "yes/no", "number" or "other"


def export_jsonl(dataset: ImageTextSet, out_dir: str | Path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``dataset`` as PNG images plus ``pairs.jsonl``; returns the JSONL path.

    Each caption becomes one row ``{"image": "images/000001.png", "caption": ..., "label": ...}``, image
    paths relative to the JSONL file. ``label`` is present for labelled records: the class name when the set
    has ``class_names`` (names survive a round trip, indices mean nothing without the list), else the index.
    A record without captions gets no row, since a pairs row needs a caption.
    """
    out = _prepare(out_dir, overwrite)
    images = _write_images(dataset, out, progress)
    lines = []
    for record, image in zip(dataset.records, images):
        for caption in record.captions:
            row: dict[str, Any] = {"image": image["file_name"], "caption": caption}
            if record.label is not None:
                row["label"] = dataset.class_names[record.label] if dataset.class_names else record.label
            lines.append(json.dumps(row, ensure_ascii=False))
    path = out / "pairs.jsonl"
    write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def export_coco(dataset: ImageTextSet, out_dir: str | Path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``dataset`` as PNG images plus ``captions.json`` (COCO captions format); returns the JSON path.

    ``images`` holds ``id``/``file_name``/``width``/``height`` (file names relative to the JSON file) and
    ``annotations`` one ``id``/``image_id``/``caption`` entry per caption; ids start at 1.
    """
    out = _prepare(out_dir, overwrite)
    images = _write_images(dataset, out, progress)
    annotations = []
    for record, image in zip(dataset.records, images):
        for caption in record.captions:
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "caption": caption})
    coco = {
        "info": {"description": dataset.name, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
    }
    path = out / "captions.json"
    write_json(path, coco, indent=1)
    return path


def export_vqa(
    dataset: ImageTextSet,
    items: Sequence[VQARecord],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the images of ``dataset`` and the questions ``items`` in VQA v2 format; returns ``out_dir``.

    ``questions.json`` holds ``{"questions": [{"image_id", "question", "question_id"}]}`` and
    ``annotations.json`` ``{"annotations": [{"question_id", "image_id", "question_type", "answer_type",
    "multiple_choice_answer", "answers": [...10 x {"answer", "answer_confidence", "answer_id"}]}]}``.
    Both also list the ``images`` (id and file name), which VQA readers ignore, so the export is
    self-contained. Every item's ``key`` must be the key of a record in ``dataset``.

    Raises:
        DataError: an item refers to an image key that is not in ``dataset``.
    """
    image_ids = {record.key: i + 1 for i, record in enumerate(dataset.records)}
    for number, item in enumerate(items):
        if item.key not in image_ids:
            raise DataError("VQA items", f"item {number}", f"image key {item.key!r} is not in dataset {dataset.name!r}")
    out = _prepare(out_dir, overwrite)
    images = _write_images(dataset, out, progress)
    questions, annotations = [], []
    for question_id, item in enumerate(items, start=1):
        image_id = image_ids[item.key]
        questions.append({"image_id": image_id, "question": item.question, "question_id": question_id})
        answers = [
            {"answer": item.answer, "answer_confidence": "yes", "answer_id": answer_id}
            for answer_id in range(1, VQA_ANSWERS_PER_QUESTION + 1)
        ]
        annotations.append(
            {
                "question_id": question_id,
                "image_id": image_id,
                "question_type": item.question_type,
                "answer_type": item.answer_type,
                "multiple_choice_answer": item.answer,
                "answers": answers,
            }
        )
    header = {"info": {"description": dataset.name, "version": "1.0"}, "task_type": "Open-Ended", "license": {}}
    write_json(out / "questions.json", header | {"images": images, "questions": questions}, indent=1)
    write_json(out / "annotations.json", header | {"images": images, "annotations": annotations}, indent=1)
    return out


def _prepare(out_dir: str | Path, overwrite: bool) -> Path:
    """Create ``out_dir`` (and ``images/``); refuse a non-empty directory unless ``overwrite``.

    With ``overwrite`` files of the same name are replaced; nothing is deleted, so a smaller export into an
    old folder leaves the old extra images beside files that no longer mention them.
    """
    out = output_directory(out_dir, "--to", empty=not overwrite)
    (out / "images").mkdir(exist_ok=True)
    return out


def _write_images(dataset: ImageTextSet, out: Path, progress: bool) -> list[dict[str, Any]]:
    """Save every record's image as ``images/{id:06d}.png``; returns COCO-style image entries in record order."""
    entries = []
    records = tqdm(
        dataset.records,
        desc=f"writing {dataset.name} images",
        unit="img",
        disable=not progress or len(dataset) < PROGRESS_MIN_IMAGES,
    )
    for image_id, record in enumerate(records, start=1):
        image = dataset.load_image(record).convert("RGB")
        file_name = f"images/{image_id:06d}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_bytes(out / file_name, buffer.getvalue())
        entries.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
    return entries
