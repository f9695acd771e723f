"""Upload checks alone: every good image type decodes to Pillow's own pixels; every bad class is refused with
its status and code before (or instead of) decoding."""
import time

import numpy as np
import pytest
from PIL import Image

from polymodal.serve.errors import ServiceError
from polymodal.serve.uploads import UploadLimits, decode_image, sniff_image_type
from tests.serve.fuzz_uploads import (
    MAX_BYTES,
    MAX_PIXELS,
    bad_uploads,
    bomb_png,
    encoded,
    good_uploads,
    picture,
)

LIMITS = UploadLimits(max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif", "webp"])
def test_each_accepted_type_decodes_to_what_pillow_decodes(kind):
    data = good_uploads()[kind]
    decoded = decode_image(data, LIMITS)
    import io

    with Image.open(io.BytesIO(data)) as reference:
        expected = np.asarray(reference.convert("RGB"))
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), expected)


@pytest.mark.parametrize("name", list(bad_uploads()))
def test_every_bad_upload_class_is_refused_with_its_status(name):
    data, status, code = bad_uploads()[name]
    with pytest.raises(ServiceError) as refused:
        decode_image(data, LIMITS, "image")
    assert (refused.value.status, refused.value.code) == (status, code), refused.value.detail
    assert refused.value.detail.startswith("image: ")


@pytest.mark.parametrize(("side", "message"), [(8_000, "8000x8000 pixels exceed the limit of 1000000"),
                                               (15_000, "refused as a decompression bomb")])
def test_a_bomb_is_refused_from_its_header_without_decoding(side, message):
    """Over Pillow's own hard limit (2 x 89 M pixels) Pillow refuses while reading the header; below it, the
    service's limit does, also from the header."""
    data = bomb_png(side)
    started = time.perf_counter()
    with pytest.raises(ServiceError, match=message) as refused:
        decode_image(data, LIMITS)
    assert refused.value.status == 413
    # Decoding 64 or 225 million pixels would take seconds and that many bytes; reading the header, microseconds.
    assert time.perf_counter() - started < 0.5


def test_the_type_comes_from_the_content_not_the_name():
    png = good_uploads()["png"]
    assert sniff_image_type(png) == "PNG" and sniff_image_type(b"GIF89a" + png[6:]) == "GIF"
    # A PNG's bytes under a GIF signature: Pillow is told GIF only, so it cannot fall back to the PNG decoder.
    with pytest.raises(ServiceError) as refused:
        decode_image(b"GIF89a" + png[6:] + b";", LIMITS)
    assert refused.value.status == 400


def test_transparency_becomes_white_and_exif_rotation_is_applied():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    decoded = np.asarray(decode_image(encoded(rgba, "PNG"), LIMITS))
    assert tuple(decoded[0, 0]) == (0, 0, 255) and tuple(decoded[1, 3]) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = decode_image(encoded(picture(), "JPEG", exif=exif.tobytes()), LIMITS)
    wide = decode_image(encoded(picture().resize((48, 24)), "JPEG", exif=exif.tobytes()), LIMITS)
    assert rotated.size == (48, 48) and wide.size == (24, 48)


def test_jpeg_zero_padding_after_the_end_marker_is_accepted():
    padded = good_uploads()["jpeg"] + b"\0" * 64
    assert decode_image(padded, LIMITS).size == (48, 48)


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        UploadLimits(max_bytes=0)
