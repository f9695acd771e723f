"""The generated shapes world: determinism, truthful and diverse text, held-out pairs, correct answers."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from polymodal.data.shapes import COLOURS, SHAPES, Scene, ShapeObject, ShapesConfig, ShapesWorld
from polymodal.data.shapes_language import (
    CELL_PHRASES,
    COLOUR_WORDS,
    RELATION_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    cell,
    plural,
)

N_SCENES = 500


def _alternation(table: dict) -> tuple[str, dict[str, object]]:
    """A regex group matching any word of ``table`` (longest first), and word -> canonical value."""
    lookup = {word: value for value, words in table.items() for word in words}
    return "(" + "|".join(re.escape(w) for w in sorted(lookup, key=len, reverse=True)) + ")", lookup


SIZE_RE, SIZE_OF = _alternation(SIZE_WORDS)
COLOUR_RE, COLOUR_OF = _alternation(COLOUR_WORDS)
SHAPE_RE, SHAPE_OF = _alternation(SHAPE_WORDS)
RELATION_RE, RELATION_OF = _alternation(RELATION_WORDS)
CELL_RE, CELL_OF = _alternation(CELL_PHRASES)
NOUN = rf"(?:a|an|the) (?:{SIZE_RE} )?{COLOUR_RE} {SHAPE_RE}"
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld()


@pytest.fixture(scope="module")
def train(world: ShapesWorld) -> list[Scene]:
    return [world.scene("train", i) for i in range(N_SCENES)]


def _find(scene: Scene, colour: str, shape: str) -> ShapeObject:
    matches = [o for o in scene.objects if (o.colour, o.shape) == (colour, shape)]
    assert len(matches) == 1, f"{scene.key}: {colour} {shape} should name exactly one object"
    return matches[0]


def _clearly(a: ShapeObject, b: ShapeObject, rel: str) -> bool:
    """``a`` is ``rel`` of ``b`` by a visible margin (centres at least 5% of a 64-pixel image apart)."""
    delta = {"left": b.x - a.x, "right": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[rel]
    return delta > 0.05 * 64


def test_config_is_data() -> None:
    assert ShapesConfig.from_dict({"image_size": 32, "seed": 3}) == ShapesConfig(image_size=32, seed=3)
    with pytest.raises(ValueError, match="colour_count"):
        ShapesConfig.from_dict({"colour_count": 3})
    with pytest.raises(ValueError, match="max_objects"):
        ShapesConfig(min_objects=3, max_objects=2)


def test_vocabulary() -> None:
    assert set(COLOURS) == set(COLOUR_WORDS) and len(COLOURS) >= 7
    assert set(SHAPES) == set(SHAPE_WORDS) and len(SHAPES) >= 5


def test_same_seed_same_scene_and_pixels() -> None:
    config = ShapesConfig(noise=0.05, texture=True)
    first, second = ShapesWorld(config), ShapesWorld(ShapesConfig.from_dict(vars(config)))
    for index in range(8):
        scene = first.scene("train", index)
        assert scene == second.scene("train", index)
        pixels = np.asarray(first.render(scene))
        assert np.array_equal(pixels, np.asarray(second.render(second.scene("train", index))))
        assert np.array_equal(pixels, np.asarray(first.render(scene)))


def test_different_seed_or_split_differs(world: ShapesWorld) -> None:
    other = ShapesWorld(ShapesConfig(seed=1))
    assert all(world.scene("train", i).captions != other.scene("train", i).captions for i in range(10))
    pixels = [np.asarray(w.render(w.scene("train", 0))) for w in (world, other)]
    assert not np.array_equal(*pixels)
    groups = {split: {world.scene(split, i).group for i in range(100)} for split in ("train", "val", "test")}
    assert len(groups["train"] & groups["val"]) <= 2 and len(groups["train"] & groups["test"]) <= 2


@pytest.mark.parametrize("size", [32, 96, 160])
def test_image_size_is_configurable(size: int) -> None:
    world = ShapesWorld(ShapesConfig(image_size=size, texture=True, noise=0.02))
    for index in range(3):
        image = world.render(world.scene("val", index))
        assert image.size == (size, size) and image.mode == "RGB"


def test_objects_fit_and_do_not_overlap(train: list[Scene]) -> None:
    counts = Counter(len(scene.objects) for scene in train)
    assert set(counts) == {1, 2, 3, 4}
    for scene in train:
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)
        for i, a in enumerate(scene.objects):
            assert a.radius <= a.x <= 64 - a.radius and a.radius <= a.y <= 64 - a.radius
            for b in scene.objects[i + 1 :]:
                assert np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius


def test_rendered_object_has_its_colour(world: ShapesWorld) -> None:
    scene = world.scene("train", 0)
    pixels = np.asarray(world.render(scene)).astype(int)
    for obj in scene.objects:
        centre = pixels[int(obj.y), int(obj.x)]
        assert np.abs(centre - np.array(COLOURS[obj.colour])).max() <= 20, obj


def test_label_is_shape_of_largest_object(world: ShapesWorld, train: list[Scene]) -> None:
    assert world.class_names == list(SHAPES)
    for scene in train:
        radii = sorted((o.radius for o in scene.objects), reverse=True)
        assert len(radii) == 1 or radii[0] > 1.05 * radii[1]  # the largest object is unmistakable
        assert scene.label == SHAPES.index(max(scene.objects, key=lambda o: o.radius).shape)


def test_captions_name_only_objects_in_the_scene(train: list[Scene]) -> None:
    for scene in train:
        colours = {o.colour for o in scene.objects}
        shapes = {o.shape for o in scene.objects}
        assert len(scene.captions) == len(set(scene.captions)) == 5
        for caption in scene.captions:
            assert {COLOUR_OF[w] for w in re.findall(rf"\b{COLOUR_RE}\b", caption)} <= colours, caption
            words = re.findall(rf"\b{SHAPE_RE}(?:s|es)?\b", caption)
            assert words and {SHAPE_OF[w] for w in words} <= shapes, caption
            for size, colour, shape in re.findall(NOUN, caption):
                obj = _find(scene, COLOUR_OF[colour], SHAPE_OF[shape])
                assert not size or SIZE_OF[size] == obj.size, caption


def test_relations_and_places_in_captions_are_true(train: list[Scene]) -> None:
    checked = 0
    for scene in train:
        for caption in scene.captions:
            for match in re.finditer(rf"{NOUN} {RELATION_RE} {NOUN}", caption):
                _, colour_a, shape_a, rel, _, colour_b, shape_b = match.groups()
                a = _find(scene, COLOUR_OF[colour_a], SHAPE_OF[shape_a])
                b = _find(scene, COLOUR_OF[colour_b], SHAPE_OF[shape_b])
                assert _clearly(a, b, RELATION_OF[rel]), (caption, a, b)
                checked += 1
            for _, colour, shape, place in re.findall(rf"{NOUN} {CELL_RE}(?=,| and|$)", caption):
                assert cell(_find(scene, COLOUR_OF[colour], SHAPE_OF[shape]), 64) == CELL_OF[place], caption
    assert checked > N_SCENES // 2


def test_captions_are_diverse(train: list[Scene]) -> None:
    assert len({scene.group for scene in train}) > 0.95 * N_SCENES
    assert len({scene.captions[0] for scene in train}) > 0.97 * N_SCENES
    assert len({caption for scene in train for caption in scene.captions}) > 0.9 * 5 * N_SCENES


def test_held_out_pairs_only_in_compositional_split(world: ShapesWorld, train: list[Scene]) -> None:
    held = world.holdout_pairs
    assert len(held) == round(0.15 * len(COLOURS) * len(SHAPES))
    # Every colour and every shape still appears in training with other partners.
    assert max(Counter(c for c, _ in held).values()) < len(SHAPES) - 1
    assert max(Counter(s for _, s in held).values()) < len(COLOURS) - 1
    for scene in train + [world.scene(split, i) for split in ("val", "test") for i in range(100)]:
        assert not {(o.colour, o.shape) for o in scene.objects} & held
        for q in scene.questions:
            assert not any(f"{colour} {shape}" in q.question for colour, shape in held), q
    for index in range(200):
        assert {(o.colour, o.shape) for o in world.scene("test_compositional", index).objects} & held
    with pytest.raises(ValueError, match="holdout_fraction"):
        ShapesWorld(ShapesConfig(holdout_fraction=0.0)).scene("test_compositional", 0)
    with pytest.raises(ValueError, match="unknown split"):
        world.scene("dev", 0)


def _check_answer(scene: Scene, question: str, answer: str) -> None:
    """Answer ``question`` from the scene's objects independently of the generator, and compare."""
    objects = scene.objects
    shape_name = {plural(s): s for s in SHAPES}

    def resolve(ref: str) -> ShapeObject:
        words = ref.split()
        matches = [o for o in objects if o.shape == words[-1] and (len(words) == 1 or o.colour == words[0])]
        assert len(matches) == 1, f"{question!r} refers to {ref!r} ambiguously"
        return matches[0]

    relation = "(left of|right of|above|below)"
    if question in ("how many shapes are there?", "how many objects are in the image?"):
        expected = str(len(objects))
    elif m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        expected = str(sum(o.colour == m[1] for o in objects))
    elif m := re.fullmatch(r"how many (\w+) are there\?", question):
        expected = str(sum(o.shape == shape_name[m[1]] for o in objects))
    elif m := re.fullmatch(r"what colour is the (\w+)\?", question):
        expected = resolve(m[1]).colour
    elif m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        matches = [o for o in objects if o.colour == m[1]]
        assert len(matches) == 1, question
        expected = matches[0].shape
    elif m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        expected = "yes" if any((o.colour, o.shape) == (m[1], m[2]) for o in objects) else "no"
    elif m := re.fullmatch(rf"is the ([\w ]+?) {relation} the ([\w ]+)\?", question):
        a, rel, b = resolve(m[1]), m[2].removesuffix(" of"), resolve(m[3])
        assert _clearly(a, b, rel) or _clearly(a, b, OPPOSITE[rel]), question
        expected = "yes" if _clearly(a, b, rel) else "no"
    elif m := re.fullmatch(rf"what shape is {relation} the ([\w ]+)\?", question):
        rel, b = m[1].removesuffix(" of"), resolve(m[2])
        others = [o for o in objects if o is not b]
        assert all(_clearly(o, b, rel) or _clearly(o, b, OPPOSITE[rel]) for o in others), question
        hits = [o for o in others if _clearly(o, b, rel)]
        assert len(hits) == 1, question
        expected = hits[0].shape
    else:
        raise AssertionError(f"unexpected question form: {question!r}")
    assert answer == expected, f"{scene.key}: {question!r} answered {answer!r}, expected {expected!r}"


def test_answers_are_correct_and_balanced(train: list[Scene]) -> None:
    types: Counter[str] = Counter()
    yes_no: Counter[str] = Counter()
    for scene in train:
        for q in scene.questions:
            _check_answer(scene, q.question, q.answer)
            types[q.question_type] += 1
            if q.answer_type == "yes/no":
                yes_no[q.answer] += 1
    assert set(types) == {"colour", "shape", "count", "exists", "position"}
    assert 0.4 < yes_no["yes"] / sum(yes_no.values()) < 0.6


def test_image_text_set_and_vqa_items(world: ShapesWorld) -> None:
    dataset = world.image_text_set("val", 12)
    assert len(dataset) == 12 and dataset.class_names == list(SHAPES)
    record = dataset.records[3]
    scene = world.scene("val", 3)
    assert record.key == "shapes/val/000003" == scene.key
    assert (record.captions, record.group, record.label) == (scene.captions, scene.group, scene.label)
    subset = dataset.subset([3])
    assert np.array_equal(np.asarray(subset.image(0)), np.asarray(world.render(scene)))
    items = world.vqa_items("val", 12)
    assert {item.key for item in items} == {r.key for r in dataset.records}
    assert len(items) == sum(len(world.scene("val", i).questions) for i in range(12))
