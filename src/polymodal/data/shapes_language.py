"""The language of the shapes world: vocabulary, spatial relations, captions and questions.

Kept apart from :mod:`polymodal.data.shapes` (geometry and pixels) because everything here only reads a
scene's objects. Every statement generated here is true of the scene: relations are derived from object
centres, and a referent ("the circle") is used only when it names exactly one object.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape; ``x``, ``y`` are its centre in pixels (y grows downwards), ``radius`` its circumradius."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float
    rotation: float
    rgb: tuple[int, int, int]


CAPTIONS_PER_SCENE = 5

# The words captions may use for each attribute; tests read these tables to parse captions back.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
    "white": ("white",),
    "pink": ("pink",),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
# A 3x3 grid of image regions, indexed (row, column): captions name them, the canonical group uses them.
CELL_PHRASES: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 0): ("in the top left",),
    (0, 1): ("at the top",),
    (0, 2): ("in the top right",),
    (1, 0): ("on the left",),
    (1, 1): ("in the centre", "in the middle"),
    (1, 2): ("on the right",),
    (2, 0): ("in the bottom left",),
    (2, 1): ("at the bottom",),
    (2, 2): ("in the bottom right",),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
QUESTION_RELATION = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class Question:
    """A question about one scene with its single correct answer."""

    question: str
    answer: str
    question_type: str  # colour | shape | count | exists | position

    @property
    def answer_type(self) -> str:
        """The VQA v2 answer type: ``yes/no``, ``number`` or ``other``."""
        if self.answer in ("yes", "no"):
            return "yes/no"
        return "number" if self.answer.isdigit() else "other"


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` lies relative to ``b`` along the axis that separates them most (image y grows downwards)."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def holds(a: ShapeObject, b: ShapeObject, rel: str, margin: float) -> bool | None:
    """Whether ``a`` is ``rel`` of ``b``: True/False when the centres differ by more than ``margin``, else None."""
    delta = {"left": b.x - a.x, "right": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[rel]
    return None if abs(delta) <= margin else delta > 0


def cell(obj: ShapeObject, size: int) -> tuple[int, int]:
    """The (row, column) of the 3x3 grid cell holding the object's centre."""
    return min(2, int(3 * obj.y / size)), min(2, int(3 * obj.x / size))


def canonical(objects: tuple[ShapeObject, ...], size: int) -> str:
    """What captions can say about a scene: each object's size, colour, shape and grid cell, sorted."""
    parts = []
    for o in objects:
        row, column = cell(o, size)
        parts.append(f"{o.size} {o.colour} {o.shape} at {row},{column}")
    return "; ".join(sorted(parts))


def plural(word: str) -> str:
    """The English plural of a shape word ("box" -> "boxes", "plus sign" -> "plus signs")."""
    return word + ("es" if word.endswith(("s", "x")) else "s")


def _noun_phrase(rng: random.Random, obj: ShapeObject, sized: bool = True) -> str:
    """'a [size] colour shape' with random synonyms; the size word is left out at random, or always if not ``sized``."""
    words = [rng.choice(SIZE_WORDS[obj.size])] if sized and rng.random() < 0.7 else []
    words += [rng.choice(COLOUR_WORDS[obj.colour]), rng.choice(SHAPE_WORDS[obj.shape])]
    return f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions(rng: random.Random, objects: tuple[ShapeObject, ...], size: int) -> tuple[str, ...]:
    """``CAPTIONS_PER_SCENE`` distinct captions; the first lists every object with its place in the image."""
    n = len(objects)
    by_x = sorted(objects, key=lambda o: o.x)

    def listing() -> str:
        return _join([_noun_phrase(rng, o) for o in rng.sample(objects, n)])

    def related(prefix: str) -> str:
        if n == 1:
            return f"{prefix}{_noun_phrase(rng, objects[0])} and nothing else"
        a, b = rng.sample(objects, 2)
        return f"{prefix}{_noun_phrase(rng, a)} {rng.choice(RELATION_WORDS[relation(a, b)])} {_noun_phrase(rng, b)}"

    def counted() -> str:
        return f"{NUMBER_WORDS[n]} {rng.choice(('shapes', 'objects')) if n > 1 else 'shape'}: {listing()}"

    def picture() -> str:
        return rng.choice(("a picture of {}", "an image showing {}", "{} on a dark background")).format(listing())

    def largest() -> str:
        main = max(objects, key=lambda o: o.radius)
        if n == 1:
            return f"{_noun_phrase(rng, main)} on its own"
        rest = f"{NUMBER_WORDS[n - 1]} smaller {'shape' if n == 2 else 'shapes'}"
        template = rng.choice(("{} with {}", "the biggest shape is {}, next to {}"))
        # No size word: "the biggest shape is a tiny star" reads as a contradiction.
        return template.format(_noun_phrase(rng, main, sized=False), rest)

    def shape_counts() -> str:
        counts = Counter(o.shape for o in by_x)
        named = [f"{NUMBER_WORDS[k]} {plural(s) if k > 1 else s}" for s, k in counts.items()]
        return f"{_join(named)} in {_join([o.colour for o in by_x])}"

    layout = _join([f"{_noun_phrase(rng, o)} {rng.choice(CELL_PHRASES[cell(o, size)])}" for o in by_x])
    templates = [lambda: related(""), lambda: related("there is "), counted, picture, largest, shape_counts]
    # Each template at most once: their wordings differ, so the captions are distinct, not synonym swaps.
    chosen = rng.sample(templates, CAPTIONS_PER_SCENE - 1)
    return (layout, *(template() for template in chosen))


