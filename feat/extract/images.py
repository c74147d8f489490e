"""Decoding images from disk into RGB PIL images, or a reason why not.

Every failure becomes a short reason string stored with the row; nothing is replaced silently.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
from PIL import Image, ImageOps

# Refuse images whose pixel count could exhaust memory (a decompression bomb); 8k x 8k is plenty for a photo.
MAX_PIXELS = 64_000_000


def read_bytes(path: str) -> tuple[bytes | None, str]:
    """The file's bytes, or (None, reason)."""
    if not path:
        return None, "no image path"
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None, "image file not found"
    except IsADirectoryError:
        return None, "image path is a directory"
    except OSError as exc:
        return None, f"image unreadable: {exc.strerror or exc}"
    if not data:
        return None, "image file is empty (0 bytes)"
    return data, ""


def image_digest(path: str) -> str:
    """sha256 of the image bytes, or a marker of why there are none (so a fixed file is re-encoded)."""
    data, reason = read_bytes(path)
    return hashlib.sha256(data).hexdigest() if data is not None else f"unreadable:{reason}"


def decode_image(path: str) -> tuple[Image.Image | None, str]:
    """Open, fully decode and normalise an image to RGB: (image, "") or (None, reason)."""
    data, reason = read_bytes(path)
    if data is None:
        return None, reason
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                return None, f"image too large ({image.width}x{image.height} pixels; decompression bomb guard)"
            image.seek(0)  # animated GIF/PNG/WebP: the first frame
            image.load()  # a truncated file fails here, not later in a worker
            image = ImageOps.exif_transpose(image)
            return to_rgb(image), ""
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "image too large (decompression bomb guard)"
    except Image.UnidentifiedImageError:
        return None, "not an image (unrecognised format)"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return None, f"image corrupt: {str(exc).splitlines()[0][:120]}"


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every mode: alpha over white, 16-bit scaled (PIL would clip it), CMYK/palette/grey converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")
