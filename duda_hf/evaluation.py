"""Streaming mIoU: a confusion matrix accumulated where the predictions live, and whole-image inference.

Memory is O(classes^2) whatever the number of images: no logits or predictions are kept.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES


def confusion_matrix(
    prediction: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """`(C, C)` int64 counts, rows = label, columns = prediction, over pixels whose label is a class.

    Ignored or out-of-range labels go to one extra bin that is dropped, so no boolean-mask indexing (and
    no copy of the valid pixels) is needed.
    """
    label = label.long()
    valid = (label >= 0) & (label < num_classes) & (label != ignore_index)
    index = torch.where(valid, label * num_classes + prediction.long(), num_classes * num_classes)
    counts = torch.bincount(index.flatten(), minlength=num_classes * num_classes + 1)
    return counts[: num_classes * num_classes].view(num_classes, num_classes)


def metrics_from_confusion(matrix: torch.Tensor | np.ndarray, class_names=CITYSCAPES_CLASSES) -> dict:
    """mIoU (nan-mean over classes present in label or prediction), per-class IoU/accuracy, overall accuracy."""
    matrix = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    intersection = np.diag(matrix)
    label_count = matrix.sum(axis=1)
    union = label_count + matrix.sum(axis=0) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        accuracy = np.where(label_count > 0, intersection / label_count, np.nan)
    total = matrix.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "overall_accuracy": float(intersection.sum() / total) if total else float("nan"),
        "per_class_iou": {name: float(v) for name, v in zip(class_names, iou)},
        "per_class_accuracy": {name: float(v) for name, v in zip(class_names, accuracy)},
    }


@torch.no_grad()
def predict_whole(model, images: torch.Tensor, label_size: tuple[int, int], input_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Whole-image inference: resize `(B, 3, H, W)` normalised inputs to `input_size` (H, W), upsample logits to `label_size`.

    Returns:
        `(B, H_label, W_label)` long class map.
    """
    if input_size is not None and tuple(images.shape[-2:]) != tuple(input_size):
        images = F.interpolate(images, size=input_size, mode="bilinear", align_corners=False)
    logits = model(pixel_values=images).logits
    logits = F.interpolate(logits.float(), size=label_size, mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)
