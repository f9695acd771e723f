"""K-shot training sets (``shots_per_class``): exactly K records of every class, the same ones for the same seed, drawn
with a run's ``train.seed``, and a clear error when a class has fewer than K."""
from collections import Counter

import pytest

from polymodal.data.catalog import few_shot, load_data_spec
from polymodal.data.records import ImageTextRecord, ImageTextSet
from polymodal.recipes.config import DataConfig
from polymodal.recipes.data import load_run_data

CLASSES = ["cat", "dog", "owl"]
PER_CLASS = {"cat": 6, "dog": 9, "owl": 5}


@pytest.fixture(scope="module")
def labelled() -> ImageTextSet:
    records = [ImageTextRecord(f"{name}/{i}", (f"a {name}",), group=name, label=CLASSES.index(name))
               for name, count in PER_CLASS.items() for i in range(count)]
    return ImageTextSet("pets", records, load_image=lambda record: None, class_names=list(CLASSES))


def keys(images: ImageTextSet) -> list[str]:
    return [record.key for record in images.records]


def test_k_records_of_every_class_in_the_set_order(labelled):
    chosen = few_shot(labelled, 4, seed=0)
    labels = Counter(record.label for record in chosen.records)
    assert labels == {0: 4, 1: 4, 2: 4}
    order = keys(labelled)
    assert [order.index(key) for key in keys(chosen)] == sorted(order.index(key) for key in keys(chosen))
    assert chosen.class_names == CLASSES and chosen.name == "pets-4shot-seed0"


def test_the_seed_decides_which_records(labelled):
    assert keys(few_shot(labelled, 3, seed=5)) == keys(few_shot(labelled, 3, seed=5))
    draws = {tuple(keys(few_shot(labelled, 3, seed=seed))) for seed in range(6)}
    assert len(draws) == 6


def test_a_class_with_fewer_than_k_records_is_named(labelled):
    with pytest.raises(ValueError, match=r"shots_per_class = 6, but class 'owl' has only 5 record\(s\)"):
        few_shot(labelled, 6, seed=0)
    assert len(few_shot(labelled, 5, seed=0)) == 15  # every owl


@pytest.mark.parametrize("shots", [0, -1, 2.5, "4", True])
def test_shots_must_be_a_positive_integer(labelled, shots):
    with pytest.raises(ValueError, match=f"shots_per_class = {shots!r}: expected a positive integer"):
        few_shot(labelled, shots, seed=0)


def test_unlabelled_sets_are_refused(labelled):
    no_classes = ImageTextSet("pairs", labelled.records, load_image=lambda record: None)
    with pytest.raises(ValueError, match="pairs: shots_per_class needs a labelled set"):
        few_shot(no_classes, 1, seed=0)
    records = [*labelled.records[:3], ImageTextRecord("stray", ("a thing",), group="stray")]
    with pytest.raises(ValueError, match="stray has no label"):
        few_shot(ImageTextSet("pets", records, load_image=lambda record: None, class_names=CLASSES), 1, seed=0)


def test_a_run_draws_its_k_shots_with_its_seed():
    spec = {"name": "shapes", "split": "train", "size": 300, "shots_per_class": 2}
    whole = load_data_spec({"name": "shapes", "split": "train", "size": 300})
    runs = {seed: load_run_data(DataConfig(train=spec, val=None), seed=seed).train_set for seed in (2, 3)}
    for seed, train_set in runs.items():
        assert keys(train_set) == keys(few_shot(whole, 2, seed))
        assert Counter(record.label for record in train_set.records) == {label: 2 for label in range(len(whole.class_names))}
    assert keys(runs[2]) != keys(runs[3])
    # A set without shots_per_class is loaded whole, whatever the seed.
    assert len(load_run_data(DataConfig(train={"name": "shapes", "size": 300}, val=None), seed=2).train_set) == 300
