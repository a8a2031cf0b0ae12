"""Scoring speed of the streaming confusion matrix against the common alternatives, in one run.

    python benchmarks/metric_speed.py [--maps 50] [--height 1024] [--width 2048] [--repeats 3]

Scores `maps` random label maps (uint8, 19 classes plus ignore bands) against random predictions with
  - `duda_hf`: `StreamingConfusion` (pair index + bincount over every pixel, ignore bins dropped: no masks),
  - `masked bincount`: the usual torch recipe, `bincount(label[mask] * C + pred[mask])`,
  - `numpy per-map`: the definition `evaluate`'s mean_iou uses (per-map masked histograms of intersection,
    prediction and label areas, in numpy),
checks that all three give identical per-class IoU, and writes benchmarks/results/metric_speed.json.
Best of `repeats` runs for each.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from duda_hf.evaluation.confusion import StreamingConfusion, metrics_from_confusion
from duda_hf.jsonio import write_json

NUM_CLASSES = 19


def masked_bincount(predictions, labels) -> np.ndarray:
    matrix = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.long)
    for prediction, label in zip(predictions, labels):
        mask = label != 255
        matrix += torch.bincount(label[mask].long() * NUM_CLASSES + prediction[mask].long(), minlength=NUM_CLASSES**2)
    return matrix.view(NUM_CLASSES, NUM_CLASSES).numpy()


def numpy_per_map(predictions, labels) -> np.ndarray:
    """Areas of intersection / prediction / label per class, summed over maps; returns per-class IoU."""
    bins = np.arange(NUM_CLASSES + 1)
    intersect_sum, pred_sum, label_sum = (np.zeros(NUM_CLASSES) for _ in range(3))
    for prediction, label in zip(predictions, labels):
        prediction, label = prediction.numpy(), label.numpy()
        mask = label != 255
        prediction, label = prediction[mask], label[mask]
        intersect = prediction[prediction == label]
        intersect_sum += np.histogram(intersect, bins=bins)[0]
        pred_sum += np.histogram(prediction, bins=bins)[0]
        label_sum += np.histogram(label, bins=bins)[0]
    union = pred_sum + label_sum - intersect_sum
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersect_sum / union


def streaming(predictions, labels) -> np.ndarray:
    metric = StreamingConfusion(NUM_CLASSES)
    for prediction, label in zip(predictions, labels):
        metric.update(prediction, label)
    return metric.matrix.numpy()


def timed(function, *args, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=50)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    shape = (args.maps, args.height, args.width)
    labels = torch.randint(0, NUM_CLASSES, shape, dtype=torch.uint8, generator=generator)
    labels[:, : args.height // 10] = 255  # ignore bands (ego car, sky margins)
    labels[labels == 16] = 255  # and one class absent from every label
    predictions = torch.randint(0, NUM_CLASSES, shape, generator=generator)  # int64, as argmax returns
    predictions[predictions == 17] = 0  # one class never predicted

    results = {}
    reference_iou = None
    for name, function in (
        ("duda_hf StreamingConfusion", streaming),
        ("masked bincount (torch)", masked_bincount),
        ("numpy per-map (evaluate's definition)", numpy_per_map),
    ):
        seconds, output = timed(function, predictions, labels, repeats=args.repeats)
        iou = output if output.ndim == 1 else np.asarray(list(metrics_from_confusion(output)["per_class_iou"].values()))
        if reference_iou is None:
            reference_iou = iou
        identical = bool(np.array_equal(np.nan_to_num(iou, nan=-1), np.nan_to_num(reference_iou, nan=-1)))
        results[name] = {"seconds": round(seconds, 3), "identical_iou": identical}
        print(f"{name:40s} {seconds:7.3f} s   identical per-class IoU: {identical}")
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "maps": args.maps,
        "size": [args.height, args.width],
        "pixels": args.maps * args.height * args.width,
        "best_of": args.repeats,
        "results": results,
    }
    out = Path(__file__).resolve().parent / "results" / "metric_speed.json"
    out.parent.mkdir(exist_ok=True)
    write_json(out, report)


if __name__ == "__main__":
    main()
