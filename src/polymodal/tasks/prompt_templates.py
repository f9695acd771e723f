"""Prompt templates for zero-shot classification, by name.

``imagenet`` is the CLIP paper's ensemble of 80 templates for ImageNet (Radford et al. 2021, the notebook
"Prompt_Engineering_for_ImageNet"); ``default`` is polymodal's short ensemble for small generated sets; ``photo``
is the single hand-written prompt most papers use as the no-ensemble baseline; ``bridge`` is the short ensemble
the ConSE bridge embedded the 1,000 ImageNet class names with before the 80 were measured against it
(``benchmarks/bridge_templates.py``).
"""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IMAGENET_TEMPLATES", "TEMPLATE_SETS", "resolve_templates"]

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet": IMAGENET_TEMPLATES,
    "default": ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.", "a {}."),
    "photo": ("a photo of a {}.",),
    "bridge": ("a photo of a {}.", "a close-up photo of a {}.", "a photo of the {}.", "an image showing a {}."),
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template set by name (``imagenet``, ``default``, ``photo``) or a list of templates, each checked to hold
    one ``{}`` for the class name."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; choose one of {sorted(TEMPLATE_SETS)} or give "
                             "templates with '{}' for the class name")
        return TEMPLATE_SETS[templates]
    chosen = tuple(templates)
    if not chosen:
        raise ValueError("no prompt templates given")
    for template in chosen:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} needs exactly one '{{}}' for the class name")
    return chosen
