"""Cityscapes label space shared by every dataset: 19 trainIds, 255 = ignore."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# "thing" classes (DAFormer's feature-distance default): pole .. bicycle minus vegetation/terrain/sky.
THING_CLASSES: tuple[int, ...] = (5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18)

ID2LABEL: dict[int, str] = dict(enumerate(CITYSCAPES_CLASSES))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}


def colorize(label: np.ndarray) -> np.ndarray:
    """Map a trainId map (H, W) to an RGB image (H, W, 3) with the Cityscapes palette; ignore is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)
    return lut[np.asarray(label, dtype=np.uint8)]


def invalid_label_values(label: np.ndarray) -> np.ndarray:
    """Sorted values in `label` that are neither a trainId (0..18) nor the ignore index (255)."""
    values = np.unique(np.asarray(label))
    return values[(values >= NUM_CLASSES) & (values != IGNORE_INDEX)]
