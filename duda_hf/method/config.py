"""Configuration: `DudaConfig` (every knob of docs/method.md on top of `TrainingArguments`), plus model and data arguments.

One source of defaults: the DAFormer recipe (Hoyer et al., CVPR 2022; in the DAFormer repository `configs/daformer/*` and
`mmseg/models/uda/dacs.py`) and the DUDA components as docs/method.md reconstructs them. Recipes in
`configs/` override only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from duda_hf.data.labels import NUM_CLASSES, THING_CLASSES

METHODS = ("duda", "distill", "self_training", "source_only")
DISTILLING_METHODS = ("duda", "distill")  # the methods whose student learns a teacher by gradual distillation
EMA_SCHEDULES = ("daformer", "copy_first")
LR_SCHEDULES = ("daformer", "trainer")
WEIGHT_DECAY_EXEMPT = ("encoder_norms", "norms_and_biases")
LOSS_DENOMINATORS = ("all_pixels", "valid_pixels")
MIC_MODES = ("separatetrgaug", "separatetrg", "separate")


def flag_help(text: str, **extra) -> dict:
    return {"help": text, **extra}


def check_flag(condition: bool, name: str, allowed: str, value) -> None:
    if not condition:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


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
    """Training arguments for `DudaTrainer`: DUDA's knobs with DAFormer defaults, plus Trainer's own."""

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
            choices=["full", "context"],
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
    ddp_find_unused_parameters: bool | None = field(default=False, metadata=flag_help("Every trainable parameter is used in each step."))
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
        check_flag(self.method in METHODS, "DudaConfig.method", f"one of {METHODS}", self.method)
        check_flag(0 <= self.ema_alpha < 1, "DudaConfig.ema_alpha", "in [0, 1)", self.ema_alpha)
        check_flag(self.ema_schedule in EMA_SCHEDULES, "DudaConfig.ema_schedule", f"one of {EMA_SCHEDULES}", self.ema_schedule)
        check_flag(
            self.loss_denominator in LOSS_DENOMINATORS, "DudaConfig.loss_denominator", f"one of {LOSS_DENOMINATORS}", self.loss_denominator
        )
        check_flag(self.lr_schedule in LR_SCHEDULES, "DudaConfig.lr_schedule", f"one of {LR_SCHEDULES}", self.lr_schedule)
        scheduler_type = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
        if self.lr_schedule == "daformer" and scheduler_type != "polynomial":
            raise ValueError(
                f"--lr_scheduler_type {scheduler_type} is Trainer's schedule, which --lr_schedule daformer (the default) "
                "replaces; add --lr_schedule trainer to use it"
            )
        check_flag(
            self.weight_decay_exempt in WEIGHT_DECAY_EXEMPT,
            "DudaConfig.weight_decay_exempt",
            f"one of {WEIGHT_DECAY_EXEMPT}",
            self.weight_decay_exempt,
        )
        check_flag(0 <= self.pseudo_label_threshold <= 1, "DudaConfig.pseudo_label_threshold", "in [0, 1]", self.pseudo_label_threshold)
        for name in ("pseudo_label_ignore_top", "pseudo_label_ignore_bottom", "rcs_min_pixels", "debug_image_steps"):
            check_flag(getattr(self, name) >= 0, f"DudaConfig.{name}", ">= 0", getattr(self, name))
        check_flag(0 <= self.color_jitter_strength <= 1, "DudaConfig.color_jitter_strength", "in [0, 1]", self.color_jitter_strength)
        for name in (
            "color_jitter_p",
            "blur_p",
            "inconsistency_momentum",
            "fd_scale_min_ratio",
            "max_bad_sample_share",
        ):
            check_flag(0 <= getattr(self, name) <= 1, f"DudaConfig.{name}", "in [0, 1]", getattr(self, name))
        check_flag(
            0 < self.blur_sigma_min <= self.blur_sigma_max,
            "DudaConfig.blur_sigma_min/blur_sigma_max",
            "0 < blur_sigma_min <= blur_sigma_max",
            (self.blur_sigma_min, self.blur_sigma_max),
        )
        for name in (
            "preadapt_steps",
            "distill_ramp_steps",
            "inconsistency_beta",
            "fd_lambda",
            "kd_clean_target",
            "cwd_weight",
            "distill_stage_steps",
            "mic_lambda",
            "rcs_min_crop_ratio",  # above 1 too: HRDA's 2.0 (its crops hold four times the pixels)
        ):
            check_flag(getattr(self, name) >= 0, f"DudaConfig.{name}", ">= 0", getattr(self, name))
        check_flag(self.mic_mode in MIC_MODES, "DudaConfig.mic_mode", f"one of {MIC_MODES}", self.mic_mode)
        check_flag(0 <= self.mic_mask_ratio < 1, "DudaConfig.mic_mask_ratio", "in [0, 1)", self.mic_mask_ratio)
        check_flag(
            self.mic_block_size > 0, "DudaConfig.mic_block_size", "> 0 (pixels, or below 1 a fraction of the crop)", self.mic_block_size
        )
        if self.mic_lambda > 0 and self.method in ("source_only", "distill"):
            raise ValueError(
                "DudaConfig.mic_lambda trains the network that makes the pseudo-labels, which method "
                f"'{self.method}' does not train: use it with --method duda or self_training, or set it to 0"
            )
        if self.hrda and self.method != "duda":
            raise ValueError("DudaConfig.hrda trains the large pair with HRDA, which only method='duda' has; drop --hrda")
        check_flag(0 < self.hrda_context_scale < 1, "DudaConfig.hrda_context_scale", "in (0, 1)", self.hrda_context_scale)
        check_flag(0 <= self.hrda_detail_loss < 1, "DudaConfig.hrda_detail_loss", "in [0, 1)", self.hrda_detail_loss)
        context_stride = 4 / self.hrda_context_scale  # the context grid's stride in full-resolution pixels
        check_flag(
            context_stride == int(context_stride) and self.hrda_crop_divisible % int(context_stride) == 0,
            "DudaConfig.hrda_crop_divisible",
            f"a multiple of the context grid's stride 4 / hrda_context_scale = {context_stride:g}",
            self.hrda_crop_divisible,
        )
        check_flag(
            len(self.hrda_detail_crop) in (0, 2) and all(v > 0 for v in self.hrda_detail_crop),
            "DudaConfig.hrda_detail_crop",
            "empty (half the crop) or two positive integers (H W)",
            self.hrda_detail_crop,
        )
        check_flag(
            self.hrda_student_input in ("full", "context"), "DudaConfig.hrda_student_input", "'full' or 'context'", self.hrda_student_input
        )
        if self.mic_student and self.method != "duda":
            raise ValueError("DudaConfig.mic_student needs method='duda' (in self_training MIC already trains the student)")
        check_flag(
            len(self.pseudo_label_image_margins) in (0, 4) and all(v >= 0 for v in self.pseudo_label_image_margins),
            "DudaConfig.pseudo_label_image_margins",
            "empty or four non-negative integers (top bottom left right)",
            self.pseudo_label_image_margins,
        )
        check_flag(self.kd_temperature > 0, "DudaConfig.kd_temperature", "> 0", self.kd_temperature)
        check_flag(self.cwd_temperature > 0, "DudaConfig.cwd_temperature", "> 0", self.cwd_temperature)
        check_flag(self.rcs_temperature > 0, "DudaConfig.rcs_temperature", "> 0", self.rcs_temperature)
        check_flag(self.head_lr_multiplier > 0, "DudaConfig.head_lr_multiplier", "> 0", self.head_lr_multiplier)
        check_flag(self.poly_power > 0, "DudaConfig.poly_power", "> 0", self.poly_power)
        check_flag(
            all(0 <= c < NUM_CLASSES for c in self.fd_classes),
            "DudaConfig.fd_classes",
            f"trainIds in [0, {NUM_CLASSES - 1}]",
            self.fd_classes,
        )
        if self.teacher_weights:
            expected = len(self.frozen_teachers) + (self.method != "distill")
            teachers = (
                f"one per --teacher ({len(self.teacher)})"
                if self.method == "distill"
                else f"EMA teacher + {len(self.extra_teachers)} extra teachers"
            )
            check_flag(
                len(self.teacher_weights) == expected,
                "DudaConfig.teacher_weights",
                f"empty or {expected} values ({teachers})",
                self.teacher_weights,
            )
            check_flag(
                all(w >= 0 for w in self.teacher_weights) and sum(self.teacher_weights) > 0,
                "DudaConfig.teacher_weights",
                "non-negative with a positive sum",
                self.teacher_weights,
            )
        if self.extra_teachers and self.method != "duda":
            use = "name every teacher with --teacher" if self.method == "distill" else "drop --extra_teachers or set --method duda"
            raise ValueError(f"DudaConfig.extra_teachers needs method='duda' (it adds frozen teachers to the EMA teacher); {use}")
        if self.method == "distill" and not self.teacher:
            raise ValueError(
                "method='distill' learns from frozen teachers: name at least one with --teacher (a folder such as an "
                "imported checkpoint or a run's teacher/, a Hub id, or CHECKPOINT_DIR@teacher)"
            )
        if self.method == "distill" and (self.distill_stage_steps or self.distill_stage_target_only):
            raise ValueError(
                "DudaConfig.distill_stage_steps / distill_stage_target_only stop the large pair of method='duda' for a "
                "stage; method='distill' has no large pair (the whole run learns from the frozen teachers): drop them"
            )
        if self.teacher and self.method != "distill":
            raise ValueError(
                f"DudaConfig.teacher names the frozen teachers of method='distill', not of '{self.method}'; set --method "
                "distill, or with --method duda add frozen teachers to the EMA teacher with --extra_teachers"
            )
        check_flag(self.max_steps > 0, "DudaConfig.max_steps", "> 0 (DUDA trains for a number of steps, not epochs)", self.max_steps)
        check_flag(
            self.distill_stage_steps_resolved < self.max_steps,
            "DudaConfig.distill_stage_steps",
            f"fewer than max_steps ({self.max_steps}): the adaptation needs steps of its own",
            self.distill_stage_steps,
        )
        if self.distill_stage_target_only and self.method == "duda":
            check_flag(
                self.distill_stage_steps_resolved > 0 and (self.kd_clean_target > 0 or self.cwd_weight > 0),
                "DudaConfig.distill_stage_target_only",
                "used with distill_stage_steps > 0 and kd_clean_target or cwd_weight > 0 (the stage's only terms)",
                self.distill_stage_target_only,
            )
        if self.distill_stage_steps_resolved and self.ddp_find_unused_parameters is False:
            # in the stage the auxiliary student gets no gradient, so DDP must not wait for one
            self.ddp_find_unused_parameters = True
        if not _has_accelerator():
            # Without this, `accelerate launch --multi_gpu --num_processes N` on a CPU-only machine leaves every
            # process alone (distributed type NO); with it they form one gloo DDP group.
            self.use_cpu = True
            self.dataloader_pin_memory = False
        # `--torch_compile` compiles each network in place (`Module.compile`), so that the teacher's and the frozen
        # networks' calls, which do not go through the wrapped model, are compiled too and checkpoint keys do not
        # change; accelerate's own compilation of the wrapper is left off.
        compile_requested = bool(self.torch_compile or self.torch_compile_backend or self.torch_compile_mode)
        self.compile_networks = (
            {"backend": self.torch_compile_backend or "inductor", "mode": self.torch_compile_mode} if compile_requested else None
        )
        self.torch_compile, self.torch_compile_backend, self.torch_compile_mode = False, None, None
        if self.accelerator_config is None and _has_accelerator():
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
