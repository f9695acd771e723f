"""VQA data: reading VQA v2 files (ours and the official layout), bad input, named sets, answer vocabularies."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.catalog import load_questions
from polymodal.data.export import export_vqa
from polymodal.data.records import DataError, ImageTextRecord, ImageTextSet
from polymodal.data.vqa import (
    AnswerVocab,
    build_answer_vocab,
    load_vqa,
    load_vqa_spec,
    read_vqa,
    soft_target_tensor,
    soft_targets,
    vqa_set_from_items,
)

DISTINCT = ("table", "a table", "desk", "wood", "chair", "books", "laptop", "cup", "nothing", "papers")


def _facts(dataset: ImageTextSet) -> list[tuple]:
    return [(r.question_id, r.question, r.answers, r.question_type, r.answer_type) for r in dataset.records]


def _same_image(dataset: ImageTextSet) -> list[list[bool]]:
    return [[r.key == s.key for s in dataset.records] for r in dataset.records]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageTextSet, ImageTextSet, Path]:
    """A small shapes set, its VQA records, and the folder ``export_vqa`` wrote them to."""
    images, items = load_questions("shapes", "train", size=8)
    out = export_vqa(images, items, tmp_path_factory.mktemp("export") / "shapes-vqa", progress=False)
    return images, vqa_set_from_items(images, items), out


def test_export_round_trip(exported: tuple[ImageTextSet, ImageTextSet, Path]) -> None:
    images, expected, out = exported
    read = read_vqa(out / "questions.json", out / "annotations.json")
    assert _facts(read) == _facts(expected) and read.skipped == 0
    assert all(len(r.answers) == 10 for r in read.records)
    # Questions about one image share its file as key and group, as they shared the scene key before export.
    assert all(r.group == r.key and Path(r.key).is_file() for r in read.records)
    assert _same_image(read) == _same_image(expected)
    first = next(i for i, r in enumerate(images.records) if r.key == expected.records[0].key)
    assert np.array_equal(np.asarray(read.image(0)), np.asarray(images.image(first)))


def test_load_vqa_folder_and_size(exported: tuple[ImageTextSet, ImageTextSet, Path]) -> None:
    _, expected, out = exported
    folder = load_vqa(out)
    assert folder.name == "shapes-vqa" and _facts(folder) == _facts(expected)
    sample = load_vqa(out, size=3)
    kept = {r.group for r in sample.records}
    assert len(kept) == 3
    assert _facts(sample) == [f for f, r in zip(_facts(folder), folder.records) if r.group in kept]
    assert load_vqa(out.parent, split=out.name).records == folder.records
    with pytest.raises(DataError, match="no such directory"):
        load_vqa(out / "missing")


def _annotation(question_id: int, image_id: int, question_type: str, answer_type: str, answers: list) -> dict:
    return {
        "question_id": question_id,
        "image_id": image_id,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(answers, 1)],
    }


@pytest.fixture()
def official(tmp_path: Path) -> tuple[dict, dict, Path]:
    """Questions and annotations in the official layout; images as ``val2014/COCO_val2014_{id:012d}.jpg``."""
    folder = tmp_path / "val2014"
    folder.mkdir()
    for image_id in (42, 7):
        Image.new("RGB", (8, 8), (image_id, 0, 0)).save(folder / f"COCO_val2014_{image_id:012d}.jpg")
    questions = {
        "task_type": "Open-Ended",
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What is on the table?", "question_id": 420},
            {"image_id": 42, "question": "How many cats are there?", "question_id": 421},
            {"image_id": 7, "question": "Is it raining?", "question_id": 70},
        ],
    }
    annotations = {
        "data_subtype": "val2014",
        "annotations": [
            _annotation(420, 42, "what is on the", "other", list(DISTINCT)),
            _annotation(421, 42, "how many", "number", ["2"] * 6 + ["3"] * 4),
            _annotation(70, 7, "is it", "yes/no", ["yes"] * 10),
        ],
    }
    return questions, annotations, folder


def _write(tmp_path: Path, questions: dict, annotations: dict) -> tuple[Path, Path]:
    q, a = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", tmp_path / "v2_mscoco_val2014_annotations.json"
    q.write_text(json.dumps(questions), encoding="utf-8")
    a.write_text(json.dumps(annotations), encoding="utf-8")
    return q, a


def test_official_layout(official: tuple[dict, dict, Path], tmp_path: Path) -> None:
    questions, annotations, folder = official
    dataset = read_vqa(*_write(tmp_path, questions, annotations), images=folder)
    assert dataset.name == "v2_OpenEnded_mscoco_val2014_questions"
    first, second, third = dataset.records
    assert first.answers == DISTINCT and first.question == "What is on the table?"
    assert (first.question_id, first.question_type, first.answer_type) == (420, "what is on the", "other")
    assert second.answers == ("2",) * 6 + ("3",) * 4 and second.answer_type == "number"
    assert first.key == second.key == first.group == str((folder / "COCO_val2014_000000000042.jpg").resolve())
    assert third.key != first.key and third.answers == ("yes",) * 10
    assert dataset.image(2).size == (8, 8)


def test_plain_image_names_without_subtype(official: tuple[dict, dict, Path], tmp_path: Path) -> None:
    questions, annotations, folder = official
    del questions["data_subtype"], annotations["data_subtype"]
    Image.new("RGB", (8, 8)).save(folder / "42.png")
    Image.new("RGB", (8, 8)).save(folder / "7.jpg")
    paths = _write(tmp_path, questions, annotations)
    assert [Path(r.key).name for r in read_vqa(*paths, images=folder).records] == ["42.png", "42.png", "7.jpg"]
    with pytest.raises(DataError, match="pass images="):
        read_vqa(*paths)


def _drop_question_field(q: dict, a: dict, folder: Path) -> None:
    del q["questions"][1]["question"]


def _image_id_is_text(q: dict, a: dict, folder: Path) -> None:
    q["questions"][1]["image_id"] = "42"


def _duplicate_question(q: dict, a: dict, folder: Path) -> None:
    q["questions"].append(dict(q["questions"][1]))


def _drop_annotation_field(q: dict, a: dict, folder: Path) -> None:
    del a["annotations"][1]["answer_type"]


def _nine_answers(q: dict, a: dict, folder: Path) -> None:
    a["annotations"][1]["answers"].pop()


def _answer_not_text(q: dict, a: dict, folder: Path) -> None:
    a["annotations"][1]["answers"][3]["answer"] = 3


def _no_annotation(q: dict, a: dict, folder: Path) -> None:
    del a["annotations"][1]


def _other_image(q: dict, a: dict, folder: Path) -> None:
    a["annotations"][1]["image_id"] = 7


def _missing_image(q: dict, a: dict, folder: Path) -> None:
    q["questions"][1]["image_id"] = a["annotations"][1]["image_id"] = 99


def _corrupt_image(q: dict, a: dict, folder: Path) -> None:
    (folder / "COCO_val2014_000000000007.jpg").write_bytes(b"not a jpeg")


BAD_CASES = [
    # (how the files are broken, the file the error names, the question it names, what skip_bad keeps)
    (_drop_question_field, "questions", 421, [420, 70], "missing field 'question'"),
    (_image_id_is_text, "questions", 421, [420, 70], "must be an integer"),
    (_duplicate_question, "questions", 421, [420, 421, 70], "duplicate question_id"),
    (_drop_annotation_field, "annotations", 421, [420, 70], "missing field 'answer_type'"),
    (_nine_answers, "annotations", 421, [420, 70], "must list 10 answers"),
    (_answer_not_text, "annotations", 421, [420, 70], r"answers\[3\] is not a string"),
    (_no_annotation, "annotations", 421, [420, 70], "no annotation"),
    (_other_image, "annotations", 421, [420, 70], "image_id 7 differs"),
    (_missing_image, "questions", 421, [420, 70], "no image file for image_id 99"),
    (_corrupt_image, "questions", 70, [420, 421], "cannot be read"),
]


@pytest.mark.parametrize(("breaks", "named_file", "question_id", "kept", "reason"), BAD_CASES)
def test_bad_records(
    official: tuple[dict, dict, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    breaks: Callable[[dict, dict, Path], None],
    named_file: str,
    question_id: int,
    kept: list[int],
    reason: str,
) -> None:
    questions, annotations, folder = copy.deepcopy(official)
    breaks(questions, annotations, folder)
    paths = _write(tmp_path, questions, annotations)
    with pytest.raises(DataError, match=reason) as caught:
        read_vqa(*paths, images=folder)
    assert f"_{named_file}.json, question_id {question_id}: " in str(caught.value)
    dataset = read_vqa(*paths, images=folder, skip_bad=True)
    assert [r.question_id for r in dataset.records] == kept and dataset.skipped == 1
    assert f"skipped 1 bad question(s), e.g. {caught.value}" in caplog.text


def test_bad_files_are_fatal_even_when_skipping(official: tuple[dict, dict, Path], tmp_path: Path) -> None:
    questions, annotations, folder = official
    q, a = _write(tmp_path, questions, annotations)
    with pytest.raises(DataError, match="no such file"):
        read_vqa(tmp_path / "missing.json", a, images=folder, skip_bad=True)
    a.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="annotations.json: not valid JSON"):
        read_vqa(q, a, images=folder, skip_bad=True)
    a.write_text(json.dumps({"questions": []}), encoding="utf-8")
    with pytest.raises(DataError, match="list 'annotations'"):
        read_vqa(q, a, images=folder, skip_bad=True)
    _, a = _write(tmp_path, {"data_subtype": "val2014"}, annotations)
    with pytest.raises(DataError, match="list 'questions'"):
        read_vqa(q, a, images=folder, skip_bad=True)


def test_nothing_usable_is_an_error(official: tuple[dict, dict, Path], tmp_path: Path) -> None:
    questions, annotations, _ = official
    with pytest.raises(DataError, match=r"no usable questions \(3 skipped"):
        read_vqa(*_write(tmp_path, questions, annotations), images=tmp_path / "empty", skip_bad=True)


def test_named_sets() -> None:
    pytest.importorskip("easy_vqa")
    easy = load_vqa("easy-vqa", "test", size=20)
    assert easy.records and len({r.group for r in easy.records}) <= 20
    assert {r.question_type for r in easy.records} <= {"colour", "shape", "exists"}
    assert [r.question_id for r in easy.records] == list(range(1, len(easy) + 1))
    assert all(r.answers == (r.answers[0],) * 10 and r.answer_type in ("yes/no", "other") for r in easy.records)
    shapes = load_vqa("shapes", "train", size=10)
    assert len({r.group for r in shapes.records}) == 10
    assert all(r.question and r.question_type and r.answer_type for r in shapes.records)
    assert shapes.image(len(shapes) - 1).size == (64, 64)


def _records(*answer_lists: tuple[str, ...]) -> list[ImageTextRecord]:
    return [ImageTextRecord(f"image{i}", question="?", answers=answers) for i, answers in enumerate(answer_lists)]


def test_answer_vocab() -> None:
    records = _records(("Yes", "yes ", "no", "two"), ("two", "Two", "cat", "dog"), ("no", "  ", "yes"))
    vocab = build_answer_vocab(records)
    # yes 3, two 3 (tie: alphabetical), no 2, cat 1, dog 1; the blank answer is no class.
    assert vocab.answers == ("two", "yes", "no", "cat", "dog")
    assert build_answer_vocab(records, top_k=2).answers == ("two", "yes")
    assert build_answer_vocab(records, min_count=2).answers == ("two", "yes", "no")
    assert vocab.index("YES") == 1 and vocab.index(" dog") == 4 and vocab.index("bird") is None
    assert AnswerVocab.from_json(vocab.to_json()) == vocab and len(vocab) == 5
    with pytest.raises(ValueError, match="normalised"):
        AnswerVocab.from_json('{"answers": ["Yes"]}')
    with pytest.raises(ValueError, match="once"):
        AnswerVocab(("yes", "yes"))
    with pytest.raises(ValueError, match="at least 4"):
        build_answer_vocab(records, min_count=4)


def test_soft_targets() -> None:
    vocab = AnswerVocab(("bird", "cat", "dog", "fish"))
    answers = ["cat"] + ["Dog"] * 2 + ["bird"] * 6 + ["cow"]
    assert soft_targets(answers, vocab) == pytest.approx({1: 1 / 3, 2: 2 / 3, 0: 1.0})
    batch = soft_target_tensor([answers, ["fish"] * 10], vocab)
    assert batch.dtype == torch.float32 and batch.shape == (2, 4)
    expected = torch.tensor([[1.0, 1 / 3, 2 / 3, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert torch.allclose(batch, expected)


def test_spec_question_filters() -> None:
    every = load_vqa_spec({"name": "shapes", "split": "train", "size": 40})
    colour = load_vqa_spec({"name": "shapes", "split": "train", "size": 40, "questions": "^what colou?r"})
    assert colour.records == [r for r in every.records if r.question.startswith("what colour")]
    assert colour.records and {r.question_type for r in colour.records} == {"colour"}
    one_word = load_vqa_spec({"name": "shapes", "split": "train", "size": 40, "skip_questions": "right of|below"})
    assert one_word.records == [r for r in every.records if "right of" not in r.question and "below" not in r.question]
    assert len(one_word) < len(every) and any("left of" in r.question for r in one_word.records)
    both = load_vqa_spec({"name": "shapes", "split": "train", "size": 40, "questions": "left of|above",
                          "skip_questions": "^what"})
    assert both.records and all(r.question.startswith("is ") for r in both.records)
    with pytest.raises(ValueError, match=r"questions='\(' .* is not a regular expression"):
        load_vqa_spec({"name": "shapes", "size": 2, "questions": "("})
    with pytest.raises(ValueError, match="no question of 'shapes' is left"):
        load_vqa_spec({"name": "shapes", "size": 2, "questions": "zebra"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['question'\]"):
        load_vqa_spec({"name": "shapes", "size": 2, "question": "colour"})
