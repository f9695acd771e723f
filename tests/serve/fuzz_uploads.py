"""Good and bad image uploads, made in memory: shared by the upload unit tests and the HTTP fuzz tests (imported
as ``tests.serve.fuzz_uploads``; not a test module)."""
from __future__ import annotations

import functools
import io
import zipfile
import zlib

import numpy as np
from PIL import Image

# A small limit keeps "too large" uploads small too.
MAX_BYTES = 256 * 1024
MAX_PIXELS = 1_000_000


def picture(size: int = 48, seed: int = 0) -> Image.Image:
    """A colourful RGB image with structure (not a flat colour, so lossy formats keep it recognisable)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)
    pixels[rng.integers(0, size, 20), rng.integers(0, size, 20)] = 255
    return Image.fromarray(pixels, "RGB")


def encoded(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nMain-Class: Evil\n")
    return buffer.getvalue()


@functools.cache
def bomb_png(side: int) -> bytes:
    """A real PNG of side x side black 1-bit pixels: a few KB on disk, ``side**2`` pixels (bytes) decoded."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * side, 1))
            + chunk(b"IEND", b""))


@functools.cache
def good_uploads() -> dict[str, bytes]:
    image = picture()
    return {"png": encoded(image, "PNG"), "jpeg": encoded(image, "JPEG", quality=95),
            "gif": encoded(image.quantize(64), "GIF"), "webp": encoded(image, "WEBP", lossless=True)}


@functools.cache
def bad_uploads() -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, the status the service must answer, the error code)."""
    good = good_uploads()
    html = b"<html><script>alert(document.cookie)</script></html>"
    return {
        "zero bytes": (b"", 400, "empty"),
        "truncated png": (good["png"][: len(good["png"]) // 2], 400, "truncated"),
        "truncated jpeg": (good["jpeg"][: len(good["jpeg"]) - 300], 400, "truncated"),
        "truncated gif": (good["gif"][:-40], 400, "truncated"),
        "truncated webp": (good["webp"][:-30], 400, "truncated"),
        "header only png": (good["png"][:40], 400, "truncated"),
        "huge file": (good["png"] + b"\0" * MAX_BYTES, 413, "too_large"),
        "decompression bomb": (bomb_png(8_000), 413, "too_many_pixels"),
        "text file": (b"just some words, no image at all\n", 415, "unsupported_type"),
        "html page": (html, 415, "unsupported_type"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 415, "unsupported_type"),
        "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", 415, "unsupported_type"),
        "zip archive": (zip_archive(), 415, "unsupported_type"),
        "bmp image": (encoded(picture(), "BMP"), 415, "unsupported_type"),
        "polyglot png + zip": (good["png"] + zip_archive(), 400, "trailing_data"),
        "polyglot gif + jar (GIFAR)": (good["gif"] + zip_archive(), 400, "truncated"),
        "polyglot jpeg + html": (good["jpeg"] + html, 400, "trailing_data"),
        "polyglot webp + html": (good["webp"] + html, 400, "trailing_data"),
        "png signature, garbage chunks": (good["png"][:8] + b"\x00\x00\x00\x0dIHDR" + b"\xff" * 17
                                          + good["png"][-12:], 400, "undecodable"),
    }
