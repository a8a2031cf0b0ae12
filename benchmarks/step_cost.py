"""What one DUDA training step costs beyond the networks themselves: time and peak memory against its floor.

    python benchmarks/step_cost.py [--shapes tiny-128 b5b0-256] [--steps 6] [--warmup 2]

For each shape, two child processes (so each has its own peak-memory high-water mark) time, after warm-up:
  - `step`: `DudaTrainer.training_step` (docs/method.md, steps 1-5: teacher pseudo-labels, ClassMix, strong
    augmentation, the auxiliary student and the student on source + mixed in one forward pass each, all loss
    terms, the inconsistency update, backward), then AdamW and the fused EMA teacher update;
  - `floor`: the same networks' own passes on the same shapes: the teacher's forward on the target batch
    (no grad), the auxiliary student's and the student's forward + backward on the 2B images they see (a plain
    cross-entropy), then AdamW over the same parameter groups.
Reports the median step time, the ratio step / floor, and each process's peak RSS; writes
benchmarks/results/step_cost.json. The target is a ratio of at most 1.15. On a GPU (when one is present) the
steps run with the recipes' GPU settings (bf16 autocast, TF32, fused AdamW) and report CUDA peak memory;
`benchmarks/gpu_check.py` uses `measure` for the paper shape `b5b0-512` and each speed option. The `*-hrda-*` shapes
train the large network with HRDA (`--hrda`), whose floor is its own context and detail passes with a fused and a
detail cross-entropy, and the teacher's HRDA inference; `*-daformer-*` are the same networks without HRDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from duda_hf.jsonio import write_json

SHAPES = {  # name: (student, aux_student, crop, batch per domain)
    "tiny-128": ("tiny", "tiny-wide", 128, 2),
    "b5b0-256": ("mit-b0", "mit-b5", 256, 2),
    "b5b0-512": ("mit-b0", "mit-b5", 512, 2),
    # DAFormer's head on the large network, without and with HRDA (`--hrda`: the context at half resolution and a
    # detail crop of half the crop's side; the teacher's pseudo-labels by HRDA's fused sliding inference)
    "tiny-daformer-128": ("tiny", "tiny-wide-daformer", 128, 2),
    "tiny-hrda-128": ("tiny", "tiny-wide-daformer", 128, 2),
    "b5b0-daformer-256": ("mit-b0", "mit-b5-daformer", 256, 2),
    "b5b0-hrda-256": ("mit-b0", "mit-b5-daformer", 256, 2),
    "b5b0-hrda-1024": ("mit-b0", "mit-b5-daformer", 1024, 2),  # HRDA's shape (GPU)
}


def hrda_shape(shape: str) -> bool:
    return "-hrda-" in shape


# The speed options a step can run with (gpu_check.py measures each one's effect); the recipes' GPU default.
# `compile`: False, True (torch.compile's default mode) or a torch.compile mode such as "reduce-overhead".
GPU_DEFAULT = {"precision": "bf16", "tf32": True, "optim": "adamw_torch_fused", "channels_last": False, "compile": False}
CPU_DEFAULT = {**GPU_DEFAULT, "precision": "fp32", "tf32": None}


def build(shape: str, device: str, options: dict):
    import torch

    from duda_hf.method.config import DudaConfig
    from duda_hf.networks.duda_model import build_duda_model
    from duda_hf.training.trainer import DudaTrainer

    student, aux, crop, batch = SHAPES[shape]
    torch.manual_seed(0)
    config = DudaConfig(
        output_dir="/tmp/duda_step_cost",
        method="duda",
        hrda=hrda_shape(shape),
        max_steps=1000,
        per_device_train_batch_size=batch,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        rcs_min_pixels=10,
        use_cpu=device == "cpu",
        bf16=options["precision"] == "bf16",
        tf32=options["tf32"],
        optim=options["optim"],
        channels_last=options["channels_last"],
        torch_compile=bool(options["compile"]),
        torch_compile_mode=options["compile"] if isinstance(options["compile"], str) else None,
    )
    hrda = {"context_scale": 0.5, "detail_crop": (crop // 2, crop // 2)} if hrda_shape(shape) else None
    model = build_duda_model("duda", student, aux, init="random", hrda=hrda)
    trainer = DudaTrainer(model.to(device), config)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which this bypasses
    model.train()
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(0, 19, (batch, crop, crop), generator=generator)
    label[:, : crop // 4] = 10  # a sky band and a road band, like street scenes
    label[:, -crop // 4 :] = 0
    inputs = {
        "source_image": torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, generator=generator).to(device),
        "source_label": label.to(device),
        "target_image": torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, generator=generator).to(device),
    }
    return trainer, model, inputs


def run_step(trainer, model, inputs, step: int) -> None:
    trainer.state.global_step = step
    trainer.training_step(model, inputs)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    model.update_teacher(step, trainer.args.ema_alpha)


def run_floor(trainer, model, inputs, step: int) -> None:
    import torch
    import torch.nn.functional as F

    from duda_hf.networks.inputs import normalize_images

    source = normalize_images(inputs["source_image"].float() / 255)
    target = normalize_images(inputs["target_image"].float() / 255)
    label = inputs["source_label"]
    with trainer.accelerator.autocast():  # the step's precision
        with torch.no_grad():
            model.teacher(pixel_values=target)
        both = torch.cat([source, target])  # what each trained network sees: source + mixed, 2B images
        labels = torch.cat([label, label])
        for network in (model.aux_student, model.student):
            if network is model.aux_student and model.hrda:  # HRDA: the context and a detail crop, fused and detail losses
                crop = labels.shape[-1] // 2
                box = (crop // 2, crop // 2 + crop, crop // 2, crop // 2 + crop)
                out = network(pixel_values=both, hrda_detail_box=box)
                detail = F.interpolate(out.detail_logits.float(), size=(crop, crop), mode="bilinear", align_corners=False)
                crop_labels = labels[:, box[0] : box[1], box[2] : box[3]]
                detail_loss = F.cross_entropy(detail, crop_labels, ignore_index=255)  # one backward with the fused loss
                logits = out.logits
            else:
                logits, detail_loss = network(pixel_values=both).logits, 0
            logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            (F.cross_entropy(logits, labels, ignore_index=255) + detail_loss).backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def count_syncs(trainer, model, inputs, step: int) -> list[str]:
    """Host synchronisations in one training step on CUDA (torch's sync debug mode), with where each comes from."""
    import warnings

    import torch

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.state.global_step = step
            trainer.training_step(model, inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if "called a synchronizing CUDA operation" in str(w.message)]


def child(shape: str, kind: str, steps: int, warmup: int, options: dict) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer, model, inputs = build(shape, device, options)
    function = run_step if kind == "step" else run_floor
    times = []
    for step in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function(trainer, model, inputs, step)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"median_s": statistics.median(times), "times_s": [round(t, 4) for t in times], "peak_mib": round(peak, 1), "device": device}
    if kind == "step" and device == "cuda":
        result["host_syncs"] = count_syncs(trainer, model, inputs, warmup + steps)
    return result


