"""Build the synthetic two-domain street-scene benchmark (source / target / target_val).

Example:
    duda-make-synthetic --out data_synthetic          # or: python scripts/make_synthetic.py --out data_synthetic
    # a second benchmark with another shift (night-like), to confirm a method on data it was not tuned on:
    duda-make-synthetic --out data_synthetic_night --seed 7 --colour_drift 0.35 --exposure 0.4 0.7 --noise 4 8 --texture 0.8
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
    shift = parser.add_argument_group("the target's shift (defaults: the benchmark's dusk shift; change them for a second benchmark)")
    shift.add_argument("--colour_drift", type=float, default=0.25, help="share of the way target colours move to their palette")
    shift.add_argument("--exposure", type=float, nargs=2, default=[0.65, 0.9], metavar=("LO", "HI"), help="dusk exposure factor range")
    shift.add_argument("--noise", type=float, nargs=2, default=[2.0, 5.0], metavar=("LO", "HI"), help="sensor noise sigma range (0-255)")
    shift.add_argument("--texture", type=float, default=0.5, help="gain of the target's surface texture")
    args = parser.parse_args(argv)
    from duda_hf.data.synthetic import TargetShift, build_synthetic_benchmark

    paths = build_synthetic_benchmark(
        args.out,
        num_source=args.num_source,
        num_target=args.num_target,
        num_target_val=args.num_target_val,
        height=args.height,
        width=args.width,
        seed=args.seed,
        shift=TargetShift(args.colour_drift, tuple(args.exposure), tuple(args.noise), args.texture),
    )
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
