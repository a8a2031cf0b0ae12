"""One micro-step of docs/method.md as data: named, already-weighted loss terms and diagnostics.

Read top to bottom, this module follows docs/method.md, "One training step": what the terms read (`StepTensors`),
built by `step_tensors` in the method's order (1. pseudo-labels, 2. mixing and strong augmentation, the forward
passes, the weights of 4.); the loss terms (3. auxiliary student, 4. student, 6. feature distance, then this
project's additions); `TERMS`, their order in the sum (5.); and `duda_step`, which computes them.

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
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from duda_hf.data.labels import IGNORE_INDEX, NUM_CLASSES
from duda_hf.method.config import DISTILLING_METHODS, DudaConfig, resolve_block_size
from duda_hf.method.losses import (
    channel_distillation_loss,
    distillation_weight,
    feature_distance,
    fuse_teacher_logits,
    fuse_teacher_probs,
    inconsistency_class_weights,
    kd_loss,
    pseudo_label,
    target_pixel_weight,
    weighted_cross_entropy,
)
from duda_hf.method.masking import block_mask, mask_images
from duda_hf.method.mixing import class_mix_masks, mix, sample_augment_params, strong_augment
from duda_hf.networks.daformer.modeling_daformer import hrda_resize
from duda_hf.networks.duda_model import DudaModel
from duda_hf.networks.inputs import input_normalization


@dataclass
class StepTensors:
    """What the loss terms of one micro-step read: the batch, the networks' outputs and the tensors derived from them.

    Images are RGB in [0, 1] (fp32), labels `(B, H, W)` long; logits are at the networks' output size (1/4 of the
    input). The fields after `student_source` are None for `source_only`; `lam`, `class_weights` and `pixel_weight`
    are None unless the method is `duda` or `distill`; `aux_*` unless it is `duda`, and in the distillation stage; `student_target`
    is None without a clean-target term; `reference_features` is None without the feature distance.
    """

    model: DudaModel  # the networks, unwrapped (read only)
    args: DudaConfig
    step: int  # the optimizer steps done before this one (`Trainer.state.global_step`)
    source_image: torch.Tensor
    source_label: torch.Tensor
    target_image: torch.Tensor
    outputs: dict[str, torch.Tensor]  # the trained networks' forward pass (`DudaModel.forward`)
    student_source: torch.Tensor
    student_mix: torch.Tensor | None = None
    student_target: torch.Tensor | None = None  # the student on the clean target images (`kd_clean_target`, `cwd_weight`)
    aux_source: torch.Tensor | None = None
    aux_mix: torch.Tensor | None = None
    teacher_logits: list[torch.Tensor] | None = None  # each teacher's logits on the clean target images
    probs_tau: torch.Tensor | None = None  # the fused teachers' softmax at the KD temperature, at label size
    pseudo_label: torch.Tensor | None = None
    quality: torch.Tensor | None = None  # 0-dim: the share of confident target pixels (the quality weight)
    outside_margins: torch.Tensor | None = None  # (B, H, W): 1 outside the ignore margins (top and bottom rows), 0 in them
    mask: torch.Tensor | None = None  # (B, H, W) ClassMix mask: 1 where the source pixel is pasted
    mixed_image: torch.Tensor | None = None  # after strong augmentation
    mixed_label: torch.Tensor | None = None
    mixed_weight: torch.Tensor | None = None  # 1 on source pixels, quality outside the margins on target pixels
    lam: float | None = None  # lam_t of gradual distillation
    class_weights: torch.Tensor | None = None  # (19,) inconsistency weights of this step
    class_pixel_weight: torch.Tensor | None = None  # (B, H, W): the class weight on target pixels, 1 on source pixels
    pixel_weight: torch.Tensor | None = None  # mixed_weight times class_pixel_weight
    reference_features: torch.Tensor | None = None  # the frozen ImageNet encoder's features of the source images
    masked_image: torch.Tensor | None = None  # MIC's masked images (`mic_lambda` > 0), RGB in [0, 1]
    masked_label: torch.Tensor | None = None  # their labels: the pseudo-labels (and source labels in mode 'separate')
    masked_weight: torch.Tensor | None = None  # their pixel weights: the quality outside the margins (1 on source images)
    aux_masked: torch.Tensor | None = None  # the auxiliary student's logits on them
    student_masked: torch.Tensor | None = None  # the student's (self_training, or duda with `mic_student`)
    detail_box: tuple[int, int, int, int] | None = None  # HRDA (`--hrda`): the auxiliary student's detail crop, pixels
    aux_detail_source: torch.Tensor | None = None  # HRDA: the detail crop's own logits, source / mix / masked images
    aux_detail_mix: torch.Tensor | None = None
    aux_detail_masked: torch.Tensor | None = None


# ---- what the terms read, in the method's order ----
def step_tensors(
    model,
    inputs: dict[str, torch.Tensor],
    args: DudaConfig,
    *,
    step: int,
    generator: torch.Generator,
    autocast: Callable[[], AbstractContextManager],
) -> StepTensors:
    """Pseudo-labels, ClassMix, strong augmentation, the forward passes and the student's weights of one micro-step.

    Args:
        model: the `DudaModel`, possibly wrapped (DDP); its trained networks run through the wrapper.
        inputs: a batch of `DudaTrainDataset` (uint8 images, long labels).
        generator: the only random source of the mix and the augmentation.
        autocast: a context manager factory for the networks' forward passes (`Accelerator.autocast`); everything
            after them is computed in fp32.
    """
    duda = extract_model_from_parallel(model)  # what `Accelerator.unwrap_model` returns
    source_image = inputs["source_image"].float() / 255
    source_label = inputs["source_label"].long()
    target_image = inputs["target_image"].float() / 255
    # the batch's fields; the rest are given below, once, by keyword
    tensors = partial(
        StepTensors, model=duda, args=args, step=step, source_image=source_image, source_label=source_label, target_image=target_image
    )
    if args.method == "source_only":
        with autocast():
            outputs = model(source_image)
        return tensors(outputs=outputs, student_source=outputs["student_logits"])

    # 1. Pseudo-labels from the (fused) teachers on the clean target images (softmax and labels in fp32).
    with autocast():
        teacher_logits = duda.teacher_logits(target_image)
    label_size = source_label.shape[-2:]
    probs, probs_tau = fuse_teacher_probs(teacher_logits, args.teacher_weights or None, args.kd_temperature, size=label_size)
    pseudo, quality = pseudo_label(probs, args.pseudo_label_threshold)
    outside_margins = target_pixel_weight(
        torch.ones((), device=pseudo.device), pseudo.shape, args.pseudo_label_ignore_top, args.pseudo_label_ignore_bottom
    )
    if "target_valid" in inputs:  # `--pseudo_label_image_margins`: the image's margins, marked before it was cropped
        outside_margins = outside_margins * inputs["target_valid"].to(outside_margins.dtype)
    target_weight = quality * outside_margins  # w_t

    # 2. ClassMix and strong augmentation.
    if args.class_mix:
        mask = class_mix_masks(source_label, generator)
    else:
        mask = torch.zeros_like(source_label, dtype=torch.float32)
    mixed_image = mix(mask, source_image, target_image)
    mixed_label = mix(mask, source_label, pseudo)
    mixed_weight = mix(mask, torch.ones_like(target_weight), target_weight)
    mixed_image = strong_augment(mixed_image, augment_params(args, source_image.shape[0], generator, source_image.device))

    # MIC's masked images, for the network that feeds the EMA teacher (and the student with `mic_student`).
    stage = args.in_distill_stage(step)
    masked = None
    if args.mic_lambda > 0 and not stage:
        masked = masked_batch(duda, args, source_image, source_label, target_image, pseudo, target_weight, generator)
    masked_image, masked_label, masked_weight = masked if masked is not None else (None, None, None)
    aux_masked_input = masked_image if duda.aux_student is not None else None
    student_masked_input = masked_image if duda.aux_student is None or args.mic_student else None

    # The source and mixed batches through one forward pass of each trained network (the student also takes the
    # clean target images for the clean-target terms, and each network the masked images it learns from); in the
    # distillation stage the auxiliary student stops.
    use_fd = duda.imagenet_encoder is not None and args.fd_lambda > 0 and not stage
    distilling = args.method in DISTILLING_METHODS
    # HRDA: the auxiliary student's detail crop (one for its whole batch, as HRDA's forward has one), drawn on the host
    # from a generator of its own so that no device waits and the other draws stay those of a run without HRDA
    box = student_scale = None
    if duda.hrda and not stage:
        box_generator = torch.Generator().manual_seed(generator.initial_seed() + 1)
        crop = duda.aux_student.config.hrda_detail_crop
        box = hrda_detail_box(tuple(source_image.shape[-2:]), tuple(crop), args.hrda_crop_divisible, box_generator)
    if duda.hrda and args.hrda_student_input == "context":
        student_scale = args.hrda_context_scale
    clean_target = target_image if distilling and (args.kd_clean_target > 0 or args.cwd_weight > 0) else None
    student_extras = [images for images in (clean_target, student_masked_input) if images is not None]
    with autocast():
        outputs = model(
            torch.cat([source_image, mixed_image]),
            output_features=use_fd,
            student_extra=torch.cat(student_extras) if student_extras else None,
            aux_extra=aux_masked_input,
            aux=not stage,
            aux_detail_box=box,
            student_scale=student_scale or 1.0,
        )
        # HRDA: the feature distance on the context (HRDA's `feature_scale` 0.5), both networks on the context image
        fd_images = hrda_resize(source_image, args.hrda_context_scale) if duda.hrda else source_image
        reference_features = duda.imagenet_features(fd_images) if use_fd else None
    student_source, student_mix = outputs["student_logits"].split(source_image.shape[0])
    student_target = student_masked = None
    if student_extras:
        extra = outputs["student_extra_logits"].split([images.shape[0] for images in student_extras])
        student_target = extra[0] if clean_target is not None else None
        student_masked = extra[-1] if student_masked_input is not None else None
    aux_source = aux_mix = lam = class_weights = class_pixel_weight = pixel_weight = None
    aux_detail_source = aux_detail_mix = None
    if distilling:
        # 3. The auxiliary student's logits ('duda'); 4. the student's weights: lam_t of gradual distillation and the
        # inconsistency weight c of each target pixel's class (1 on source pixels).
        if duda.aux_student is not None and not stage:
            aux_source, aux_mix = outputs["aux_logits"].split(source_image.shape[0])
            if box is not None:
                aux_detail_source, aux_detail_mix = outputs["aux_detail_logits"].split(source_image.shape[0])
        lam = 1.0 if stage else distillation_weight(step, args.preadapt_steps_resolved, args.distill_ramp_steps_resolved)
        class_weights = inconsistency_class_weights(duda.class_discrepancy, duda.class_seen, args.inconsistency_beta)
        class_pixel_weight = torch.where(mask == 0, class_weights[mixed_label.clamp(max=NUM_CLASSES - 1)], 1.0)
        pixel_weight = mixed_weight * class_pixel_weight
    return tensors(
        outputs=outputs,
        student_source=student_source,
        student_mix=student_mix,
        student_target=student_target,
        aux_source=aux_source,
        aux_mix=aux_mix,
        teacher_logits=teacher_logits,
        probs_tau=probs_tau,
        pseudo_label=pseudo,
        quality=quality,
        outside_margins=outside_margins,
        mask=mask,
        mixed_image=mixed_image,
        mixed_label=mixed_label,
        mixed_weight=mixed_weight,
        lam=lam,
        class_weights=class_weights,
        class_pixel_weight=class_pixel_weight,
        pixel_weight=pixel_weight,
        reference_features=reference_features,
        masked_image=masked_image,
        masked_label=masked_label,
        masked_weight=masked_weight,
        aux_masked=outputs.get("aux_extra_logits"),
        student_masked=student_masked,
        detail_box=box,
        aux_detail_source=aux_detail_source,
        aux_detail_mix=aux_detail_mix,
        aux_detail_masked=outputs.get("aux_extra_detail_logits"),
    )


def augment_params(args: DudaConfig, batch: int, generator: torch.Generator, device: torch.device):
    """Colour-jitter and blur draws for `batch` images with the run's settings (`--color_jitter_*`, `--blur_*`)."""
    return sample_augment_params(
        batch,
        generator,
        device,
        jitter_strength=args.color_jitter_strength,
        jitter_p=args.color_jitter_p,
        blur_p=args.blur_p,
        blur_sigma=(args.blur_sigma_min, args.blur_sigma_max),
    )


