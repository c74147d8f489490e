"""Decoding images from disk into RGB PIL images, or a reason why not.

Every failure becomes a short reason string stored with the row; nothing is replaced silently.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Refuse images whose pixel count could exhaust memory (a decompression bomb); 8k x 8k is plenty for a photo.
MAX_PIXELS = 64_000_000


def read_bytes(path: str) -> tuple[bytes | None, str]:
    """The file's bytes, or (None, reason)."""
    if not path:
        return None, "no image path"
    try:
        # Checked before opening: opening a FIFO or a device blocks or never ends.
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            return None, "image path is a directory"
        if not stat.S_ISREG(mode):
            return None, "image path is not a regular file"
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None, "image file not found"
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

    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Another library in the process may have told PIL to pad truncated files with grey silently.
            ImageFile.LOAD_TRUNCATED_IMAGES = False
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
    except MemoryError:
        return None, "image too large to decode (out of memory)"
    except Exception as exc:  # noqa: BLE001 - PIL plugins raise many types (struct.error, KeyError, ...)
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return None, f"image corrupt: {text}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


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
