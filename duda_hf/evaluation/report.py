"""Evaluation reports people read: a Markdown per-class table and PNG plots (per-class IoU bars, confusion heatmap)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from duda_hf.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from duda_hf.evaluation.results_file import read_results
from duda_hf.networks.presets import MODEL_PRESETS, mit_encoder


def is_undefined(value: float | None) -> bool:
    """A metric that has no value: None (`null` in the JSON files) or NaN (in memory, before they are written)."""
    return value is None or math.isnan(value)


def percent(value: float | None) -> str:
    """A share as a percentage with two decimals (`0.4567` -> `45.67`); an undefined value as `—`.

    The one format of the reports and the model card.
    """
    return "—" if is_undefined(value) else f"{100 * value:.2f}"


def markdown_report(results: dict[str, dict], title: str, details: dict[str, str] | None = None) -> str:
    """A per-class IoU / accuracy table for one model, or side by side (with the difference) for two.

    Args:
        results: model name -> metrics (`metrics_from_confusion` output); one or two entries.
        details: extra lines shown above the table (dataset, mode, image count, seconds).
    """
    names = list(results)
    lines = [f"# {title}", ""]
    for key, value in (details or {}).items():
        lines.append(f"- **{key}**: {value}")
    lines.append("")
    summary_keys = [k for k in ("mIoU", "mIoU16", "mIoU13", "mean_accuracy", "overall_accuracy") if k in results[names[0]]]
    header = "| | " + " | ".join(names) + (f" | {names[1]} − {names[0]} |" if len(names) == 2 else " |")
    lines += [header, "|---" * (len(names) + 1 + (len(names) == 2)) + "|"]
    for key in summary_keys:
        values = [results[n][key] for n in names]
        row = f"| **{key}** | " + " | ".join(f"**{percent(v)}**" for v in values)
        if len(names) == 2:
            row += " | —" if any(is_undefined(v) for v in values) else f" | {100 * (values[1] - values[0]):+.2f}"
        lines.append(row + " |")
    lines += ["", "Per class (IoU %, accuracy % in brackets):", "", header.replace("| |", "| class |", 1)]
    lines.append("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for cls in results[names[0]]["per_class_iou"]:
        ious = [results[n]["per_class_iou"][cls] for n in names]
        accs = [results[n]["per_class_accuracy"][cls] for n in names]
        row = f"| {cls} | " + " | ".join(f"{percent(i)} ({percent(a)})" for i, a in zip(ious, accs))
        if len(names) == 2:
            delta = "—" if any(is_undefined(v) for v in ious) else f"{100 * (ious[1] - ious[0]):+.2f}"
            row += f" | {delta}"
        lines.append(row + " |")
    lines += ["", "mIoU is the mean over classes present in the labels or the predictions (— = absent from both)."]
    return "\n".join(lines) + "\n"


def plot_per_class_iou(results: dict[str, dict], path: str | Path, title: str) -> None:
    """Horizontal bars of per-class IoU (one colour per model when comparing; class colours otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(next(iter(results.values()))["per_class_iou"])
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(classes) + 1.5))
    height = 0.8 / len(results)
    positions = np.arange(len(classes))
    for number, (name, metrics) in enumerate(results.items()):
        values = np.nan_to_num([100 * metrics["per_class_iou"][c] for c in classes])
        colours = [np.asarray(CITYSCAPES_PALETTE[CITYSCAPES_CLASSES.index(c)]) / 255 for c in classes] if len(results) == 1 else None
        axis.barh(positions + number * height, values, height, label=f"{name} (mIoU {100 * metrics['mIoU']:.1f})", color=colours)
    axis.set_yticks(positions + height * (len(results) - 1) / 2, classes)
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("IoU (%)")
    axis.set_title(title)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_miou_history(history: list[dict], path: str | Path, title: str) -> dict[str, tuple[list[int], list[float]]]:
    """The networks' target mIoU over training, one line each, from a run's evaluations (`eval_results.json`'s
    `history`: entries with `step` and `eval_<network>_mIoU`); returns what it drew, by network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for name in ("student", "auxiliary", "teacher"):
        points = [(entry["step"], entry[f"eval_{name}_mIoU"]) for entry in history if f"eval_{name}_mIoU" in entry]
        if points:
            series[name] = ([step for step, _ in points], [value for _, value in points])
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in series.items():
        axis.plot(steps, values, marker="o", label=name)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("target mIoU (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if series:
        axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return series


def plot_confusion(matrix: np.ndarray, path: str | Path, title: str, class_names=CITYSCAPES_CLASSES) -> None:
    """Row-normalised confusion matrix heatmap (rows: label, columns: prediction), in percent of each label's pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = 100 * matrix / matrix.sum(axis=1, keepdims=True)
    figure, axis = plt.subplots(figsize=(9, 8))
    image = axis.imshow(np.nan_to_num(normalised), cmap="viridis", vmin=0, vmax=100)
    axis.set_xticks(range(len(class_names)), class_names, rotation=90)
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("prediction")
    axis.set_ylabel("label")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="% of the label's pixels")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# How much stronger (mIoU points) the teacher must be than the student for DUDA's premise to count as holding.
