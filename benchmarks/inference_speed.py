"""Latency and peak memory of the deployed B0 student against the B5 teacher it replaces: the speed-up DUDA buys.

    python benchmarks/inference_speed.py [--size 512 1024 --size 1024 2048] [--repeats 3]

Whole-image inference (batch 1, logits upsampled to the input size and argmaxed, as in evaluation) of a
SegFormer MiT-B0 and a MiT-B5 with the 19 Cityscapes classes, each exported and loaded back with plain
transformers (random weights: speed does not depend on them). Each (model, size) runs in its own process so
that its peak memory (RSS on CPU, CUDA allocator peak on GPU) is its own; the median of `repeats` runs after
one warm-up. bf16 autocast on GPU. Writes benchmarks/results/inference_speed.json.
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
import tempfile
import time
from datetime import date
from pathlib import Path

from _prerequisites import INPUT_SIZES, add_size_flag

from duda_hf.jsonio import write_json


def child(preset: str, width: int, height: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import SegformerForSemanticSegmentation

    from duda_hf.export.network import export_network
    from duda_hf.networks.loading import build_network

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        export_network(build_network(preset, "random"), folder, eval_size_hw=(height, width))
        model = SegformerForSemanticSegmentation.from_pretrained(folder).to(device).eval()
    parameters = sum(p.numel() for p in model.parameters())
    image = torch.randn(1, 3, height, width, device=device)
    times = []
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        for run in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            logits = model(pixel_values=image).logits
            F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False).argmax(1)
            if device == "cuda":
                torch.cuda.synchronize()
            if run:
                times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "median_s": round(statistics.median(times), 4),
        "times_s": [round(t, 4) for t in times],
        "peak_mib": round(peak, 1),
        "parameters_m": round(parameters / 1e6, 2),
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_flag(parser)
    parser.add_argument("--models", nargs="+", default=["mit-b0", "mit-b5"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "W", "H"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]), args.repeats)))
        return
    import torch

    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "repeats": args.repeats,
        "results": {},
    }
    for height, width in args.size or INPUT_SIZES:
        size = f"{width}x{height}"  # the results' key, as people read sizes: W x H
        row = {}
        for preset in args.models:
            command = [sys.executable, __file__, "--child", preset, str(width), str(height), "--repeats", str(args.repeats)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{preset} at {size} failed:\n{done.stderr[-3000:]}")
            row[preset] = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{size:10s} {preset}: {row[preset]['median_s']:.3f} s, peak {row[preset]['peak_mib']:.0f} MiB "
                f"({row[preset]['parameters_m']} M parameters, {row[preset]['device']})",
                flush=True,
            )
        if len(args.models) == 2:
            small, large = args.models
            row["speedup"] = round(row[large]["median_s"] / row[small]["median_s"], 2)
            row["memory_ratio"] = round(row[large]["peak_mib"] / row[small]["peak_mib"], 2)
            print(f"{size:10s} {large} / {small}: {row['speedup']}x latency, {row['memory_ratio']}x peak memory", flush=True)
        report["results"][size] = row
    out = Path(__file__).resolve().parent / "results" / "inference_speed.json"
    write_json(out, report)


if __name__ == "__main__":
    main()
