"""The evaluation loop against its floor: batched, with DataLoader workers, against one image at a time.

    python benchmarks/eval_speed.py [--cases synthetic b0-1024x512] [--threads 1 2] [--workers 0 1 2] [--repeats 3]

Two cases, each scored by `duda_hf.evaluation.inference.evaluate_networks` (the loop of `duda-evaluate` and of the
trainer's evaluation):
  - `synthetic`: the 100 `data_synthetic/target_val` images (256x128, built first if missing:
    `benchmarks/_prerequisites.py`), the `tiny` student: the trained one of `--synthetic_student` when it exists
    (default: the pretrained-pair DUDA run of `benchmarks/quality_synthetic.py`), else a random-init one; batch
    `--synthetic_batch` (16);
  - `b0-1024x512`: `--b0_images` (16) 1024x512 images with their labels, written to a temporary Cityscapes-layout
    folder (smooth random scenes with sensor noise, PNG; labels `_gtFine_labelTrainIds.png`) and read in place
    as a native dataset, and a random-init SegFormer MiT-B0 (`SegformerConfig` defaults, 19 classes, no
    download); batch `--b0_batch` (4).
For each case and torch thread count it times, best of `--repeats` rounds (interleaved; the machine may be shared):
  - `old loop`: batch 1, no workers (the loop as it was: one image at a time, decoded in the main process);
  - `new loop`: batch N with each of `--workers` DataLoader workers;
  - `floor` at batch 1 and at batch N: the images already decoded and normalised in memory, only the network's
    batched forward pass, the upsampling of the logits to the label size and the argmax;
  - `decode`: reading and decoding every image and label once, in the main process (what the workers take over).
Reports seconds and the ratio loop / floor at the same batch size, compares every loop's confusion matrix with
the old loop's (identical, or how many labelled pixels changed class and the mIoU difference), records the
machine's load average (it may be shared), writes benchmarks/results/eval_speed.json and prints a Markdown
table. Goal: the new loop within 1.2x of its floor.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from duda_hf.jsonio import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _prerequisites, beside this file
from _prerequisites import synthetic_benchmark

ROOT = Path(__file__).resolve().parents[1]
TRAINED_STUDENT = "outputs/quality_synthetic/pretrained_duda_seed0/student"


def synthetic_case(student: str):
    """The synthetic validation set and the tiny student (trained if `student` exists, else random init)."""
    from duda_hf.data.domains import load_domain

    dataset = load_domain(str(synthetic_benchmark("dusk") / "target_val"))  # built first when missing
    if (ROOT / student).is_dir():
        from duda_hf.cli.evaluate_duda import load_model

        network, size_hw = load_model(str(ROOT / student))
        what = f"tiny student trained by DUDA ({student}), inference at {size_hw[1]}x{size_hw[0]}" if size_hw else student
    else:
        from duda_hf.networks.loading import build_network

        torch.manual_seed(0)
        network, size_hw, what = build_network("tiny", "random"), None, "tiny student, random init"
    return dataset, network.eval(), size_hw, what


def b0_case(folder: Path, count: int, seed: int = 0):
    """`count` 1024x512 image/label pairs as a native Cityscapes folder, and a random-init MiT-B0 with 19 classes."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from duda_hf.data.domains import load_domain

    rng = np.random.default_rng(seed)
    city_images = folder / "leftImg8bit" / "val" / "bench"
    city_labels = folder / "gtFine" / "val" / "bench"
    city_images.mkdir(parents=True)
    city_labels.mkdir(parents=True)
    for number in range(count):
        stem = f"bench_000000_{number:06d}"
        # a smooth scene (coarse random colours, upsampled) with sensor noise: compresses and decodes like a photo, roughly
        coarse = Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)).resize((1024, 512), Image.BICUBIC)
        noisy = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-6, 7, (512, 1024, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(city_images / f"{stem}_leftImg8bit.png")
        regions = rng.choice(np.r_[0:19, 255], (16, 32)).astype(np.uint8)
        Image.fromarray(regions).resize((1024, 512), Image.NEAREST).save(city_labels / f"{stem}_gtFine_labelTrainIds.png")
    dataset = load_domain(str(folder), "val", format="cityscapes")
    torch.manual_seed(0)
    network = SegformerForSemanticSegmentation(SegformerConfig(num_labels=19)).eval()
    return dataset, network, None, "SegFormer MiT-B0, random init, 19 classes; inference at 1024x512"


def decoded_inputs(dataset, network) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Every image decoded and normalised as the network expects, `(1, 3, H, W)` each, and its label size."""
    from duda_hf.evaluation.inference import DecodedRows
    from duda_hf.networks.inputs import network_inputs

    inputs, label_sizes = [], []
    for image, label in DecodedRows(dataset):
        inputs.append(network_inputs(image.permute(2, 0, 1)[None].float() / 255, network))
        label_sizes.append(tuple(label.shape))
    return inputs, label_sizes


@torch.no_grad()
def floor(network, inputs, label_sizes, size_hw, batch_size: int) -> None:
    """Batched forward, upsampling to the label size and argmax on tensors already in memory (equal sizes per case)."""
    for start in range(0, len(inputs), batch_size):
        images = torch.cat(inputs[start : start + batch_size])
        if size_hw is not None and tuple(images.shape[-2:]) != tuple(size_hw):
            images = F.interpolate(images, size=size_hw, mode="bilinear", align_corners=False)
        logits = network(pixel_values=images).logits
        F.interpolate(logits.float(), size=label_sizes[start], mode="bilinear", align_corners=False).argmax(dim=1)


def compare(matrix, reference) -> dict:
    """Whether a loop's confusion matrix is the old loop's, else by how much: the labelled pixels whose prediction
    moved to another class (at least; half the absolute difference of the counts) and the mIoU difference."""
    moved = int((matrix.matrix - reference.matrix).abs().sum()) // 2
    return {
        "identical_confusion_matrix": moved == 0 and bool(torch.equal(matrix.matrix, reference.matrix)),
        "pixels_moved": moved,
        "pixels_scored": int(reference.matrix.sum()),
        "miou_difference": matrix.compute()["mIoU"] - reference.compute()["mIoU"],
    }


def measure_case(
    name: str, dataset, network, size_hw, what: str, batch_size: int, threads: int, workers: list[int], repeats: int, bar
) -> dict:
    from duda_hf.data.domains import load_domain  # noqa: F401  (datasets imported before timing)
    from duda_hf.evaluation.inference import DecodedRows, evaluate_networks

    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    device = torch.device("cpu")
    networks = {"student": network}

    def loop(batch: int, num_workers: int):
        return evaluate_networks(networks, dataset, device, input_size_hw=size_hw, batch_size=batch, num_workers=num_workers)

    inputs, label_sizes = decoded_inputs(dataset, network)
    floor(network, inputs[:batch_size], label_sizes, size_hw, batch_size)  # warm-up
    # the repeats interleaved (decode, floors, old loop, new loops; again ...), so that a change in the machine's load
    # reaches every measurement alike; the best of each
    jobs = {
        "decode": lambda: [item for item in DecodedRows(dataset)],
        "floor 1": lambda: floor(network, inputs, label_sizes, size_hw, 1),
        "floor n": lambda: floor(network, inputs, label_sizes, size_hw, batch_size),
        "old loop": lambda: loop(1, 0),
        **{f"new loop, {w} workers": (lambda w=w: loop(batch_size, w)) for w in workers},
    }
    times, results = {job: [] for job in jobs}, {}
    for _ in range(repeats):
        for job, function in jobs.items():
            started = time.perf_counter()
            results[job] = function()
            times[job].append(time.perf_counter() - started)
            bar.update(1)
    best = {job: min(values) for job, values in times.items()}
    floor_1, floor_n, reference = best["floor 1"], best["floor n"], results["old loop"]
    rows = {
        "old loop": {
            "batch": 1,
            "workers": 0,
            "seconds": round(best["old loop"], 3),
            "times_s": [round(t, 3) for t in times["old loop"]],
            "floor_s": round(floor_1, 3),
            "ratio": round(best["old loop"] / floor_1, 3),
        }
    }
    for num_workers in workers:
        label = f"new loop, {num_workers} workers"
        rows[label] = {
            "batch": batch_size,
            "workers": num_workers,
            "seconds": round(best[label], 3),
            "times_s": [round(t, 3) for t in times[label]],
            "floor_s": round(floor_n, 3),
            "ratio": round(best[label] / floor_n, 3),
            "ratio_to_old_floor": round(best[label] / floor_1, 3),
            **compare(results[label]["student"], reference["student"]),
        }
    report = {
        # the machine's other jobs (1-minute load average before and after): above 2, the 2 cores are shared
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "case": name,
        "network": what,
        "images": len(dataset),
        "image_size": f"{inputs[0].shape[-1]}x{inputs[0].shape[-2]}",
        "threads": threads,
        "decode_s": round(best["decode"], 3),
        "decode_times_s": [round(t, 3) for t in times["decode"]],
        "floor_batch_1_s": round(floor_1, 3),
        "floor_batch_1_times_s": [round(t, 3) for t in times["floor 1"]],
        "floor_batch_n_s": round(floor_n, 3),
        "floor_batch_n_times_s": [round(t, 3) for t in times["floor n"]],
        "batch": batch_size,
        "loops": rows,
    }
    for label, row in rows.items():
        matrix = "" if "pixels_moved" not in row else f", pixels moved {row['pixels_moved']} of {row['pixels_scored']}"
        bar.write(
            f"{name} ({threads} thread{'s' if threads > 1 else ''}) {label}: {row['seconds']:.3f} s, floor {row['floor_s']:.3f} s, "
            f"ratio {row['ratio']:.3f}{matrix}"
        )
    return report


def markdown(report: dict) -> str:
    lines = [
        "| case | threads | loop | batch | workers | loop s | floor s (same batch) | loop / floor | matrix vs old loop | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for label, row in case["loops"].items():
            if "pixels_moved" not in row:
                matrix = "(reference)"
            elif row["identical_confusion_matrix"]:
                matrix = "identical"
            else:
                matrix = f"{row['pixels_moved']} of {row['pixels_scored']:,} pixels moved (mIoU {row['miou_difference']:+.1e})"
            lines.append(
                f"| {case['case']} | {case['threads']} | {label.split(',')[0]} | {row['batch']} | {row['workers']} | "
                f"{row['seconds']:.3f} | {row['floor_s']:.3f} | {row['ratio']:.2f} | {matrix} | "
                f"{case['load_average'][0]:.1f}-{case['load_average'][1]:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["synthetic", "b0-1024x512"], choices=["synthetic", "b0-1024x512"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads (intra-op) of the main process")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="DataLoader workers of the new loop")
    parser.add_argument("--synthetic_batch", type=int, default=16)
    parser.add_argument("--b0_batch", type=int, default=4)
    parser.add_argument("--b0_images", type=int, default=16)
    parser.add_argument("--synthetic_student", default=TRAINED_STUDENT, help="exported tiny student (random init if absent)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_speed.json"))
    args = parser.parse_args()

    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}",
        "device": "cpu",
        "best_of": args.repeats,
        "cases": [],
    }
    from tqdm.auto import tqdm

    # every timed run, with the time left (runs of the same kind take about as long on every round)
    bar = tqdm(total=len(args.cases) * len(args.threads) * args.repeats * (4 + len(args.workers)), desc="measuring", unit="run")
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            if case == "synthetic":
                dataset, network, size_hw, what = synthetic_case(args.synthetic_student)
                batch_size = args.synthetic_batch
            else:
                dataset, network, size_hw, what = b0_case(Path(folder) / "cityscapes", args.b0_images)
                batch_size = args.b0_batch
            for threads in args.threads:
                report["cases"].append(
                    measure_case(case, dataset, network, size_hw, what, batch_size, threads, args.workers, args.repeats, bar)
                )
    bar.close()
    write_json(Path(args.out), report)
    print()
    print(markdown(report))


if __name__ == "__main__":
    main()