def masked_batch(
    duda: DudaModel,
    args: DudaConfig,
    source_image: torch.Tensor,
    source_label: torch.Tensor,
    target_image: torch.Tensor,
    pseudo: torch.Tensor,
    target_weight: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MIC's masked images with their labels and pixel weights (its `MaskingConsistencyModule`, `mask_mode`).

    'separatetrg(aug)': the target images with the teacher's pseudo-labels and their weights; 'separate': the first
    half of the source images (`B // 2`, MIC's one of two) with their labels at weight 1, then the first `B - B // 2`
    target images. With 'aug', colour jitter and blur with draws of their own (MIC's `strong_transform` without the
    mix). Then MIC's block mask, its masked pixels set to the mean colour of the network that learns from them.
    """
    batch = target_image.shape[0]
    if args.mic_mode == "separate":
        sources = batch // 2
        images = torch.cat([source_image[:sources], target_image[: batch - sources]])
        labels = torch.cat([source_label[:sources], pseudo[: batch - sources]])
        weights = torch.cat([torch.ones_like(target_weight[:sources]), target_weight[: batch - sources]])
    else:
        images, labels, weights = target_image, pseudo, target_weight
    if args.mic_mode.endswith("aug"):
        images = strong_augment(images, augment_params(args, batch, generator, images.device))
    size = tuple(images.shape[-2:])
    block = resolve_block_size(args.mic_block_size, *size)
    mask = block_mask(batch, size, block, args.mic_mask_ratio, generator, images.device)
    mean, _, _ = input_normalization(duda.ema_source)
    return mask_images(images, mask, mean), labels, weights


def hrda_detail_box(
    size_hw: tuple[int, int], crop_hw: tuple[int, int], divisible: int, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """HRDA's `get_crop_bbox`: a detail crop `(y1, y2, x1, x2)` of `crop_hw` inside an image of `size_hw`, each offset
    drawn uniformly among the multiples of `divisible` up to the margin (`randint(0, (margin + 1) // divisible) *
    divisible`; the whole image when it is the crop's size)."""
    offsets = []
    for size, crop in zip(size_hw, crop_hw):
        if crop > size:
            raise ValueError(
                f"HRDA's detail crop {tuple(crop_hw)} is larger than the training crop {tuple(size_hw)}; pass a smaller --hrda_detail_crop"
            )
        choices = max((size - crop + 1) // divisible, 1)
        offsets.append(int(torch.randint(choices, (1,), generator=generator)) * divisible)
    (y1, x1), (crop_h, crop_w) = offsets, crop_hw
    return y1, y1 + crop_h, x1, x1 + crop_w


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
