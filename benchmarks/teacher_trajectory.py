"""Why the teacher is weak in short runs: the auxiliary student and its EMA teacher over training, per EMA setting.

    python benchmarks/teacher_trajectory.py [--recipe configs/synthetic_cpu.yaml] [--alphas 0.999 0.99]
                                            [--eval_steps 250] [--seed 0] [-- extra flags]

One `duda` run per `--ema_alpha`, evaluated every `--eval_steps` steps on the 100 target validation images;
prints the student's, the auxiliary student's and the teacher's target mIoU at each evaluation and writes them
to `--results` (a JSON file in benchmarks/results/ by default). Runs whose `eval_results.json` exists are reused.
`data_synthetic` (and the pretrained pair, for a recipe that starts from it) is built first when missing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import date
from pathlib import Path

from _prerequisites import needs_pretrained_pair, pretrained_pair, synthetic_benchmark

from duda_hf.evaluation.results_file import read_results
from duda_hf.jsonio import write_json

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("student", "auxiliary", "teacher")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="configs/synthetic_cpu.yaml")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.999, 0.99])
    parser.add_argument("--eval_steps", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_root", default=str(ROOT / "outputs" / "teacher_trajectory"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "teacher_trajectory.json"))
    args, extra = parser.parse_known_args()
    extra = [flag for flag in extra if flag != "--"]  # `-- --flag value` and `--flag value` both pass training flags on
    pretrained = needs_pretrained_pair(args.recipe)  # (a recipe that does not exist ends here)
    synthetic_benchmark("dusk")  # built when missing, as the pretrained pair when the recipe starts from it
    if pretrained:
        pretrained_pair()
    trajectories = {}
    for alpha in args.alphas:
        output_dir = Path(args.output_root) / f"{Path(args.recipe).stem}_alpha{alpha}_seed{args.seed}"
        if not (output_dir / "eval_results.json").exists():
            command = [
                sys.executable,
                "scripts/train_duda.py",
                "--config",
                args.recipe,
                "--method",
                "duda",
                "--ema_alpha",
                str(alpha),
                "--eval_steps",
                str(args.eval_steps),
                "--seed",
                str(args.seed),
                "--output_dir",
                str(output_dir),
                "--save_strategy",
                "no",
                *extra,
            ]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"alpha {alpha} failed:\n{done.stderr[-3000:]}")
        history = read_results(output_dir / "eval_results.json")["history"]
        trajectories[str(alpha)] = [{"step": e["step"], **{n: e.get(f"eval_{n}_mIoU") for n in NETWORKS}} for e in history]
    write_json(
        args.results,
        {"date": date.today().isoformat(), "recipe": args.recipe, "seed": args.seed, "extra_flags": extra, "trajectories": trajectories},
    )
    print("| ema_alpha | step | student | auxiliary | teacher | teacher − auxiliary |")
    print("|---|---|---|---|---|---|")
    for alpha, points in trajectories.items():
        for p in points:
            gap = p["teacher"] - p["auxiliary"]
            print(f"| {alpha} | {p['step']} | {p['student']:.2f} | {p['auxiliary']:.2f} | {p['teacher']:.2f} | {gap:+.2f} |")


if __name__ == "__main__":
    main()
