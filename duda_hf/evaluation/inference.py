"""Whole-image and sliding-window inference, and the streaming evaluation of several networks on one dataset."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from duda_hf.data.errors import DomainError
from duda_hf.data.images import to_label_array, to_rgb_array
from duda_hf.data.labels import IGNORE_INDEX, NUM_CLASSES
from duda_hf.evaluation.confusion import StreamingConfusion
from duda_hf.networks.inputs import InputCache, normalize_images


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
