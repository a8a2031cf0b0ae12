"""Native-format dataset folders built by the tests (docs/datasets.md layouts), with the trainIds they must give."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Cityscapes label id -> trainId, row by row from docs/datasets.md, "Cityscapes" (kept apart from the library's table on purpose).
CITYSCAPES_TABLE = {
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
}
SYNTHIA_TABLE = {
    1: 10,
    2: 2,
    3: 0,
    4: 1,
    5: 4,
    6: 8,
    7: 5,
    8: 13,
    9: 7,
    10: 11,
    11: 18,
    12: 17,
    15: 6,
    16: 9,
    17: 12,
    18: 14,
    19: 15,
    20: 16,
    21: 3,
}


def expected_trainids(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """trainIds by a plain per-pixel dictionary lookup (independent of the library's lookup tables)."""
    return np.vectorize(lambda v: table.get(int(v), 255), otypes=[np.uint8])(raw)


def write_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (filter 0, big-endian samples), channel 0 first in the file."""
    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def save_palette_label(path: Path, ids: np.ndarray, seed: int = 0) -> None:
    """A palette (mode P) PNG whose indices are `ids`. A full 256-colour palette stops Pillow from re-indexing on save."""
    label = Image.new("P", (ids.shape[1], ids.shape[0]))
    label.putdata(ids.ravel().tolist())
    label.putpalette(np.random.default_rng(seed).integers(0, 256, 256 * 3).tolist())  # colours unrelated to the ids
    label.save(path)


def _image(rng, height, width) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_gta5(root: Path, count: int = 3, height: int = 48, width: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """GTA5 layout with palette labels whose indices are Cityscapes label ids (including ignored ones); returns raw ids."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    raw_ids = {}
    for index in range(1, count + 1):
        name = f"{index:05d}.png"
        _image(rng, height, width).save(root / "images" / name)
        ids = rng.integers(0, 34, (height, width), dtype=np.uint8)
        save_palette_label(root / "labels" / name, ids, seed)
        raw_ids[name] = ids
    return raw_ids


def make_synthia(root: Path, count: int = 2, height: int = 38, width: int = 64, seed: int = 1) -> dict[str, np.ndarray]:
    """SYNTHIA layout: 16-bit RGB labels, class id (0..22) in the first channel, an instance id in the second."""
    rng = np.random.default_rng(seed)
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    raw_ids = {}
    for index in range(count):
        name = f"{index + 268:07d}.png"
        _image(rng, height, width).save(root / "RGB" / name)
        ids = rng.integers(0, 23, (height, width)).astype(np.uint16)
        instance = rng.integers(0, 3000, (height, width)).astype(np.uint16)
        write_png16_rgb(root / "GT" / "LABELS" / name, np.stack([ids, instance, np.zeros_like(ids)], axis=-1))
        raw_ids[name] = ids
    return raw_ids


def make_trainid_layout(
    root: Path,
    format: str,
    conditions: tuple[str, ...],
    split: str,
    per_condition: int = 2,
    height: int = 27,
    width: int = 48,
    seed: int = 2,
) -> dict[str, np.ndarray]:
    """ACDC (`<dir>/<condition>/<split>/`) or Dark Zurich (`<dir>/<split>/<condition>/`) with trainId labels."""
    rng = np.random.default_rng(seed)
    labels = {}
    for condition in conditions:
        relative = Path(condition, split) if format == "acdc" else Path(split, condition)
        sequence = f"GP0{len(labels):05d}"
        for frame in range(per_condition):
            stem = f"{sequence}_frame_{frame:06d}"
            image_dir = root / "rgb_anon" / relative / sequence
            label_dir = root / "gt" / relative / sequence
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            _image(rng, height, width).save(image_dir / f"{stem}_rgb_anon.png")
            train_ids = rng.choice(np.r_[np.arange(19), 255], (height, width)).astype(np.uint8)
            Image.fromarray(train_ids).save(label_dir / f"{stem}_gt_labelTrainIds.png")
            labels[f"{condition}/{stem}"] = train_ids
    return labels


def make_cityscapes(
    root: Path,
    split: str = "train",
    cities: tuple[str, ...] = ("aachen",),
    per_city: int = 2,
    height: int = 64,
    width: int = 128,
    seed: int = 3,
) -> dict[str, np.ndarray]:
    """Cityscapes layout with official `_gtFine_labelIds.png` only; returns the raw label ids."""
    rng = np.random.default_rng(seed)
    raw_ids = {}
    for city in cities:
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for frame in range(per_city):
            stem = f"{city}_000000_{frame:06d}"
            _image(rng, height, width).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            ids = rng.integers(0, 34, (height, width), dtype=np.uint8)
            # road and car blocks so rare class sampling has classes with enough pixels
            ids[height // 2 :, :] = 7
            ids[: height // 4, : width // 2] = 26
            Image.fromarray(ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            raw_ids[stem] = ids
    return raw_ids
