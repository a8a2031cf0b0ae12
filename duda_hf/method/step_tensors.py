"""What the loss terms of one micro-step read (`StepTensors`), built in the method's order by `step_tensors`.

docs/method.md, "One training step", up to the loss terms: 1. pseudo-labels from the (fused) teachers, 2. ClassMix
and strong augmentation, MIC's masked images and HRDA's detail crop, the forward passes of the trained networks, and
the student's weights of 4. (lam_t, the inconsistency class weights). The terms themselves, their order and
`duda_step` are in `duda_hf/method/step.py`.

Nothing here writes to the trainer, the networks' parameters or the inconsistency state (a network's own forward pass
in training mode still updates its BatchNorm statistics, as any forward does); every random draw comes from the
micro-step's generator.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial

import torch
from accelerate.utils import extract_model_from_parallel

from duda_hf.data.labels import NUM_CLASSES
from duda_hf.method.config import DISTILLING_METHODS, DudaConfig, resolve_block_size
from duda_hf.method.losses import (
    distillation_weight,
    fuse_teacher_probs,
    inconsistency_class_weights,
    pseudo_label,
    target_pixel_weight,
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
