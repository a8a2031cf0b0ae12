"""The five native dataset layouts of docs/datasets.md read as `datasets.Dataset`s in the data contract.

A native domain is a Dataset of file paths (`image_path`, `label_path`) whose transform decodes each row
into `image` (RGB) and `label` (Cityscapes trainIds, 255 = ignore) on access: nothing is converted up
front, so a training run can start straight from the folders the datasets ship as. Every decoding
problem (unreadable file, size mismatch, a label value the format cannot hold) raises a `DomainError`
that names the file and the fix. `scripts/prepare_data.py` writes the same rows into a `datasets` folder.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from duda_hf.data.errors import DomainError
from duda_hf.data.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID, TRAINID_IDENTITY, apply_lookup
from duda_hf.data.splits import native_split

MAX_LISTED = 5


@dataclass(frozen=True, kw_only=True)
class NativeFormat:
    """How one dataset lays out its files and encodes its labels."""

    name: str
    layout: str  # shown in errors: the expected folders and file names
    image_dir: str  # folder under the root holding the images
    label_dir: str  # folder under the root holding the labels
    image_suffix: str
    label_suffixes: tuple[str, ...]  # tried in order: the first existing file is the label
    lut: np.ndarray  # raw label value -> trainId; values past its end are invalid
    daformer_size_hw: tuple[int, int]  # DAFormer's scale for this dataset, (height, width)
    split_dirs: bool = True  # images sit under <image_dir>/<split>/ (False: one flat set, GTA5/SYNTHIA)
    condition_first: bool = False  # ACDC: <dir>/<condition>/<split>/; Dark Zurich: <dir>/<split>/<condition>/
    conditions: tuple[str, ...] = ()
    default_conditions: dict[str, tuple[str, ...]] = field(default_factory=dict)


FORMATS: dict[str, NativeFormat] = {
    "cityscapes": NativeFormat(
        name="cityscapes",
        layout="leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png and gtFine/<split>/<city>/<stem>_gtFine_labelIds.png",
        image_dir="leftImg8bit",
        label_dir="gtFine",
        image_suffix="_leftImg8bit.png",
        label_suffixes=("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"),
        lut=CITYSCAPES_ID_TO_TRAINID,
        daformer_size_hw=(512, 1024),
    ),
    "gta5": NativeFormat(
        name="gta5",
        layout="images/NNNNN.png and labels/NNNNN.png (palette PNGs whose indices are Cityscapes label ids)",
        image_dir="images",
        label_dir="labels",
        image_suffix=".png",
        label_suffixes=(".png",),
        lut=CITYSCAPES_ID_TO_TRAINID,
        daformer_size_hw=(720, 1280),
        split_dirs=False,
    ),
    "synthia": NativeFormat(
        name="synthia",
        layout="RGB/NNNNNNN.png and GT/LABELS/NNNNNNN.png (16-bit PNGs, class id in the first channel)",
        image_dir="RGB",
        label_dir="GT/LABELS",
        image_suffix=".png",
        label_suffixes=(".png",),
        lut=SYNTHIA_ID_TO_TRAINID,
        daformer_size_hw=(760, 1280),
        split_dirs=False,
    ),
    "acdc": NativeFormat(
        name="acdc",
        layout="rgb_anon/<condition>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png and gt/<condition>/<split>/<seq>/..._gt_labelTrainIds.png "
        "(or DAFormer's flattened rgb_anon/<split>/ and gt/<split>/)",
        image_dir="rgb_anon",
        label_dir="gt",
        image_suffix="_rgb_anon.png",
        label_suffixes=("_gt_labelTrainIds.png",),
        lut=TRAINID_IDENTITY,
        daformer_size_hw=(540, 960),
        condition_first=True,
        conditions=("fog", "night", "rain", "snow"),
    ),
    "darkzurich": NativeFormat(
        name="darkzurich",
        layout="rgb_anon/<split>/<day|twilight|night>/<seq>/..._rgb_anon.png and gt/<split>/night/<seq>/..._gt_labelTrainIds.png",
        image_dir="rgb_anon",
        label_dir="gt",
        image_suffix="_rgb_anon.png",
        label_suffixes=("_gt_labelTrainIds.png",),
        lut=TRAINID_IDENTITY,
        daformer_size_hw=(540, 960),
        conditions=("day", "twilight", "night"),
        default_conditions={"train": ("night",), "val": ("night",)},
    ),
}


def _listing(paths: list, root: Path) -> str:
    shown = ", ".join(str(Path(p).relative_to(root)) for p in paths[:MAX_LISTED])
    return shown + (f" (and {len(paths) - MAX_LISTED} more)" if len(paths) > MAX_LISTED else "")


def _image_folders(fmt: NativeFormat, root: Path, split: str, conditions: tuple[str, ...]) -> list[Path]:
    """The folders (under `image_dir`) that hold this split's images."""
    base = root / fmt.image_dir
    if not fmt.split_dirs:
        return [base]
    if not fmt.conditions:
        return [base / split]
    if fmt.condition_first and (base / split).is_dir():  # DAFormer's flattened ACDC copy
        return [base / split]
    chosen = conditions or fmt.default_conditions.get(split) or fmt.conditions
    unknown = sorted(set(chosen) - set(fmt.conditions))
    if unknown:
        raise DomainError(f"{fmt.name}: unknown conditions {unknown}; choose from {list(fmt.conditions)}")
    folders = [base / c / split if fmt.condition_first else base / split / c for c in chosen]
    present = [folder for folder in folders if folder.is_dir()]
    if not present:
        raise DomainError(
            f"{fmt.name} folder '{root}': none of {[str(f.relative_to(root)) for f in folders]} exists. "
            f"Expected layout: {fmt.layout}. Check --*_split and --*_conditions."
        )
    return present


