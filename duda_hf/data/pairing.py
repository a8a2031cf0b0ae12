"""Paired source/target training samples, deterministic in (seed, sample index).

Sample `i` is drawn from `numpy.random.default_rng([seed, i])`: which source image (rare class sampling),
which target image, crops and flips. With a sequential sampler, sample indices are a function of the step,
so a resumed run sees exactly the samples it would have seen, and DDP processes (which take different
batches of indices) never repeat each other's samples.

A source or target image that cannot be decoded (a truncated file whose header passed the start-up checks) is
skipped: a warning names the dataset flag and the index, another sample is drawn in its place from the same random
stream, and the item says which index failed (`bad_samples`), so that the trainer counts them and stops the run
when more than `--max_bad_sample_share` of the draws have failed.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np
import torch

from duda_hf.data.errors import DomainError
from duda_hf.data.images import pad_to, to_label_array, to_rgb_array
from duda_hf.data.labels import IGNORE_INDEX, NUM_CLASSES
from duda_hf.data.rcs import RareClassSampler

logger = logging.getLogger(__name__)
CROP_TRIES = 10
MAX_REDRAWS = 10  # samples in a row that may fail before the dataset itself is taken to be broken
# what PIL raises for a truncated or corrupt file (an OSError without errno, SyntaxError) and what the native readers
# raise for one (DomainError); an OSError with an errno (EIO, EMFILE, ...) is the system's, and stops the run
BAD_SAMPLE_ERRORS = (OSError, SyntaxError, DomainError)


def random_crop_box(rng: np.random.Generator, shape_hw: tuple[int, int], crop_hw: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner `(top, left)` of a uniformly random `crop_hw` window inside `shape_hw`, both (height, width)."""
    return int(rng.integers(0, shape_hw[0] - crop_hw[0] + 1)), int(rng.integers(0, shape_hw[1] - crop_hw[1] + 1))


def image_margin_mask(
    image_hw: tuple[int, int], corner: tuple[int, int], crop_hw: tuple[int, int], margins: tuple[int, int, int, int]
) -> np.ndarray:
    """`(h, w)` uint8 of a crop at `corner` (top, left): 1 where its pixel lies inside the image (`image_hw`, before
    any padding) and outside the image's `margins` (top, bottom, left, right pixels), 0 elsewhere. HRDA's
    pseudo-label cropping v2 (`crop_pseudo_margins`): the margins belong to the image, so only a crop at its border
    loses pixels."""
    (height, width), (top, left), (margin_top, margin_bottom, margin_left, margin_right) = image_hw, corner, margins
    rows = np.arange(top, top + crop_hw[0])
    cols = np.arange(left, left + crop_hw[1])
    valid_rows = (rows >= margin_top) & (rows < height - margin_bottom)
    valid_cols = (cols >= margin_left) & (cols < width - margin_right)
    return (valid_rows[:, None] & valid_cols[None, :]).astype(np.uint8)


