"""Exporters: the written JSONL / COCO / VQA files parse and point at images with the right pixels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.data.export import export_coco, export_jsonl, export_vqa
from polymodal.data.records import DataError, ImageTextRecord, ImageTextSet
from polymodal.data.shapes import ShapesConfig, ShapesWorld, VQAItem


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(ShapesConfig(image_size=32, noise=0.03))


@pytest.fixture(scope="module")
def dataset(world: ShapesWorld) -> ImageTextSet:
    return world.image_text_set("val", 5)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _no_temporaries(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_jsonl_round_trip(dataset: ImageTextSet, tmp_path: Path) -> None:
    path = export_jsonl(dataset, tmp_path / "out")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == sum(len(r.captions) for r in dataset.records)
    by_image: dict[str, list[str]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row["caption"])
    assert len(by_image) == len(dataset)
    for index, (image, captions) in enumerate(by_image.items()):
        record = dataset.records[index]
        assert tuple(captions) == record.captions
        assert all(row["label"] == dataset.class_names[record.label] for row in rows if row["image"] == image)
        assert np.array_equal(_pixels(path.parent / image), np.asarray(dataset.image(index)))
    assert _no_temporaries(path.parent)


def test_coco_round_trip(dataset: ImageTextSet, tmp_path: Path) -> None:
    path = export_coco(dataset, tmp_path / "coco")
    coco = json.loads(path.read_text(encoding="utf-8"))
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == len(dataset)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for index, record in enumerate(dataset.records):
        image = coco["images"][index]
        assert (image["width"], image["height"]) == (32, 32)
        assert np.array_equal(_pixels(path.parent / image["file_name"]), np.asarray(dataset.image(index)))
        captions = [a["caption"] for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert tuple(captions) == record.captions


def test_vqa_round_trip(world: ShapesWorld, dataset: ImageTextSet, tmp_path: Path) -> None:
    items = world.vqa_items("val", len(dataset))
    out = export_vqa(dataset, items, tmp_path / "vqa")
    questions = json.loads((out / "questions.json").read_text(encoding="utf-8"))
    annotations = json.loads((out / "annotations.json").read_text(encoding="utf-8"))
    files = {image["id"]: image["file_name"] for image in questions["images"]}
    assert len(questions["questions"]) == len(annotations["annotations"]) == len(items)
    for item, question, annotation in zip(items, questions["questions"], annotations["annotations"]):
        assert question["question"] == item.question
        assert question["question_id"] == annotation["question_id"]
        assert question["image_id"] == annotation["image_id"]
        assert annotation["multiple_choice_answer"] == item.answer
        assert annotation["answer_type"] == item.answer_type and annotation["question_type"] == item.question_type
        assert [a["answer"] for a in annotation["answers"]] == [item.answer] * 10
        assert [a["answer_id"] for a in annotation["answers"]] == list(range(1, 11))
        index = [r.key for r in dataset.records].index(item.key)
        assert np.array_equal(_pixels(out / files[question["image_id"]]), np.asarray(dataset.image(index)))


def test_vqa_rejects_item_without_image(dataset: ImageTextSet, tmp_path: Path) -> None:
    item = VQAItem("shapes/val/999999", "how many shapes are there?", "2", "count", "number")
    with pytest.raises(DataError, match="999999"):
        export_vqa(dataset, [item], tmp_path / "vqa")


def test_refuses_non_empty_directory_unless_overwrite(dataset: ImageTextSet, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=str(out)):
        export_jsonl(dataset, out)
    export_jsonl(dataset, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "pairs.jsonl").exists()
    export_jsonl(dataset, out, overwrite=True)  # writing over an earlier export also works


def test_any_image_text_set_with_awkward_keys(tmp_path: Path) -> None:
    colours = {"/data/a b/cat?.jpg": (255, 0, 0), "../../etc/passwd": (0, 255, 0), "label only": (0, 0, 255)}
    records = [
        ImageTextRecord("/data/a b/cat?.jpg", ("a cat",), label=0),
        ImageTextRecord("../../etc/passwd", ("a dog", "a puppy"), label=1),
        ImageTextRecord("label only", (), label=1),
    ]
    dataset = ImageTextSet("odd", records, load_image=lambda r: Image.new("RGB", (8, 6), colours[r.key]))
    path = export_jsonl(dataset, tmp_path / "odd")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # No class names, so labels stay indices; the caption-less record has an image but no row.
    assert [(row["caption"], row["label"]) for row in rows] == [("a cat", 0), ("a dog", 1), ("a puppy", 1)]
    assert sorted(p.name for p in (tmp_path / "odd").rglob("*")) == [
        "000001.png", "000002.png", "000003.png", "images", "pairs.jsonl"
    ]
    assert _pixels(path.parent / rows[-1]["image"])[0, 0].tolist() == [0, 255, 0]


def test_failed_export_leaves_no_torn_files(tmp_path: Path) -> None:
    def load(record: ImageTextRecord) -> Image.Image:
        if record.key == "bad":
            raise OSError("unreadable image")
        return Image.new("RGB", (4, 4))

    dataset = ImageTextSet("broken", [ImageTextRecord("good", ("x",)), ImageTextRecord("bad", ("y",))], load)
    with pytest.raises(OSError, match="unreadable"):
        export_coco(dataset, tmp_path / "broken")
    assert not (tmp_path / "broken" / "captions.json").exists()
    assert _no_temporaries(tmp_path / "broken")


def test_polymodal_readers_read_the_exports_back(dataset: ImageTextSet, tmp_path: Path) -> None:
    from polymodal.data.readers import read_coco_captions, read_pairs_jsonl

    pairs = read_pairs_jsonl(export_jsonl(dataset, tmp_path / "jsonl"))
    coco = read_coco_captions(export_coco(dataset, tmp_path / "coco"))
    for copy in (pairs, coco):
        assert [r.captions for r in copy.records] == [r.captions for r in dataset.records]
        assert np.array_equal(np.asarray(copy.image(2)), np.asarray(dataset.image(2)))
    names = [pairs.class_names[r.label] for r in pairs.records]
    assert names == [dataset.class_names[r.label] for r in dataset.records]
