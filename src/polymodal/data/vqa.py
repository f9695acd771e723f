"""Visual question answering data: VQA v2 files, generated and packaged questions, and answer vocabularies.

Every source gives one :class:`ImageTextRecord` per question with ``question``, ``answers``, ``question_id``,
``question_type`` and ``answer_type``. A record's ``key`` (so its ``group``) is its image's key: the questions
about one image share a group, and a split by group keeps an image on one side. Keys are therefore not unique
within a VQA set; ``question_id`` is.

Bad input raises :class:`DataError` naming the file and the question (``question_id N``, or the entry's
position when it has no usable id). With ``skip_bad=True`` a bad question is dropped instead, counted in
:attr:`ImageTextSet.skipped` and logged (a warning with the first few reasons); a missing or unparseable file,
or one without its top-level list, is fatal either way.
"""
from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polymodal.data.catalog import load_questions
from polymodal.data.export import VQA_ANSWERS_PER_QUESTION, VQARecord
from polymodal.data.readers import _entries, _existing_file, _load_json, _text, verify_image
from polymodal.data.records import DataError, ImageTextRecord, ImageTextSet

log = logging.getLogger(__name__)

# The names :func:`export_vqa` writes and :func:`load_vqa` looks for in a folder.
QUESTIONS_FILE = "questions.json"
ANNOTATIONS_FILE = "annotations.json"
# Named datasets that come with questions (see :func:`polymodal.data.catalog.load_questions`).
VQA_DATASETS = ("shapes", "easy-vqa")
# VQA accuracy counts an answer fully right once this many annotators gave it.
FULL_CREDIT_ANNOTATORS = 3
# How many skip reasons the warning shows; the count covers them all.
SKIP_REASONS_SHOWN = 5


def read_vqa(
    questions_json: str | Path, annotations_json: str | Path, images: str | Path | None = None, *,
    skip_bad: bool = False, name: str | None = None,
) -> ImageTextSet:
    """Read VQA v2 question and annotation files: one record per question, in the questions file's order.

    Image files: when the questions (else the annotations) file lists ``images`` (``id``, ``file_name``, as
    :func:`~polymodal.data.export.export_vqa` writes), file names are relative to that file's folder, or to
    ``images`` when given. Otherwise ``images`` is the image folder, searched by image id for the official
    VQA name ``COCO_{data_subtype}_{image_id:012d}.jpg`` (``data_subtype``, e.g. ``val2014``, from either
    file), the COCO 2017 name ``{image_id:012d}.jpg``, then ``{image_id}.jpg`` and ``{image_id}.png``.

    Ids are integers. The ten ``answers`` entries (``{"answer", ...}``, or bare strings) become the record's
    ``answers`` as written. Annotations of questions the questions file does not ask are ignored.

    Args:
        questions_json: ``{"questions": [{"image_id", "question", "question_id"}], "data_subtype"?}``.
        annotations_json: ``{"annotations": [{"question_id", "image_id", "question_type", "answer_type",
            "answers"}]}``.
        skip_bad: drop bad questions (and those with a bad annotation or image) instead of raising.
        name: the set's name; defaults to the questions file's stem.

    Raises:
        DataError: a file is missing, not JSON or lacks its list; a bad question, annotation, ``images``
            entry or image file (without ``skip_bad``); no usable question left (with it).
    """
    questions_path, annotations_path = _existing_file(questions_json), _existing_file(annotations_json)
    questions_data, annotations_data = _load_json(questions_path), _load_json(annotations_path)
    questions = _entries(questions_data, questions_path, "questions")
    skipped: list[str] = []

    def reject(error: DataError) -> None:
        if not skip_bad:
            raise error
        skipped.append(str(error))

    annotations = _read_annotations(annotations_data, annotations_path, reject)
    files = _ImageFiles(((questions_path, questions_data), (annotations_path, annotations_data)), images, reject)
    records: list[ImageTextRecord] = []
    seen: set[int] = set()
    for i, entry in enumerate(questions):
        where = _where(entry, "questions", i)
        try:
            question_id = _integer(entry, "question_id")
            question, image_id = _text(entry, "question"), _integer(entry, "image_id")
            if question_id in seen:
                raise ValueError("duplicate question_id")
            seen.add(question_id)
            annotation = annotations.get(question_id)
            if annotation is None:
                raise DataError(annotations_path, where, f"no annotation for this question of {questions_path}")
            if isinstance(annotation, DataError):
                raise annotation
            annotated_image, fields = annotation
            if annotated_image != image_id:
                reason = f"image_id {annotated_image} differs from image_id {image_id} in {questions_path}"
                raise DataError(annotations_path, where, reason)
            records.append(ImageTextRecord(key=files.key(image_id), question=question, question_id=question_id,
                                           **fields))
        # DataError is a ValueError: it must be caught first, as it names its own file.
        except DataError as error:
            reject(error)
        except ValueError as error:
            reject(DataError(questions_path, where, str(error)))
    if not records:
        raise DataError(questions_path, None, f"no usable questions ({len(skipped)} skipped as bad)")
    if skipped:
        shown = "; ".join(skipped[:SKIP_REASONS_SHOWN])
        log.warning("%s: skipped %d bad question(s), e.g. %s", questions_path, len(skipped), shown)
    return ImageTextSet(name=name or questions_path.stem, records=records, skipped=len(skipped))


