"""The data model of every task: records plus the function that turns a record into pixels.

A record holds an image and whatever a task needs about it: captions (retrieval, contrastive training,
captioning), a class label (classification), a question with its answers (VQA). Every reader (JSONL, CSV,
COCO, Karpathy, ImageFolder), every packaged dataset (emoji, easy-vqa, animal silhouettes, scikit-image photos)
and the generated shapes world produce an :class:`ImageTextSet` and fill the fields they have, so training,
evaluation, embedding and export never care where the images came from. Each task's torch dataset and collate
(``data/pair_dataset.py``, ``data/labelled.py``) reads the fields it needs and says which are missing.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class ImageTextRecord:
    """One image and what is known about it.

    Attributes:
        key: stable identifier of the record; for on-disk data the absolute image path. Search results and
            the index's id table report this key.
        captions: every caption of this image (may be empty for label-only or question-only sets).
        group: records with the same group describe the same scene; retrieval counts a hit when the retrieved
            item's group equals the query's group. Defaults to ``key``.
        label: class index into :attr:`ImageTextSet.class_names`, for classification sets.
        question: a question about the image (VQA); one record per question, so several records may share
            an image through ``group``.
        answers: the annotators' answers to ``question`` (VQA v2 has ten).
        question_id: the question's id in its VQA file (generated sets number their questions from 1).
        question_type: the question's kind, as VQA v2 annotates it ("what color is the", "how many") or as
            a generated set names it ("colour", "count").
        answer_type: VQA v2's coarse answer kind: "yes/no", "number" or "other".
    """

    key: str
    captions: tuple[str, ...] = ()
    group: str = ""
    label: int | None = None
    question: str | None = None
    answers: tuple[str, ...] = ()
    question_id: int | None = None
    question_type: str | None = None
    answer_type: str | None = None

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.key)


def caption_choice(seed: int, epoch: int, index: int, count: int) -> int:
    """Which of a record's ``count`` captions sample ``index`` trains on in ``epoch``: drawn from
    ``(seed, epoch, index)`` alone, so a resumed run, a shard stream and a cached-feature set all agree."""
    return random.Random(hash((seed, epoch, index))).randrange(count)


class EpochSeeded:
    """A training dataset whose items depend on ``(seed, epoch, index)`` only (which caption a sample shows):
    ``set_epoch`` is how the loop moves it to the next epoch."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def caption(self, captions: Sequence[str], index: int) -> str:
        """The caption sample ``index`` shows this epoch."""
        return captions[caption_choice(self.seed, self.epoch, index, len(captions))]


def open_image_file(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open a user-given image file as RGB, refusing with a :class:`DataError` that names the file: a missing
    path, a directory or device, a file that is no image, or one with more pixels than ``max_pixels`` (default
    Pillow's decompression-bomb limit) — checked from the header, before any pixel is decoded."""
    path = Path(path)
    limit = max_pixels or Image.MAX_IMAGE_PIXELS or 89_478_485
    if not path.exists():
        raise DataError(path, None, "no such file")
    if not path.is_file():
        raise DataError(path, None, "not a regular file (a directory or a device)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; the size check below refuses those instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            if image.width * image.height > limit:
                raise DataError(path, None, f"{image.width}x{image.height} pixels exceed the limit of {limit} "
                                            "(a decompression bomb?)")
            return image.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        raise DataError(path, None, f"refused as a decompression bomb ({error})") from None
    # Pillow reports undecodable files through many exception types (OSError, SyntaxError, struct.error, ...).
    except Exception as error:  # noqa: BLE001
        raise DataError(path, None, f"not a readable image ({type(error).__name__}: {error})") from None


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB (the loader used by every on-disk reader)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _open_record_key(record: ImageTextRecord) -> Image.Image:
    return open_rgb(record.key)


@dataclass
class ImageTextSet:
    """A list of :class:`ImageTextRecord` and how to load each record's image.

    Attributes:
        name: short dataset name, shown in tables and written into ``metrics.json``.
        records: the items, in a fixed order.
        load_image: maps a record to an RGB PIL image; by default opens ``record.key`` as a path.
        class_names: for classification sets, the name of each label (``record.label`` indexes it).
        skipped: how many input rows a reader skipped as bad (only with ``skip_bad=True``).
    """

    name: str
    records: list[ImageTextRecord]
    load_image: Callable[[ImageTextRecord], Image.Image] = field(default=_open_record_key, repr=False)
    class_names: list[str] | None = None
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> Image.Image:
        return self.load_image(self.records[index])

    def subset(self, indices: Sequence[int], name: str | None = None) -> "ImageTextSet":
        """A new set holding ``records[i]`` for ``i`` in ``indices`` (same loader and class names)."""
        return ImageTextSet(
            name=name or self.name,
            records=[self.records[i] for i in indices],
            load_image=self.load_image,
            class_names=self.class_names,
        )


class DataError(ValueError):
    """Bad input data: the message names the file, the line or record, and the reason."""

    def __init__(self, source: str | Path, where: str | int | None, reason: str) -> None:
        location = f"{source}" + (f", {'line ' if isinstance(where, int) else ''}{where}" if where is not None else "")
        super().__init__(f"{location}: {reason}")
        self.source = str(source)
        self.where = where
        self.reason = reason


def concat_sets(sets: Sequence[ImageTextSet], name: str) -> ImageTextSet:
    """One set holding the records of several; each record's image is still loaded by its own set's loader.

    Keys must be distinct across the sets (they identify images in indexes and search results).
    """
    owner: dict[str, ImageTextSet] = {}
    records: list[ImageTextRecord] = []
    for part in sets:
        for record in part.records:
            if record.key in owner:
                raise ValueError(f"key {record.key!r} is in both {owner[record.key].name} and {part.name}")
            owner[record.key] = part
            records.append(record)
    return ImageTextSet(name=name, records=records, load_image=lambda record: owner[record.key].load_image(record))
