"""Configuration: `DudaConfig`, every knob of docs/method.md on top of `TrainingArguments`.

One source of defaults: the DAFormer recipe (Hoyer et al., CVPR 2022; in the DAFormer repository `configs/daformer/*` and
`mmseg/models/uda/dacs.py`) and the DUDA components as docs/method.md reconstructs them. Recipes in `configs/` override
only what differs. The rules a configuration must satisfy live in `config_checks.py`; the model and data arguments in
`duda_hf/cli/arguments.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from duda_hf.data.labels import THING_CLASSES
from duda_hf.method.config_checks import (
    DISTILLING_METHODS,
    EMA_SCHEDULES,
    HRDA_STUDENT_INPUTS,
    LOSS_DENOMINATORS,
    LR_SCHEDULES,
    METHODS,
    MIC_MODES,
    WEIGHT_DECAY_EXEMPT,
    check_config,
    check_flag,
)

# the names other modules import from here (the choice tables and check_flag now live in config_checks)
__all__ = [
    "DISTILLING_METHODS",
    "EMA_SCHEDULES",
    "LOSS_DENOMINATORS",
    "LR_SCHEDULES",
    "METHODS",
    "MIC_MODES",
    "WEIGHT_DECAY_EXEMPT",
    "DudaConfig",
    "check_flag",
    "flag_help",
    "resolve_block_size",
    "resolve_steps",
]

logger = logging.getLogger(__name__)


def flag_help(text: str, **extra) -> dict:
    return {"help": text, **extra}


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def resolve_block_size(value: float, height: int, width: int) -> int:
    """MIC's block side in pixels: `value` itself, or below 1 that fraction of the shorter side (at least 1)."""
    return max(1, round(value * min(height, width))) if value < 1 else int(value)


def resolve_steps(value: float, max_steps: int) -> int:
    """A step count given as an int, or as a fraction of `max_steps` when below 1 (like `warmup_steps`)."""
    return round(value * max_steps) if 0 < value < 1 else int(value)


