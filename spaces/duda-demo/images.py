"""The demo Space's images in and out, without Gradio or a model: an upload read as upright RGB, the size caps, and
the class map resized and measured for the page.

Needs only pillow and numpy (a Space installs requirements.txt, not duda_hf). The model side is segmenter.py; the
page is app.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 2048  # longest side the model output is computed at; larger images are downscaled, the overlay is not
MAX_PIXELS = 50_000_000  # larger uploads are refused: a free CPU Space has 16 GB and the overlay keeps the original size

NO_IMAGE = "No image: upload a street photo (PNG, JPEG, WebP, ...) or click one of the examples, then press Segment."


class InputError(ValueError):
    """An upload the demo cannot segment; the message is shown to the user as is."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency over white, 16-bit and float greys scaled to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = np.asarray(image, dtype=np.float64)
        if grey.max(initial=0) > 255:  # 16-bit range
            grey = grey * (255.0 / 65535.0)
        elif image.mode == "F" and grey.max(initial=0) <= 1.0:  # float range [0, 1]
            grey = grey * 255.0
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike | None) -> Image.Image:
    """Open an upload as an upright RGB image (EXIF orientation applied).

    Raises:
        InputError: no file, not an image, a damaged image, or more than MAX_PIXELS pixels.
    """
    if path is None or str(path).strip() == "":
        raise InputError(NO_IMAGE)
    name = Path(path).name
    try:
        with Image.open(path) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise InputError(too_large_message(opened.width, opened.height))
            try:
                image = ImageOps.exif_transpose(opened)
            except Exception:  # a broken EXIF block should not lose the picture: keep it unrotated
                image = opened.copy()
            image.load()
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(too_large_message(None, None)) from None
    except (UnidentifiedImageError, FileNotFoundError, IsADirectoryError):
        raise InputError(f"'{name}' is not an image this demo can read. Upload a PNG, JPEG, WebP, BMP or TIFF file.") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise InputError(f"'{name}' looks like an image but could not be decoded ({err}). Try re-saving it as PNG or JPEG.") from None
    try:
        return _to_rgb(image)
    except (OSError, ValueError) as err:
        raise InputError(f"'{name}' uses the colour mode {image.mode}, which cannot be converted to RGB ({err}).") from None


def too_large_message(width: int | None, height: int | None) -> str:
    """What an upload above MAX_PIXELS is told; its size when known."""
    size = f" ({width}x{height} = {width * height / 1e6:.0f} megapixels)" if width else ""
    return f"The image is too large{size}: this demo accepts up to {MAX_PIXELS / 1e6:.0f} megapixels. Downscale it and try again."


def downscale_to_cap(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """`image` with its longest side at most `max_side` (aspect ratio kept); small images are returned as they are."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def resize_nearest(label_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a class map `(h, w)` to `(height, width)`; classes are never blended."""
    rows = np.minimum((np.arange(height) + 0.5) * label_map.shape[0] / height, label_map.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * label_map.shape[1] / width, label_map.shape[1] - 1).astype(np.intp)
    return label_map[rows[:, None], cols[None, :]]


def class_shares(label_map: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """Share of pixels per class present in `label_map`, largest first (sums to 1)."""
    counts = np.bincount(label_map.ravel(), minlength=len(class_names))[: len(class_names)]
    order = np.argsort(-counts, kind="stable")
    return {class_names[i]: float(counts[i] / label_map.size) for i in order if counts[i] > 0}
