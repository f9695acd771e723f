"""Readers of on-disk formats: normal paths, caption grouping, and every kind of bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from polymodal.data.readers import (
    read_coco_captions,
    read_dataset,
    read_image_folder,
    read_karpathy,
    read_pairs_csv,
    read_pairs_jsonl,
)
from polymodal.data.records import DataError


def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)
    return path


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """``tmp_path/img/{a,b}.png`` plus a corrupt and a truncated file."""
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png", (10, 10, 240))
    (tmp_path / "img" / "corrupt.png").write_bytes(b"definitely not a png")
    good = (tmp_path / "img" / "a.png").read_bytes()
    (tmp_path / "img" / "truncated.png").write_bytes(good[: len(good) // 2])
    return tmp_path


# --- JSONL -------------------------------------------------------------------------------------------------


def test_jsonl_groups_captions_and_resolves_relative_paths(images: Path) -> None:
    path = _jsonl(images / "pairs.jsonl", [
        {"image": "img/a.png", "caption": "a red square"},
        {"image": "img/b.png", "caption": "a blue square"},
        {"image": "img/a.png", "caption": "  red block  "},
        "",
        {"image": str(images / "img" / "b.png"), "caption": "blue"},  # absolute path, same image
    ])
    data = read_pairs_jsonl(path)
    assert data.name == "pairs" and len(data) == 2 and data.skipped == 0
    first, second = data.records
    assert first.key == str((images / "img" / "a.png").resolve())
    assert first.captions == ("a red square", "red block")
    assert second.captions == ("a blue square", "blue")
    assert first.group == first.key and first.label is None
    image = data.image(1)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (10, 10, 240)


def test_jsonl_labels_by_name_become_class_indices(images: Path) -> None:
    path = _jsonl(images / "labelled.jsonl", [
        {"image": "img/a.png", "caption": "red", "label": "red"},
        {"image": "img/b.png", "caption": "blue", "label": "blue"},
    ])
    data = read_pairs_jsonl(path)
    assert data.class_names == ["blue", "red"]
    assert [r.label for r in data.records] == [1, 0]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ('{"image": "img/a.png", "caption": ', "not valid JSON"),
        ({"image": "img/a.png"}, "missing field 'caption'"),
        ({"caption": "x"}, "missing field 'image'"),
        ({"image": "img/a.png", "caption": "   "}, "empty 'caption'"),
        ({"image": "img/a.png", "caption": 3}, "must be a string"),
        ('["img/a.png", "x"]', "expected an object"),
        ({"image": "img/missing.png", "caption": "x"}, "image not found"),
        ({"image": "img/corrupt.png", "caption": "x"}, "image cannot be read"),
        ({"image": "img/truncated.png", "caption": "x"}, "image cannot be read"),
        ({"image": "img/a.png", "caption": "x", "label": -1}, "non-negative"),
        ({"image": "img/a.png", "caption": "x", "label": 7}, "contradicts"),
    ],
)
def test_jsonl_bad_row_names_file_and_line(images: Path, row: object, reason: str) -> None:
    good = {"image": "img/a.png", "caption": "fine", "label": 2}
    path = _jsonl(images / "bad.jsonl", [good, row])
    with pytest.raises(DataError) as caught:
        read_pairs_jsonl(path)
    assert caught.value.source == str(path) and caught.value.where == 2
    assert reason in str(caught.value) and f"{path}, line 2" in str(caught.value)
    data = read_pairs_jsonl(path, skip_bad=True)
    assert len(data) == 1 and data.skipped == 1 and data.records[0].captions == ("fine",)


def test_jsonl_skip_bad_counts_each_row_and_all_bad_is_an_error(images: Path) -> None:
    path = _jsonl(images / "bad.jsonl", [
        {"image": "img/corrupt.png", "caption": "x"},
        {"image": "img/corrupt.png", "caption": "y"},
        {"image": "img/a.png", "caption": ""},
    ])
    with pytest.raises(DataError, match=r"no usable records \(3 skipped"):
        read_pairs_jsonl(path, skip_bad=True)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_pairs_jsonl(tmp_path / "nope.jsonl")


# --- CSV ---------------------------------------------------------------------------------------------------


def test_csv_groups_captions_and_reads_labels(images: Path) -> None:
    path = _csv(images / "pairs.csv", ["image", "caption", "label"], [
        ["img/a.png", "a red square, small", "0"],
        ["img/b.png", "a blue square", "1"],
        ["img/a.png", "red", "0"],
    ])
    data = read_pairs_csv(path)
    assert [r.captions for r in data.records] == [("a red square, small", "red"), ("a blue square",)]
    assert [r.label for r in data.records] == [0, 1] and data.class_names is None


def test_csv_bad_rows_name_the_line(images: Path) -> None:
    rows = [["img/a.png", "ok"], ["img/missing.png", "x"], ["img/b.png"]]  # the last row lacks its caption
    path = _csv(images / "bad.csv", ["image", "caption"], rows)
    with pytest.raises(DataError, match=r"bad\.csv, line 3: image not found"):
        read_pairs_csv(path)
    data = read_pairs_csv(path, skip_bad=True)
    assert len(data) == 1 and data.skipped == 2


def test_csv_with_excel_byte_order_mark(images: Path) -> None:
    path = images / "excel.csv"
    path.write_bytes("image,caption\r\nimg/a.png,red\r\n".encode("utf-8-sig"))
    assert read_pairs_csv(path).records[0].captions == ("red",)


def test_non_utf8_file_is_a_data_error(images: Path) -> None:
    path = images / "latin1.jsonl"
    path.write_bytes('{"image": "img/a.png", "caption": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_pairs_jsonl(path)


def test_csv_header_without_caption_column_is_fatal(images: Path) -> None:
    path = _csv(images / "bad.csv", ["image", "text"], [["img/a.png", "ok"]])
    with pytest.raises(DataError, match=r"line 1: header lacks column\(s\) \['caption'\]"):
        read_pairs_csv(path, skip_bad=True)


# --- COCO --------------------------------------------------------------------------------------------------


def _coco(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}), encoding="utf-8")
    return path


def test_coco_groups_annotations_by_image(images: Path) -> None:
    path = _coco(images / "annotations" / "captions.json",
                 [{"id": 7, "file_name": "b.png"}, {"id": 3, "file_name": "a.png"}, {"id": 9, "file_name": "x.png"}],
                 [{"id": 1, "image_id": 3, "caption": "red"}, {"id": 2, "image_id": 7, "caption": "blue"},
                  {"id": 3, "image_id": 3, "caption": "a red square"}])
    data = read_coco_captions(path, image_dir=images / "img")
    # Order follows "images"; image 9 has no caption, so it is left out (and never opened).
    assert [Path(r.key).name for r in data.records] == ["b.png", "a.png"]
    assert data.records[1].captions == ("red", "a red square")


@pytest.mark.parametrize(
    ("image_entry", "annotation", "where", "reason"),
    [
        ({"id": 2, "file_name": "missing.png"}, {"image_id": 2, "caption": "x"}, "images[1]", "image not found"),
        ({"id": 2, "file_name": "corrupt.png"}, {"image_id": 2, "caption": "x"}, "images[1]", "cannot be read"),
        ({"id": 2}, {"image_id": 1, "caption": "x"}, "images[1]", "missing field 'file_name'"),
        ({"id": [2], "file_name": "b.png"}, {"image_id": 1, "caption": "x"}, "images[1]", "missing field 'id'"),
        ({"id": 2, "file_name": "b.png"}, {"image_id": [2], "caption": "x"}, "annotations[1]", "not in 'images'"),
        ({"id": 2, "file_name": "b.png"}, {"image_id": 5, "caption": "x"}, "annotations[1]", "not in 'images'"),
        ({"id": 2, "file_name": "b.png"}, {"image_id": 2, "caption": ""}, "annotations[1]", "empty 'caption'"),
    ],
)
def test_coco_bad_entries_name_the_record(
    images: Path, image_entry: dict, annotation: dict, where: str, reason: str
) -> None:
    path = _coco(images / "img" / "captions.json", [{"id": 1, "file_name": "a.png"}, image_entry],
                 [{"image_id": 1, "caption": "fine"}, annotation])
    with pytest.raises(DataError) as caught:
        read_coco_captions(path)
    assert caught.value.where == where and reason in caught.value.reason
    data = read_coco_captions(path, skip_bad=True)
    assert data.skipped == 1 and data.records[0].captions[0] == "fine"


# --- Karpathy ----------------------------------------------------------------------------------------------


def _karpathy(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"dataset": "flickr-mini", "images": entries}), encoding="utf-8")
    return path


def _entry(name: str, split: str, *sentences: str, folder: str | None = None) -> dict:
    entry = {"filename": name, "split": split, "sentences": [{"raw": s, "tokens": s.split()} for s in sentences]}
    return entry if folder is None else {**entry, "filepath": folder}


def test_karpathy_reads_splits_and_filepath(images: Path) -> None:
    path = _karpathy(images / "dataset.json", [
        _entry("a.png", "train", "red one", "a red square", folder="img"),
        _entry("b.png", "test", "blue one", folder="img"),
    ])
    everything = read_karpathy(path, images)
    assert everything.name == "flickr-mini" and len(everything) == 2
    assert everything.records[0].captions == ("red one", "a red square")
    test = read_karpathy(path, images, split="test")
    assert test.name == "flickr-mini-test" and [r.captions for r in test.records] == [("blue one",)]
    assert len(read_karpathy(path, images, split=["train", "test"])) == 2
    with pytest.raises(DataError, match=r"no images in split \['val'\]"):
        read_karpathy(path, images, split="val")


def test_karpathy_bad_entries(images: Path) -> None:
    path = _karpathy(images / "dataset.json", [
        _entry("a.png", "test", "ok", folder="img"),
        _entry("b.png", "test", folder="img"),
        _entry("nope.png", "test", "x", folder="img"),
        _entry("b.png", "train", "ignored: other split, never checked"),
    ])
    with pytest.raises(DataError, match=r"images\[1\]: missing or empty 'sentences'"):
        read_karpathy(path, images)
    data = read_karpathy(path, images, split="test", skip_bad=True)
    assert len(data) == 1 and data.skipped == 2


# --- ImageFolder -------------------------------------------------------------------------------------------


def test_image_folder_classes_captions_and_labels(tmp_path: Path) -> None:
    _png(tmp_path / "pets" / "golden_retriever" / "1.png")
    _png(tmp_path / "pets" / "cat" / "2.jpg")
    _png(tmp_path / "pets" / "cat" / "1.png")
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "pets" / "empty_class").mkdir()
    data = read_image_folder(tmp_path / "pets")
    assert data.class_names == ["cat", "empty class", "golden retriever"]
    assert [(Path(r.key).name, r.label, r.captions) for r in data.records] == [
        ("1.png", 0, ("a photo of a cat.",)),
        ("2.jpg", 0, ("a photo of a cat.",)),
        ("1.png", 2, ("a photo of a golden retriever.",)),
    ]
    assert [r.group for r in data.records] == ["cat", "cat", "golden retriever"]
    assert read_image_folder(tmp_path / "pets", template="{}").records[0].captions == ("cat",)


def test_image_folder_bad_image(tmp_path: Path) -> None:
    _png(tmp_path / "root" / "cat" / "1.png")
    (tmp_path / "root" / "cat" / "2.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"root, cat/2\.png: image cannot be read"):
        read_image_folder(tmp_path / "root")
    assert read_image_folder(tmp_path / "root", skip_bad=True).skipped == 1
    with pytest.raises(DataError, match="no class folders"):
        read_image_folder(tmp_path / "root" / "cat")


# --- read_dataset ------------------------------------------------------------------------------------------


def test_read_dataset_dispatches_on_path(images: Path) -> None:
    jsonl = _jsonl(images / "p.jsonl", [{"image": "img/a.png", "caption": "red"}])
    table = _csv(images / "p.csv", ["image", "caption"], [["img/a.png", "red"]])
    coco = _coco(images / "img" / "coco.json", [{"id": 1, "file_name": "a.png"}], [{"image_id": 1, "caption": "c"}])
    karpathy = _karpathy(images / "k.json", [_entry("a.png", "val", "k", folder="img")])
    _png(images / "folder" / "train" / "dog" / "1.png")
    assert read_dataset(jsonl).records[0].captions == ("red",)
    assert read_dataset(table).records[0].captions == ("red",)
    assert read_dataset(coco).records[0].captions == ("c",)
    assert read_dataset(karpathy, split="val").records[0].captions == ("k",)
    assert read_dataset(images / "folder", split="train").class_names == ["dog"]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("x.json", json.dumps({"foo": 1}), "neither COCO captions"),
        ("x.json", "{oops", "not valid JSON"),
        ("x.txt", "a.png red", "cannot tell the format"),
        ("missing.jsonl", None, "no such file"),
    ],
)
def test_read_dataset_cannot_tell(tmp_path: Path, name: str, content: str | None, reason: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=reason):
        read_dataset(tmp_path / name)


def test_read_dataset_rejects_a_split_for_single_split_formats(images: Path) -> None:
    jsonl = _jsonl(images / "p.jsonl", [{"image": "img/a.png", "caption": "red"}])
    with pytest.raises(DataError, match="holds one split"):
        read_dataset(jsonl, split="train")
    with pytest.raises(DataError, match="no folder for split 'val'"):
        read_dataset(images, split="val")
