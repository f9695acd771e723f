"""Uploaded images, checked before they are trusted: size in bytes, type by content, structure, pixel count.

The checks run cheapest first, and nothing is decoded until the header says the image is within limits:

1. the request body is capped as it arrives (:class:`BodySizeLimit`), and each file is read in chunks up to
   ``max_bytes`` (:func:`read_upload`), so an oversized upload is refused without being held in memory;
2. the type comes from the first bytes (PNG, JPEG, GIF, WebP), never from the file name or the client's
   content type, and Pillow is told to open that format only;
3. the file must end where the image ends: bytes after PNG's ``IEND``, JPEG's end-of-image marker, GIF's trailer
   or past WebP's RIFF length (a ZIP, HTML page or script appended to an image: a polyglot) are refused, as is a
   file cut short;
4. width x height is read from the header and compared with ``max_pixels`` before any pixel is decoded
   (a decompression bomb is a small file that claims a huge canvas).

The original bytes are never stored or sent back: what the service keeps of an upload is re-encoded from pixels.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from fastapi import UploadFile
from PIL import Image, ImageOps
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polymodal.serve.errors import ServiceError, error_response

__all__ = ["BodySizeLimit", "UploadLimits", "decode_image", "read_upload", "sniff_image_type"]

_CHUNK = 64 * 1024
# Big photos are decoded at a reduced scale (JPEG's DCT scaling) no smaller than this: every model and thumbnail
# here reads a few hundred pixels at most, and a 40-megapixel decode would cost ~100x more.
_DRAFT_SIDE = 1024


@dataclass(frozen=True)
class UploadLimits:
    """How big one uploaded image may be.

    Attributes:
        max_bytes: size of one file.
        max_pixels: width x height, checked from the header before decoding.
    """

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"upload limits must be positive, got {self.max_bytes} bytes, {self.max_pixels} pixels")


def sniff_image_type(data: bytes) -> str | None:
    """The Pillow format name the first bytes announce (``PNG``, ``JPEG``, ``GIF``, ``WEBP``), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _png_end(data: bytes) -> int | None:
    """Offset just past the ``IEND`` chunk, or None when the chunk list is cut short."""
    position = 8
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        position += 12 + length
        if kind == b"IEND":
            return position if position <= len(data) else None
    return None


def _image_end(data: bytes, kind: str) -> int | None:
    """Where the image of format ``kind`` ends in ``data`` (None: it does not end, the file is truncated)."""
    if kind == "PNG":
        return _png_end(data)
    if kind == "JPEG":
        # The last end-of-image marker: an embedded EXIF thumbnail has its own, earlier one. Zero padding
        # after it is common and harmless.
        end = data.rstrip(b"\x00").rfind(b"\xff\xd9")
        return None if end < 2 else end + 2
    if kind == "GIF":
        # GIF blocks carry no overall length and ";" may occur inside them: the file must end with the trailer.
        return len(data) if data.endswith(b";") else None
    riff_size = int.from_bytes(data[4:8], "little")
    end = 8 + riff_size + (riff_size & 1)  # RIFF pads an odd-sized chunk with one byte
    return end if end <= len(data) else None


def _check_structure(data: bytes, kind: str, name: str) -> None:
    end = _image_end(data, kind)
    if end is None:
        raise ServiceError(400, "truncated", f"{name}: the {kind} file is cut short or damaged (its end marker is "
                                             "missing); upload the whole file")
    trailing = data[end:].rstrip(b"\x00") if kind == "JPEG" else data[end:]
    if trailing:
        raise ServiceError(400, "trailing_data", f"{name}: {len(trailing)} bytes follow the end of the {kind} image "
                                                 "(another file appended to it?); upload a plain image")


def decode_image(data: bytes, limits: UploadLimits, name: str = "image") -> Image.Image:
    """Check an uploaded file and decode it to RGB (transparency laid on white, EXIF rotation applied).

    Raises:
        ServiceError: 400 empty, truncated, trailing data or undecodable; 413 over ``limits``; 415 not a PNG, JPEG,
            GIF or WebP image. ``name`` (the form field) starts every message.
    """
    if not data:
        raise ServiceError(400, "empty", f"{name}: the upload is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ServiceError(413, "too_large", f"{name}: {len(data)} bytes exceed the limit of {limits.max_bytes}")
    kind = sniff_image_type(data)
    if kind is None:
        raise ServiceError(415, "unsupported_type", f"{name}: not a PNG, JPEG, GIF or WebP image (judged by its "
                                                    "content, not its name)")
    _check_structure(data, kind, name)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice it; max_pixels below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            pixels = image.width * image.height
            if pixels > limits.max_pixels:
                raise ServiceError(413, "too_many_pixels", f"{name}: {image.width}x{image.height} pixels exceed the "
                                                           f"limit of {limits.max_pixels} (a decompression bomb?)")
            if kind == "JPEG":
                image.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except ServiceError:
        raise
    except Image.DecompressionBombError:
        # Pillow refuses, while reading the header, an image of over twice its own limit (2 x 89 M pixels).
        raise ServiceError(413, "too_many_pixels", f"{name}: refused as a decompression bomb (more than "
                                                   f"{limits.max_pixels} pixels)") from None
    # Pillow reports undecodable data through many exception types (OSError, SyntaxError, struct.error, ...).
    except Exception as error:  # noqa: BLE001
        raise ServiceError(400, "undecodable",
                           f"{name}: not a readable {kind} image ({type(error).__name__})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels; transparent parts become white (as the packaged data sets draw them), not black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, "white")
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


async def read_upload(upload: UploadFile, limits: UploadLimits, name: str) -> bytes:
    """The file's bytes, read in chunks and refused (413) as soon as they pass ``limits.max_bytes``."""
    chunks, size = [], 0
    while chunk := await upload.read(_CHUNK):
        size += len(chunk)
        if size > limits.max_bytes:
            raise ServiceError(413, "too_large", f"{name}: more than {limits.max_bytes} bytes (the limit)")
        chunks.append(chunk)
    return b"".join(chunks)


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` while a body streams in; an HTTPException, so the form parser lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


class BodySizeLimit:
    """ASGI middleware refusing (413) a request body larger than ``max_bytes`` (``per_path`` sets other limits for
    some paths): at once when ``Content-Length`` says so, else as soon as the streamed bytes pass it. Multipart
    parsing spools files to disk, so without this a client could fill the disk before any handler runs."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(413, "too_large", f"the request body of {declared} bytes exceeds the limit of "
                                                        f"{limit}", {"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)
