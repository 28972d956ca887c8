"""Bytes to a clean RGB image, or a short reason why not.

Real collections hold empty files, truncated downloads, text files with image names,
decompression bombs, palette and 16-bit PNGs, CMYK JPEGs and phone photos rotated by EXIF.
Every one of them either becomes an upright RGB image or raises `ImageDecodeError` with a
reason that the embed summary groups by.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipatlas.errors import UserError

# 8K x 8K: larger than any real photo a CLIP encoder downsizes to 224 px, far below a bomb.
DEFAULT_MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)


class ImageDecodeError(UserError):
    """An input that cannot become an image; `reason` is short and groups well in summaries."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` (any format Pillow reads, decided by content) to an upright RGB image."""
    if not data:
        raise ImageDecodeError("empty file")
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        # Pillow's own bomb check (89M pixels) would override a larger cap asked for explicitly;
        # the check below enforces `max_pixels` before any pixel is decoded.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError("too many pixels", f"{width}x{height} exceeds the cap of {max_pixels:,}")
            image.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too many pixels", str(exc)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError("truncated or corrupt image", str(exc)) from None
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # a broken EXIF block should not cost us a good image
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white and high bit depths scaled (not clipped)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_gray(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _high_depth_gray(image: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values at 255, turning most of the image white.
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - low) / (high - low or 1.0) * 255.0
    else:
        scaled = array / 257.0
    gray = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")
