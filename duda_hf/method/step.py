"""One micro-step of docs/method.md as data: named, already-weighted loss terms and diagnostics.

Read top to bottom, this module follows docs/method.md, "One training step", from the loss terms on: the terms
(3. auxiliary student, 4. student, 6. feature distance, then this project's additions); `TERMS`, their order in the
sum (5.); and `duda_step`, which computes them. What the terms read (`StepTensors`: 1. pseudo-labels, 2. mixing and
strong augmentation, the forward passes, the weights of 4.) is built by `step_tensors` in
`duda_hf/method/step_tensors.py` (`StepTensors`, which a custom loss term reads, is also importable from here).

`duda_step` writes nothing to the trainer, the networks' parameters or the inconsistency state (a network's own
forward pass in training mode still updates its BatchNorm statistics, as any forward does). `DudaTrainer.compute_loss`
does the rest in one place (7. after the step): it makes the micro-step's random generator, calls `duda_step`,
updates the inconsistency state, keeps the debug picture's tensors, adds the terms up
(`loss = sum(result.terms.values())`), checks that they are finite and logs them.

Loss terms are `LossTerm(name, compute)`: `compute(tensors)` takes the step's `StepTensors` and returns the term
already multiplied by its weight, a 0-dim fp32 tensor, or None when the term is off at this step (e.g. the hard
student term once `lam_t` is 1). The trainer's `loss_terms=` argument appends more (docs/design.md, "Adding a
loss term").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from duda_hf.data.labels import IGNORE_INDEX, NUM_CLASSES
from duda_hf.method.config import DudaConfig
from duda_hf.method.losses import (
    channel_distillation_loss,
    feature_distance,
    fuse_teacher_logits,
    kd_loss,
    weighted_cross_entropy,
)
from duda_hf.method.mixing import mix
from duda_hf.method.step_tensors import StepTensors, step_tensors


class LossTerm(NamedTuple):
    """A named loss term: `compute(tensors)` returns the weighted term, or None when it is off at this step."""

    name: str
    compute: Callable[[StepTensors], torch.Tensor | None]


@dataclass
class StepResult:
    """The loss as named terms (already weighted; the loss is their sum, in this order) and what else is logged.

    `diagnostics` are logged beside the terms: host floats as they are, 0-dim tensors as their mean over the
    logging interval, and a `(19,)` tensor `name` per class as `name_<class>`.
    """

    terms: dict[str, torch.Tensor]
    diagnostics: dict[str, torch.Tensor | float] = field(default_factory=dict)
    tensors: StepTensors | None = None


# ---- the loss terms ----
# 3. The auxiliary student (DAFormer recipe; with HRDA, its fused and detail losses).
def _aux_ce(
    t: StepTensors, logits: torch.Tensor, detail: torch.Tensor | None, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The auxiliary student's weighted cross-entropy; with HRDA (`detail` given), HRDA's `HRDAHead.losses`:
    `(1 - hrda_detail_loss) * wCE(fused) + hrda_detail_loss * wCE(detail crop, labels and weights cropped alike)`."""
    loss = weighted_cross_entropy(logits, labels, weights, denominator=t.args.loss_denominator)
    if detail is None:
        return loss
    y1, y2, x1, x2 = t.detail_box
    crop_weights = None if weights is None else weights[..., y1:y2, x1:x2]
    detail_loss = weighted_cross_entropy(detail, labels[..., y1:y2, x1:x2], crop_weights, denominator=t.args.loss_denominator)
    return (1 - t.args.hrda_detail_loss) * loss + t.args.hrda_detail_loss * detail_loss


def aux_source_ce(t: StepTensors) -> torch.Tensor | None:
    """Off in the distillation stage, where the auxiliary student stops."""
    return None if t.aux_source is None else _aux_ce(t, t.aux_source, t.aux_detail_source, t.source_label)


def aux_mix_ce(t: StepTensors) -> torch.Tensor | None:
    return None if t.aux_mix is None else _aux_ce(t, t.aux_mix, t.aux_detail_mix, t.mixed_label, t.mixed_weight)


# 4. The student: the source, then the mix (hard pseudo-labels, then more and more the teachers' soft output).
def student_source_ce(t: StepTensors) -> torch.Tensor | None:
    """Off only in a distillation stage that learns from the clean target alone (`distill_stage_target_only`)."""
    if _target_only_stage(t):
        return None
    return weighted_cross_entropy(t.student_source, t.source_label, denominator=t.args.loss_denominator)


