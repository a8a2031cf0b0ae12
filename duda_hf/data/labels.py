"""Cityscapes label space shared by every dataset: 19 trainIds, 255 = ignore."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

# "thing" classes, the feature distance's default: DAFormer's `imnet_feature_dist_classes` (traffic light, traffic
# sign, person .. bicycle), https://github.com/lhoyer/DAFormer/blob/master/configs/_base_/uda/dacs_a999_fdthings.py
THING_CLASSES: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)

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


INVALID = -1  # lookup-table entry for a raw value the format cannot hold


def _lookup_table(pairs: dict[int, int], size: int, default: int = IGNORE_INDEX) -> np.ndarray:
    """int16 table raw value -> trainId over `0..size-1`; raw values not in `pairs` get `default`."""
    lut = np.full(size, default, dtype=np.int16)
    for raw, train_id in pairs.items():
        lut[raw] = train_id
    return lut


# Cityscapes label id (0..33; GTA5 palette indices use the same ids) -> trainId. docs/datasets.md, "Cityscapes".
CITYSCAPES_ID_TO_TRAINID: np.ndarray = _lookup_table(
    {
        7: 0,
        8: 1,
        11: 2,
        12: 3,
        13: 4,
        17: 5,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        31: 16,
        32: 17,
        33: 18,
    },
    34,
)

# SYNTHIA-RAND-CITYSCAPES class id (0..22) -> trainId. docs/datasets.md, "SYNTHIA" (the DAFormer/ADVENT dictionary).
SYNTHIA_ID_TO_TRAINID: np.ndarray = _lookup_table(
    {1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17, 15: 6, 16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3},
    23,
)

# trainId labels (ACDC, Dark Zurich, prepared folders): 0..18 and 255 pass unchanged, anything else is invalid.
TRAINID_IDENTITY: np.ndarray = _lookup_table({**{i: i for i in range(NUM_CLASSES)}, IGNORE_INDEX: IGNORE_INDEX}, 256, INVALID)

# SYNTHIA -> Cityscapes is also scored on 16 and 13 classes (docs/datasets.md, "SYNTHIA").
SYNTHIA_16_CLASSES: tuple[int, ...] = tuple(c for c in range(NUM_CLASSES) if c not in (9, 14, 16))
SYNTHIA_13_CLASSES: tuple[int, ...] = tuple(c for c in SYNTHIA_16_CLASSES if c not in (3, 4, 5))


def apply_lookup(raw: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map raw ids through `lut` in one gather.

    Returns:
        `(train_ids uint8 (H, W), invalid_values)`: the sorted raw values the table rejects (empty when all are valid).
    """
    raw = np.asarray(raw)
    if raw.size and int(raw.max()) >= len(lut):
        values = np.unique(raw)
        return np.zeros(raw.shape, np.uint8), values[(values >= len(lut)) | (lut[np.minimum(values, len(lut) - 1)] == INVALID)]
    mapped = lut[raw]
    if lut.min() == INVALID and (mapped == INVALID).any():
        values = np.unique(raw[mapped == INVALID])
        return np.zeros(raw.shape, np.uint8), values
    return mapped.astype(np.uint8), np.zeros(0, dtype=raw.dtype)


def colors_to_trainids(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour-coded labels `(H, W, 3)` in the Cityscapes palette -> trainIds; black is ignore.

    Returns:
        `(train_ids uint8 (H, W), invalid_colours (K, 3))` for colours outside the palette.
    """
    rgb = np.asarray(rgb, dtype=np.uint32)[..., :3]
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = np.asarray(((0, 0, 0),) + CITYSCAPES_PALETTE, dtype=np.uint32)
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(palette_codes)
    position = np.clip(np.searchsorted(palette_codes[order], codes), 0, len(order) - 1)
    found = palette_codes[order][position] == codes
    train_ids = np.asarray([IGNORE_INDEX, *range(NUM_CLASSES)], dtype=np.uint8)[order][position]
    if not found.all():
        bad = np.unique(codes[~found])
        return np.zeros(codes.shape, np.uint8), np.stack([bad >> 16, (bad >> 8) & 255, bad & 255], axis=1)
    return train_ids, np.zeros((0, 3), dtype=np.uint32)
