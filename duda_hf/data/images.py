"""Images and labels as arrays, for training pairs and evaluation alike.

Sizes are `(height, width)`, as numpy and torch order them; PIL takes `(width, height)`, converted at each PIL call.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb_array(image: Image.Image, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 `(H, W, 3)`, resized bilinearly to `size_hw = (height, width)` when given."""
    image = image.convert("RGB")
    if size_hw and image.size != (size_hw[1], size_hw[0]):
        image = image.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    return np.asarray(image)


def to_label_array(label: Image.Image, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Label uint8 `(H, W)`, resized with nearest neighbour to `size_hw = (height, width)` when given."""
    if size_hw and label.size != (size_hw[1], size_hw[0]):
        label = label.resize((size_hw[1], size_hw[0]), Image.NEAREST)
    return np.asarray(label, dtype=np.uint8)


def pad_to(array: np.ndarray, height: int, width: int, value: int) -> np.ndarray:
    """Pad the bottom/right of `(H, W, ...)` up to at least `(height, width)` with `value`."""
    pad_h, pad_w = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if not (pad_h or pad_w):
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, constant_values=value)
