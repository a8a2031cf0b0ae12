"""Pure tensor functions of the DUDA objective (docs/method.md, steps 1, 3 and 4).

Nothing here touches I/O, modules or global state: every function takes tensors and returns tensors,
so each one is unit-tested on hand-made inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from duda_hf.data.labels import IGNORE_INDEX


def fuse_teacher_probs(
    teacher_logits: list[torch.Tensor],
    weights: list[float] | None = None,
    temperature: float = 1.0,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of several teachers' softmax, at temperature 1 and at `temperature`.

    Args:
        teacher_logits: one `(B, C, h, w)` tensor per teacher.
        weights: one weight per teacher (normalised to sum 1); equal weights when None.
        temperature: the KD temperature `tau` of the second output.
        size: `(H, W)` to upsample the logits to (bilinear) before the softmax, e.g. the label size.

    Returns:
        `(probs, probs_tau)`, both `(B, C, H, W)`.
    """
    probs = probs_tau = None
    for logits, share in zip(teacher_logits, _teacher_shares(weights, len(teacher_logits))):
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        logits = logits.float()
        p = torch.softmax(logits, dim=1) * share
        p_tau = torch.softmax(logits / temperature, dim=1) * share
        probs = p if probs is None else probs + p
        probs_tau = p_tau if probs_tau is None else probs_tau + p_tau
    return probs, probs_tau


def fuse_teacher_logits(teacher_logits: list[torch.Tensor], weights: list[float] | None = None) -> torch.Tensor:
    """Weighted mean of several teachers' logits (fp32), at the first teacher's size (the others resized bilinearly):
    the teacher of channel-wise distillation. One teacher's logits come back as they are (in fp32)."""
    size = tuple(teacher_logits[0].shape[-2:])
    fused = None
    for logits, share in zip(teacher_logits, _teacher_shares(weights, len(teacher_logits))):
        logits = _upsample(logits.float(), size)
        fused = logits * share if fused is None else fused + logits * share
    return fused


def _teacher_shares(weights: list[float] | None, count: int) -> list[float]:
    """Each teacher's share of the fusion: `weights` normalised to sum 1 (equal when None), one per teacher."""
    if weights is None:
        weights = [1.0] * count
    if len(weights) != count:
        raise ValueError(f"got {count} teachers but {len(weights)} teacher_weights")
    total = float(sum(weights))
    return [weight / total for weight in weights]


def pseudo_label(probs: torch.Tensor, threshold: float = 0.968) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels and the batch quality weight (DAFormer).

    Args:
        probs: `(B, C, H, W)` teacher probabilities.
        threshold: confidence a pixel needs to count as reliable.

    Returns:
        `(labels (B, H, W) long, quality)` where quality is a 0-dim tensor: the share of pixels in the
        whole batch whose max probability is at least `threshold`.
    """
    confidence, labels = probs.max(dim=1)
    quality = (confidence >= threshold).float().mean()
    return labels, quality


def target_pixel_weight(quality: torch.Tensor, shape: tuple[int, int, int], ignore_top: int = 0, ignore_bottom: int = 0) -> torch.Tensor:
    """Per-pixel weight of pseudo-labelled pixels: `quality` everywhere except the ignore margins.

    DAFormer zeroes the top 15 and bottom 120 rows of 512 crops on Cityscapes (ego car, rectification border).

    Returns:
        `(B, H, W)` float tensor.
    """
    weight = quality.float().expand(shape).clone()
    if ignore_top > 0:
        weight[:, :ignore_top] = 0
    if ignore_bottom > 0:
        weight[:, -ignore_bottom:] = 0
    return weight


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _weighted_mean(per_pixel: torch.Tensor, weight: torch.Tensor | None, valid: torch.Tensor, denominator: str) -> torch.Tensor:
    """Sum of `per_pixel * weight` over valid pixels divided by the number of pixels (`denominator` 'all_pixels', as
    DAFormer's mmseg averages, ignored pixels counting 0) or of valid pixels ('valid_pixels'); never by the weight sum."""
    per_pixel = per_pixel * valid
    if weight is not None:
        per_pixel = per_pixel * weight
    if denominator == "all_pixels":
        return per_pixel.sum() / per_pixel.numel()
    if denominator == "valid_pixels":
        return per_pixel.sum() / valid.sum().clamp(min=1)
    raise ValueError(f"denominator must be 'all_pixels' or 'valid_pixels', got {denominator!r}")


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    denominator: str = "all_pixels",
) -> torch.Tensor:
    """Pixel-weighted cross-entropy: the weighted sum over the pixels whose label is not `ignore_index`, divided by
    every pixel of the batch (DAFormer's mmseg `cross_entropy` with `seg_weight`, reduction 'mean') or, with
    `denominator='valid_pixels'`, by the pixels not ignored.

    Args:
        logits: `(B, C, h, w)`; upsampled bilinearly to the label size when smaller.
        labels: `(B, H, W)` long.
        weight: `(B, H, W)` per-pixel weight, or None for 1.
        denominator: 'all_pixels' (DAFormer) or 'valid_pixels'.

    Returns:
        0-dim loss. Pixels with weight 0 still count in the denominator (as in DAFormer's quality weight,
        which scales the loss rather than renormalising it).
    """
    logits = _upsample(logits, labels.shape[-2:])
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return _weighted_mean(per_pixel, weight, (labels != ignore_index).float(), denominator)


