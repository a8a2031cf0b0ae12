"""Streaming mIoU: a confusion matrix accumulated where the predictions live; memory is O(classes^2) whatever the number of images."""

from __future__ import annotations

import numpy as np
import torch

from duda_hf.data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES, SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES


def confusion_matrix(
    prediction: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """`(C, C)` int64 counts, rows = label, columns = prediction, over pixels whose label is a class.

    No boolean-mask indexing: the pair index `label * C + prediction` is counted over every pixel, and the bins
    of labels outside `0..C-1` (ignore) are dropped afterwards. Counting runs on the tensors' device.

    Args:
        prediction: `(...)` integer class map with values in `0..C-1` (an argmax).
        label: `(...)` integer label map of the same shape; any value outside `0..C-1` is ignored.
    """
    return label_pair_counts(prediction, label, num_classes, ignore_index)[0]


def label_pair_counts(
    prediction: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(confusion matrix, ignored pixels, other pixels)`: the matrix of `confusion_matrix`, the number of pixels
    labelled `ignore_index`, and the number whose label is neither a class nor `ignore_index` (0-d tensors).

    One bincount over every pixel, on the tensors' device, with no host synchronisation.
    """
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} must have the same shape")
    if label.dtype == torch.uint8:
        # the common case, in one fused kernel: int16 pair indices (255 * C + C < 2**15) with uint8 labels promoted
        index, rows = torch.add(prediction.to(torch.int16), label, alpha=num_classes), 256
        ignore_row = ignore_index if num_classes <= ignore_index < 256 else None
    else:  # signed or wide labels: ignore_index into row C, every other value outside 0..C-1 into row C + 1
        outside = torch.where(label == ignore_index, num_classes, num_classes + 1)
        label = torch.where((label < 0) | (label >= num_classes), outside, label).to(torch.int32)
        index, rows, ignore_row = torch.add(prediction.to(torch.int32), label, alpha=num_classes), num_classes + 2, num_classes
    counts = torch.bincount(index.flatten(), minlength=rows * num_classes).view(rows, num_classes)
    outside_rows = counts[num_classes:].sum(dim=1)
    ignored = outside_rows[ignore_row - num_classes] if ignore_row is not None else outside_rows.new_zeros(())
    return counts[:num_classes].long(), ignored, outside_rows.sum() - ignored


class StreamingConfusion:
    """A confusion matrix accumulated batch by batch where the predictions live; memory O(classes^2).

    `update` per batch, `reduce` once across processes (a sum), `compute` for the metrics. Besides the matrix
    (the scored pixels) it counts the pixels labelled `ignore_index` and those whose label is neither a class
    nor `ignore_index` (`invalid_pixels`: a label encoding the metric does not know, e.g. Cityscapes label ids).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, device: torch.device | str = "cpu", ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
        self.ignored_pixels = torch.zeros((), dtype=torch.long, device=device)
        self.invalid_pixels = torch.zeros((), dtype=torch.long, device=device)

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add one batch: `prediction` and `label` integer maps of the same shape (labels outside 0..C-1 ignored)."""
        prediction = prediction.to(torch.int16)  # classes < 2**15; the cast also halves the traffic of the range check
        if prediction.numel():
            low, high = torch.aminmax(prediction)
            if int(low) < 0 or int(high) >= self.num_classes:
                raise ValueError(f"predictions must be class indices in 0..{self.num_classes - 1}, got {int(low)}..{int(high)}")
        matrix, ignored, invalid = label_pair_counts(prediction, label.to(prediction.device), self.num_classes, self.ignore_index)
        self.matrix += matrix
        self.ignored_pixels += ignored
        self.invalid_pixels += invalid

    def reduce(self) -> StreamingConfusion:
        """Sum the counts of all processes (torch.distributed, when initialised); every process gets the totals."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            flat = torch.cat([self.matrix.flatten(), self.ignored_pixels.view(1), self.invalid_pixels.view(1)])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            self.matrix.copy_(flat[:-2].view_as(self.matrix))
            self.ignored_pixels.copy_(flat[-2])
            self.invalid_pixels.copy_(flat[-1])
        return self

    def compute(self, class_names=CITYSCAPES_CLASSES, class_subsets: dict[str, tuple[int, ...]] | None = None) -> dict:
        """`metrics_from_confusion`, plus `pixels_scored` (labelled with a class) and `pixels_ignored` (`ignore_index`)."""
        metrics = metrics_from_confusion(self.matrix, class_names, class_subsets)
        metrics["pixels_scored"] = int(self.matrix.sum())
        metrics["pixels_ignored"] = int(self.ignored_pixels)
        return metrics


def metrics_from_confusion(
    matrix: torch.Tensor | np.ndarray, class_names=CITYSCAPES_CLASSES, class_subsets: dict[str, tuple[int, ...]] | None = None
) -> dict:
    """Metrics of a `(C, C)` confusion matrix (rows = label), as mmseg and `evaluate`'s mean_iou define them.

    mIoU is the nan-mean of per-class IoU over the classes present in label or prediction (absent classes
    have no union and are skipped); `class_subsets` adds e.g. `{"mIoU16": (...), "mIoU13": (...)}` the same way.
    """
    matrix = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    intersection = np.diag(matrix)
    label_count = matrix.sum(axis=1)
    union = label_count + matrix.sum(axis=0) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        accuracy = np.where(label_count > 0, intersection / label_count, np.nan)

    def nan_mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    total = matrix.sum()
    metrics = {
        "mIoU": nan_mean(iou),
        "mean_accuracy": nan_mean(accuracy),
        "overall_accuracy": float(intersection.sum() / total) if total else float("nan"),
    }
    for name, classes in (class_subsets or {}).items():
        metrics[name] = nan_mean(iou[list(classes)])
    metrics["per_class_iou"] = {name: float(v) for name, v in zip(class_names, iou)}
    metrics["per_class_accuracy"] = {name: float(v) for name, v in zip(class_names, accuracy)}
    return metrics


SYNTHIA_SUBSETS = {"mIoU16": SYNTHIA_16_CLASSES, "mIoU13": SYNTHIA_13_CLASSES}