def _target_only_stage(t: StepTensors) -> bool:
    return t.args.distill_stage_target_only and t.args.in_distill_stage(t.step)


def student_mix_hard(t: StepTensors) -> torch.Tensor | None:
    """`(1 - lam_t) * wCE` on hard pseudo-labels with the class weights; off once `lam_t` is 1."""
    if t.lam >= 1:
        return None
    return (1 - t.lam) * weighted_cross_entropy(t.student_mix, t.mixed_label, t.pixel_weight, denominator=t.args.loss_denominator)


def student_kd(t: StepTensors) -> torch.Tensor | None:
    """`lam_t * KD` towards the teachers' soft output (one-hot on source pixels); off while `lam_t` is 0."""
    if t.lam <= 0 or _target_only_stage(t):
        return None
    source_onehot = F.one_hot(t.source_label.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float()
    soft_target = mix(t.mask, source_onehot, t.probs_tau)
    valid = t.mixed_label != IGNORE_INDEX
    return t.lam * kd_loss(t.student_mix, soft_target, t.args.kd_temperature, _kd_mix_weight(t), valid, t.args.loss_denominator)


def _kd_mix_weight(t: StepTensors) -> torch.Tensor:
    """The soft term's per-pixel weight on the mix: `pixel_weight` as specified; with `kd_confidence_weight` false,
    target pixels outside the margins weigh their class weight, not times the quality."""
    if t.args.kd_confidence_weight:
        return t.pixel_weight
    return mix(t.mask, torch.ones_like(t.outside_margins), t.outside_margins) * t.class_pixel_weight


# The self-training baseline's student learns from the mix as DAFormer's network does.
def student_mix_ce(t: StepTensors) -> torch.Tensor:
    """Self-training: the student learns from the mixed batch as DAFormer's network does."""
    return weighted_cross_entropy(t.student_mix, t.mixed_label, t.mixed_weight, denominator=t.args.loss_denominator)


# 6. ImageNet feature distance (DAFormer).
def feature_distance_term(t: StepTensors) -> torch.Tensor | None:
    """`fd_lambda * FD` on the network that makes the pseudo-labels; off without an ImageNet encoder."""
    if t.reference_features is None:
        return None
    batch = t.source_image.shape[0]
    distance = feature_distance(
        t.outputs["features"][:batch],
        t.reference_features,
        t.source_label,
        tuple(t.args.fd_classes),
        scale_min_ratio=t.args.fd_scale_min_ratio,
    )
    return t.args.fd_lambda * distance


# Beyond the paper (docs/method.md): the student also learns the teachers on the clean target image.
def student_kd_clean_target(t: StepTensors) -> torch.Tensor | None:
    """`kd_clean_target * lam_t * KD` on the clean target image (this project's addition); off at weight 0 or lam_t 0.

    Every target pixel outside the margins counts, weighted by its pseudo-label's class weight (and by the quality
    share when `kd_confidence_weight` is true, as the mixed term's target pixels are).
    """
    if t.args.kd_clean_target <= 0 or t.lam <= 0:
        return None
    weight = t.outside_margins * t.class_weights[t.pseudo_label]
    if t.args.kd_confidence_weight:
        weight = weight * t.quality
    kd = kd_loss(t.student_target, t.probs_tau, t.args.kd_temperature, weight, denominator=t.args.loss_denominator)
    return t.args.kd_clean_target * t.lam * kd


def student_cwd_clean_target(t: StepTensors) -> torch.Tensor | None:
    """`cwd_weight * lam_t * CWD(s(x_t), T(x_t))` (this project's addition): channel-wise distillation towards the
    teachers' logits (their weighted mean), at the logits' size, outside the margins; off at weight 0 or lam_t 0."""
    if t.args.cwd_weight <= 0 or t.lam <= 0:
        return None
    teacher = fuse_teacher_logits(t.teacher_logits, t.args.teacher_weights or None)
    valid = F.interpolate(t.outside_margins[:, None], size=teacher.shape[-2:], mode="nearest")[:, 0] > 0
    cwd = channel_distillation_loss(t.student_target, teacher, t.args.cwd_temperature, valid)
    return t.args.cwd_weight * t.lam * cwd


# MIC's masked image consistency (Hoyer et al., CVPR 2023): the network that feeds the EMA teacher learns the
# teacher's pseudo-labels of the unmasked image from the masked one.
def _masked_ce(t: StepTensors, logits: torch.Tensor | None) -> torch.Tensor | None:
    """`mic_lambda * wCE` of a network's `logits` on the masked images; None when that network did not see them."""
    if logits is None:
        return None
    return t.args.mic_lambda * weighted_cross_entropy(logits, t.masked_label, t.masked_weight, denominator=t.args.loss_denominator)


def aux_masked_ce(t: StepTensors) -> torch.Tensor | None:
    """The auxiliary student's term; off at weight 0 and in the distillation stage (with HRDA, its fused and detail
    losses, as MIC(HRDA) trains the masked image)."""
    if t.aux_masked is None:
        return None
    return t.args.mic_lambda * _aux_ce(t, t.aux_masked, t.aux_detail_masked, t.masked_label, t.masked_weight)


def student_masked_ce(t: StepTensors) -> torch.Tensor | None:
    """The student's term: in self_training (it feeds the EMA teacher), or in duda with `mic_student`."""
    return _masked_ce(t, t.student_masked)


# 5. The total: per method, the terms in the order they are added up (a new term goes last, so that existing runs
# keep their bits).
TERMS: dict[str, tuple[LossTerm, ...]] = {
    "source_only": (LossTerm("loss_student_source", student_source_ce),),
    "self_training": (
        LossTerm("loss_student_source", student_source_ce),
        LossTerm("loss_student_mix", student_mix_ce),
        LossTerm("loss_feature_distance", feature_distance_term),
        LossTerm("loss_student_masked", student_masked_ce),
    ),
    "duda": (
        LossTerm("loss_aux_source", aux_source_ce),
        LossTerm("loss_aux_mix", aux_mix_ce),
        LossTerm("loss_student_source", student_source_ce),
        LossTerm("loss_student_mix", student_mix_hard),
        LossTerm("loss_student_kd", student_kd),
        LossTerm("loss_feature_distance", feature_distance_term),
        LossTerm("loss_student_kd_clean", student_kd_clean_target),
        LossTerm("loss_student_cwd", student_cwd_clean_target),
        LossTerm("loss_aux_masked", aux_masked_ce),
        LossTerm("loss_student_masked", student_masked_ce),
    ),
    # The student's terms of 'duda' (4. and this project's additions), from the frozen teachers.
    "distill": (
        LossTerm("loss_student_source", student_source_ce),
        LossTerm("loss_student_mix", student_mix_hard),
        LossTerm("loss_student_kd", student_kd),
        LossTerm("loss_student_kd_clean", student_kd_clean_target),
        LossTerm("loss_student_cwd", student_cwd_clean_target),
    ),
}


# ---- the step ----
def duda_step(
    model,
    inputs: dict[str, torch.Tensor],
    args: DudaConfig,
    *,
    step: int,
    generator: torch.Generator,
    autocast: Callable[[], AbstractContextManager],
    extra_terms: Iterable[LossTerm] = (),
) -> StepResult:
    """The terms of `TERMS[args.method]` and then `extra_terms`, each computed once, in order; None terms are left out."""
    tensors = step_tensors(model, inputs, args, step=step, generator=generator, autocast=autocast)
    terms: dict[str, torch.Tensor] = {}
    for term in (*TERMS[args.method], *extra_terms):
        value = term.compute(tensors)
        if value is not None:
            terms[term.name] = value
    return StepResult(terms, step_diagnostics(tensors), tensors)


def step_diagnostics(t: StepTensors) -> dict[str, torch.Tensor | float]:
    """What the log shows beside the terms: the pseudo-label quality, `lam_t`, the 19 class weights and how much of
    the teacher the student sees on the mix (`teacher_pixel_share`, `teacher_pixel_weight`)."""
    diagnostics: dict[str, torch.Tensor | float] = {}
    if t.quality is not None:
        diagnostics["pseudo_label_quality"] = t.quality
    if t.lam is not None:
        diagnostics["lam_t"] = t.lam  # a host float: logged as is
        diagnostics["class_weight"] = t.class_weights
        # what the student sees of the teacher on the mix: the share of its pixels that carry the teacher's output
        # (target pixels outside the margins), and the mean weight the soft term gives them
        teacher_pixels = (t.mask == 0) * t.outside_margins
        diagnostics["teacher_pixel_share"] = teacher_pixels.mean()
        diagnostics["teacher_pixel_weight"] = (_kd_mix_weight(t) * teacher_pixels).sum() / teacher_pixels.sum().clamp(min=1)
    return diagnostics