PREMISE_MARGIN = 1.0


def teacher_premise(results: dict) -> str | None:
    """Whether DUDA's premise held in a run: a teacher clearly stronger than the student it teaches.

    Args:
        results: a run's `eval_results.json` content, in either schema (`duda_hf.evaluation.results_file`).

    Returns:
        None for the baselines or when the teacher (the EMA teacher, or distill's first frozen teacher) is at least `PREMISE_MARGIN` mIoU above the student;
        otherwise a plain statement with the numbers and the ways forward.
    """
    results = read_results(results)
    recipe, metrics = results["settings"], results["metrics"]
    if recipe.get("method") not in ("duda", "distill") or not isinstance(metrics.get("teacher"), dict):
        return None
    student, teacher = 100 * metrics["student"]["mIoU"], 100 * metrics["teacher"]["mIoU"]
    if teacher >= student + PREMISE_MARGIN:
        return None
    if recipe["method"] == "distill":
        return (
            f"The frozen teacher ({teacher:.2f} mIoU) is not clearly stronger than the student it taught ({student:.2f} "
            f"mIoU; less than {PREMISE_MARGIN:g} above), so distillation had little to pass on: distil a stronger "
            "adapted teacher (--teacher), for example a large network adapted with --method duda or an imported "
            "DAFormer, HRDA or MIC checkpoint."
        )
    auxiliary = metrics.get("auxiliary")
    lag = ""
    if isinstance(auxiliary, dict) and 100 * auxiliary["mIoU"] > teacher + PREMISE_MARGIN:
        lag = (
            f" The auxiliary student itself scores {100 * auxiliary['mIoU']:.2f}: its EMA lags it, so for a short run "
            "lower --ema_alpha (0.99 averages about the last 100 steps, 0.999 about the last 1000)."
        )
    large = recipe.get("aux_student")
    # it already starts pretrained: a MiT preset with --init imagenet, or a folder / Hub id / checkpoint (the small
    # presets are random whatever --init says)
    if large and ((mit_encoder(large) and recipe.get("init") == "imagenet") or large not in MODEL_PRESETS):
        start = f"the auxiliary student already starts from pretrained weights ({large}): train it longer, or start it from weights closer to the task (a folder, Hub id or checkpoint pretrained on the source domain as --aux_student)"
    else:
        start = (
            "start the auxiliary student from pretrained weights (--init imagenet for MiT presets, or a pretrained "
            "folder, Hub id or checkpoint as --aux_student), or train it longer"
        )
    return (
        f"The teacher ({teacher:.2f} mIoU) is not clearly stronger than the student it teaches ({student:.2f} mIoU; "
        f"less than {PREMISE_MARGIN:g} above), so "
        "distillation had little to pass on and this run is close to self-training. DUDA needs a large network "
        f"that starts stronger: {start}." + lag
    )
