"""Whole-image and sliding-window inference, and the streaming evaluation of several networks on one dataset, batched,
with the images decoded by DataLoader workers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from duda_hf.data.errors import DomainError
from duda_hf.data.images import to_label_array, to_rgb_array
from duda_hf.data.labels import IGNORE_INDEX, NUM_CLASSES
from duda_hf.evaluation.confusion import StreamingConfusion
from duda_hf.networks.inputs import InputCache, normalize_images, run_network


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
    logits = run_network(model, images).logits
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
    """Sliding-window inference: windows of `window_hw` every `stride_hw`, run `batch_size` windows at a time.

    Each window's logits are upsampled to the window, overlapping windows are averaged, and the full-image
    logits are upsampled to `label_size_hw` (as mmseg's `slide` mode, after resizing the input to `input_size_hw`).
    Sizes are `(height, width)`. The windows of all `B` images share the forward passes (window by window, each
    window's images together); each image's windows are added up in the same order whatever `B`.

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
    windows = [(y, x, number) for y, x in crops for number in range(batch)]  # crop by crop, the images of each together
    logits_sum = None
    counts = images.new_zeros(1, 1, height, width)
    for y, x in crops:
        counts[:, :, y : y + window_h, x : x + window_w] += 1
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        tiles = torch.stack([images[number, :, y : y + window_h, x : x + window_w] for y, x, number in chunk])
        tile_h, tile_w = tiles.shape[-2:]
        logits = run_network(model, tiles).logits.float()
        logits = F.interpolate(logits, size=(tile_h, tile_w), mode="bilinear", align_corners=False)
        if logits_sum is None:
            logits_sum = logits.new_zeros(batch, logits.shape[1], height, width)
        for tile, (y, x, number) in zip(logits, chunk):
            logits_sum[number, :, y : y + tile_h, x : x + tile_w] += tile
    logits = logits_sum / counts.to(logits_sum.dtype)
    if tuple(label_size_hw) != (height, width):
        logits = F.interpolate(logits, size=tuple(label_size_hw), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


class DecodedRows(torch.utils.data.Dataset):
    """One process's disjoint stride of a labelled dataset (rows `process_index`, `+ world_size`, ...), decoded where
    it is read, so that decoding runs in the DataLoader's workers: item `i` is `(image, label)`, uint8 tensors
    `(H, W, 3)` and `(h, w)` (`to_rgb_array`, `to_label_array`).

    A `DomainError` raised while decoding is returned instead (`collate_runs` passes it on and `evaluate_networks`
    raises it), so that an error in a worker reads as it would in the main process.
    """

    def __init__(self, dataset, process_index: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.indices = range(process_index, len(dataset), world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        try:
            row = self.dataset[self.indices[position]]
            image, label = to_rgb_array(row["image"]), to_label_array(row["label"])
        except DomainError as error:
            return error
        return torch.from_numpy(np.array(image)), torch.from_numpy(np.array(label))


def collate_runs(items: list) -> list[tuple[torch.Tensor, torch.Tensor]] | DomainError:
    """A DataLoader batch as runs of consecutive images of one size: `[(images (b, H, W, 3), labels (b, h, w)), ...]`
    (uint8, stacked in the worker, in shared memory), so that a dataset whose images differ in size is batched
    where its sizes repeat and every label keeps its own size; or the first `DomainError` of the batch."""
    for item in items:
        if isinstance(item, DomainError):
            return item
    runs, start = [], 0
    for end in range(1, len(items) + 1):
        if end == len(items) or (items[end][0].shape, items[end][1].shape) != (items[start][0].shape, items[start][1].shape):
            images, labels = zip(*items[start:end])
            runs.append((default_collate(list(images)), default_collate(list(labels))))
            start = end
    return runs


def evaluation_loader(
    dataset,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    process_index: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context=None,
) -> DataLoader:
    """The DataLoader `evaluate_networks` reads: this process's stride of `dataset` (`DecodedRows`), `batch_size`
    images a batch in order, decoded by `num_workers` workers into runs of one size (`collate_runs`).

    Build it once and pass it as `evaluate_networks(loader=...)` to keep `persistent_workers` between evaluations.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"evaluation needs batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    workers = {}
    if num_workers:  # DataLoader refuses these options without workers
        workers = {
            "persistent_workers": persistent_workers,
            "prefetch_factor": prefetch_factor,
            "multiprocessing_context": multiprocessing_context,
        }
    return DataLoader(
        DecodedRows(dataset, process_index, world_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_runs,
        pin_memory=pin_memory,
        # its own source of the workers' base seed, which DataLoader would otherwise draw from torch's global random
        # state: an evaluation in the middle of training leaves the run's random draws as they were
        generator=torch.Generator().manual_seed(0),
        **workers,
    )


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
    keep_progress_bar: bool = True,
    agreement: tuple[tuple[str, str], ...] = (),
    batch_size: int = 1,
    num_workers: int = 0,
    loader: DataLoader | None = None,
) -> dict[str, StreamingConfusion]:
    """Score several networks on a labelled dataset in one pass over the images; returns reduced confusion matrices.

    Each process takes a disjoint stride of the images (no padding duplicates, so the reduced sum is exact);
    nothing but the `(C, C)` matrices outlives a batch. `num_workers` DataLoader workers decode the images,
    `batch_size` at a time (`evaluation_loader`); each run of equal-sized images in a batch goes through every
    network in one forward pass (whole mode) or shares the windows' passes (slide mode, `max(4, batch_size)` windows
    a pass), and the predictions are scored at each image's label size.

    Args:
        dataset: rows with `image` (PIL) and `label` (PIL, trainIds).
        input_size_hw: `(height, width)` the image is resized to before inference; None keeps the native size.
        mode: `whole` (DAFormer's protocol) or `slide` (`window_hw`, `stride_hw`, each `(height, width)`).
        image_mean, image_std: one normalisation for every network; None: each network's own
            (`models.input_normalization`: ImageNet's unless its config records its image processor's).
        progress: a tqdm bar counting images, with the time left (`keep_progress_bar` False: removed when done).
        agreement: pairs `(network, reference)` of `networks`; each adds a matrix `"<network>_vs_<reference>"` that
            scores the network's prediction against the reference network's (rows = the reference's class) on the
            pixels whose label is a class: how far a student has learnt its teacher, per class.
        batch_size, num_workers: images per forward pass and decoding workers (pinned memory on a GPU).
        loader: an `evaluation_loader(dataset, ...)` of this process's stride to read instead (its batch size and
            workers, e.g. persistent ones, replace `batch_size` and `num_workers`).
    """
    from tqdm.auto import tqdm

    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    for pair in agreement:
        if len(pair) != 2 or not set(pair) <= set(networks):
            raise ValueError(f"agreement pairs name two of the networks {list(networks)}, got {pair}")
    if loader is None:
        loader = evaluation_loader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            process_index=process_index,
            world_size=world_size,
            pin_memory=device.type == "cuda",
        )
    rows = loader.dataset
    if not isinstance(rows, DecodedRows) or rows.dataset is not dataset or rows.indices != range(process_index, len(dataset), world_size):
        raise ValueError("loader must be evaluation_loader(dataset, ...) of this dataset, process_index and world_size")
    names = [*networks, *(f"{network}_vs_{reference}" for network, reference in agreement)]
    matrices = {name: StreamingConfusion(NUM_CLASSES, device) for name in names}
    window_batch = max(4, loader.batch_size or 1)
    compared = {name for pair in agreement for name in pair}  # the predictions kept until every network has run
    bar = tqdm(total=len(rows), desc="evaluating", unit="img", disable=not progress, leave=keep_progress_bar, dynamic_ncols=True)
    for batch in loader:
        if isinstance(batch, DomainError):
            raise batch
        for images, labels in batch:
            labels = labels.to(device, non_blocking=True)
            # to (b, 3, H, W) while still uint8 (a quarter of the bytes), then the same x / 255 as one image at a time
            rgb = images.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float().div_(255)
            shared = normalize_images(rgb, image_mean, image_std) if image_mean is not None else None
            inputs = InputCache(rgb)  # each network's own normalisation, computed once per distinct one
            label_size_hw = tuple(labels.shape[-2:])
            predictions = {}
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                for name, network in networks.items():
                    image = shared if shared is not None else inputs(network)
                    if mode == "whole":
                        prediction = predict_whole(network, image, label_size_hw, input_size_hw)
                    else:
                        prediction = predict_slide(
                            network,
                            image,
                            label_size_hw,
                            window_hw=window_hw,
                            stride_hw=stride_hw,
                            input_size_hw=input_size_hw,
                            batch_size=window_batch,
                        )
                    matrices[name].update(prediction, labels)
                    if name in compared:
                        predictions[name] = prediction
            for network, reference in agreement:  # the reference's prediction as the label, where the label is a class
                scored = torch.where(labels < NUM_CLASSES, predictions[reference], IGNORE_INDEX)
                matrices[f"{network}_vs_{reference}"].update(predictions[network], scored)
            bar.update(len(labels))
    bar.close()
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
