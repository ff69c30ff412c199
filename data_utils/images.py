"""Image bytes <-> base64 <-> PIL, with the checks the readers need.

Decoding is strict: truncated data, bytes that are not an image, and images over the pixel limit
(decompression bombs) raise ``DataError`` instead of being patched up silently (the official code
sets ``LOAD_TRUNCATED_IMAGES``; we report the row instead).
"""
from __future__ import annotations

import base64
import binascii
import io
from typing import Optional

from PIL import Image

from ofa.data_utils.errors import DataError

MAX_PIXELS = 89_478_485  # PIL's own default bomb threshold (about 0.25 GB of RGB)


def encode_image(image: Image.Image, format: str = "PNG", quality: int = 90) -> str:
    """PIL image -> base64 string of its encoded bytes (the official TSV image column)."""
    buf = io.BytesIO()
    kwargs = {"quality": quality} if format.upper() in ("JPEG", "JPG") else {}
    image.save(buf, format=format, **kwargs)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_file(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def b64_to_bytes(data: str) -> bytes:
    """Decode base64 (URL-safe or standard, as the official reader accepts both)."""
    text = data.strip()
    if not text:
        raise DataError("empty image field", field="image")
    try:
        return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise DataError(f"image is not valid base64 ({e})", field="image") from None


def decode_bytes(raw: bytes, max_pixels: Optional[int] = MAX_PIXELS) -> Image.Image:
    """Encoded image bytes -> RGB PIL image; raises ``DataError`` for undecodable or oversized images."""
    if not raw:
        raise DataError("empty image bytes", field="image")
    try:
        img = Image.open(io.BytesIO(raw))
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise DataError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} (decompression bomb?)",
                            field="image")
        img.load()  # truncated files fail here
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"image exceeds PIL's pixel limit (decompression bomb?): {e}", field="image") from None
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise DataError(f"image does not decode ({type(e).__name__}: {e})", field="image") from None
    return img.convert("RGB")


def decode_b64(data: str, max_pixels: Optional[int] = MAX_PIXELS) -> Image.Image:
    return decode_bytes(b64_to_bytes(data), max_pixels)