def _integer(entry: Any, field_name: str) -> int:
    """A required integer field of a JSON object (raises ``ValueError`` with the reason)."""
    if not isinstance(entry, dict):
        raise ValueError(f"expected an object, got {type(entry).__name__}")
    value = entry.get(field_name)
    if value is None:
        raise ValueError(f"missing field {field_name!r}")
    # bool is an int subclass, but true/false is never an id.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {field_name!r} must be an integer, got {type(value).__name__}")
    return value


def _where(entry: Any, list_name: str, index: int) -> str:
    """How errors name an entry: by its question id when it has a usable one, else by position."""
    question_id = entry.get("question_id") if isinstance(entry, dict) else None
    if isinstance(question_id, int) and not isinstance(question_id, bool):
        return f"question_id {question_id}"
    return f"{list_name}[{index}]"


def _answers(entry: dict) -> tuple[str, ...]:
    answers = entry.get("answers")
    if not isinstance(answers, list) or len(answers) != VQA_ANSWERS_PER_QUESTION:
        got = f"{len(answers)} entries" if isinstance(answers, list) else type(answers).__name__
        raise ValueError(f"'answers' must list {VQA_ANSWERS_PER_QUESTION} answers, got {got}")
    texts = [answer.get("answer") if isinstance(answer, dict) else answer for answer in answers]
    for j, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"answers[{j}] is not a string answer: {answers[j]!r}")
    return tuple(texts)


def _read_annotations(
    data: Any, path: Path, reject: Callable[[DataError], None]
) -> dict[int, tuple[int, dict[str, Any]] | DataError]:
    """Each question id's image id and record fields, or the error of its bad annotation.

    That error is raised (or skipped) only when its question is reached, so a skipped question counts once.
    """
    found: dict[int, tuple[int, dict[str, Any]] | DataError] = {}
    for j, entry in enumerate(_entries(data, path, "annotations")):
        where = _where(entry, "annotations", j)
        try:
            question_id = _integer(entry, "question_id")
        except ValueError as error:
            reject(DataError(path, where, str(error)))
            continue
        try:
            if question_id in found:
                raise ValueError("duplicate question_id")
            fields = {"answers": _answers(entry), "question_type": _text(entry, "question_type"),
                      "answer_type": _text(entry, "answer_type")}
            found[question_id] = (_integer(entry, "image_id"), fields)
        except ValueError as error:
            found[question_id] = DataError(path, where, str(error))
    return found


