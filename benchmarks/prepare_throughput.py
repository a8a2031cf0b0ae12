"""Conversion throughput of `scripts/prepare_data.py` (images per second) on GTA5-sized frames.

    python benchmarks/prepare_throughput.py [--count 48] [--num_proc 2]

Builds a GTA5-layout folder of `count` copies of one frame at GTA5's 1914x1052 (image resized bilinearly,
its Cityscapes label ids written as a palette label), then converts it twice in one run: at the native size
(image bytes copied, labels mapped) and resized to the DAFormer scale (1280x720). Prints images/s and writes
benchmarks/results/prepare_throughput.json.

The frame is a real image and its label ids when given (`--image`, `--label_ids`; the README's numbers used the
Cityscapes frame aachen_000000_000019: `leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png` and
`gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png` of a Cityscapes download), otherwise a procedural
street scene of the synthetic benchmark, which compresses differently from a photograph.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from _prerequisites import fail
from PIL import Image

from duda_hf.data.labels import CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX
from duda_hf.data.prepare import prepare_native
from duda_hf.data.synthetic import render_scene
from duda_hf.jsonio import write_json

ROOT = Path(__file__).resolve().parents[1]
GTA5_HEIGHT, GTA5_WIDTH = 1052, 1914


def gta5_frame(image_path: str | None, label_ids_path: str | None) -> tuple[Image.Image, np.ndarray]:
    """A GTA5-sized RGB frame and its Cityscapes label ids: the given pair resized, or a procedural street scene."""
    if image_path:
        image = Image.open(image_path).convert("RGB").resize((GTA5_WIDTH, GTA5_HEIGHT), Image.BILINEAR)  # PIL takes (W, H)
        return image, np.asarray(Image.open(label_ids_path).resize((GTA5_WIDTH, GTA5_HEIGHT), Image.NEAREST))
    rgb, train_ids = render_scene(np.random.default_rng(0), "target", height=GTA5_HEIGHT, width=GTA5_WIDTH)
    label_ids = np.zeros(256, dtype=np.uint8)  # trainId -> a Cityscapes label id (ignore -> 0, unlabeled)
    for label_id, train_id in enumerate(CITYSCAPES_ID_TO_TRAINID):
        if train_id != IGNORE_INDEX:
            label_ids[train_id] = label_id
    return Image.fromarray(rgb), label_ids[train_ids]


def build_gta5_folder(root: Path, count: int, image_path: str | None = None, label_ids_path: str | None = None) -> None:
    image, ids = gta5_frame(image_path, label_ids_path)
    label = Image.new("P", (GTA5_WIDTH, GTA5_HEIGHT))
    label.putdata(ids.ravel().tolist())
    label.putpalette(np.random.default_rng(0).integers(0, 256, 768).tolist())
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    image.save(root / "images/00001.png")
    label.save(root / "labels/00001.png")
    for index in range(2, count + 1):
        for folder in ("images", "labels"):
            shutil.copyfile(root / folder / "00001.png", root / folder / f"{index:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--image", default=None, help="an RGB frame to copy (default: a procedural street scene)")
    parser.add_argument("--label_ids", default=None, help="its Cityscapes label ids (a *_gtFine_labelIds.png); needed with --image")
    args = parser.parse_args()
    if bool(args.image) != bool(args.label_ids):
        parser.error("--image and --label_ids go together (a frame and its Cityscapes label ids)")
    for flag, path in (("--image", args.image), ("--label_ids", args.label_ids)):
        if path and not Path(path).is_file():
            fail(f"{flag} {path} is not a file; pass a Cityscapes frame and its labelIds PNG, or neither for a procedural scene")
    results = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "count": args.count,
        "num_proc": args.num_proc,
        "frame": f"1914x1052 RGB + palette label from {args.image or 'a procedural scene'}",
    }
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        build_gta5_folder(work / "gta5", args.count, args.image, args.label_ids)
        for name, resize_hw in (("native_size", None), ("daformer_1280x720", (720, 1280))):
            started = time.monotonic()
            prepare_native(work / "gta5", "gta5", work / name, resize_hw=resize_hw, num_proc=args.num_proc, shard_size=8, progress=False)
            seconds = time.monotonic() - started  # includes joining the shards into the final folder
            results[name] = {"seconds": round(seconds, 2), "images_per_second": round(args.count / seconds, 2)}
            print(f"{name}: {args.count} images in {seconds:.1f} s = {args.count / seconds:.2f} images/s ({args.num_proc} processes)")
    out = ROOT / "benchmarks/results/prepare_throughput.json"
    out.parent.mkdir(exist_ok=True)
    write_json(out, results)


if __name__ == "__main__":
    main()