class DudaTrainDataset(torch.utils.data.Dataset):
    """Map-style dataset of `num_samples` (source, target) pairs.

    Items: `source_image` uint8 `(3, h, w)`, `source_label` long `(h, w)`, `target_image` uint8 `(3, h, w)`,
    with `(h, w) = crop_size_hw`, and `bad_samples` long `(2,)`: the source and target index that could not be
    decoded and was replaced (-1: none).

    Args:
        crop_size_hw: the training crop, (height, width).
        num_samples: the dataset's length: every sample index the run draws (the Trainer's sampler takes them in
            order, once each), i.e. steps x batch per device x gradient accumulation x processes.
        source_resize_hw, target_resize_hw: (height, width) each image (and label) is resized to before
            cropping; None keeps its size.
        rcs_min_crop_pixels: pixels of the sampled rare class a source crop is retried for.
        cat_max_ratio: source crops are retried while one class covers more than this share.
        target_margins: (top, bottom, left, right) pixels of each resized target image whose pseudo-labels do not
            count; each item then also holds `target_valid` uint8 `(h, w)` (`image_margin_mask`, flipped with the crop).
    """

    def __init__(
        self,
        source: datasets.Dataset,
        target: datasets.Dataset,
        crop_size_hw: tuple[int, int],
        *,
        num_samples: int,
        seed: int = 0,
        source_resize_hw: tuple[int, int] | None = None,
        target_resize_hw: tuple[int, int] | None = None,
        rare_class_sampler: RareClassSampler | None = None,
        rcs_min_crop_pixels: float = 0.0,
        cat_max_ratio: float = 0.75,
        target_margins: tuple[int, int, int, int] | None = None,
    ):
        if len(source) == 0 or len(target) == 0:
            raise ValueError(f"empty domain: source has {len(source)} images, target has {len(target)}")
        self.source, self.target = source, target
        self.crop_size_hw = tuple(crop_size_hw)
        self.seed = seed
        self.source_resize_hw = tuple(source_resize_hw) if source_resize_hw else None
        self.target_resize_hw = tuple(target_resize_hw) if target_resize_hw else None
        self.rare_class_sampler = rare_class_sampler
        self.rcs_min_crop_pixels = rcs_min_crop_pixels
        self.cat_max_ratio = cat_max_ratio
        self.num_samples = num_samples
        self.target_margins = tuple(target_margins) if target_margins else None

    def __len__(self) -> int:
        return self.num_samples

    def _crop_source(self, rng, image: np.ndarray, label: np.ndarray, rare_class: int | None):
        """DAFormer's crop: retry until no class covers more than `cat_max_ratio` and the RCS class is in."""
        height, width = self.crop_size_hw
        image = pad_to(image, height, width, 0)
        label = pad_to(label, height, width, IGNORE_INDEX)
        for _ in range(CROP_TRIES):
            top, left = random_crop_box(rng, label.shape, self.crop_size_hw)
            crop = label[top : top + height, left : left + width]
            counts = np.bincount(crop.ravel(), minlength=256)[:NUM_CLASSES]
            balanced = self.cat_max_ratio >= 1 or counts.max() < self.cat_max_ratio * max(counts.sum(), 1)
            has_rare = rare_class is None or counts[rare_class] > self.rcs_min_crop_pixels
            if balanced and has_rare:
                break
        return image[top : top + height, left : left + width], crop

    def _read_source(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        source = self.source[index]
        return to_rgb_array(source["image"], self.source_resize_hw), to_label_array(source["label"], self.source_resize_hw)

    def _read_target(self, index: int) -> np.ndarray:
        return to_rgb_array(self.target[index]["image"], self.target_resize_hw)

    def _read(self, flag: str, read, index: int, redraw) -> tuple[object, int, int]:
        """`read(index)`, or, for a sample that cannot be decoded, a warning naming it and the next drawn in its place
        (`redraw()`, from the sample's own random stream: the replacement is a function of seed and index too).

        Returns what was read, the index it was read from, and the index that could not be decoded first (-1: none)."""
        bad = -1
        for attempt in range(MAX_REDRAWS):
            try:
                return read(index), index, bad
            except BAD_SAMPLE_ERRORS as error:
                if isinstance(error, OSError) and error.errno is not None:  # the disk or the system, not the file
                    raise
                logger.warning("%s: sample #%d cannot be decoded (%s); training draws another in its place", flag, index, error)
                bad = index if bad < 0 else bad
                if attempt + 1 == MAX_REDRAWS:
                    break
                index = redraw()
        raise DomainError(f"{flag}: {MAX_REDRAWS} samples in a row cannot be decoded (the last: #{index}); check the dataset's files")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])

        def draw_source() -> tuple[int | None, int]:
            if self.rare_class_sampler is not None:
                return self.rare_class_sampler.sample(rng)
            return None, int(rng.integers(len(self.source)))

        rare_class, source_index = draw_source()
        target_index = int(rng.integers(len(self.target)))

        def redraw_source() -> int:
            nonlocal rare_class
            rare_class, drawn = draw_source()
            return drawn

        (source_image, source_label), source_index, bad_source = self._read(
            "--source_dataset", self._read_source, source_index, redraw_source
        )
        if source_image.shape[:2] != source_label.shape:  # a property of the dataset, not of one unreadable file
            raise ValueError(
                f"source image #{source_index} is {source_image.shape[1]}x{source_image.shape[0]} but its label is "
                f"{source_label.shape[1]}x{source_label.shape[0]}; image and label must have the same size"
            )
        source_image, source_label = self._crop_source(rng, source_image, source_label, rare_class)

        height, width = self.crop_size_hw
        target_image, _, bad_target = self._read(
            "--target_dataset", self._read_target, target_index, lambda: int(rng.integers(len(self.target)))
        )
        image_hw = target_image.shape[:2]
        target_image = pad_to(target_image, height, width, 0)
        top, left = random_crop_box(rng, target_image.shape[:2], self.crop_size_hw)
        target_image = target_image[top : top + height, left : left + width]
        valid = image_margin_mask(image_hw, (top, left), self.crop_size_hw, self.target_margins) if self.target_margins else None

        if rng.random() < 0.5:
            source_image, source_label = source_image[:, ::-1], source_label[:, ::-1]
        if rng.random() < 0.5:
            target_image = target_image[:, ::-1]
            valid = None if valid is None else valid[:, ::-1]
        extra = {} if valid is None else {"target_valid": torch.from_numpy(np.ascontiguousarray(valid))}
        return {
            **extra,
            "source_image": torch.from_numpy(np.ascontiguousarray(source_image.transpose(2, 0, 1))),
            "source_label": torch.from_numpy(np.ascontiguousarray(source_label)).long(),
            "target_image": torch.from_numpy(np.ascontiguousarray(target_image.transpose(2, 0, 1))),
            # the source and target index that could not be decoded (-1: none), counted by the trainer
            "bad_samples": torch.tensor([bad_source, bad_target], dtype=torch.int64),
        }
