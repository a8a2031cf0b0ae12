"""Streaming mIoU: a confusion matrix accumulated where the predictions live, and whole-image inference.

Memory is O(classes^2) whatever the number of images: no logits or predictions are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.errors import DomainError
from .data.images import to_label_array, to_rgb_array
from .data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES, SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES
from .models import InputCache, normalize_images


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


# `evaluate.load(METRIC_PATH)`: the same metric as an `evaluate` module (numpy only), loadable offline.
METRIC_PATH = str(Path(__file__).resolve().parent / "metrics" / "streaming_miou")

SYNTHIA_SUBSETS = {"mIoU16": SYNTHIA_16_CLASSES, "mIoU13": SYNTHIA_13_CLASSES}


@torch.no_grad()
def predict_whole(
    model, images: torch.Tensor, label_size_hw: tuple[int, int], input_size_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """Whole-image inference: resize `(B, 3, H, W)` normalised inputs to `input_size_hw`, upsample logits to `label_size_hw`.

    Sizes are `(height, width)`; `input_size_hw` None keeps the images' size.

    Returns:
        `(B, H_label, W_label)` long class map.
    """
    if input_size_hw is not None and tuple(images.shape[-2:]) != tuple(input_size_hw):
        images = F.interpolate(images, size=tuple(input_size_hw), mode="bilinear", align_corners=False)
    logits = model(pixel_values=images).logits
    logits = F.interpolate(logits.float(), size=tuple(label_size_hw), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


def _sliding_windows(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering `0..size` (mmseg's slide_inference grid; the last window is flush with the end)."""
    count = max(size - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, size - window), 0) for i in range(count)})


