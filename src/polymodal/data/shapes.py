"""The generated default world: RGB scenes of coloured shapes with captions, questions and labels.

Every scene is a pure function of ``(config.seed, split, index)``, so the world needs no files, any item
can be regenerated at random, and ``render(scene(split, i))`` gives identical pixels every time. A
deterministic set of (colour, shape) pairs is held out of ``train``/``val``/``test`` and appears only in
``test_compositional``, which measures compositional generalisation.

Example::

    world = ShapesWorld(ShapesConfig.from_dict({"image_size": 64, "seed": 0}))
    train = world.image_text_set("train", 2000)        # ImageTextSet, labels = shape of the largest object
    items = world.vqa_items("val", 200)                # question/answer records for the same images
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from polymodal.data import shapes_language as language
from polymodal.data.records import ImageTextRecord, ImageTextSet
from polymodal.data.shapes_language import SHAPE_WORDS, Question, ShapeObject

# Colour name -> RGB; the names are the keys of COLOUR_WORDS, the shapes those of SHAPE_WORDS.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 235),
    "yellow": (240, 220, 50),
    "purple": (145, 60, 205),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "pink": (250, 135, 195),
}
SHAPES: tuple[str, ...] = tuple(SHAPE_WORDS)
SPLITS: tuple[str, ...] = ("train", "val", "test", "test_compositional")
MAX_OBJECTS = 4


def _star(points: int, inner: float) -> list[tuple[float, float]]:
    """Tips on the unit circle, first one up, alternating with notches at radius ``inner``."""
    outline = []
    for k in range(2 * points):
        angle, radius = math.radians(-90.0 + 180.0 * k / points), 1.0 if k % 2 == 0 else inner
        outline.append((radius * math.cos(angle), radius * math.sin(angle)))
    return outline


_ARM = 0.34 / math.hypot(1.0, 0.34)  # half-width of a cross arm, scaled so the arm tips touch the circumcircle
_TIP = 1.0 / math.hypot(1.0, 0.34)
# Outlines of the polygon shapes on the unit circumcircle, pointing up; y grows downwards as in images.
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.7071, -0.7071), (0.7071, -0.7071), (0.7071, 0.7071), (-0.7071, 0.7071)],
    # Narrower than tall, so a diamond never looks like a rotated square.
    "diamond": [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)],
    "triangle": _star(3, 1.0)[::2],
    "star": _star(5, 0.45),
    "cross": [(_ARM, -_TIP), (_ARM, -_ARM), (_TIP, -_ARM), (_TIP, _ARM), (_ARM, _ARM), (_ARM, _TIP),
              (-_ARM, _TIP), (-_ARM, _ARM), (-_TIP, _ARM), (-_TIP, -_ARM), (-_ARM, -_ARM), (-_ARM, -_TIP)],
}


@dataclass(frozen=True)
class ShapesConfig:
    """How the world is generated; plain data, so ``ShapesConfig(**mapping)`` or :meth:`from_dict` builds it.

    Attributes:
        image_size: side of the square RGB images, in pixels.
        min_objects: fewest objects per scene (at least 1).
        max_objects: most objects per scene (at most 4, so four large shapes always fit).
        noise: standard deviation of additive Gaussian pixel noise, as a fraction of 255 (0 = none).
        texture: draw stripes or dots on the background of some scenes.
        holdout_fraction: fraction of all (colour, shape) pairs kept out of train/val/test.
        seed: the world's seed; every scene, the held-out pairs and the noise derive from it.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    noise: float = 0.0
    texture: bool = False
    holdout_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {self.min_objects}, {self.max_objects}"
            )
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if not 0.0 <= self.holdout_fraction <= 0.5:
            raise ValueError(f"holdout_fraction must be in [0, 0.5], got {self.holdout_fraction}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ShapesConfig":
        """Build a config from a mapping, naming any unknown key instead of a bare ``TypeError``."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ShapesConfig keys: {sorted(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class VQAItem:
    """A question about the image whose record key is ``key`` (the VQA record the exporters consume)."""

    key: str
    question: str
    answer: str
    question_type: str
    answer_type: str


@dataclass(frozen=True)
class Scene:
    """Everything generated for one ``(split, index)``: content, text, label and render parameters."""

    split: str
    index: int
    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int]
    texture: str | None  # None | "stripes" | "dots"
    seed: int  # drives texture placement and pixel noise, so rendering is deterministic
    captions: tuple[str, ...]
    questions: tuple[Question, ...]
    label: int  # index into SHAPES of the largest object's shape
    group: str  # canonical content description: equal for scenes that captions cannot tell apart

    @property
    def key(self) -> str:
        return f"shapes/{self.split}/{self.index:06d}"


class ShapesWorld:
    """Deterministic generator of shape scenes, their images and their text for every split."""

    def __init__(self, config: ShapesConfig | None = None) -> None:
        self.config = config or ShapesConfig()
        self.holdout_pairs = _holdout_pairs(self.config)
        every_pair = [(c, s) for c in COLOURS for s in SHAPES]
        self._seen_pairs = [p for p in every_pair if p not in self.holdout_pairs]
        self._every_pair = every_pair

    @property
    def class_names(self) -> list[str]:
        return list(SHAPES)

    def scene(self, split: str, index: int) -> Scene:
        """The scene at ``index`` of ``split``; the same arguments always give the same scene."""
        _check_split(split, self.holdout_pairs)
        # A string seed is hashed with SHA-512, so each (seed, split, index) is its own stream on any machine.
        rng = random.Random(f"polymodal-shapes/{self.config.seed}/{split}/{index}")
        size = self.config.image_size
        objects = _place_objects(rng, self._scene_pairs(rng, split), size)
        texture = rng.choice(("stripes", "dots")) if self.config.texture and rng.random() < 0.5 else None
        background = (rng.randint(0, 45), rng.randint(0, 45), rng.randint(0, 45))
        seed = rng.getrandbits(63)
        # Negative existence questions only name pairs this split may show, so train never mentions a held-out pair.
        allowed = self._every_pair if split == "test_compositional" else self._seen_pairs
        return Scene(
            split=split,
            index=index,
            objects=objects,
            background=background,
            texture=texture,
            seed=seed,
            captions=language.captions(rng, objects, size),
            questions=tuple(language.questions(rng, objects, size, allowed)),
            label=SHAPES.index(max(objects, key=lambda o: o.radius).shape),
            group=language.canonical(objects, size),
        )

    def render(self, scene: Scene) -> Image.Image:
        """Draw ``scene`` as an RGB image of ``config.image_size`` pixels."""
        size = self.config.image_size
        # Drawing at 4x (2x for big images) and averaging each block of pixels (``reduce``, a fast box
        # filter) anti-aliases the edges.
        scale = 4 if size <= 128 else 2
        canvas = Image.new("RGB", (size * scale, size * scale), scene.background)
        draw = ImageDraw.Draw(canvas)
        if scene.texture is not None:
            _draw_texture(draw, scene, size * scale)
        for obj in scene.objects:
            _draw_object(draw, obj, scale)
        image = canvas.reduce(scale)
        if self.config.noise > 0:
            noise_rng = np.random.default_rng(scene.seed)
            pixels = np.asarray(image, dtype=np.float32)
            pixels = pixels + noise_rng.normal(0.0, self.config.noise * 255.0, pixels.shape)
            image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
        return image

    def image_text_set(self, split: str, n: int) -> ImageTextSet:
        """The first ``n`` scenes of ``split`` as an :class:`ImageTextSet` that renders images on demand."""
        records = []
        for index in range(n):
            scene = self.scene(split, index)
            records.append(ImageTextRecord(scene.key, scene.captions, scene.group, scene.label))
        return ImageTextSet(f"shapes-{split}", records, load_image=self._load_record, class_names=self.class_names)

    def vqa_items(self, split: str, n: int) -> list[VQAItem]:
        """Every question about the first ``n`` scenes of ``split`` (the images of ``image_text_set(split, n)``)."""
        items = []
        for index in range(n):
            scene = self.scene(split, index)
            for q in scene.questions:
                items.append(VQAItem(scene.key, q.question, q.answer, q.question_type, q.answer_type))
        return items

    def _load_record(self, record: ImageTextRecord) -> Image.Image:
        # The key names the scene, so subsets and reordered records still render the right image.
        _, split, index = record.key.split("/")
        return self.render(self.scene(split, int(index)))

    def _scene_pairs(self, rng: random.Random, split: str) -> list[tuple[str, str]]:
        """Distinct (colour, shape) pairs for one scene, largest object first."""
        weights = list(range(self.config.min_objects, self.config.max_objects + 1))
        # Weighting by count makes single-object scenes rarer: they have few distinct contents.
        count = rng.choices(weights, weights=weights)[0]
        if split != "test_compositional":
            return rng.sample(self._seen_pairs, count)
        held = rng.choice(sorted(self.holdout_pairs))
        others = rng.sample([p for p in self._every_pair if p != held], count - 1)
        others.insert(rng.randrange(count), held)
        return others


def _check_split(split: str, holdout: frozenset[tuple[str, str]]) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "test_compositional" and not holdout:
        raise ValueError("split 'test_compositional' needs held-out pairs; set holdout_fraction > 0")


def _holdout_pairs(config: ShapesConfig) -> frozenset[tuple[str, str]]:
    """A seeded set of (colour, shape) pairs, spread so every colour and shape keeps most of its pairs seen."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    wanted = round(config.holdout_fraction * len(pairs))
    per_colour = math.ceil(wanted / len(COLOURS))
    per_shape = math.ceil(wanted / len(SHAPES))
    random.Random(f"polymodal-shapes-holdout/{config.seed}").shuffle(pairs)
    chosen: list[tuple[str, str]] = []
    for colour, shape in pairs:
        if len(chosen) == wanted:
            break
        if sum(c == colour for c, _ in chosen) < per_colour and sum(s == shape for _, s in chosen) < per_shape:
            chosen.append((colour, shape))
    return frozenset(chosen)


def _place_objects(rng: random.Random, pairs: list[tuple[str, str]], size: int) -> tuple[ShapeObject, ...]:
    """Give each pair a size, radius, colour jitter and a position that overlaps no other object.

    The first pair is the scene's largest object (its shape is the class label); its radius sits above the
    range of every other object, so "the largest object" is never ambiguous.
    """
    main_large = rng.random() < 0.7
    looks = []
    for i, (colour, shape) in enumerate(pairs):
        if i == 0:
            large, fraction = main_large, rng.uniform(0.16, 0.18) if main_large else rng.uniform(0.09, 0.10)
        else:
            large = main_large and rng.random() < 0.4
            fraction = rng.uniform(0.125, 0.14) if large else rng.uniform(0.065, 0.08)
        # A little colour jitter, so a colour name covers a range of pixel values.
        red, green, blue = (min(255, max(0, v + rng.randint(-12, 12))) for v in COLOURS[colour])
        rotation = 0.0 if shape == "circle" else rng.uniform(-15.0, 15.0)
        looks.append((shape, colour, "large" if large else "small", fraction * size, rotation, (red, green, blue)))
    gap = 0.04 * size  # clear space keeps every pair of centres > 0.1 * size apart along some axis
    # About one 4-object layout in 2,000 boxes itself in; a fresh layout fits, and keeps every pair present
    # (test_compositional relies on its held-out pair).
    for _ in range(20):
        placed: list[ShapeObject] = []
        for shape, colour, word, radius, rotation, rgb in looks:
            for _ in range(100):
                x, y = rng.uniform(radius + 1, size - radius - 1), rng.uniform(radius + 1, size - radius - 1)
                if all(math.hypot(x - o.x, y - o.y) >= radius + o.radius + gap for o in placed):
                    placed.append(ShapeObject(shape, colour, word, x, y, radius, rotation, rgb))
                    break
            else:
                break
        if len(placed) == len(looks):
            break
    return tuple(placed)


def _polygon(obj: ShapeObject, scale: int) -> list[tuple[float, float]]:
    """The outline of a non-circle shape, rotated by ``obj.rotation`` and placed on the ``scale``-times canvas."""
    cx, cy, r = obj.x * scale, obj.y * scale, obj.radius * scale
    cos, sin = math.cos(math.radians(obj.rotation)), math.sin(math.radians(obj.rotation))
    return [(cx + r * (px * cos - py * sin), cy + r * (px * sin + py * cos)) for px, py in _OUTLINES[obj.shape]]


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, scale: int) -> None:
    if obj.shape == "circle":
        cx, cy, r = obj.x * scale, obj.y * scale, obj.radius * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=obj.rgb)
    else:
        draw.polygon(_polygon(obj, scale), fill=obj.rgb)


def _draw_texture(draw: ImageDraw.ImageDraw, scene: Scene, side: int) -> None:
    """Faint stripes or dots on the background: clutter that must not change what the scene shows."""
    rng = random.Random(scene.seed)
    tint = tuple(min(255, v + 28) for v in scene.background)
    spacing = side * rng.uniform(0.06, 0.12)
    if scene.texture == "stripes":
        slope = rng.uniform(-1.0, 1.0)  # |slope| <= 1 so x-offsets between lines equal ``spacing``
        offset = -side * 2.0
        while offset < side * 2.0:
            draw.line((offset, 0, offset + slope * side, side), fill=tint, width=max(1, round(spacing / 3)))
            offset += spacing
    else:
        dot = spacing / 5
        for gy in np.arange(rng.uniform(0, spacing), side, spacing):
            for gx in np.arange(rng.uniform(0, spacing), side, spacing):
                draw.ellipse((gx - dot, gy - dot, gx + dot, gy + dot), fill=tint)
