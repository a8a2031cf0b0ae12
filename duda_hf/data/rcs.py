"""Rare class sampling (DAFormer RCS) with class statistics computed and cached automatically.

The reference code needs a separate conversion script to write `sample_class_stats.json` and fails
obscurely without it; here the statistics are computed on first use, validated, and cached under the
`datasets` cache keyed by the dataset's fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

from duda_hf.data.checks import row_name
from duda_hf.data.errors import DomainError
from duda_hf.data.labels import IGNORE_INDEX, NUM_CLASSES, invalid_label_values
from duda_hf.jsonio import dumps

logger = logging.getLogger(__name__)

STATS_VERSION = 1


def _cache_path(dataset: datasets.Dataset) -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "duda_hf" / "class_stats" / f"{dataset._fingerprint}-v{STATS_VERSION}.json"


def compute_class_pixel_counts(dataset: datasets.Dataset, role: str = "--source_dataset") -> np.ndarray:
    """Per-image pixel counts of each trainId, `(N, 19)` int64, validating label values on the way.

    Raises:
        DomainError: naming the first images whose labels hold values other than 0..18 and 255.
    """
    # native folders hold `label_path` (decoded by their transform); read labels alone, not the images
    labels = dataset.select_columns([c for c in ("label", "label_path") if c in dataset.column_names])
    counts = np.zeros((len(labels), NUM_CLASSES), dtype=np.int64)
    offenders, colour = [], False
    start = time.monotonic()
    for index, row in enumerate(labels):
        label = np.asarray(row["label"])
        if label.ndim != 2:
            offenders.append(f"{row_name(dataset, index, 'label')}: shape {label.shape}, not a single-channel (H, W) map")
            colour = True
            continue
        bad = invalid_label_values(label)
        if bad.size:
            pixels = int(np.isin(label, bad).sum())
            offenders.append(f"{row_name(dataset, index, 'label')}: {pixels:,} of {label.size:,} pixels hold {bad[:8].tolist()}")
        counts[index] = np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES]
        if len(offenders) >= 5:
            break
        if index and index % 2000 == 0:
            logger.info("class statistics: %d/%d images (%.0f s)", index, len(labels), time.monotonic() - start)
    if offenders:
        flag = role.replace("dataset", "label_type") if role.endswith("dataset") else "the label type"
        fix = f"colour labels: pass {flag} color" if colour else f"Cityscapes label ids (7 = road, 26 = car ...): pass {flag} labelid"
        raise DomainError(
            f"{role}: labels must be Cityscapes trainIds (0..18, {IGNORE_INDEX} = ignore); the first images found that are not "
            f"(of {len(labels)}): " + "; ".join(offenders) + f". For {fix} (or convert them to trainIds first)."
        )
    return counts


def class_pixel_counts(dataset: datasets.Dataset, role: str = "--source_dataset") -> np.ndarray:
    """`compute_class_pixel_counts`, cached on disk by dataset fingerprint (written atomically)."""
    path = _cache_path(dataset)
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("num_rows") == len(dataset):
                return np.asarray(data["counts"], dtype=np.int64).reshape(len(dataset), NUM_CLASSES)
        except (ValueError, KeyError):
            logger.warning("ignoring unreadable class statistics cache %s", path)
    counts = compute_class_pixel_counts(dataset, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(dumps({"num_rows": len(dataset), "counts": counts}))
    os.replace(handle.name, path)
    return counts


def rcs_class_probabilities(counts: np.ndarray, temperature: float, min_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """DAFormer's class distribution `p_c = softmax((1 - f_c) / T)` over classes some image holds >= min_pixels of.

    Args:
        counts: `(N, C)` per-image class pixel counts.

    Returns:
        `(classes, probabilities)`: the sampleable trainIds and their probabilities (summing to 1).
    """
    eligible = (counts >= min_pixels).any(axis=0)
    frequency = counts.sum(axis=0) / max(counts.sum(), 1)
    classes = np.flatnonzero(eligible)
    if classes.size == 0:
        return classes, np.zeros(0)
    logits = (1 - frequency[classes]) / temperature
    probabilities = np.exp(logits - logits.max())
    return classes, probabilities / probabilities.sum()


class RareClassSampler:
    """Draws (class, source index) pairs: a class by RCS probability, then an image holding enough of it."""

    def __init__(self, counts: np.ndarray, temperature: float = 0.01, min_pixels: int = 3000):
        self.classes, self.probabilities = rcs_class_probabilities(counts, temperature, min_pixels)
        if self.classes.size == 0:
            raise DomainError(
                f"rare class sampling: no source image has {min_pixels} pixels of any class; "
                "lower --rcs_min_pixels (it counts pixels at the stored resolution) or pass --rare_class_sampling false"
            )
        self.images_by_class = {int(c): np.flatnonzero(counts[:, c] >= min_pixels) for c in self.classes}

    def sample(self, rng: np.random.Generator) -> tuple[int, int]:
        """Return `(trainId, source index)`."""
        cls = int(rng.choice(self.classes, p=self.probabilities))
        return cls, int(rng.choice(self.images_by_class[cls]))