def referring_phrase(obj: ShapeObject, shape_counts: Counter) -> str:
    """The shortest unique description of ``obj`` in a scene with ``shape_counts``: "the circle", or "the red
    circle" when the shape repeats ((colour, shape) pairs are distinct in a scene)."""
    return f"the {obj.shape}" if shape_counts[obj.shape] == 1 else f"the {obj.colour} {obj.shape}"


def questions(
    rng: random.Random, objects: tuple[ShapeObject, ...], size: int, allowed: list[tuple[str, str]]
) -> list[Question]:
    """Unambiguous questions about ``objects``; negative existence questions only name pairs in ``allowed``."""
    n = len(objects)
    shapes = Counter(o.shape for o in objects)
    colours = Counter(o.colour for o in objects)
    present = {(o.colour, o.shape) for o in objects}

    def ref(o: ShapeObject) -> str:
        return referring_phrase(o, shapes)

    total = rng.choice(("how many shapes are there?", "how many objects are in the image?"))
    result = [Question(total, str(n), "count")]
    # Mostly colours in the scene, sometimes any colour, so "0" is an answer too.
    colour = rng.choice(sorted(colours)) if rng.random() < 0.8 else rng.choice(sorted(COLOUR_WORDS))
    result.append(Question(f"how many {colour} shapes are there?", str(colours[colour]), "count"))
    shape = rng.choice(sorted(shapes))
    result.append(Question(f"how many {plural(shape)} are there?", str(shapes[shape]), "count"))
    if unique_shape := [o for o in objects if shapes[o.shape] == 1]:
        o = rng.choice(unique_shape)
        result.append(Question(f"what colour is the {o.shape}?", o.colour, "colour"))
    if unique_colour := [o for o in objects if colours[o.colour] == 1]:
        o = rng.choice(unique_colour)
        result.append(Question(f"what shape is the {o.colour} object?", o.shape, "shape"))
    # One yes and one no existence question per scene keeps yes/no answers balanced; the negative is hard:
    # it shares the colour or the shape of something in the scene.
    o = rng.choice(objects)
    result.append(Question(f"is there a {o.colour} {o.shape}?", "yes", "exists"))
    absent = [p for p in allowed if p not in present and (p[0] in colours or p[1] in shapes)]
    absent_colour, absent_shape = rng.choice(absent)
    result.append(Question(f"is there a {absent_colour} {absent_shape}?", "no", "exists"))
    if n < 2:
        return result
    a, b = rng.sample(objects, 2)
    # Along the separating axis the centres differ by > 0.1 * size (placement leaves a gap), so the relation
    # and its opposite are both clear-cut; a coin decides which one is asked.
    answer = rng.random() < 0.5
    rel = relation(a, b) if answer else OPPOSITE[relation(a, b)]
    result.append(Question(f"is {ref(a)} {QUESTION_RELATION[rel]} {ref(b)}?", "yes" if answer else "no", "position"))
    # "What shape is left of X?" only when exactly one object is clearly left of X and every other clearly not.
    rel = rng.choice(tuple(QUESTION_RELATION))
    others = [o for o in objects if o is not b]
    verdicts = [holds(o, b, rel, 0.06 * size) for o in others]
    if None not in verdicts and verdicts.count(True) == 1:
        target = others[verdicts.index(True)]
        result.append(Question(f"what shape is {QUESTION_RELATION[rel]} {ref(b)}?", target.shape, "position"))
    return result
