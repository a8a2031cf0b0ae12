"""Conversion throughput of `scripts/prepare_data.py` (images per second) on GTA5-sized frames.

    python benchmarks/prepare_throughput.py [--count 48] [--num_proc 2]

Builds a GTA5-layout folder of `count` frames at GTA5's 1914x1052 from the real Cityscapes frame in
shared/data/real_samples (image resized bilinearly; its label ids written as a palette label), then
converts it twice in one run: at the native size (image bytes copied, labels mapped) and resized to the
DAFormer scale (1280x720). Prints images/s and writes benchmarks/results/prepare_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from duda_hf.data.prepare import prepare_native

ROOT = Path(__file__).resolve().parents[1]
FRAME = ROOT.parent / "shared/data/real_samples/cityscapes/{}/train/aachen/aachen_000000_000019_{}.png"


def build_gta5_folder(root: Path, count: int) -> None:
    image = Image.open(str(FRAME).format("leftImg8bit", "leftImg8bit")).convert("RGB").resize((1914, 1052), Image.BILINEAR)
    ids = Image.open(str(FRAME).format("gtFine", "gtFine_labelIds")).resize((1914, 1052), Image.NEAREST)
    label = Image.new("P", ids.size)
    label.putdata(np.asarray(ids).ravel().tolist())
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
    args = parser.parse_args()
    results = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "count": args.count,
               "num_proc": args.num_proc, "frame": "1914x1052 RGB PNG + palette label"}  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        build_gta5_folder(work / "gta5", args.count)
        for name, resize in (("native_size", None), ("daformer_1280x720", (1280, 720))):
            started = time.monotonic()
            prepare_native(work / "gta5", "gta5", work / name, resize=resize, num_proc=args.num_proc, shard_size=8, progress=False)
            seconds = time.monotonic() - started  # includes joining the shards into the final folder
            results[name] = {"seconds": round(seconds, 2), "images_per_second": round(args.count / seconds, 2)}
            print(f"{name}: {args.count} images in {seconds:.1f} s = {args.count / seconds:.2f} images/s ({args.num_proc} processes)")
    out = ROOT / "benchmarks/results/prepare_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
