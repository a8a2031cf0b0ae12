"""The GPU path in one command: the GPU tests, the paper shape's speed, a real `accelerate launch`, inference latency.

    python benchmarks/gpu_check.py [--only tests step train inference variants] [--steps 10] [--warmup 3]
                                   [--budget 480] [--out benchmarks/results/gpu_check.json]

With random-init networks and generated data (nothing is downloaded), in this order:
  1. tests: `pytest -m gpu tests/test_gpu.py`: a duda, self_training and source_only step each on CUDA in fp32
     and bf16; CUDA vs CPU step on one batch; the step's host synchronisations; evaluation and sliding-window
     inference on CUDA vs CPU; export and reload with plain transformers.
  2. step: the paper shape (MiT-B5 auxiliary, MiT-B0 student, 512x512 crops, batch 2+2) with the recipes' GPU
     settings (bf16 autocast, TF32, fused AdamW): median step time, its floor (`benchmarks/step_cost.py`: the
     networks' own forward/backward passes and AdamW) and their ratio, peak GPU memory, the host synchronisations
     of one step, and the projected time of 40k iterations.
  3. train: `accelerate launch --num_processes <visible GPUs>` of `scripts/train_duda.py` (MiT-B5/B0, 20 steps,
     bf16, generated 512x256 data), which must end with `student/` and `eval_results.json`.
  4. inference: the exported student (MiT-B0) vs teacher (MiT-B5), reloaded with plain transformers, at 1024x512
     and 2048x1024, batch 1 and 8, fp32 (TF32 off) and bf16 autocast: median latency and peak memory.
  5. variants: each speed option's effect on the paper-shape step (fp32, fp32 + TF32, for-each AdamW instead of
     fused, channels-last, torch.compile), as a ratio to the default step.
Sections stop being started once `--budget` seconds have passed; the JSON is rewritten after each one, so an
interrupted run keeps what it measured. A summary table is printed last. On a machine without CUDA it runs nothing
and ends with one line on stderr and exit status 2 (as every benchmark missing what it needs: _prerequisites.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_cost and _prerequisites, beside this file
from _prerequisites import fail

SHAPE = "b5b0-512"
ITERATIONS = 40_000  # the DAFormer / DUDA schedule
SECTIONS = ("tests", "step", "train", "inference", "variants")
# (name, options changed from the GPU default)
VARIANTS = [
    ("fp32", {"precision": "fp32", "tf32": False}),
    ("fp32 + tf32", {"precision": "fp32", "tf32": True}),
    ("bf16, for-each AdamW", {"optim": "adamw_torch"}),
    ("bf16, channels-last", {"channels_last": True}),
    ("bf16, torch.compile", {"compile": True}),
    ("bf16, torch.compile reduce-overhead", {"compile": "reduce-overhead"}),
]


def run_tests() -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    return {
        "returncode": done.returncode,
        "summary": lines[-1] if lines else "",
        "seconds": round(time.monotonic() - started, 1),
        "output_tail": (done.stdout + done.stderr)[-4000:],
    }


def run_step(steps: int, warmup: int) -> dict:
    from step_cost import GPU_DEFAULT, measure

    floor = measure(SHAPE, "floor", steps, warmup, GPU_DEFAULT)
    step = measure(SHAPE, "step", steps, warmup, GPU_DEFAULT)
    return {
        "shape": "MiT-B5 auxiliary + MiT-B0 student, 512x512 crops, batch 2+2",
        "options": GPU_DEFAULT,
        "step": step,
        "floor": floor,
        "ratio": round(step["median_s"] / floor["median_s"], 3),
        "projected_40k_hours": round(step["median_s"] * ITERATIONS / 3600, 2),
    }


def run_variants(steps: int, warmup: int, default_step_s: float | None, deadline: float, names: list[str] | None = None) -> dict:
    from step_cost import GPU_DEFAULT, measure

    results = {}
    for name, changes in VARIANTS:
        if names and name not in names:
            continue
        left = deadline - time.monotonic()
        if left < 30:
            results[name] = {"skipped": "out of --budget time"}
            continue
        try:
            measured = measure(SHAPE, "step", steps, warmup, {**GPU_DEFAULT, **changes}, timeout=left)
        except subprocess.TimeoutExpired:
            results[name] = {"error": f"did not finish within the {left:.0f} s left of --budget"}
            continue
        except RuntimeError as error:
            results[name] = {"error": str(error)[-1500:]}
            continue
        if default_step_s:
            measured["vs_default"] = round(measured["median_s"] / default_step_s, 3)
        results[name] = measured
    return results


def run_train(workdir: Path) -> dict:
    import torch

    from duda_hf.data.synthetic import build_synthetic_benchmark

    data = build_synthetic_benchmark(workdir / "data", num_source=32, num_target=32, num_target_val=8, height=256, width=512, seed=0)
    output = workdir / "train"
    gpus = torch.cuda.device_count()
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(gpus),
        "--num_machines",
        "1",
        "--mixed_precision",
        "bf16",
        "--dynamo_backend",
        "no",
        *(["--multi_gpu"] if gpus > 1 else []),
    ]
    flags = [
        "--source_dataset",
        data["source"],
        "--target_dataset",
        data["target"],
        "--target_eval_dataset",
        data["target_val"],
        "--student",
        "mit-b0",
        "--aux_student",
        "mit-b5",
        "--init",
        "random",
        "--crop_size",
        "256",
        "256",
        "--max_steps",
        "20",
        "--warmup_steps",
        "2",
        "--learning_rate",
        "6e-5",
        "--rcs_min_pixels",
        "200",
        "--pseudo_label_ignore_top",
        "0",
        "--pseudo_label_ignore_bottom",
        "0",
        "--bf16",
        "true",
        "--tf32",
        "true",
        "--dataloader_num_workers",
        "4",
        "--logging_steps",
        "5",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        "--output_dir",
        str(output),
    ]
    started = time.monotonic()
    done = subprocess.run([*launch, "scripts/train_duda.py", *flags], capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    result = {
        "num_processes": gpus,
        "returncode": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "student_files": sorted(p.name for p in (output / "student").iterdir()) if (output / "student").is_dir() else [],
        "eval_results_json": (output / "eval_results.json").is_file(),
        "output_tail": (done.stdout + done.stderr)[-3000:],
    }
    if result["eval_results_json"]:
        from duda_hf.evaluation.results_file import read_results

        results = read_results(output / "eval_results.json")
        result["mIoU"] = {name: results["metrics"][name]["mIoU"] for name in ("student", "teacher") if name in results["metrics"]}
        result["train_seconds"] = results.get("seconds")
    return result


def run_inference(workdir: Path, repeats: int = 5, warmup: int = 2) -> dict:
    import torch
    from transformers import AutoModelForSemanticSegmentation, SegformerForSemanticSegmentation

    from duda_hf.export.network import export_network
    from duda_hf.networks.presets import preset_config

    results = {}
    for role, preset in (("student", "mit-b0"), ("teacher", "mit-b5")):
        torch.manual_seed(0)
        folder = export_network(SegformerForSemanticSegmentation(preset_config(preset)), workdir / role)
        network = AutoModelForSemanticSegmentation.from_pretrained(folder).cuda().eval()
        for height, width in ((512, 1024), (1024, 2048)):
            for batch in (1, 8):
                for precision in ("fp32", "bf16"):
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                    images = torch.rand(batch, 3, height, width, device="cuda")
                    torch.cuda.reset_peak_memory_stats()
                    times = []
                    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        for index in range(warmup + repeats):
                            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            start.record()
                            network(pixel_values=images)
                            end.record()
                            torch.cuda.synchronize()
                            if index >= warmup:
                                times.append(start.elapsed_time(end))
                    results[f"{role} {preset} {width}x{height} b{batch} {precision}"] = {
                        "median_ms": round(statistics.median(times), 2),
                        "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                    }
        del network
        torch.cuda.empty_cache()
    return results


def summary(report: dict) -> str:
    lines = [
        (
            f"GPU check, {report['date']}: {report['gpu']} x{report['gpu_count']}, "
            f"torch {report['torch']}, transformers {report['transformers']}"
        )
    ]
    tests = report.get("tests")
    if tests:
        lines.append(f"tests (pytest -m gpu): {tests.get('summary') or tests.get('error')}")
    step = report.get("step")
    if step and "step" in step:
        syncs = step["step"].get("host_syncs", [])
        lines.append(
            f"paper shape step: {step['step']['median_s'] * 1000:.1f} ms (floor {step['floor']['median_s'] * 1000:.1f} ms, "
            f"ratio {step['ratio']:.3f}); peak {step['step']['peak_mib']:.0f} MiB; {len(syncs)} host sync(s) per step; "
            f"40k iterations: {step['projected_40k_hours']:.2f} h"
        )
    elif step:
        lines.append(f"paper shape step: {step.get('error', '')[:300]}")
    train = report.get("train")
    if train:
        ok = train.get("returncode") == 0 and "model.safetensors" in train.get("student_files", []) and train.get("eval_results_json")
        lines.append(
            f"accelerate launch ({train.get('num_processes')} process(es), 20 steps): {'ok' if ok else 'FAILED'} in "
            f"{train.get('seconds')} s; mIoU {train.get('mIoU')}"
        )
    inference = report.get("inference")
    if inference and "error" not in inference:
        lines.append("inference (median ms)            fp32      bf16")
        for key in sorted({k.rsplit(" ", 1)[0] for k in inference}):
            lines.append(f"  {key:30s} {inference[key + ' fp32']['median_ms']:8.2f}  {inference[key + ' bf16']['median_ms']:8.2f}")
    for name, measured in (report.get("variants") or {}).items():
        if "median_s" in measured:
            lines.append(
                f"variant {name:24s} {measured['median_s'] * 1000:7.1f} ms  x{measured.get('vs_default', float('nan')):.3f} of default"
            )
        else:
            lines.append(f"variant {name:24s} {(measured.get('error') or measured.get('skipped', ''))[:200]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="Sections to run (default: all, in order).")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per measurement (after --warmup).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
    parser.add_argument("--budget", type=float, default=480, help="Seconds after which no new section or variant starts.")
    parser.add_argument("--variants", nargs="+", choices=[name for name, _ in VARIANTS], help="Only these variants (default: all).")
    parser.add_argument(
        "--default-step", type=float, default=None, help="Default step time (s) to compare variants with, when `step` is not run."
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"), help="Where the JSON report goes.")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        fail(
            "this needs a CUDA GPU (torch.cuda.is_available() is False here), so nothing was run; run "
            "`python benchmarks/gpu_check.py` on a machine with an NVIDIA GPU and a CUDA build of torch (the CPU test suite covers the rest)"
        )
    import accelerate
    import transformers

    from duda_hf.jsonio import write_json

    started = time.monotonic()
    deadline = started + args.budget
    report = {
        "date": date.today().isoformat(),
        "gpu": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    out = Path(args.out)
    workdir = Path(tempfile.mkdtemp(prefix="duda_gpu_check_"))
    for section in [s for s in SECTIONS if s in args.only]:
        if time.monotonic() > deadline:
            report[section] = {"skipped": "out of --budget time"}
            continue
        print(f"[gpu_check] {section} ...", flush=True)
        section_started = time.monotonic()
        try:
            if section == "tests":
                report[section] = run_tests()
            elif section == "step":
                report[section] = run_step(args.steps, args.warmup)
            elif section == "train":
                report[section] = run_train(workdir)
            elif section == "inference":
                report[section] = run_inference(workdir)
            else:
                default = (report.get("step") or {}).get("step", {}).get("median_s")
                report[section] = run_variants(args.steps, args.warmup, default or args.default_step, deadline, args.variants)
        except Exception as error:  # one section's failure must not lose the others' figures
            report[section] = {"error": f"{type(error).__name__}: {error}"[-3000:]}
        print(f"[gpu_check] {section} done in {time.monotonic() - section_started:.0f} s", flush=True)
        report["seconds"] = round(time.monotonic() - started, 1)
        write_json(out, report)
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
