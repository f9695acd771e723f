"""polymodal's image preprocessing against HF's image processors on real photos: a centre crop with an odd margin
is placed one pixel up/left by HF (``crop_offset="floor"``) and rounded by torchvision (the default)."""
import pytest
from transformers import CLIPImageProcessor

from polymodal.data.packaged import skimage_photos
from polymodal.data.transforms import ImagePreprocess, image_transform

from .helpers import MEAN, STD


@pytest.mark.parametrize("crop_offset", ["round", "floor"])
def test_centre_crop_offset_against_hf(crop_offset):
    processor = CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                   image_mean=MEAN, image_std=STD)
    transform = image_transform(ImagePreprocess(32, MEAN, STD, resize_size=36, interpolation="bicubic",
                                                crop_offset=crop_offset))
    photos = skimage_photos()
    # 660 x 550 and 328 x 400 photos: resized to 43 x 36, an odd 11-pixel margin around the 32-pixel crop.
    records = [record for record in photos.records if photos.load_image(record).size in ((550, 660), (400, 328))]
    assert len(records) == 2
    for record in records:
        image = photos.load_image(record)
        differs = (transform(image) - processor(images=image, return_tensors="pt")["pixel_values"][0]).abs().max()
        assert (differs < 1e-5) == (crop_offset == "floor"), differs
