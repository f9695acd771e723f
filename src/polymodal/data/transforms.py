"""Image preprocessing: PIL image → normalised float tensor ``(3, H, W)``."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torchvision.transforms import v2

# CLIP's statistics; pretrained towers bring their own (EfficientNet-Lite: 0.5/0.5).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImagePreprocess:
    """What an image tower expects: square side in pixels and per-channel mean/std.

    Evaluation resizes the shorter side to ``resize_size`` (default: ``image_size``) with ``interpolation``,
    then centre-crops ``image_size``; with ``resize_mode="squash"`` it resizes the whole image to
    ``image_size`` x ``image_size`` instead, aspect ratio not kept and nothing cropped (SigLIP's processor).
    ``crop_offset`` places the crop when the margin is odd: ``round`` as torchvision's ``CenterCrop`` (OpenAI's
    CLIP, open_clip), ``floor`` as HF's image processors (one pixel up or left of it).
    Imported checkpoints set all of them from their own processor config (HF's ``CLIPImageProcessor``:
    bicubic, shortest edge, crop size, mean, std).
    """

    image_size: int
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD
    resize_size: int | None = None
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    resize_mode: Literal["shortest", "squash"] = "shortest"
    crop_offset: Literal["round", "floor"] = "round"


class FlooredCenterCrop:
    """A square centre crop whose offset is rounded down (HF's image processors), where torchvision's
    ``CenterCrop`` rounds it."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        return v2.functional.crop(image, (height - self.size) // 2, (width - self.size) // 2, self.size, self.size)


def image_transform(preprocess: ImagePreprocess, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """Resize + centre-crop for evaluation; a mild random resized crop for training.

    No horizontal flip: captions say "left of" / "right of", and a flip would make them false.
    """
    size = preprocess.image_size
    interpolation = v2.InterpolationMode(preprocess.interpolation)
    if train:
        geometry = [v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.9, 1.1), interpolation=interpolation,
                                         antialias=True)]
    elif preprocess.resize_mode == "squash":
        geometry = [v2.Resize((size, size), interpolation=interpolation, antialias=True)]
    else:
        crop = v2.CenterCrop(size) if preprocess.crop_offset == "round" else FlooredCenterCrop(size)
        geometry = [v2.Resize(preprocess.resize_size or size, interpolation=interpolation, antialias=True), crop]
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(preprocess.mean), std=list(preprocess.std)),
        ]
    )
