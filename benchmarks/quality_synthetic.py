"""Target mIoU on the synthetic benchmark: source_only, self_training and duda with the same student, over seeds.

    python benchmarks/quality_synthetic.py [--seeds 0 1 2] [--methods source_only self_training duda] [--ablations] [-- extra flags]

Each run is `scripts/train_duda.py --config configs/synthetic_cpu.yaml --method M --seed S`; results (the
student's and the teacher's target mIoU per run, mean and spread per method) go to
benchmarks/results/quality_synthetic.json and a Markdown table is printed.

`--ablations` adds `duda` runs with one component changed at a time (ABLATIONS below). The extra-teacher row
adds the `self_training` run's student of the same seed (a pre-adapted network) as a frozen extra teacher,
so it needs the `self_training` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from duda_hf.jsonio import write_json

ROOT = Path(__file__).resolve().parents[1]

# name -> flags added to a `duda` run; {self_training_student} is that seed's self_training student folder.
ABLATIONS = {
    "duda, no gradual distillation (lam_t = 1 from step 0)": ["--preadapt_steps", "0", "--distill_ramp_steps", "0"],
    "duda, no inconsistency weighting (beta = 0)": ["--inconsistency_beta", "0"],
    "duda, no ClassMix (target images unmixed)": ["--class_mix", "false"],
    "duda + extra teacher (the self_training student, weights 1 1)": [
        "--extra_teachers", "{self_training_student}", "--teacher_weights", "1", "1",
    ],
}


def run(method: str, seed: int, output_root: Path, extra: list[str], variant: str | None = None) -> dict:
    output_dir = output_root / (f"{method}_seed{seed}" if variant is None else f"ablation{list(ABLATIONS).index(variant)}_seed{seed}")
    results_file = output_dir / "eval_results.json"
    if variant is not None:
        student = output_root / f"self_training_seed{seed}" / "student"
        extra = [*extra, *(flag.format(self_training_student=student) for flag in ABLATIONS[variant])]
    if not results_file.exists():
        command = [sys.executable, "scripts/train_duda.py", "--config", "configs/synthetic_cpu.yaml", "--method", method,
                   "--seed", str(seed), "--output_dir", str(output_dir), "--save_strategy", "no", *extra]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{variant or method} seed {seed} failed:\n{done.stderr[-3000:]}")
        print(f"{variant or method} seed {seed}: {time.monotonic() - started:.0f} s", flush=True)
    results = json.loads(results_file.read_text())
    return {
        "method": variant or method,
        "seed": seed,
        "student_mIoU": round(100 * results["student"]["mIoU"], 2),
        "teacher_mIoU": round(100 * results["teacher"]["mIoU"], 2) if "teacher" in results else None,
        "seconds": results["seconds"],
    }


def summarise(runs: list[dict], key: str) -> dict | None:
    values = [r[key] for r in runs if r[key] is not None]
    if not values:
        return None
    return {"mean": round(statistics.mean(values), 2), "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["source_only", "self_training", "duda"])
    parser.add_argument("--output_root", default=str(ROOT / "outputs" / "quality_synthetic"))
    parser.add_argument("--ablations", action="store_true", help="also run the DUDA ablations (needs the self_training runs)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "quality_synthetic.json"))
    args, extra = parser.parse_known_args()
    subprocess.run([sys.executable, "scripts/make_synthetic.py", "--out", "data_synthetic"], cwd=ROOT, check=True, capture_output=True)
    runs = [run(method, seed, Path(args.output_root), extra) for seed in args.seeds for method in args.methods]
    if args.ablations:
        runs += [run("duda", seed, Path(args.output_root), extra, variant) for variant in ABLATIONS for seed in args.seeds]
    names = list(args.methods) + (list(ABLATIONS) if args.ablations else [])
    summary = {
        name: {key: summarise([r for r in runs if r["method"] == name], key) for key in ("student_mIoU", "teacher_mIoU")}
        for name in names
    }
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {platform.python_version()}",
        "recipe": "configs/synthetic_cpu.yaml",
        "extra_flags": extra,
        "runs": runs,
        "summary": summary,
    }
    write_json(args.results, report)
    print(f"\n| method | student target mIoU (mean ± std, {len(args.seeds)} seeds) | teacher target mIoU |")
    print("|---|---|---|")
    for method, values in summary.items():
        teacher = values["teacher_mIoU"]
        student = values["student_mIoU"]
        teacher_text = f"{teacher['mean']:.2f} ± {teacher['std']:.2f}" if teacher else "—"
        print(f"| {method} | {student['mean']:.2f} ± {student['std']:.2f} | {teacher_text} |")


if __name__ == "__main__":
    main()