class _ImageFiles:
    """The verified image file of each image id: named by the first of the (questions, annotations) files to
    list ``images``, else found in the ``images`` folder by the naming conventions of :func:`read_vqa`."""

    def __init__(
        self, sources: Sequence[tuple[Path, dict]], images: str | Path | None, reject: Callable[[DataError], None]
    ) -> None:
        self.listed: dict[int, Path] | None = None
        self.folder = Path(images) if images is not None else None
        subtype = next((data["data_subtype"] for _, data in sources if data.get("data_subtype")), None)
        self.data_subtype = subtype if isinstance(subtype, str) else None
        self._keys: dict[int, str] = {}  # verified images, so each file is checked once
        path, data = next(((path, data) for path, data in sources if "images" in data), (None, None))
        if path is None:
            if self.folder is None:
                raise DataError(sources[0][0], None, "no 'images' list in the questions or annotations file: "
                                                     "pass images=<folder of the image files>")
            return
        if not isinstance(data["images"], list):
            raise DataError(path, None, "'images' must be a list of {\"id\", \"file_name\"}")
        base = self.folder or path.parent
        self.listed = {}
        for i, entry in enumerate(data["images"]):
            try:
                image_id, file_name = _integer(entry, "id"), _text(entry, "file_name")
                if image_id in self.listed:
                    raise ValueError(f"duplicate image id {image_id}")
                self.listed[image_id] = base / file_name
            except ValueError as error:
                reject(DataError(path, f"images[{i}]", str(error)))

    def key(self, image_id: int) -> str:
        """The record key (absolute path) of the image; ``ValueError`` says why there is none."""
        if image_id not in self._keys:
            self._keys[image_id] = self._find(image_id)
        return self._keys[image_id]

    def _find(self, image_id: int) -> str:
        if self.listed is not None:
            if image_id not in self.listed:
                raise ValueError(f"image_id {image_id} is not in the 'images' list")
            path = self.listed[image_id]
        else:
            names = [f"{image_id:012d}.jpg", f"{image_id}.jpg", f"{image_id}.png"]
            if self.data_subtype:
                names.insert(0, f"COCO_{self.data_subtype}_{image_id:012d}.jpg")
            path = next((self.folder / n for n in names if (self.folder / n).is_file()), None)
            if path is None:
                raise ValueError(f"no image file for image_id {image_id} in {self.folder} (tried {', '.join(names)})")
        reason = verify_image(path)
        if reason is not None:
            raise ValueError(reason)
        return str(path.resolve())


def vqa_set_from_items(images: ImageTextSet, items: Iterable[VQARecord]) -> ImageTextSet:
    """The questions ``items`` about ``images`` (as :func:`~polymodal.data.catalog.load_questions` gives them)
    as VQA records, numbered from 1 in order; images load through ``images``' own loader.

    Generated and packaged sets have one true answer per question. It is repeated
    ``VQA_ANSWERS_PER_QUESTION`` (10) times, as :func:`~polymodal.data.export.export_vqa` writes it, so the
    VQA metric and :func:`soft_targets` give 1.0 to the right answer and 0 to any other.

    Raises:
        DataError: an item's ``key`` is not the key of a record in ``images``.
    """
    keys = {record.key for record in images.records}
    records = []
    for question_id, item in enumerate(items, start=1):
        if item.key not in keys:
            raise DataError("VQA items", f"item {question_id - 1}", f"image key {item.key!r} is not in {images.name!r}")
        answers = (item.answer,) * VQA_ANSWERS_PER_QUESTION
        records.append(ImageTextRecord(key=item.key, question=item.question, answers=answers, question_id=question_id,
                                       question_type=item.question_type, answer_type=item.answer_type))
    return ImageTextSet(name=images.name, records=records, load_image=images.load_image)


