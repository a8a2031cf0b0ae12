"""Convert a native dataset folder (GTA5, SYNTHIA, Cityscapes, ACDC, Dark Zurich) into a `datasets` folder.

Labels become Cityscapes trainIds (255 = ignore) by the tables of docs/datasets.md. Conversion runs in
parallel, streams (memory does not grow with dataset size) and resumes after an interruption: run the same
command again. Training does not need this step (`--source_format gta5 --source_dataset DIR` reads the
native folder in place); converting once, resized to the DAFormer scale, makes every epoch cheaper.

Examples (`duda-prepare-data` is the same as `python scripts/prepare_data.py` in a clone):
    duda-prepare-data --format gta5 --root /data/gta5 --out data/gta5 --resize daformer
    duda-prepare-data --format cityscapes --root /data/cityscapes --splits train val --out data/cityscapes
    duda-prepare-data --format darkzurich --root /data/dark_zurich --splits train --without_labels --out data/dz_night
    duda-prepare-data --format synthia --root /data/synthia --push_to_hub my-org/synthia-trainids
"""

from __future__ import annotations

import argparse
import sys

from duda_hf.cli.errors import program
from duda_hf.data.native import FORMATS
from duda_hf.data.prepare import prepare_native


@program
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="native layout of --root (docs/datasets.md)")
    parser.add_argument("--root", required=True, help="the dataset's top folder, as downloaded")
    parser.add_argument("--out", help="save_to_disk folder to write (a DatasetDict, one entry per split)")
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="also (or only) push the result to this Hub dataset")
    parser.add_argument("--private", action="store_true", help="make the pushed Hub dataset private")
    parser.add_argument("--splits", nargs="+", default=["train"], help="native splits to convert (GTA5 and SYNTHIA have one: train)")
    parser.add_argument("--conditions", nargs="*", default=[], help="ACDC / Dark Zurich conditions (default: all; Dark Zurich: night)")
    parser.add_argument("--without_labels", action="store_true", help="images only (unlabelled target splits, e.g. Dark Zurich train)")
    parser.add_argument(
        "--resize",
        nargs="+",
        default=None,
        metavar="H W",
        help="'daformer' for the format's DAFormer scale (GTA5 720 1280, SYNTHIA 760 1280, Cityscapes 512 1024, ACDC/Dark Zurich "
        "540 960), or H W, height first; labels use nearest neighbour. Default: native size (image bytes copied as they are).",
    )
    parser.add_argument("--num_proc", type=int, default=2, help="worker processes")
    parser.add_argument("--shard_size", type=int, default=100, help="images per resumable shard")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)

    resize_hw = None  # (height, width), as the flag takes it
    if args.resize == ["daformer"]:
        resize_hw = FORMATS[args.format].daformer_size_hw
    elif args.resize:
        if len(args.resize) != 2 or not all(v.isdigit() and int(v) > 0 for v in args.resize):
            parser.error(f"--resize takes 'daformer' or two positive integers H W (height first), got {args.resize}")
        resize_hw = (int(args.resize[0]), int(args.resize[1]))
    result = prepare_native(
        args.root,
        args.format,
        args.out,
        splits=tuple(args.splits),
        conditions=tuple(args.conditions),
        with_labels=not args.without_labels,
        resize_hw=resize_hw,
        num_proc=args.num_proc,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    rate = result.images_converted / result.seconds if result.seconds > 0 else float("nan")
    for split, dataset in result.dataset.items():
        print(f"{split}: {len(dataset)} rows")
    print(f"converted {result.images_converted} images in {result.seconds:.1f} s ({rate:.2f} images/s, {args.num_proc} processes)")
    print(f"written to {result.out}" + (f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