def kd_loss(
    student_logits: torch.Tensor,
    target_probs: torch.Tensor,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    denominator: str = "all_pixels",
) -> torch.Tensor:
    """Soft distillation: per-pixel `KL(target || softmax(student / tau)) * tau^2`, weighted, summed over the valid
    pixels and divided as the cross-entropy is (`denominator`: by every pixel, or by the valid ones).

    Args:
        student_logits: `(B, C, h, w)`; upsampled to the target size when smaller.
        target_probs: `(B, C, H, W)` soft targets (the teachers' softmax at `tau`, one-hot on source pixels).
        weight: `(B, H, W)` per-pixel weight or None.
        valid: `(B, H, W)` bool, pixels that count (e.g. label != ignore); all when None.
        denominator: 'all_pixels' or 'valid_pixels' (`weighted_cross_entropy`).
    """
    student_logits = _upsample(student_logits, target_probs.shape[-2:]).float()
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    # xlogy gives 0 * log 0 = 0 for the one-hot source pixels.
    per_pixel = (torch.xlogy(target_probs, target_probs) - target_probs * log_student).sum(dim=1)
    per_pixel = per_pixel * temperature**2
    if valid is None:
        valid = torch.ones_like(per_pixel, dtype=torch.bool)
    return _weighted_mean(per_pixel, weight, valid.float(), denominator)


def channel_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): each class channel's map as a distribution over positions.

    For every image and class `c`, `P_c = softmax over positions of z_c / tau`, for the teacher and the student; the
    loss is `tau^2 * mean over images and classes of KL(P_c^teacher || P_c^student)`. Each class weighs the same
    whatever its area, so small classes (poles, lights, riders) count as much as road and sky.

    Args:
        student_logits, teacher_logits: `(B, C, h, w)`; the student's are resized (bilinear) to the teacher's size.
        valid: `(B, h, w)` bool, the positions that count (e.g. outside the ignore margins); all when None.
    """
    student_logits = _upsample(student_logits, teacher_logits.shape[-2:]).float()
    teacher_logits = teacher_logits.float()
    if valid is not None:  # positions outside `valid` get no probability mass in either distribution
        outside = ~valid.unsqueeze(1)
        student_logits = student_logits.masked_fill(outside, -1e4 * temperature)
        teacher_logits = teacher_logits.masked_fill(outside, -1e4 * temperature)
    batch, classes = teacher_logits.shape[:2]
    log_student = F.log_softmax(student_logits.reshape(batch, classes, -1) / temperature, dim=-1)
    teacher = F.softmax(teacher_logits.reshape(batch, classes, -1) / temperature, dim=-1)
    per_channel = (torch.xlogy(teacher, teacher) - teacher * log_student).sum(dim=-1)
    return per_channel.mean() * temperature**2


def distillation_weight(step: int, preadapt_steps: int, ramp_steps: int) -> float:
    """`lam_t` of gradual distillation: 0 before `preadapt_steps`, a linear ramp over `ramp_steps`, then 1."""
    if step < preadapt_steps:
        return 0.0
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, (step - preadapt_steps) / ramp_steps)


def class_iou_counts(
    prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class intersection and union pixel counts over the `valid` pixels.

    Args:
        prediction, target: `(B, H, W)` long class maps.
        valid: `(B, H, W)` bool.

    Returns:
        `(intersection, union)`, each `(num_classes,)` float.
    """
    valid = valid & (target >= 0) & (target < num_classes)
    # Out-of-range ids go to an extra bin that is dropped, which avoids boolean-mask indexing. Counting by
    # scatter_add into a fixed-size vector (not bincount, whose output size needs the input's max) keeps the
    # training step free of host synchronisations on an accelerator.
    pred = torch.where(valid, prediction, num_classes).flatten()
    true = torch.where(valid, target, num_classes).flatten()
    hit = torch.where(pred == true, true, num_classes)

    def count(index: torch.Tensor) -> torch.Tensor:
        bins = torch.zeros(num_classes + 1, dtype=torch.long, device=index.device)
        return bins.scatter_add_(0, index, torch.ones_like(index))[:num_classes]

    pred_count, true_count, intersection = count(pred), count(true), count(hit)
    union = pred_count + true_count - intersection
    return intersection.float(), union.float()