def load_vqa(
    source: str | Path, split: str | None = None, size: int | None = None, *, skip_bad: bool = False
) -> ImageTextSet:
    """A VQA set by name or folder.

    Args:
        source: ``"shapes"`` or ``"easy-vqa"``, or a folder holding ``questions.json`` and
            ``annotations.json`` (the :func:`export_vqa` layout); other files, such as the official
            ``v2_OpenEnded_mscoco_*`` ones, are read by :func:`read_vqa`.
        split: the named dataset's split (``None``: its default); for a folder, the subfolder ``source/split``.
        size: how many images, with all their questions: ``shapes`` generates that many scenes, the others
            keep a fixed, seeded sample of images. ``None``: all.
        skip_bad: for folders, skip bad questions (see :func:`read_vqa`).

    Raises:
        DataError: the folder does not exist or its files are bad.
    """
    if isinstance(source, str) and source in VQA_DATASETS:
        return vqa_set_from_items(*load_questions(source, split, size))
    folder = Path(source) / split if split is not None else Path(source)
    if not folder.is_dir():
        raise DataError(folder, None, f"no such directory; a VQA source is one of {', '.join(VQA_DATASETS)} or "
                                      f"a folder holding {QUESTIONS_FILE} and {ANNOTATIONS_FILE}")
    dataset = read_vqa(folder / QUESTIONS_FILE, folder / ANNOTATIONS_FILE, skip_bad=skip_bad, name=folder.name)
    return _sample_images(dataset, size)


def _sample_images(dataset: ImageTextSet, size: int | None) -> ImageTextSet:
    """The questions of ``size`` images drawn with a fixed seed, kept in order."""
    if size is not None and size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    groups = list(dict.fromkeys(record.group for record in dataset.records))
    if size is None or size >= len(groups):
        return dataset
    chosen = set(random.Random(0).sample(groups, size))
    sample = dataset.subset([i for i, record in enumerate(dataset.records) if record.group in chosen])
    sample.skipped = dataset.skipped
    return sample


def _question_pattern(spec: dict, key: str) -> re.Pattern:
    try:
        return re.compile(spec[key])
    except (re.error, TypeError) as error:
        raise ValueError(f"{key}={spec[key]!r} in {spec!r} is not a regular expression: {error}") from None


def clean_answer(answer: str) -> str:
    """The form answers are counted and looked up in: lower-case, trimmed, runs of whitespace as one space.

    Deliberately simpler than the official evaluation's normalisation (punctuation, digits, articles), so
    the vocabulary stays readable; ``"Yes "`` and ``"yes"`` are one class, ``"two"`` and ``"2"`` are not.
    """
    return " ".join(answer.lower().split())