def list_native_files(
    root: str | os.PathLike, format: str, split: str = "train", *, conditions: tuple[str, ...] = (), with_labels: bool = True
) -> tuple[list[str], list[str | None]]:
    """Pair every image of a native folder with its label file.

    Returns:
        `(image_paths, label_paths)`, sorted by image path; label paths are None when `with_labels` is False.

    Raises:
        DomainError: unknown format, missing or misnamed folders, images without labels or labels without images.
    """
    if format not in FORMATS:
        raise DomainError(f"unknown dataset format '{format}'; choose from {sorted(FORMATS)}")
    fmt = FORMATS[format]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DomainError(f"{format} folder '{root}' does not exist. Expected layout under it: {fmt.layout}.")
    split = native_split(split)
    for needed in [fmt.image_dir] + ([fmt.label_dir] if with_labels else []):
        if not (root / needed).is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())[:10]
            raise DomainError(
                f"{format} folder '{root}' has no '{needed}/' folder (it has {found}). Expected layout: {fmt.layout}. "
                "Point the flag at the dataset's top folder."
            )
    folders = _image_folders(fmt, root, split, tuple(conditions))
    for folder in folders:
        if not folder.is_dir():
            raise DomainError(
                f"{format} folder '{root}' has no '{folder.relative_to(root)}/' (split '{split}'). Expected layout: {fmt.layout}."
            )
    images = sorted(str(p) for folder in folders for p in folder.rglob(f"*{fmt.image_suffix}"))
    if not images:
        raise DomainError(
            f"{format} folder '{root}': no '*{fmt.image_suffix}' files under {[str(f.relative_to(root)) for f in folders]}. Expected layout: {fmt.layout}."
        )
    if not with_labels:
        return images, [None] * len(images)
    labels, missing = [], []
    for image in images:
        candidates = _label_candidates(fmt, root, Path(image))
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(candidates[-1])
        labels.append(str(found) if found else None)
    if missing:
        raise DomainError(
            f"{format} folder '{root}': {len(missing)} of {len(images)} images have no label file; missing: "
            f"{_listing(missing, root)}. Restore the labels, or remove those images; an unlabelled split (e.g. Dark Zurich "
            "train) is read without labels: as the training target, or with prepare_data.py --without_labels."
        )
    expected = {Path(label) for label in labels}
    orphans = sorted(
        p for folder in folders for p in _label_folder(fmt, root, folder).rglob(f"*{fmt.label_suffixes[0]}") if p not in expected
    )
    if orphans:
        raise DomainError(
            f"{format} folder '{root}': {len(orphans)} label files have no image; e.g. {_listing(orphans, root)}. "
            "Restore the images, or remove those labels."
        )
    return images, labels


def _label_folder(fmt: NativeFormat, root: Path, image_folder: Path) -> Path:
    return root / fmt.label_dir / image_folder.relative_to(root / fmt.image_dir)


def _label_candidates(fmt: NativeFormat, root: Path, image: Path) -> list[Path]:
    folder = _label_folder(fmt, root, image.parent)
    stem = image.name[: -len(fmt.image_suffix)]
    return [folder / f"{stem}{suffix}" for suffix in fmt.label_suffixes]