@torch.no_grad()
def predict_slide(
    model,
    images: torch.Tensor,
    label_size_hw: tuple[int, int],
    *,
    window_hw: tuple[int, int],
    stride_hw: tuple[int, int],
    input_size_hw: tuple[int, int] | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Sliding-window inference: windows of `window_hw` every `stride_hw`, run `batch_size` at a time.

    Each window's logits are upsampled to the window, overlapping windows are averaged, and the full-image
    logits are upsampled to `label_size_hw` (as mmseg's `slide` mode, after resizing the input to `input_size_hw`).
    Sizes are `(height, width)`.

    Args:
        images: `(B, 3, H, W)` normalised inputs.

    Returns:
        `(B, H_label, W_label)` long class map.
    """
    if input_size_hw is not None and tuple(images.shape[-2:]) != tuple(input_size_hw):
        images = F.interpolate(images, size=tuple(input_size_hw), mode="bilinear", align_corners=False)
    batch, _, height, width = images.shape
    window_h, window_w = window_hw
    crops = [(y, x) for y in _sliding_windows(height, window_h, stride_hw[0]) for x in _sliding_windows(width, window_w, stride_hw[1])]
    logits_sum = counts = None
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        tiles = torch.cat([images[:, :, y : y + window_h, x : x + window_w] for y, x in chunk])
        tile_h, tile_w = tiles.shape[-2:]
        logits = model(pixel_values=tiles).logits.float()
        logits = F.interpolate(logits, size=(tile_h, tile_w), mode="bilinear", align_corners=False)
        if logits_sum is None:
            logits_sum = logits.new_zeros(batch, logits.shape[1], height, width)
            counts = logits.new_zeros(1, 1, height, width)
        for number, (y, x) in enumerate(chunk):
            logits_sum[:, :, y : y + tile_h, x : x + tile_w] += logits[number * batch : (number + 1) * batch]
            counts[:, :, y : y + tile_h, x : x + tile_w] += 1
    logits = logits_sum / counts
    if tuple(label_size_hw) != (height, width):
        logits = F.interpolate(logits, size=tuple(label_size_hw), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


@torch.no_grad()
def evaluate_networks(
    networks: dict[str, torch.nn.Module],
    dataset,
    device: torch.device,
    *,
    input_size_hw: tuple[int, int] | None = None,
    mode: str = "whole",
    window_hw: tuple[int, int] = (512, 512),
    stride_hw: tuple[int, int] = (341, 341),
    autocast_dtype: torch.dtype | None = None,
    process_index: int = 0,
    world_size: int = 1,
    image_mean: tuple[float, float, float] | None = None,
    image_std: tuple[float, float, float] | None = None,
    progress: bool = False,
    agreement: tuple[tuple[str, str], ...] = (),
) -> dict[str, StreamingConfusion]:
    """Score several networks on a labelled dataset in one pass over the images; returns reduced confusion matrices.

    Each process takes a disjoint stride of the images (no padding duplicates, so the reduced sum is exact);
    nothing but the `(C, C)` matrices outlives an image.

    Args:
        dataset: rows with `image` (PIL) and `label` (PIL, trainIds).
        input_size_hw: `(height, width)` the image is resized to before inference; None keeps the native size.
        mode: `whole` (DAFormer's protocol) or `slide` (`window_hw`, `stride_hw`, each `(height, width)`).
        image_mean, image_std: one normalisation for every network; None: each network's own
            (`models.input_normalization`: ImageNet's unless its config records its image processor's).
        agreement: pairs `(network, reference)` of `networks`; each adds a matrix `"<network>_vs_<reference>"` that
            scores the network's prediction against the reference network's (rows = the reference's class) on the
            pixels whose label is a class: how far a student has learnt its teacher, per class.
    """
    from tqdm.auto import tqdm

    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    for pair in agreement:
        if len(pair) != 2 or not set(pair) <= set(networks):
            raise ValueError(f"agreement pairs name two of the networks {list(networks)}, got {pair}")
    names = [*networks, *(f"{network}_vs_{reference}" for network, reference in agreement)]
    matrices = {name: StreamingConfusion(NUM_CLASSES, device) for name in names}
    indices = range(process_index, len(dataset), world_size)
    for index in tqdm(indices, desc="evaluating", unit="img", disable=not progress):
        row = dataset[index]
        label = torch.from_numpy(to_label_array(row["label"]).copy()).to(device)
        image = torch.from_numpy(to_rgb_array(row["image"]).copy()).to(device)
        rgb = image.permute(2, 0, 1).unsqueeze(0).float() / 255
        shared = normalize_images(rgb, image_mean, image_std) if image_mean is not None else None
        inputs = InputCache(rgb)  # each network's own normalisation, computed once per distinct one
        predictions = {}
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            for name, network in networks.items():
                image = shared if shared is not None else inputs(network)
                if mode == "whole":
                    prediction = predict_whole(network, image, tuple(label.shape), input_size_hw)[0]
                else:
                    prediction = predict_slide(
                        network, image, tuple(label.shape), window_hw=window_hw, stride_hw=stride_hw, input_size_hw=input_size_hw
                    )[0]
                matrices[name].update(prediction, label)
                predictions[name] = prediction
        for network, reference in agreement:  # the reference's prediction as the label, where the label is a class
            scored = torch.where(label < NUM_CLASSES, predictions[reference], IGNORE_INDEX)
            matrices[f"{network}_vs_{reference}"].update(predictions[network], scored)
    for matrix in matrices.values():
        matrix.reduce()
    _check_labels(next(iter(matrices.values())), len(dataset))
    return matrices


def _check_labels(matrix: StreamingConfusion, num_images: int) -> None:
    """Refuse a result that silently dropped pixels: labels holding values that are neither a class nor ignore."""
    invalid = int(matrix.invalid_pixels)
    if invalid:
        total = invalid + int(matrix.ignored_pixels) + int(matrix.matrix.sum())
        raise DomainError(
            f"{invalid:,} of {total:,} label pixels in {num_images} images hold values that are neither a class "
            f"(0..{matrix.num_classes - 1}) nor ignore ({matrix.ignore_index}): the labels are not Cityscapes trainIds, so no "
            "mIoU is reported. Cityscapes label ids (7 = road, 26 = car ...) need label_type 'labelid' "
            "(duda-evaluate --label_type labelid), colour labels 'color'."
        )