@dataclass
class DudaConfig(TrainingArguments):
    r"""
    Configuration class for [`DudaTrainer`]: DUDA's knobs with the DAFormer recipe's defaults, on top of
    [`~transformers.TrainingArguments`].

    The list below holds every field this class declares, and the `TrainingArguments` fields whose defaults it changes
    or which `__post_init__` fills or turns off; for the others see `TrainingArguments`. An entry whose default differs
    from Trainer's says so ("replaces `TrainingArguments`' ..."). "DAFormer: X" is a value read in its repository:
    `lhoyer/DAFormer/configs/_base_/uda/dacs.py` and `dacs_a999_fdthings.py` beside it, `schedules/adamw.py` and
    `schedules/poly10warm.py`, `datasets/uda_gta_to_cityscapes_512x512.py` and `default_runtime.py` under `_base_`, the
    GTA->Cityscapes config `lhoyer/DAFormer/configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py`
    and `lhoyer/DAFormer/mmseg/models/uda/dacs.py`; "HRDA: X" in `lhoyer/HRDA/configs/hrda/gtaHR2csHR_hrda.py`; "MIC: X"
    in `lhoyer/MIC/seg/configs/mic/gtaHR2csHR_mic_hrda.py` and `lhoyer/MIC/seg/experiments.py`.

    `__post_init__` first checks every rule of `config_checks.check_config` (a `ValueError` names the flag, its value
    and what it must be), then fills the `None` ("auto") defaults as their entries say; where it changes a value the
    user could have written (`use_cpu`, `dataloader_pin_memory`, the `torch_compile` flags) it logs one line.

    [`~transformers.HfArgumentParser`] (`duda-train`) makes each field a command-line flag; its `--help` text is the
    field's `help` metadata.

    Parameters:
        > Parameters that control the method and its teachers

        method (`str`, *optional*, defaults to `"duda"`):
            Training method: `"duda"` (a large network, the auxiliary student, adapts with its EMA teacher as in
            DAFormer, and the deployed student learns from them by gradual distillation; docs/method.md), `"distill"`
            (the student alone learns DUDA's student terms from the frozen teachers named by `teacher`, e.g. an
            imported DAFormer/HRDA/MIC checkpoint), `"self_training"` (DAFormer's EMA self-training of the student
            alone) or `"source_only"`.
        teacher (`list[str]`, *optional*, defaults to `[]`):
            `method="distill"` only, and needed there: the frozen teachers the student learns from, each a folder (an
            imported checkpoint, a finished run's `teacher/`), a Hub id, a preset or `CHECKPOINT_DIR@role`; several are
            fused as DUDA fuses its teachers (`teacher_weights`).
        extra_teachers (`list[str]`, *optional*, defaults to `[]`):
            `method="duda"` only: frozen extra teachers (SegFormer Hub ids or folders with the 19 Cityscapes classes),
            fused with the EMA teacher.
        teacher_weights (`list[float]`, *optional*, defaults to `[]`):
            Fusion weights, non-negative with a positive sum: for `"duda"` the EMA teacher's first, then one per extra
            teacher; for `"distill"` one per `teacher`. Empty: equal weights.

        > Parameters that control the EMA teacher

        ema_alpha (`float`, *optional*, defaults to `0.999`):
            Largest EMA decay of the teacher, in [0, 1): after optimizer step t, alpha_t = min(1 - 1/(t+1), ema_alpha)
            (see `ema_schedule`). DAFormer: 0.999 (`dacs_a999_fdthings.py`; its base `dacs.py` has 0.99).
        ema_schedule (`str`, *optional*, defaults to `"daformer"`):
            How alpha_t starts. `"daformer"`: the teacher starts as a copy of the initial network, and alpha_t =
            min(1 - 1/(t+1), ema_alpha) after optimizer step t = 1, 2, ... (0.5, 0.667, ...), as in DAFormer's
            `dacs.py` (`_init_ema_weights` at iteration 0, `_update_ema(t)` at iteration t). `"copy_first"`: the first
            update copies the network, alpha_t = min(1 - 1/t, ema_alpha) (duda-hf before 2026-12-07).
        teacher_train_mode (`bool`, *optional*, defaults to `True`):
            Run the EMA teacher in train mode with dropout and drop-path off (BatchNorm on the target batch's
            statistics), as DAFormer's `dacs.py` does before it pseudo-labels. `False`: eval mode, BatchNorm on the
            running statistics, which the EMA averages like the weights (duda-hf before 2026-12-07).

        > Parameters that control the pseudo-labels and the pixel-wise losses

        pseudo_label_threshold (`float`, *optional*, defaults to `0.968`):
            Confidence, in [0, 1], a pseudo-labelled pixel needs to count in the quality weight q. DAFormer: 0.968.
        pseudo_label_ignore_top (`int`, *optional*, defaults to `15`):
            Rows at the top of each target crop whose pseudo-label weight is 0. DAFormer: 15 (its GTA->Cityscapes
            config, 512-pixel crops; `dacs.py` and HRDA have 0, HRDA using `pseudo_label_image_margins` instead).
        pseudo_label_ignore_bottom (`int`, *optional*, defaults to `120`):
            Rows at the bottom of each target crop whose pseudo-label weight is 0 (the ego car). DAFormer: 120 (the
            same config; `dacs.py` and HRDA have 0).
        pseudo_label_image_margins (`list[int]`, *optional*, defaults to `[]`):
            HRDA's pseudo-label cropping v2: the top, bottom, left and right pixels of each resized target image whose
            pseudo-labels weigh 0, marked before the image is cropped, so that only crops at its border lose pixels.
            Empty: off. HRDA: `[30, 240, 30, 30]` (`crop_pseudo_margins`), with the per-crop margins at 0.
        loss_denominator (`str`, *optional*, defaults to `"all_pixels"`):
            What the pixel-wise losses (cross-entropy, weighted cross-entropy, soft distillation) divide their weighted
            sum by: `"all_pixels"`, every pixel of the batch, ignored ones included (DAFormer's mmseg 0.16
            `cross_entropy`: the mean of the per-pixel loss, 0 at ignored pixels), or `"valid_pixels"`, those whose
            label is not 255 (duda-hf before 2026-12-07).

        > Parameters that control mixing and strong augmentation

        class_mix (`bool`, *optional*, defaults to `True`):
            ClassMix source classes onto the target image (half of each source image's classes; DAFormer:
            `mix="class"`). `False`: the student sees the plain target image.
        color_jitter_strength (`float`, *optional*, defaults to `0.2`):
            Colour-jitter strength, in [0, 1], for brightness, contrast, saturation and hue. DAFormer: 0.2.
        color_jitter_p (`float`, *optional*, defaults to `0.8`):
            Probability of colour jitter per mixed image. DAFormer: 0.8 as well, though written
            `color_jitter_probability=0.2`: the value a uniform draw must exceed (`dacs_transforms.color_jitter`).
        blur_p (`float`, *optional*, defaults to `0.5`):
            Probability of Gaussian blur per mixed image. DAFormer: 0.5 (a uniform draw above 0.5).
        blur_sigma_min (`float`, *optional*, defaults to `0.15`):
            Smallest Gaussian-blur sigma (> 0). DAFormer: 0.15.
        blur_sigma_max (`float`, *optional*, defaults to `1.15`):
            Largest Gaussian-blur sigma (at least `blur_sigma_min`). DAFormer: 1.15.

        > Parameters that control gradual distillation (the weight lam_t of the soft term)

        preadapt_steps (`float`, *optional*, defaults to `0.25`):
            Pre-adaptation steps with lam_t = 0 (hard pseudo-labels only); below 1, a fraction of the adaptation steps
            (`max_steps` less `distill_stage_steps`). DUDA as docs/method.md reconstructs it: 0.25.
        distill_ramp_steps (`float`, *optional*, defaults to `0.25`):
            Steps of the linear ramp of lam_t from 0 to 1 after pre-adaptation; below 1, a fraction of the adaptation
            steps. DUDA: 0.25.
        kd_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature tau (> 0) of the soft distillation loss (KL * tau^2).
        kd_confidence_weight (`bool`, *optional*, defaults to `True`):
            Weight the soft distillation term on target pixels by the pseudo-labels' confidence share (the quality
            weight of the hard term), as docs/method.md specifies. `False`: target pixels weigh 1 there (margins and
            class weights kept), so that the teacher's soft output teaches before its pseudo-labels are confident.

        > Parameters that control the student's extra terms and the distillation stage (this project's; off: the paper)

        kd_clean_target (`float`, *optional*, defaults to `0.0`):
            Weight of a second soft distillation term on the clean target image, lam_t * w * KD(s(x_t), p_tau), on the
            target pixels outside the margins, class-weighted (and weighted by the quality share unless
            `kd_confidence_weight` is `False`). 0: off.
        cwd_weight (`float`, *optional*, defaults to `0.0`):
            Weight of channel-wise distillation (Shu et al., ICCV 2021) on the clean target image, lam_t * w *
            CWD(s(x_t), T(x_t)): every class channel is a distribution over positions, so each class weighs the same
            whatever its area. The teachers' logits are fused by their weighted mean. 0: off.
        cwd_temperature (`float`, *optional*, defaults to `4.0`):
            Temperature (> 0) of channel-wise distillation, as Shu et al. use it.
        distill_stage_steps (`float`, *optional*, defaults to `0`):
            The last N of `max_steps` (below 1: a fraction of `max_steps`, rounded) are a distillation stage: the
            auxiliary student and the EMA teacher stop and the student alone learns from the frozen teacher with
            lam_t = 1. Fewer than `max_steps`; 0: off. Read by `method="duda"` only: `"self_training"` and
            `"source_only"` ignore it, so that one recipe serves every method, and `"distill"` refuses it.
        distill_stage_target_only (`bool`, *optional*, defaults to `False`):
            In the distillation stage the student learns from the teacher on the clean target image alone
            (`kd_clean_target`, `cwd_weight`): no source cross-entropy, no loss on the mixed image. Needs
            `distill_stage_steps` and one of the clean-target terms.

        > Parameters that control the class weights

        inconsistency_beta (`float`, *optional*, defaults to `1.0`):
            beta of the class inconsistency weights w_c = 1 + beta * d_c / mean(d); 0 turns them off.
        inconsistency_momentum (`float`, *optional*, defaults to `0.99`):
            EMA momentum, in [0, 1], of the per-class discrepancy d_c = 1 - IoU_c(student, pseudo-label).

        > Parameters that control DAFormer's ImageNet feature distance

        fd_lambda (`float`, *optional*, defaults to `0.005`):
            Weight of the feature distance on the auxiliary student, used only when it starts from ImageNet weights.
            DAFormer: 0.005.
        fd_classes (`list[int]`, *optional*, defaults to `[6, 7, 11, 12, 13, 14, 15, 16, 17, 18]`):
            trainIds the feature distance applies to. DAFormer: these, its thing classes.
        fd_scale_min_ratio (`float`, *optional*, defaults to `0.75`):
            Share, in [0, 1], of a feature cell a class must cover to count in the feature distance. DAFormer: 0.75.

        > Parameters that control MIC, masked image consistency (Hoyer et al., CVPR 2023)

        mic_lambda (`float`, *optional*, defaults to `0.0`):
            Weight of MIC's term on the network that makes the pseudo-labels (the auxiliary student; the student in
            `"self_training"`): its cross-entropy on a block-masked image against the EMA teacher's pseudo-labels of
            the unmasked image, with their quality weight. 0: off, as in DAFormer and DUDA. MIC: 1.
        mic_mode (`str`, *optional*, defaults to `"separatetrgaug"`):
            Which images MIC masks, by its own names: `"separatetrgaug"` the target images, colour-jittered and blurred
            with draws of their own (MIC on GTA5/SYNTHIA -> Cityscapes); `"separatetrg"` the plain target images;
            `"separate"` the first half of the source batch and the rest from the target batch, plain (MIC on
            Cityscapes -> ACDC / Dark Zurich).
        mic_mask_ratio (`float`, *optional*, defaults to `0.7`):
            Share, in [0, 1), of MIC's blocks masked, each block independently. MIC: 0.7.
        mic_block_size (`float`, *optional*, defaults to `0.0625`):
            Side of MIC's square mask blocks in pixels, or below 1 a fraction of the crop's shorter side: 1/16 gives
            MIC's 32 at 512-pixel crops (its DAFormer runs) and 64 at 1024 (its HRDA runs).
        mic_student (`bool`, *optional*, defaults to `False`):
            `method="duda"` only: the student also learns MIC's term on the same masked images (reconstructed; the DUDA
            paper does not say). `False`: MIC trains the auxiliary student only, the network that feeds its teacher.

        > Parameters that control HRDA, multi-resolution training of the large pair (Hoyer et al., ECCV 2022)

        hrda (`bool`, *optional*, defaults to `False`):
            `method="duda"` only: train the auxiliary student (a DAFormer-head network) with HRDA: each step it sees
            the crop at `hrda_context_scale` (the context) and a detail crop of it at full resolution, whose
            predictions a learned scale attention fuses; the EMA teacher's pseudo-labels and every evaluation use
            HRDA's fused inference (docs/method.md, "HRDA").
        hrda_context_scale (`float`, *optional*, defaults to `0.5`):
            Scale, in (0, 1), of HRDA's context image. HRDA: 0.5 (`scales=[1, 0.5]`).
        hrda_detail_crop (`list[int]`, *optional*, defaults to `[]`):
            HRDA's detail crop, H W, at full resolution. Empty (auto): half of the data's `--crop_size`, resolved when
            the crop size is known (`hrda_detail_crop_hw`). HRDA: `[512, 512]` of 1024-pixel crops.
        hrda_detail_loss (`float`, *optional*, defaults to `0.1`):
            Weight, in [0, 1), of HRDA's loss on the detail crop's own prediction (the fused one gets 1 minus it).
            HRDA: 0.1 (`hr_loss_weight`).
        hrda_crop_divisible (`int`, *optional*, defaults to `8`):
            The detail crop's coordinates and sides are multiples of this, itself a multiple of the context grid's
            stride 4 / `hrda_context_scale`, so that the grids align. HRDA: 8 (`crop_coord_divisible`).
        hrda_attention_classwise (`bool`, *optional*, defaults to `True`):
            One scale-attention map per class (else one for all). HRDA: `True`.
        hrda_student_input (`str`, *optional*, defaults to `"full"`):
            With `hrda`, what the student sees (reconstructed: the DUDA paper does not say): `"full"`, the crop at full
            resolution (as it is evaluated), or `"context"`, the crop at `hrda_context_scale`.

        > Parameters that control rare class sampling (of the source images)

        rare_class_sampling (`bool`, *optional*, defaults to `True`):
            Sample source images by rare classes (DAFormer's RCS, on in its GTA->Cityscapes config).
        rcs_temperature (`float`, *optional*, defaults to `0.01`):
            RCS temperature T (> 0) in p_c ~ exp((1 - f_c) / T). DAFormer: 0.01.
        rcs_min_pixels (`int`, *optional*, defaults to `3000`):
            Pixels a class needs in an image for that image to be sampled for the class. DAFormer: 3000.
        rcs_min_crop_ratio (`float`, *optional*, defaults to `0.5`):
            Crops are retried, up to 10 times, until the sampled class covers `rcs_min_crop_ratio * rcs_min_pixels`.
            DAFormer: 0.5; HRDA: 2.0 (crops of four times the pixels).

        > Parameters that control the optimisation

        learning_rate (`float`, *optional*, defaults to `6e-05`):
            AdamW learning rate of the backbones; the heads get `head_lr_multiplier` times it. DAFormer: 6e-05. The
            default replaces `TrainingArguments`' `5e-05`.
        head_lr_multiplier (`float`, *optional*, defaults to `10.0`):
            Learning-rate multiplier (> 0) of the decode heads. DAFormer: 10 (`custom_keys` `head`, `lr_mult=10.0`).
        weight_decay (`float`, *optional*, defaults to `0.01`):
            AdamW weight decay, except on what `weight_decay_exempt` names. DAFormer: 0.01. The default replaces
            `TrainingArguments`' `0.0`.
        weight_decay_exempt (`str`, *optional*, defaults to `"encoder_norms"`):
            Parameters without weight decay: `"encoder_norms"`, the normalisation layers of each encoder (DAFormer:
            `custom_keys` `norm`, and `pos_block`, which names no parameter of its MiT, with `decay_mult=0.0`; biases
            and the head's BatchNorm decay), or `"norms_and_biases"`, every one-dimensional parameter (duda-hf before
            2026-12-07).
        lr_schedule (`str`, *optional*, defaults to `"daformer"`):
            `"daformer"`: mmcv's poly schedule as DAFormer runs it (`poly10warm.py`): at optimizer step t (0-based)
            lr = base * (1 - t/max_steps)^poly_power, times 1 - (1 - t/warmup_steps) * (1 - 1e-6) during the warmup.
            `"trainer"`: Trainer's `lr_scheduler_type` with `warmup_steps` (duda-hf before 2026-12-07).
        poly_power (`float`, *optional*, defaults to `1.0`):
            Power (> 0) of the polynomial learning-rate decay. DAFormer: 1.0.
        warmup_steps (`float`, *optional*, defaults to `1500`):
            Linear warmup steps (below 1: a fraction of `max_steps`). DAFormer: 1500. The default replaces
            `TrainingArguments`' `0`.
        max_steps (`int`, *optional*, defaults to `40000`):
            Training iterations, > 0 (DUDA counts steps, not epochs). DAFormer: 40000. The default replaces
            `TrainingArguments`' `-1`.
        lr_scheduler_type (`str`, *optional*, defaults to `"polynomial"`):
            Trainer's learning-rate schedule after the warmup, read with `lr_schedule="trainer"`; with `"daformer"` any
            other value is refused rather than ignored. The default replaces `TrainingArguments`' `"linear"`.
        lr_scheduler_kwargs (`dict | str | None`, *optional*, defaults to `None`):
            Left empty with `lr_scheduler_type="polynomial"`, it is filled with `{"lr_end": 0.0, "power": poly_power}`:
            DAFormer decays to exactly 0 (`min_lr=0.0`), where transformers' polynomial schedule stops at 1e-07.
        max_grad_norm (`float`, *optional*, defaults to `0.0`):
            Gradient clipping norm; 0: off, as in DAFormer (`optimizer_config = None`). The default replaces
            `TrainingArguments`' `1.0`.
        per_device_train_batch_size (`int`, *optional*, defaults to `2`):
            Source images per device per micro-step; as many target images are drawn. DAFormer: 2 + 2 on one GPU
            (`samples_per_gpu=2`). The default replaces `TrainingArguments`' `8`.

        > Parameters that control the training data

        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep every column: the DUDA batch has source and target fields. The default replaces
            `TrainingArguments`' `True`.
        train_sampling_strategy (`str`, *optional*, defaults to `"sequential"`):
            Order of the training samples, the only one allowed: sample i is a function of (seed, i), so the data is a
            function of the step and a resume is exact. The default replaces `TrainingArguments`' `"random"`.
        max_bad_sample_share (`float`, *optional*, defaults to `0.01`):
            Training images that cannot be decoded are skipped with a warning and counted; the run stops once more
            than this share, in [0, 1], of the images drawn so far has failed (from 5 failures on).

        > Parameters that control evaluation, logging and trackers

        per_device_eval_batch_size (`int`, *optional*, defaults to `4`):
            Target validation images per device per forward pass of the evaluation (docs/design.md, "Evaluation
            contract"). The default replaces `TrainingArguments`' `8`.
        eval_strategy (`str`, *optional*, defaults to `"steps"`):
            When to evaluate on the target validation set. The default replaces `TrainingArguments`' `"no"`.
        eval_steps (`float | None`, *optional*, defaults to `4000`):
            Evaluate every N steps. DAFormer: 4000. The default replaces `TrainingArguments`' `None`.
        save_steps (`float`, *optional*, defaults to `4000`):
            Checkpoint every N steps (DAFormer saves once, at 40000). The default replaces `TrainingArguments`' `500`.
        logging_steps (`float`, *optional*, defaults to `50`):
            Log every N steps. DAFormer: 50 (`log_config`). The default replaces `TrainingArguments`' `500`.
        logging_nan_inf_filter (`bool`, *optional*, defaults to `False`):
            Trainer's filter of non-finite losses from the logged mean. Off: a non-finite loss term stops the run
            before the optimizer step instead (and the filter would read the loss on the host every step). The default
            replaces `TrainingArguments`' `True`.
        debug_image_steps (`int`, *optional*, defaults to `0`):
            Every N steps save a debug picture (source, target, mix, pseudo-label, prediction) to output_dir/debug and
            the loggers; 0: off.
        report_to (`None | str | list[str]`, *optional*, defaults to `"none"`):
            Trackers the log goes to: `tensorboard`, `trackio`, several, `"all"` installed or `"none"` (Trainer's
            default too). A comma-separated string, as the command line gives it, is read as the list of its names.
        project (`str`, *optional*, defaults to `"duda-hf"`):
            Trackio project the run is logged to, locally. The default replaces `TrainingArguments`' `"huggingface"`.
        run_name (`str | None`, *optional*, defaults to `None`):
            The run's name in the trackers; empty: `<output folder>-<UTC time>` for a new run, a resumed run's own
            name (from its checkpoint), given when the trackers start.

        > Parameters that control devices, speed and export

        channels_last (`bool`, *optional*, defaults to `False`):
            Store every network's convolution weights channels-last (NHWC). Measured by benchmarks/gpu_check.py.
        torch_compile (`bool`, *optional*, defaults to `False`):
            Compile each network in place (`Module.compile`), so that the teacher's and the frozen networks' calls,
            which do not go through the wrapped model, are compiled too and checkpoint keys do not change. When it is
            set, or `torch_compile_backend` or `torch_compile_mode` is, `__post_init__` keeps the request in
            `compile_networks` and turns these three flags off on the object, with one logged line, so that Trainer
            and accelerate do not compile the wrapper as well; `to_dict` (training_args.json, the trackers) records
            them as requested.
        torch_compile_backend (`str | None`, *optional*, defaults to `None`):
            The networks' compilation backend; `None` with compilation: `"inductor"`. See `torch_compile`.
        torch_compile_mode (`str | None`, *optional*, defaults to `None`):
            The networks' compilation mode. See `torch_compile`.
        use_cpu (`bool`, *optional*, defaults to `False`):
            On a machine without an accelerator (CUDA, MPS or XPU) `__post_init__` sets it to `True`, with one logged
            line, so that `accelerate launch --multi_gpu --num_processes N` forms one gloo DDP group of CPU processes
            instead of leaving each process alone.
        dataloader_pin_memory (`bool`, *optional*, defaults to `True`):
            Set to `False` with `use_cpu` on a machine without an accelerator (the same logged line).
        accelerator_config (`dict | str | None`, *optional*, defaults to `None`):
            Left `None` on a machine with an accelerator, it is filled with `{"non_blocking": True}`: batches are copied
            to the device from pinned memory without waiting for it. Without one, Trainer's default.
        ddp_find_unused_parameters (`bool | None`, *optional*, defaults to `None`):
            Left `None` (auto), it is filled with `False`, as every trainable parameter gets a gradient each step, or
            `True` with a distillation stage (`distill_stage_steps`, `method="duda"`), where the auxiliary student gets
            none for DDP to wait for; `False` with a stage is refused. (Trainer's own `None` would let it choose.)
        export_onnx (`bool`, *optional*, defaults to `False`):
            At the end of training also write the student as ONNX into student/onnx/ (model.onnx fp32,
            model_quantized.onnx int8: the transformers.js layout); needs the `onnx` extra.
    """

    # --- method ---
    method: str = field(
        default="duda",
        metadata=flag_help(
            "Training method: 'duda' (large EMA pair distilled into the student, docs/method.md), 'distill' (the "
            "student alone learns DUDA's student terms from the frozen teacher(s) given by --teacher, e.g. an imported "
            "DAFormer/HRDA/MIC checkpoint), 'self_training' (DAFormer-style EMA self-training of the student alone) or "
            "'source_only'.",
            choices=list(METHODS),
        ),
    )
    # --- EMA teacher ---
    ema_alpha: float = field(
        default=0.999,
        metadata=flag_help(
            "EMA decay of the teacher; after optimizer step t (1-based) alpha_t = min(1 - 1/(t+1), ema_alpha) (DAFormer: "
            "0.5 at the first update; see --ema_schedule). DAFormer: 0.999."
        ),
    )
    ema_schedule: str = field(
        default="daformer",
        metadata=flag_help(
            "How the EMA's alpha_t starts: 'daformer' (the teacher is a copy of the initial network, then alpha_t = "
            "min(1 - 1/(t+1), ema_alpha) after optimizer step t = 1, 2, ...: 0.5, 0.667, ...) or 'copy_first' "
            "(duda-hf before 2026-12-07: the first update copies the network, alpha_t = min(1 - 1/t, ema_alpha)).",
            choices=list(EMA_SCHEDULES),
        ),
    )
    teacher_train_mode: bool = field(
        default=True,
        metadata=flag_help(
            "Run the EMA teacher in train mode (BatchNorm on the target batch's statistics, dropout and drop-path "
            "off), as DAFormer does (the default). false: eval mode, BatchNorm on its running statistics, which the EMA "
            "averages like the weights (duda-hf before 2026-12-07)."
        ),
    )
    # --- losses ---
    loss_denominator: str = field(
        default="all_pixels",
        metadata=flag_help(
            "What the pixel-wise losses (cross-entropy, weighted cross-entropy, soft distillation) divide their weighted "
            "sum by: 'all_pixels' of the batch, ignored ones included (DAFormer's mmseg: the mean of the per-pixel "
            "loss, 0 at ignored pixels), or 'valid_pixels', those whose label is not 255 (duda-hf before 2026-12-07).",
            choices=list(LOSS_DENOMINATORS),
        ),
    )
    # --- pseudo-labels ---
    pseudo_label_threshold: float = field(
        default=0.968, metadata=flag_help("Confidence a pseudo-labelled pixel needs to count in the quality weight q. DAFormer: 0.968.")
    )
    pseudo_label_ignore_top: int = field(
        default=15,
        metadata=flag_help("Rows at the top of each target crop whose pseudo-label weight is 0. DAFormer (Cityscapes, 512 crops): 15."),
    )
    pseudo_label_ignore_bottom: int = field(
        default=120, metadata=flag_help("Rows at the bottom of each target crop whose pseudo-label weight is 0 (ego car). DAFormer: 120.")
    )
    pseudo_label_image_margins: list[int] = field(
        default_factory=list,
        metadata=flag_help(
            "HRDA's pseudo-label cropping v2: top bottom left right pixels of each (resized) target image whose "
            "pseudo-labels weigh 0, marked before the image is cropped, so that only crops at its border lose pixels "
            "(HRDA: 30 240 30 30, with the per-crop margins at 0). Empty: off."
        ),
    )
    # --- mixing and strong augmentation ---
    class_mix: bool = field(
        default=True,
        metadata=flag_help(
            "ClassMix source classes onto the target image (half of each source image's classes). Off: the student sees the plain target image."
        ),
    )
    color_jitter_strength: float = field(
        default=0.2, metadata=flag_help("Colour-jitter strength for brightness, contrast, saturation and hue. DAFormer: 0.2.")
    )
    color_jitter_p: float = field(default=0.8, metadata=flag_help("Probability of colour jitter per mixed image (docs/method.md: 0.8)."))
    blur_p: float = field(default=0.5, metadata=flag_help("Probability of Gaussian blur per mixed image. DAFormer: 0.5."))
    blur_sigma_min: float = field(default=0.15, metadata=flag_help("Smallest Gaussian-blur sigma. DAFormer: 0.15."))
    blur_sigma_max: float = field(default=1.15, metadata=flag_help("Largest Gaussian-blur sigma. DAFormer: 1.15."))
    # --- gradual distillation ---
    preadapt_steps: float = field(
        default=0.25,
        metadata=flag_help(
            "Pre-adaptation steps with lam_t = 0 (hard pseudo-labels only); a value below 1 is a fraction of the adaptation "
            "steps (max_steps less distill_stage_steps). DUDA: 0.25."
        ),
    )
    distill_ramp_steps: float = field(
        default=0.25,
        metadata=flag_help(
            "Steps of the linear ramp of lam_t from 0 to 1 after pre-adaptation; below 1 is a fraction of the adaptation steps. DUDA: 0.25."
        ),
    )
    kd_temperature: float = field(default=1.0, metadata=flag_help("Temperature tau of the soft distillation loss (KL * tau^2)."))
    kd_confidence_weight: bool = field(
        default=True,
        metadata=flag_help(
            "Weight the soft distillation term on target pixels by the pseudo-labels' confidence share (the quality weight "
            "of the hard term), as docs/method.md specifies. false: target pixels weigh 1 there (margins and class weights "
            "kept), so the teacher's soft output teaches before its pseudo-labels are confident (short runs)."
        ),
    )
    # --- the student learns its teacher (this project's additions to the paper; docs/method.md) ---
    kd_clean_target: float = field(
        default=0.0,
        metadata=flag_help(
            "Weight of a second soft distillation term on the clean target image, lam_t * w * KD(s(x_t), p_tau), on the "
            "target pixels outside the margins, class-weighted (and weighted by the quality share unless "
            "kd_confidence_weight is false). The student then learns the teacher's output on the very images it is "
            "evaluated on, not only on the target part of the strongly augmented mix. 0: off (the paper's step)."
        ),
    )
    cwd_weight: float = field(
        default=0.0,
        metadata=flag_help(
            "Weight of channel-wise distillation (Shu et al., ICCV 2021) on the clean target image, lam_t * w * "
            "CWD(s(x_t), T(x_t)): each class channel is a distribution over positions, so every class weighs the same "
            "whatever its area. Teachers' logits are fused by their weighted mean. 0: off (the paper's step)."
        ),
    )
    cwd_temperature: float = field(default=4.0, metadata=flag_help("Temperature of channel-wise distillation. Shu et al.: 4."))
    distill_stage_steps: float = field(
        default=0,
        metadata=flag_help(
            "The last N of max_steps (below 1: a fraction of max_steps) are a distillation stage: the auxiliary student "
            "and the EMA teacher stop (no forward pass, no update) and the student alone learns from the frozen teacher "
            "with lam_t = 1. preadapt_steps and distill_ramp_steps then count in the max_steps - N adaptation steps. "
            "0: off (the paper's step)."
        ),
    )
    distill_stage_target_only: bool = field(
        default=False,
        metadata=flag_help(
            "In the distillation stage the student learns from the teacher on the clean target image alone "
            "(kd_clean_target, cwd_weight): no source cross-entropy and no mixed image. Needs distill_stage_steps and "
            "one of the clean-target terms."
        ),
    )
    # --- inconsistency weighting ---
    inconsistency_beta: float = field(
        default=1.0, metadata=flag_help("beta of the class inconsistency weights w_c = 1 + beta * d_c / mean(d); 0 turns them off.")
    )
    inconsistency_momentum: float = field(
        default=0.99, metadata=flag_help("EMA momentum of the per-class discrepancy d_c = 1 - IoU_c(student, pseudo-label).")
    )
    # --- multiple teachers ---
    extra_teachers: list[str] = field(
        default_factory=list,
        metadata=flag_help("Frozen extra teachers (SegFormer Hub ids or folders with 19 Cityscapes classes), fused with the EMA teacher."),
    )
    teacher: list[str] = field(
        default_factory=list,
        metadata=flag_help(
            "method=distill: the frozen teacher(s) the student learns from, each a folder (an imported DAFormer/HRDA/MIC "
            "checkpoint, a finished run's teacher/), a Hub id, a preset or CHECKPOINT_DIR@role (e.g. "
            "outputs/run/checkpoint-40000@teacher); several are fused like DUDA's teachers (--teacher_weights)."
        ),
    )
    teacher_weights: list[float] = field(
        default_factory=list,
        metadata=flag_help(
            "Fusion weights: duda, the EMA teacher first, then each extra teacher; distill, one per --teacher. Empty: equal weights."
        ),
    )
    # --- ImageNet feature distance ---
    fd_lambda: float = field(
        default=0.005,
        metadata=flag_help(
            "Weight of DAFormer's ImageNet feature distance on the auxiliary student. Used only when it starts from ImageNet weights."
        ),
    )
    fd_classes: list[int] = field(
        default_factory=lambda: list(THING_CLASSES),
        metadata=flag_help("trainIds the feature distance applies to. DAFormer: thing classes."),
    )
    fd_scale_min_ratio: float = field(
        default=0.75, metadata=flag_help("Share of a feature cell a class must cover to count in the feature distance. DAFormer: 0.75.")
    )
    # --- masked image consistency (MIC, Hoyer et al., CVPR 2023) ---
    mic_lambda: float = field(
        default=0.0,
        metadata=flag_help(
            "Weight of MIC's masked image consistency term on the network that makes the pseudo-labels (the auxiliary "
            "student; the student in self_training): its cross-entropy on a block-masked image against the EMA "
            "teacher's pseudo-labels of the unmasked image, with their quality weight. MIC: 1. 0: off (DAFormer, DUDA)."
        ),
    )
    mic_mode: str = field(
        default="separatetrgaug",
        metadata=flag_help(
            "Which images MIC masks, by its own names: 'separatetrgaug' the target images, colour-jittered and blurred "
            "with draws of their own (MIC on GTA5/SYNTHIA -> Cityscapes); 'separatetrg' the plain target images; "
            "'separate' the first half of the source batch and the rest from the target batch, plain (MIC on "
            "Cityscapes -> ACDC / Dark Zurich: one source and one target image).",
            choices=list(MIC_MODES),
        ),
    )
    mic_mask_ratio: float = field(default=0.7, metadata=flag_help("Share of MIC's blocks masked (each block independently). MIC: 0.7."))
    mic_block_size: float = field(
        default=1 / 16,
        metadata=flag_help(
            "Side of MIC's square mask blocks in pixels, or below 1 a fraction of the crop's shorter side: 1/16 gives "
            "MIC's 32 at 512-pixel crops (DAFormer) and 64 at 1024 (HRDA)."
        ),
    )
    mic_student: bool = field(
        default=False,
        metadata=flag_help(
            "duda: the student also learns MIC's term on the same masked images (reconstructed; the DUDA paper does not "
            "say). false: MIC trains the auxiliary student only, as it trains the network that feeds its EMA teacher."
        ),
    )
    # --- HRDA multi-resolution training of the large pair (Hoyer et al., ECCV 2022) ---
    hrda: bool = field(
        default=False,
        metadata=flag_help(
            "Train the auxiliary student (a DAFormer-head network) with HRDA: each step it sees the crop at "
            "--hrda_context_scale (the context) and a detail crop of it at full resolution, whose predictions a learned "
            "scale attention fuses; the EMA teacher's pseudo-labels and every evaluation use HRDA's fused inference "
            "(docs/method.md, 'HRDA'). HRDA's defaults are taken relative to --crop_size."
        ),
    )
    hrda_context_scale: float = field(default=0.5, metadata=flag_help("Scale of HRDA's context image. HRDA: 0.5."))
    hrda_detail_crop: list[int] = field(
        default_factory=list,
        metadata=flag_help("HRDA's detail crop, H W, at full resolution. Empty: half of --crop_size (HRDA: 512 of 1024)."),
    )
    hrda_detail_loss: float = field(
        default=0.1,
        metadata=flag_help("Weight of HRDA's detail loss on the detail crop's own prediction (the fused one gets 1 minus it). HRDA: 0.1."),
    )
    hrda_crop_divisible: int = field(
        default=8, metadata=flag_help("The detail crop's coordinates are multiples of this (HRDA: 8, so the grids align).")
    )
    hrda_attention_classwise: bool = field(
        default=True, metadata=flag_help("One scale-attention map per class (else one for all). HRDA: true.")
    )
    hrda_student_input: str = field(
        default="full",
        metadata=flag_help(
            "With --hrda, what the student sees (reconstructed: the DUDA paper does not say): 'full', the crop at full "
            "resolution (as it is evaluated), or 'context', the crop at --hrda_context_scale (the large network's "
            "context, a quarter of the pixels).",
            choices=list(HRDA_STUDENT_INPUTS),
        ),
    )
    # --- rare class sampling (source) ---
    rare_class_sampling: bool = field(default=True, metadata=flag_help("Sample source images by rare classes (DAFormer RCS)."))
    rcs_temperature: float = field(default=0.01, metadata=flag_help("RCS temperature T in p_c ~ exp((1 - f_c) / T). DAFormer: 0.01."))
    rcs_min_pixels: int = field(
        default=3000, metadata=flag_help("Pixels a class needs in an image for that image to be sampled for the class. DAFormer: 3000.")
    )
    rcs_min_crop_ratio: float = field(
        default=0.5,
        metadata=flag_help(
            "Crops are retried (up to 10 times) until the sampled class covers rcs_min_crop_ratio * rcs_min_pixels. DAFormer: "
            "0.5; HRDA: 2.0 (crops of four times the pixels)."
        ),
    )
    # --- optimisation ---
    head_lr_multiplier: float = field(default=10.0, metadata=flag_help("Learning-rate multiplier of the decode heads. DAFormer: 10."))
    poly_power: float = field(default=1.0, metadata=flag_help("Power of the polynomial learning-rate decay. DAFormer: 1.0."))
    lr_schedule: str = field(
        default="daformer",
        metadata=flag_help(
            "'daformer': mmcv's poly schedule as DAFormer runs it: at optimizer step t (0-based) lr = base * (1 - "
            "t/max_steps)^poly_power, times 1 - (1 - t/warmup_steps) * (1 - 1e-6) during the warmup. 'trainer': "
            "Trainer's --lr_scheduler_type with --warmup_steps (polynomial: linear from 0 to base over the warmup, then "
            "to 0 over the remaining steps; duda-hf before 2026-12-07, about 1.04x DAFormer's rate after a 1500-step "
            "warmup of 40k steps).",
            choices=list(LR_SCHEDULES),
        ),
    )
    weight_decay_exempt: str = field(
        default="encoder_norms",
        metadata=flag_help(
            "Parameters without weight decay: 'encoder_norms', the normalisation layers of each encoder (DAFormer: "
            "mmcv's custom key 'norm' with decay_mult 0; biases and the head's BatchNorm decay), or "
            "'norms_and_biases', every one-dimensional parameter (duda-hf before 2026-12-07).",
            choices=list(WEIGHT_DECAY_EXEMPT),
        ),
    )
    # --- speed (GPU) ---
    channels_last: bool = field(
        default=False,
        metadata=flag_help("Store every network's convolution weights channels-last (NHWC). Measured by benchmarks/gpu_check.py."),
    )
    # --- deployment ---
    export_onnx: bool = field(
        default=False,
        metadata=flag_help(
            "At the end of training also write the student as ONNX into student/onnx/ (model.onnx fp32, model_quantized.onnx "
            "int8: the transformers.js layout); needs the `onnx` extra (pip install 'duda-hf[onnx]')."
        ),
    )
    # --- monitoring ---
    debug_image_steps: int = field(
        default=0,
        metadata=flag_help(
            "Every N steps save a debug picture (source, target, mix, pseudo-label, prediction) to output_dir/debug and the loggers; 0 = off."
        ),
    )

    max_bad_sample_share: float = field(
        default=0.01,
        metadata=flag_help(
            "Training images that cannot be decoded are skipped with a warning and counted; the run stops once more than "
            "this share of the images drawn so far has failed (from 5 failures on)."
        ),
    )

    # --- Trainer defaults that differ for DUDA (DAFormer recipe) ---
    learning_rate: float = field(
        default=6e-5, metadata=flag_help("AdamW learning rate of the backbones (heads get head_lr_multiplier x). DAFormer: 6e-5.")
    )
    weight_decay: float = field(
        default=0.01, metadata=flag_help("AdamW weight decay (not on what --weight_decay_exempt names). DAFormer: 0.01.")
    )
    max_steps: int = field(default=40000, metadata=flag_help("Training iterations. DAFormer: 40000."))
    warmup_steps: float = field(default=1500, metadata=flag_help("Linear warmup steps (below 1: fraction of max_steps). DAFormer: 1500."))
    lr_scheduler_type: str = field(
        default="polynomial",
        metadata=flag_help("Trainer's learning-rate schedule after warmup, used with --lr_schedule trainer (polynomial: decay to 0)."),
    )
    max_grad_norm: float = field(default=0.0, metadata=flag_help("Gradient clipping norm; 0 = off, as in DAFormer."))
    per_device_train_batch_size: int = field(
        default=2, metadata=flag_help("Source images per device per micro-step; as many target images are drawn. DAFormer: 2 + 2.")
    )
    per_device_eval_batch_size: int = field(
        default=4,
        metadata=flag_help(
            "Target validation images per device per forward pass of the evaluation, decoded by dataloader_num_workers "
            "workers (docs/design.md, 'Evaluation contract')."
        ),
    )
    logging_steps: float = field(default=50, metadata=flag_help("Log every N steps."))
    eval_strategy: str = field(default="steps", metadata=flag_help("When to evaluate on the target validation set."))
    eval_steps: float | None = field(default=4000, metadata=flag_help("Evaluate every N steps. DAFormer: 4000."))
    save_steps: float = field(default=4000, metadata=flag_help("Checkpoint every N steps."))
    remove_unused_columns: bool = field(
        default=False, metadata=flag_help("Keep every column: the DUDA batch has source and target fields.")
    )
    ddp_find_unused_parameters: bool | None = field(
        default=None,
        metadata=flag_help(
            "Unset (auto): false, as every trainable parameter gets a gradient each step; true with a distillation stage "
            "(--distill_stage_steps), whose auxiliary student gets none. false with a stage is refused."
        ),
    )
    train_sampling_strategy: str = field(
        default="sequential",
        metadata=flag_help(
            "Order of the training samples. DUDA reads them in order: sample i is a function of (seed, i), so the data is a "
            "function of the step (and a resume is exact).",
            choices=["sequential"],
        ),
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata=flag_help(
            "Trainer's filter of non-finite losses from the logged mean. Off: a non-finite loss term stops the run before "
            "the optimizer step instead (and the filter would read the loss on the host every step)."
        ),
    )
    # --- trackers (the per-class series they get: duda_hf/training/trackers.py) ---
    report_to: None | str | list[str] = field(
        default="none",
        metadata=flag_help(
            "Trackers the log goes to: tensorboard, trackio (pip install 'duda-hf[trackio]'), several comma-separated "
            "(tensorboard,trackio), 'all' installed or 'none'."
        ),
    )
    project: str = field(
        default="duda-hf",
        metadata=flag_help("Trackio project the run is logged to, locally (view it: trackio show --project duda-hf)."),
    )
    run_name: str | None = field(
        default=None,
        metadata=flag_help(
            "The run's name in the trackers; empty: '<output folder>-<UTC time>' for a new run, and a resumed run's own "
            "name (from its checkpoint), so that it continues its tracker run."
        ),
    )

    def __post_init__(self):
        check_config(self)  # before anything is filled: what is checked is what the user wrote
        if self.ddp_find_unused_parameters is None:
            # in the distillation stage the auxiliary student gets no gradient, so DDP must not wait for one
            self.ddp_find_unused_parameters = bool(self.distill_stage_steps_resolved)
        accelerator = _has_accelerator()
        if not accelerator and (not self.use_cpu or self.dataloader_pin_memory):
            logger.info(
                "no GPU (CUDA, MPS or XPU) found: use_cpu set to True and dataloader_pin_memory to False (were %s, %s), so "
                "that `accelerate launch --multi_gpu` forms one DDP group of CPU processes",
                self.use_cpu,
                self.dataloader_pin_memory,
            )
            self.use_cpu = True
            self.dataloader_pin_memory = False
        compile_requested = bool(self.torch_compile or self.torch_compile_backend or self.torch_compile_mode)
        self.compile_networks = (
            {"backend": self.torch_compile_backend or "inductor", "mode": self.torch_compile_mode} if compile_requested else None
        )
        if compile_requested:
            logger.info(
                "torch_compile: each network is compiled in place (%s); torch_compile, torch_compile_backend and "
                "torch_compile_mode are turned off on the arguments, so that accelerate does not compile the wrapper too "
                "(training_args.json records them as requested)",
                self.compile_networks,
            )
            self.torch_compile, self.torch_compile_backend, self.torch_compile_mode = False, None, None
        if self.accelerator_config is None and accelerator:
            # Batches are copied to the device from pinned memory without waiting for it.
            self.accelerator_config = {"non_blocking": True}
        if self.lr_scheduler_type == "polynomial" and not self.lr_scheduler_kwargs:
            # DAFormer decays to exactly 0; transformers' default lr_end is 1e-7.
            self.lr_scheduler_kwargs = {"lr_end": 0.0, "power": self.poly_power}
        if isinstance(self.report_to, str) and "," in self.report_to:  # the command line gives one string
            self.report_to = [name.strip() for name in self.report_to.split(",") if name.strip()]
        super().__post_init__()

    def to_dict(self) -> dict:
        """The arguments as the run's records keep them (`training_args.json`, the trackers' config): with the
        compilation that ran (`compile_networks`) as `torch_compile`, `torch_compile_backend` and `torch_compile_mode`,
        which on the object stay off so that Trainer and accelerate do not compile the wrapper. `DudaConfig(**record)`
        compiles the networks again, the same way."""
        record = super().to_dict()
        if self.compile_networks is not None:
            record.update(
                torch_compile=True,
                torch_compile_backend=self.compile_networks["backend"],
                torch_compile_mode=self.compile_networks["mode"],
            )
        return record

    @property
    def train_samples(self) -> int:
        """The training set's length: one epoch is the whole run, so no sample index is ever drawn twice.

        Steps x the Trainer's batch per process (`train_batch_size`: `per_device_train_batch_size`, times the GPUs of
        one process under DataParallel) x gradient accumulation x processes.
        """
        return self.max_steps * self.train_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def frozen_teachers(self) -> list[str]:
        """The frozen teachers the networks are built with: `teacher` (distill), else `extra_teachers` (duda)."""
        return list(self.teacher if self.method == "distill" else self.extra_teachers)

    # Resolved step counts (a fraction below 1 means a share of max_steps; the lam_t schedule, of the adaptation steps).
    @property
    def distill_stage_steps_resolved(self) -> int:
        """The stage's steps; 0 for the baselines, which ignore it like every DUDA-only flag (one recipe serves all)."""
        return resolve_steps(self.distill_stage_steps, self.max_steps) if self.method == "duda" else 0

    @property
    def adaptation_steps(self) -> int:
        """The steps before the distillation stage, in which the large pair trains (all of them without a stage)."""
        return self.max_steps - self.distill_stage_steps_resolved

    @property
    def preadapt_steps_resolved(self) -> int:
        return resolve_steps(self.preadapt_steps, self.adaptation_steps)

    @property
    def distill_ramp_steps_resolved(self) -> int:
        return resolve_steps(self.distill_ramp_steps, self.adaptation_steps)

    def ema_iteration(self, global_step: int) -> int:
        """The `t` of the EMA's `alpha_t = min(1 - 1/(t+1), ema_alpha)` after optimizer step `global_step` (1-based):
        the step itself with DAFormer's schedule (0.5 at the first update), one less with `copy_first` (0: a copy)."""
        return global_step if self.ema_schedule == "daformer" else global_step - 1

    def hrda_detail_crop_hw(self, crop_hw: tuple[int, int]) -> tuple[int, int]:
        """HRDA's detail crop (height, width) for training crops of `crop_hw`: `--hrda_detail_crop`, or half the crop;
        its sides must be multiples of `--hrda_crop_divisible`, like its offsets, so that the grids align."""
        detail = tuple(self.hrda_detail_crop) if self.hrda_detail_crop else (crop_hw[0] // 2, crop_hw[1] // 2)
        if any(side % self.hrda_crop_divisible for side in detail):
            raise ValueError(
                f"HRDA's detail crop {detail} (H W) must be a multiple of --hrda_crop_divisible {self.hrda_crop_divisible} "
                "so that the context and detail grids align: pass --hrda_detail_crop, or a --crop_size whose half is one"
            )
        return detail

    def in_distill_stage(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based) belongs to the distillation stage."""
        return step >= self.adaptation_steps