def update_class_discrepancy(
    discrepancy: torch.Tensor,
    seen: torch.Tensor,
    intersection: torch.Tensor,
    union: torch.Tensor,
    momentum: float = 0.99,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running mean of `d_c = 1 - IoU_c` for the classes present in this step (`union > 0`).

    A class seen for the first time takes its value directly (no bias towards the zero initialisation).

    Returns:
        `(discrepancy, seen)`, new tensors of shape `(C,)`.
    """
    present = union > 0
    current = 1.0 - intersection / union.clamp(min=1)
    blended = torch.where(seen, momentum * discrepancy + (1 - momentum) * current, current)
    return torch.where(present, blended, discrepancy), seen | present


def inconsistency_class_weights(discrepancy: torch.Tensor, seen: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """`w_c = 1 + beta * d_c / mean(d)` over the classes seen so far, renormalised to mean 1; unseen classes weigh 1.

    Returns:
        `(C,)` float tensor.
    """
    weights = torch.ones_like(discrepancy)
    if beta == 0:
        return weights
    # Written without data-dependent branches (no host synchronisation): no class seen, or a zero mean
    # discrepancy, gives weights of 1.
    seen_count = seen.sum()
    mean_d = torch.where(seen, discrepancy, 0).sum() / seen_count.clamp(min=1)
    raw = 1.0 + beta * discrepancy / mean_d.clamp(min=torch.finfo(discrepancy.dtype).tiny)
    raw = raw / (torch.where(seen, raw, 0).sum() / seen_count.clamp(min=1))
    return torch.where(seen & (mean_d > 0), raw, weights)


def feature_distance(
    features: torch.Tensor,
    reference_features: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[int, ...],
    scale_min_ratio: float = 0.75,
    num_classes: int = 19,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """DAFormer's ImageNet feature distance on pixels of `classes` (thing-class regularisation).

    Args:
        features, reference_features: `(B, D, h, w)` bottleneck features of the trained and the frozen
            ImageNet encoder.
        labels: `(B, H, W)` source labels; each feature cell takes the class that covers at least
            `scale_min_ratio` of its patch, and is skipped otherwise.

    Returns:
        0-dim mean L2 distance over the selected cells (0 when no cell qualifies).
    """
    h, w = features.shape[-2:]
    # Ignore goes to an extra one-hot bin so it can never win a cell.
    binned = torch.where(labels == ignore_index, num_classes, labels)
    onehot = F.one_hot(binned, num_classes + 1).permute(0, 3, 1, 2).float()
    share = F.adaptive_avg_pool2d(onehot, (h, w))
    top_share, top_class = share[:, :num_classes].max(dim=1)
    # compared with Python ints: a class tensor copied from the host would wait for the device
    in_classes = torch.zeros_like(top_class, dtype=torch.bool)
    for cls in classes:
        in_classes |= top_class == cls
    selected = (top_share >= scale_min_ratio) & in_classes
    distance = torch.linalg.vector_norm(features.float() - reference_features.float(), dim=1)
    return (distance * selected).sum() / selected.sum().clamp(min=1)