@dataclass(frozen=True)
class AnswerVocab:
    """The answer classes of a VQA head: class ``i`` is ``answers[i]`` (normalised by :func:`clean_answer`).

    Save it beside the model with :meth:`to_json`, so the head's outputs keep their meaning.
    """

    answers: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for answer in self.answers:
            if not isinstance(answer, str) or not answer or answer != clean_answer(answer):
                raise ValueError(f"answer {answer!r} is not a non-empty normalised string")
        index = {answer: i for i, answer in enumerate(self.answers)}
        if len(index) != len(self.answers):
            raise ValueError("an answer vocabulary lists each answer once")
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.answers)

    def index(self, answer: str) -> int | None:
        """The class of ``answer`` (normalised first), or ``None`` when it is not in the vocabulary."""
        return self._index.get(clean_answer(answer))

    def to_json(self) -> str:
        """``{"answers": [...]}`` as JSON text."""
        return json.dumps({"answers": list(self.answers)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> AnswerVocab:
        """The vocabulary :meth:`to_json` wrote; ``ValueError`` (``json.JSONDecodeError`` included) otherwise."""
        data = json.loads(text)
        answers = data.get("answers") if isinstance(data, dict) else None
        if not isinstance(answers, list):
            raise ValueError('answer vocabulary JSON must be {"answers": [...]}')
        return cls(tuple(answers))


def build_answer_vocab(records: Iterable[ImageTextRecord], top_k: int = 3000, min_count: int = 1) -> AnswerVocab:
    """The ``top_k`` most frequent answers of ``records`` given at least ``min_count`` times.

    Every annotator's answer counts (ten per VQA v2 question), after :func:`clean_answer`; answers that
    normalise to nothing are ignored. Equal counts are ordered alphabetically, so the same records always
    give the same classes.

    Raises:
        ValueError: ``top_k`` or ``min_count`` below 1, or no answer counted ``min_count`` times.
    """
    if top_k < 1 or min_count < 1:
        raise ValueError(f"top_k and min_count must be at least 1, got {top_k} and {min_count}")
    counts = Counter(clean_answer(answer) for record in records for answer in record.answers)
    counts.pop("", None)
    kept = sorted((answer for answer, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
    if not kept:
        raise ValueError(f"no answer occurs at least {min_count} time(s)")
    return AnswerVocab(tuple(kept[:top_k]))


def soft_targets(answers: Sequence[str], vocab: AnswerVocab) -> dict[int, float]:
    """The soft target of one question: class -> ``min(annotators who gave it / 3, 1)``.

    This is the standard VQA soft score (one annotator: 1/3, two: 2/3, three or more: 1). The official
    accuracy averages that score over the ten leave-one-annotator-out subsets, and some codebases train on
    that average instead (0.3, 0.6, 0.9, 1.0); this one uses the plain ``min(n / 3, 1)``. Answers outside
    the vocabulary get no class.
    """
    targets = {}
    for answer, n in Counter(clean_answer(answer) for answer in answers).items():
        index = vocab.index(answer)
        if index is not None:
            targets[index] = min(n / FULL_CREDIT_ANNOTATORS, 1.0)
    return targets


def soft_target_tensor(answers_batch: Sequence[Sequence[str]], vocab: AnswerVocab) -> torch.Tensor:
    """A float32 ``(len(answers_batch), len(vocab))`` tensor of :func:`soft_targets` rows (zeros elsewhere)."""
    targets = torch.zeros(len(answers_batch), len(vocab))
    for row, answers in enumerate(answers_batch):
        for index, score in soft_targets(answers, vocab).items():
            targets[row, index] = score
    return targets


def load_vqa_spec(spec: Any, skip_bad: bool = False) -> ImageTextSet:
    """What a run config names as VQA data → a VQA set: a name or folder (see :func:`load_vqa`), or a mapping
    ``{name: ..., split: ..., size: ..., questions: REGEX, skip_questions: REGEX}``.

    ``questions`` keeps only the questions it matches (``re.search``), ``skip_questions`` drops those it matches:
    e.g. ``questions: "colou?r"`` trains on colour questions alone, and a first stage with ``skip_questions:
    "right of|below"`` sees each spatial relation under one word only (a curriculum).
    """
    if isinstance(spec, (str, Path)):
        return load_vqa(spec, skip_bad=skip_bad)
    if isinstance(spec, dict) and "name" in spec:
        unknown = sorted(set(spec) - {"name", "split", "size", "questions", "skip_questions"})
        if unknown:
            raise ValueError(f"a VQA dataset takes name, split, size, questions and skip_questions; unknown key(s) "
                             f"{unknown} in {spec!r}")
        patterns = {key: _question_pattern(spec, key) for key in ("questions", "skip_questions") if key in spec}
        dataset = load_vqa(spec["name"], spec.get("split"), spec.get("size"), skip_bad=skip_bad)
        if not patterns:
            return dataset
        keep = patterns.get("questions")
        skip = patterns.get("skip_questions")
        kept = [i for i, record in enumerate(dataset.records)
                if (keep is None or keep.search(record.question)) and not (skip and skip.search(record.question))]
        if not kept:
            raise ValueError(f"no question of {spec['name']!r} is left after filtering with "
                             f"{ {key: spec[key] for key in patterns} }")
        filtered = dataset.subset(kept)
        filtered.skipped = dataset.skipped
        return filtered
    raise ValueError(f"a VQA dataset is a name, a folder or a mapping with 'name', got {spec!r}")