def read_image(path: str) -> Image.Image:
    """An RGB image, fully decoded, or a DomainError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # PIL raises these for truncated/corrupt/non-image files
        raise DomainError(
            f"cannot read image '{path}' ({error}); the file is corrupt or truncated: re-download it or remove it and its label"
        ) from error


def read_raw_label(path: str, format: str) -> np.ndarray:
    """The label file's raw values `(H, W)` (ids before mapping to trainIds), as the format stores them."""
    if format == "synthia":
        return _read_synthia_label(path)
    try:
        with Image.open(path) as label:
            label.load()
            if format == "gta5" and label.mode != "P":
                raise DomainError(
                    f"GTA5 label '{path}' is a mode-{label.mode} image; GTA5 labels are palette (mode P) PNGs whose indices are "
                    "label ids. Use the original labels/ files of the GTA5 download."
                )
            if label.mode not in ("P", "L"):
                raise DomainError(
                    f"label '{path}' is a mode-{label.mode} image; {format} labels are single-channel 8-bit PNGs of ids. "
                    "Colour-coded label images cannot be used as they are."
                )
            return np.asarray(label)
    except (OSError, SyntaxError, ValueError) as error:
        raise DomainError(
            f"cannot read label '{path}' ({error}); the file is corrupt or truncated: re-download it or remove it and its image"
        ) from error


def _read_synthia_label(path: str) -> np.ndarray:
    import cv2  # opencv keeps all 16 bits; Pillow reads 16-bit RGB PNGs as 8-bit and small ids come out as 0

    data = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DomainError(f"cannot read SYNTHIA label '{path}'; the file is corrupt, truncated or not a PNG: re-download it")
    if data.dtype != np.uint16 or data.ndim != 3:
        raise DomainError(
            f"SYNTHIA label '{path}' is {data.dtype} with shape {data.shape}; expected the 16-bit multi-channel PNG of "
            "GT/LABELS (class id in the first channel). Use the original SYNTHIA-RAND-CITYSCAPES labels."
        )
    return data[:, :, 2]  # OpenCV returns BGR(A): channel 2 is the file's first (R) channel, the class id


def map_to_trainids(raw: np.ndarray, lut: np.ndarray, path: str, format: str) -> np.ndarray:
    """One vectorised lookup raw id -> trainId, rejecting values the format cannot hold."""
    train_ids, bad = apply_lookup(raw, lut)
    if bad.size:
        allowed = "0..18 and 255" if lut is TRAINID_IDENTITY else f"0..{len(lut) - 1}"
        raise DomainError(
            f"label '{path}' holds values {bad[:8].tolist()} that a {format} label cannot have (allowed: {allowed}). "
            "Check the format flag: the file may belong to another dataset or be converted already."
        )
    return train_ids


class NativeDecoder:
    """`datasets` transform: `image_path` -> `image` (RGB PIL), `label_path` -> `label` (trainIds, PIL mode L).

    Decodes only the columns present, so class statistics read the labels alone. Picklable (DataLoader workers).
    """

    def __init__(self, format: str):
        self.format = format

    def decode_label(self, path: str, size_hw: tuple[int, int] | None = None) -> np.ndarray:
        """trainIds `(H, W)` uint8; `size_hw` (height, width), when given, is the image's, which the label must match."""
        raw = read_raw_label(path, self.format)
        if size_hw is not None and raw.shape[:2] != tuple(size_hw):
            raise DomainError(
                f"label '{path}' is {raw.shape[1]}x{raw.shape[0]} but its image is {size_hw[1]}x{size_hw[0]}; "
                "image and label must have the same size. Re-download the pair or remove it."
            )
        # Cityscapes frames may carry a derived _labelTrainIds.png beside the official label ids
        lut = TRAINID_IDENTITY if path.endswith("_labelTrainIds.png") else FORMATS[self.format].lut
        return map_to_trainids(raw, lut, path, self.format)

    def __call__(self, batch: dict) -> dict:
        out = {}
        if "image_path" in batch:
            out["image"] = [read_image(p) for p in batch["image_path"]]
        if "label_path" in batch:
            # PIL's size is (width, height)
            sizes_hw = [image.size[::-1] for image in out["image"]] if "image" in out else [None] * len(batch["label_path"])
            out["label"] = [Image.fromarray(self.decode_label(p, size_hw)) for p, size_hw in zip(batch["label_path"], sizes_hw)]
        return out


def _content_fingerprint(format: str, images: list[str], labels: list[str | None]) -> str:
    """Fingerprint from paths, sizes and modification times, so cached class statistics follow file changes."""
    digest = hashlib.sha256(f"native-v1:{format}".encode())
    for path in images + [p for p in labels if p]:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_native(
    root: str | os.PathLike, format: str, split: str = "train", *, conditions: tuple[str, ...] = (), with_labels: bool = True
) -> datasets.Dataset:
    """A native folder as a Dataset yielding `image` and (if `with_labels`) `label` in trainIds, decoded on access."""
    images, labels = list_native_files(root, format, split, conditions=conditions, with_labels=with_labels)
    columns = {"image_path": images}
    if with_labels:
        columns["label_path"] = labels
    table = datasets.Dataset.from_dict(columns)
    dataset = datasets.Dataset(table.data, fingerprint=_content_fingerprint(format, images, labels))
    return dataset.with_transform(NativeDecoder(format))