def measure(shape: str, kind: str, steps: int, warmup: int, options: dict, timeout: float | None = None) -> dict:
    """`child` in its own process (its own peak-memory mark and compile caches); raises with the child's error."""
    command = [sys.executable, __file__, "--child", shape, kind, "--steps", str(steps), "--warmup", str(warmup)]
    command += ["--options", json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shape} {kind} {options} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny-128", "b5b0-256"], choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("SHAPE", "KIND"), help=argparse.SUPPRESS)
    parser.add_argument("--options", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps, args.warmup, json.loads(args.options))))
        return
    import torch

    options = GPU_DEFAULT if torch.cuda.is_available() else CPU_DEFAULT

    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "steps": args.steps,
        "warmup": args.warmup,
        "options": options,
        "shapes": {},
    }
    for shape in args.shapes:
        measured = {}
        for kind in ("floor", "step"):
            try:
                measured[kind] = measure(shape, kind, args.steps, args.warmup, options)
            except RuntimeError as error:
                raise SystemExit(str(error)) from None
        ratio = measured["step"]["median_s"] / measured["floor"]["median_s"]
        student, aux, crop, batch = SHAPES[shape]
        sizes = {"student": student, "aux_student": aux, "crop": crop, "batch": batch}
        report["shapes"][shape] = {**sizes, **measured, "ratio": round(ratio, 3)}
        print(
            f"{shape:9s} ({aux}/{student}, {crop} px, batch {batch}+{batch}, {measured['step']['device']}): "
            f"step {measured['step']['median_s']:.3f} s, floor {measured['floor']['median_s']:.3f} s, ratio {ratio:.3f}; "
            f"peak {measured['step']['peak_mib']:.0f} / {measured['floor']['peak_mib']:.0f} MiB",
            flush=True,
        )
    out = Path(__file__).resolve().parent / "results" / "step_cost.json"
    write_json(out, report)


if __name__ == "__main__":
    main()
