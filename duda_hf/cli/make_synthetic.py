"""Build the synthetic two-domain street-scene benchmark (source / target / target_val).

Example:
    duda-make-synthetic --out data_synthetic          # or: python scripts/make_synthetic.py --out data_synthetic
"""

from __future__ import annotations

import argparse
import sys

from duda_hf.cli.errors import program


@program
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder that receives source/, target/, target_val/")
    parser.add_argument("--num_source", type=int, default=600)
    parser.add_argument("--num_target", type=int, default=600)
    parser.add_argument("--num_target_val", type=int, default=100)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from duda_hf.data.synthetic import build_synthetic_benchmark

    paths = build_synthetic_benchmark(
        args.out,
        num_source=args.num_source,
        num_target=args.num_target,
        num_target_val=args.num_target_val,
        height=args.height,
        width=args.width,
        seed=args.seed,
    )
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
