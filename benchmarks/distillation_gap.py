"""Why the student stays below its teacher: agreement, per-class gaps and what the student sees, over training.

    python benchmarks/distillation_gap.py [--rows pretrained_duda ...] [--seed 0] [--jobs 2]

Trains each row of `quality_synthetic.py` (default: the pretrained pair's `duda` as the paper specifies it, and the
recipe as kept) with an evaluation every 250 steps, then reads each run's `eval_results.json`:

- over training: the student's and the teacher's target mIoU, their gap, and the student's agreement with the
  teacher on the clean target images (the share of labelled pixels where it predicts the teacher's class, and the
  mean over classes of the IoU between the two predictions);
- per class, at the end of the distillation ramp and at the end of the run: student IoU, teacher IoU, gap, and the
  IoU between the student's and the teacher's predictions;
- what the student sees of the teacher on the mixed image, per phase (pre-adaptation, ramp, distillation, stage):
  the share of its pixels that carry the teacher's output (target pixels outside the margins), the mean weight the
  soft term gives them (quality x class weight, or class weight alone with `kd_confidence_weight` false), the
  pseudo-label quality, and the loss terms.

Writes benchmarks/results/distillation_gap.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality_synthetic import ALL_ROWS

from duda_hf.evaluation.results_file import read_results
from duda_hf.jsonio import write_json

EVAL_STEPS = 250
SEEN = ("teacher_pixel_share", "teacher_pixel_weight", "pseudo_label_quality")


def mean_iou(per_class: dict) -> float:
    values = [v for v in per_class.values() if v is not None and not math.isnan(v)]
    return 100 * statistics.mean(values) if values else float("nan")


def phases(results: dict) -> dict[str, tuple[int, int]]:
    """Step ranges `(first, last]` of pre-adaptation, ramp, distillation (lam_t = 1) and the stage, from the settings."""
    recipe = results["settings"]
    steps = recipe["max_steps"]
    stage = recipe.get("distill_stage_steps", 0)  # eval_results.json records resolved step counts
    adaptation = steps - stage
    preadapt, ramp = recipe["preadapt_steps"], recipe["distill_ramp_steps"]
    bounds = {
        "pre-adaptation": (0, preadapt),
        "ramp": (preadapt, preadapt + ramp),
        "distillation": (preadapt + ramp, adaptation),
        "stage": (adaptation, steps),
    }
    return {name: bound for name, bound in bounds.items() if bound[1] > bound[0]}


def analyse(results: dict) -> dict:
    by_step = {entry["step"]: entry for entry in results["per_class_history"]}
    trajectory = []
    for entry in results["history"]:
        step = entry.get("step")
        if step not in by_step or "eval_teacher_mIoU" not in entry:
            continue
        trajectory.append(
            {
                "step": step,
                "student_mIoU": entry["eval_student_mIoU"],
                "teacher_mIoU": entry["eval_teacher_mIoU"],
                "gap": round(entry["eval_teacher_mIoU"] - entry["eval_student_mIoU"], 2),
                "pixel_agreement": entry.get("eval_student_teacher_agreement"),
                "agreement_mIoU": round(mean_iou(by_step[step]["student_vs_teacher"]), 2),
            }
        )
    spans = phases(results)
    ramp_end = spans["ramp"][1] if "ramp" in spans else None
    at = {}
    for name, step in (("ramp_end", ramp_end), ("end", results["settings"]["max_steps"])):
        record = by_step.get(step)
        if record is None:
            continue
        at[name] = {
            "step": step,
            "per_class": {
                cls: {
                    "student": _pct(record["student"][cls]),
                    "teacher": _pct(record["teacher"][cls]),
                    "agreement_iou": _pct(record["student_vs_teacher"][cls]),
                }
                for cls in record["student"]
            },
        }
    seen = {}
    for name, (first, last) in spans.items():
        entries = [e for e in results["train_history"] if first < e["step"] <= last]
        if not entries:
            continue
        keys = [*SEEN, *sorted({k for e in entries for k in e if k.startswith("loss_")})]
        seen[name] = {
            "steps": [first, last],
            **{k: round(statistics.mean(e[k] for e in entries if k in e), 4) for k in keys if any(k in e for e in entries)},
        }
    return {"trajectory": trajectory, "classes": at, "what_the_student_sees": seen}


def _pct(value):
    return None if value is None or math.isnan(value) else round(100 * value, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=["pretrained_duda_paper", "pretrained_duda"], choices=list(ALL_ROWS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output_root", default=str(ROOT / "outputs" / "distillation_gap"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "distillation_gap.json"))
    args = parser.parse_args()
    command = [sys.executable, "benchmarks/quality_synthetic.py", "--seeds", str(args.seed), "--jobs", str(args.jobs), "--rows", *args.rows]
    command += ["--output_root", args.output_root, "--results", str(Path(args.output_root) / "quality.json"), "--"]
    done = subprocess.run([*command, "--eval_steps", str(EVAL_STEPS)], cwd=ROOT, check=False)
    if done.returncode != 0:  # quality_synthetic.py has said why (a missing prerequisite, a failed run)
        raise SystemExit(done.returncode)
    report = {"seed": args.seed, "eval_steps": EVAL_STEPS, "rows": {}}
    for row in args.rows:
        results = read_results(Path(args.output_root) / f"{row}_seed{args.seed}" / "eval_results.json")
        report["rows"][row] = {"label": ALL_ROWS[row][0], **analyse(results)}
    write_json(args.results, report)

    for row, data in report["rows"].items():
        print(f"\n### {data['label']} (seed {args.seed})\n")
        print("| step | student | teacher | gap | pixel agreement | agreement mIoU |\n|---|---|---|---|---|---|")
        for t in data["trajectory"]:
            print(
                f"| {t['step']} | {t['student_mIoU']:.2f} | {t['teacher_mIoU']:.2f} | {t['gap']:.2f} | {t['pixel_agreement']:.2f} | {t['agreement_mIoU']:.2f} |"
            )
        for name, record in data["classes"].items():
            print(f"\nPer class at step {record['step']} ({name}): student / teacher / agreement IoU\n")
            print("| class | student | teacher | teacher − student | student-teacher IoU |\n|---|---|---|---|---|")
            for cls, v in record["per_class"].items():
                if v["teacher"] is None:
                    continue
                print(f"| {cls} | {v['student']:.1f} | {v['teacher']:.1f} | {v['teacher'] - v['student']:.1f} | {v['agreement_iou']:.1f} |")
        print("\nWhat the student sees of the teacher on the mix, per phase (means over logging steps)\n")
        print("| phase | steps | teacher pixel share | their mean weight | pseudo-label quality |\n|---|---|---|---|---|")
        for name, v in data["what_the_student_sees"].items():
            cells = " | ".join(f"{v.get(k, float('nan')):.3f}" for k in SEEN)
            print(f"| {name} | {v['steps'][0]}-{v['steps'][1]} | {cells} |")


if __name__ == "__main__":
    main()
