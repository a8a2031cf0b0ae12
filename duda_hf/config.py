"""Configuration: `DudaConfig` (every knob of docs/method.md on top of `TrainingArguments`), plus model and data arguments.

One source of defaults: the DAFormer recipe (Hoyer et al., CVPR 2022; in the DAFormer repository `configs/daformer/*` and
`mmseg/models/uda/dacs.py`) and the DUDA components as docs/method.md reconstructs them. Recipes in
`configs/` override only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .data.labels import NUM_CLASSES, THING_CLASSES

METHODS = ("duda", "self_training", "source_only")


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


def _check(condition: bool, name: str, allowed: str, value) -> None:
    if not condition:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def resolve_steps(value: float, max_steps: int) -> int:
    """A step count given as an int, or as a fraction of `max_steps` when below 1 (like `warmup_steps`)."""
    return round(value * max_steps) if 0 < value < 1 else int(value)


@dataclass
class DudaConfig(TrainingArguments):
    """Training arguments for `DudaTrainer`: DUDA's knobs with DAFormer defaults, plus Trainer's own."""

    # --- method ---
    method: str = field(
        default="duda",
        metadata=_help(
            "Training method: 'duda' (large EMA pair distilled into the student, docs/method.md), "
            "'self_training' (DAFormer-style EMA self-training of the student alone) or 'source_only'.",
            choices=list(METHODS),
        ),
    )
    # --- EMA teacher ---
    ema_alpha: float = field(
        default=0.999,
        metadata=_help("EMA decay of the teacher; alpha_t = min(1 - 1/(t+1), ema_alpha), t = 0-based optimizer step. DAFormer: 0.999."),
    )
    teacher_train_mode: bool = field(
        default=False,
        metadata=_help(
            "Run the EMA teacher in train mode (BatchNorm on the target batch's statistics, dropout and drop-path "
            "off), as DAFormer does. Default: eval mode with buffers averaged like the weights."
        ),
    )
    # --- pseudo-labels ---
    pseudo_label_threshold: float = field(
        default=0.968, metadata=_help("Confidence a pseudo-labelled pixel needs to count in the quality weight q. DAFormer: 0.968.")
    )
    pseudo_label_ignore_top: int = field(
        default=15,
        metadata=_help("Rows at the top of each target crop whose pseudo-label weight is 0. DAFormer (Cityscapes, 512 crops): 15."),
    )
    pseudo_label_ignore_bottom: int = field(
        default=120, metadata=_help("Rows at the bottom of each target crop whose pseudo-label weight is 0 (ego car). DAFormer: 120.")
    )
    # --- mixing and strong augmentation ---
    class_mix: bool = field(
        default=True,
        metadata=_help(
            "ClassMix source classes onto the target image (half of each source image's classes). Off: the student sees the plain target image."
        ),
    )
    color_jitter_strength: float = field(
        default=0.2, metadata=_help("Colour-jitter strength for brightness, contrast, saturation and hue. DAFormer: 0.2.")
    )
    color_jitter_p: float = field(default=0.8, metadata=_help("Probability of colour jitter per mixed image (docs/method.md: 0.8)."))
    blur_p: float = field(default=0.5, metadata=_help("Probability of Gaussian blur per mixed image. DAFormer: 0.5."))
    blur_sigma_min: float = field(default=0.15, metadata=_help("Smallest Gaussian-blur sigma. DAFormer: 0.15."))
    blur_sigma_max: float = field(default=1.15, metadata=_help("Largest Gaussian-blur sigma. DAFormer: 1.15."))
    # --- gradual distillation ---
    preadapt_steps: float = field(
        default=0.25,
        metadata=_help(
            "Pre-adaptation steps with lam_t = 0 (hard pseudo-labels only); a value below 1 is a fraction of the adaptation "
            "steps (max_steps less distill_stage_steps). DUDA: 0.25."
        ),
    )
    distill_ramp_steps: float = field(
        default=0.25,
        metadata=_help(
            "Steps of the linear ramp of lam_t from 0 to 1 after pre-adaptation; below 1 is a fraction of the adaptation steps. DUDA: 0.25."
        ),
    )
    kd_temperature: float = field(default=1.0, metadata=_help("Temperature tau of the soft distillation loss (KL * tau^2)."))
    kd_confidence_weight: bool = field(
        default=True,
        metadata=_help(
            "Weight the soft distillation term on target pixels by the pseudo-labels' confidence share (the quality weight "
            "of the hard term), as docs/method.md specifies. false: target pixels weigh 1 there (margins and class weights "
            "kept), so the teacher's soft output teaches before its pseudo-labels are confident (short runs)."
        ),
    )
    # --- the student learns its teacher (this project's additions to the paper; docs/method.md) ---
    kd_clean_target: float = field(
        default=0.0,
        metadata=_help(
            "Weight of a second soft distillation term on the clean target image, lam_t * w * KD(s(x_t), p_tau), on the "
            "target pixels outside the margins, class-weighted (and weighted by the quality share unless "
            "kd_confidence_weight is false). The student then learns the teacher's output on the very images it is "
            "evaluated on, not only on the target part of the strongly augmented mix. 0: off (the paper's step)."
        ),
    )
    cwd_weight: float = field(
        default=0.0,
        metadata=_help(
            "Weight of channel-wise distillation (Shu et al., ICCV 2021) on the clean target image, lam_t * w * "
            "CWD(s(x_t), T(x_t)): each class channel is a distribution over positions, so every class weighs the same "
            "whatever its area. Teachers' logits are fused by their weighted mean. 0: off (the paper's step)."
        ),
    )
    cwd_temperature: float = field(default=4.0, metadata=_help("Temperature of channel-wise distillation. Shu et al.: 4."))
    distill_stage_steps: float = field(
        default=0,
        metadata=_help(
            "The last N of max_steps (below 1: a fraction of max_steps) are a distillation stage: the auxiliary student "
            "and the EMA teacher stop (no forward pass, no update) and the student alone learns from the frozen teacher "
            "with lam_t = 1. preadapt_steps and distill_ramp_steps then count in the max_steps - N adaptation steps. "
            "0: off (the paper's step)."
        ),
    )
    distill_stage_target_only: bool = field(
        default=False,
        metadata=_help(
            "In the distillation stage the student learns from the teacher on the clean target image alone "
            "(kd_clean_target, cwd_weight): no source cross-entropy and no mixed image. Needs distill_stage_steps and "
            "one of the clean-target terms."
        ),
    )
    # --- inconsistency weighting ---
    inconsistency_beta: float = field(
        default=1.0, metadata=_help("beta of the class inconsistency weights w_c = 1 + beta * d_c / mean(d); 0 turns them off.")
    )
    inconsistency_momentum: float = field(
        default=0.99, metadata=_help("EMA momentum of the per-class discrepancy d_c = 1 - IoU_c(student, pseudo-label).")
    )
    # --- multiple teachers ---
    extra_teachers: list[str] = field(
        default_factory=list,
        metadata=_help("Frozen extra teachers (SegFormer Hub ids or folders with 19 Cityscapes classes), fused with the EMA teacher."),
    )
    teacher_weights: list[float] = field(
        default_factory=list,
        metadata=_help("Fusion weights, EMA teacher first, then each extra teacher. Empty: equal weights."),
    )
    # --- ImageNet feature distance ---
    fd_lambda: float = field(
        default=0.005,
        metadata=_help(
            "Weight of DAFormer's ImageNet feature distance on the auxiliary student. Used only when it starts from ImageNet weights."
        ),
    )
    fd_classes: list[int] = field(
        default_factory=lambda: list(THING_CLASSES), metadata=_help("trainIds the feature distance applies to. DAFormer: thing classes.")
    )
    fd_scale_min_ratio: float = field(
        default=0.75, metadata=_help("Share of a feature cell a class must cover to count in the feature distance. DAFormer: 0.75.")
    )
    # --- rare class sampling (source) ---
    rare_class_sampling: bool = field(default=True, metadata=_help("Sample source images by rare classes (DAFormer RCS)."))
    rcs_temperature: float = field(default=0.01, metadata=_help("RCS temperature T in p_c ~ exp((1 - f_c) / T). DAFormer: 0.01."))
    rcs_min_pixels: int = field(
        default=3000, metadata=_help("Pixels a class needs in an image for that image to be sampled for the class. DAFormer: 3000.")
    )
    rcs_min_crop_ratio: float = field(
        default=0.5,
        metadata=_help(
            "Crops are retried (up to 10 times) until the sampled class covers rcs_min_crop_ratio * rcs_min_pixels. DAFormer: 0.5."
        ),
    )
    # --- optimisation ---
    head_lr_multiplier: float = field(default=10.0, metadata=_help("Learning-rate multiplier of the decode heads. DAFormer: 10."))
    poly_power: float = field(default=1.0, metadata=_help("Power of the polynomial learning-rate decay after warmup. DAFormer: 1.0."))
    # --- speed (GPU) ---
    channels_last: bool = field(
        default=False,
        metadata=_help("Store every network's convolution weights channels-last (NHWC). Measured by benchmarks/gpu_check.py."),
    )
    # --- deployment ---
    export_onnx: bool = field(
        default=False,
        metadata=_help(
            "At the end of training also write the student as ONNX into student/onnx/ (model.onnx fp32, model_quantized.onnx "
            "int8: the transformers.js layout); needs the `onnx` extra (pip install 'duda-hf[onnx]')."
        ),
    )
    # --- monitoring ---
    debug_image_steps: int = field(
        default=0,
        metadata=_help(
            "Every N steps save a debug picture (source, target, mix, pseudo-label, prediction) to output_dir/debug and the loggers; 0 = off."
        ),
    )

    # --- Trainer defaults that differ for DUDA (DAFormer recipe) ---
    learning_rate: float = field(
        default=6e-5, metadata=_help("AdamW learning rate of the backbones (heads get head_lr_multiplier x). DAFormer: 6e-5.")
    )
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay; never applied to norms and biases. DAFormer: 0.01."))
    max_steps: int = field(default=40000, metadata=_help("Training iterations. DAFormer: 40000."))
    warmup_steps: float = field(default=1500, metadata=_help("Linear warmup steps (below 1: fraction of max_steps). DAFormer: 1500."))
    lr_scheduler_type: str = field(
        default="polynomial", metadata=_help("Learning-rate schedule after warmup. DAFormer: polynomial decay to 0.")
    )
    max_grad_norm: float = field(default=0.0, metadata=_help("Gradient clipping norm; 0 = off, as in DAFormer."))
    per_device_train_batch_size: int = field(
        default=2, metadata=_help("Source images per device per micro-step; as many target images are drawn. DAFormer: 2 + 2.")
    )
    per_device_eval_batch_size: int = field(default=1, metadata=_help("Target validation images per device per evaluation step."))
    logging_steps: float = field(default=50, metadata=_help("Log every N steps."))
    eval_strategy: str = field(default="steps", metadata=_help("When to evaluate on the target validation set."))
    eval_steps: float | None = field(default=4000, metadata=_help("Evaluate every N steps. DAFormer: 4000."))
    save_steps: float = field(default=4000, metadata=_help("Checkpoint every N steps."))
    remove_unused_columns: bool = field(default=False, metadata=_help("Keep every column: the DUDA batch has source and target fields."))
    ddp_find_unused_parameters: bool | None = field(default=False, metadata=_help("Every trainable parameter is used in each step."))
    train_sampling_strategy: str = field(
        default="sequential",
        metadata=_help(
            "Order of the training samples. DUDA reads them in order: sample i is a function of (seed, i), so the data is a "
            "function of the step (and a resume is exact).",
            choices=["sequential"],
        ),
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata=_help(
            "Trainer's filter of non-finite losses from the logged mean. Off: a non-finite loss term stops the run before "
            "the optimizer step instead (and the filter would read the loss on the host every step)."
        ),
    )

    def __post_init__(self):
        _check(self.method in METHODS, "DudaConfig.method", f"one of {METHODS}", self.method)
        _check(0 <= self.ema_alpha < 1, "DudaConfig.ema_alpha", "in [0, 1)", self.ema_alpha)
        _check(0 <= self.pseudo_label_threshold <= 1, "DudaConfig.pseudo_label_threshold", "in [0, 1]", self.pseudo_label_threshold)
        for name in ("pseudo_label_ignore_top", "pseudo_label_ignore_bottom", "rcs_min_pixels", "debug_image_steps"):
            _check(getattr(self, name) >= 0, f"DudaConfig.{name}", ">= 0", getattr(self, name))
        _check(0 <= self.color_jitter_strength <= 1, "DudaConfig.color_jitter_strength", "in [0, 1]", self.color_jitter_strength)
        for name in ("color_jitter_p", "blur_p", "inconsistency_momentum", "rcs_min_crop_ratio", "fd_scale_min_ratio"):
            _check(0 <= getattr(self, name) <= 1, f"DudaConfig.{name}", "in [0, 1]", getattr(self, name))
        _check(
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
        ):
            _check(getattr(self, name) >= 0, f"DudaConfig.{name}", ">= 0", getattr(self, name))
        _check(self.kd_temperature > 0, "DudaConfig.kd_temperature", "> 0", self.kd_temperature)
        _check(self.cwd_temperature > 0, "DudaConfig.cwd_temperature", "> 0", self.cwd_temperature)
        _check(self.rcs_temperature > 0, "DudaConfig.rcs_temperature", "> 0", self.rcs_temperature)
        _check(self.head_lr_multiplier > 0, "DudaConfig.head_lr_multiplier", "> 0", self.head_lr_multiplier)
        _check(self.poly_power > 0, "DudaConfig.poly_power", "> 0", self.poly_power)
        _check(
            all(0 <= c < NUM_CLASSES for c in self.fd_classes),
            "DudaConfig.fd_classes",
            f"trainIds in [0, {NUM_CLASSES - 1}]",
            self.fd_classes,
        )
        if self.teacher_weights:
            expected = 1 + len(self.extra_teachers)
            _check(
                len(self.teacher_weights) == expected,
                "DudaConfig.teacher_weights",
                f"empty or {expected} values (EMA teacher + {len(self.extra_teachers)} extra teachers)",
                self.teacher_weights,
            )
            _check(
                all(w >= 0 for w in self.teacher_weights) and sum(self.teacher_weights) > 0,
                "DudaConfig.teacher_weights",
                "non-negative with a positive sum",
                self.teacher_weights,
            )
        if self.extra_teachers and self.method != "duda":
            raise ValueError("DudaConfig.extra_teachers needs method='duda'; drop --extra_teachers or set --method duda")
        _check(self.max_steps > 0, "DudaConfig.max_steps", "> 0 (DUDA trains for a number of steps, not epochs)", self.max_steps)
        _check(
            self.distill_stage_steps_resolved < self.max_steps,
            "DudaConfig.distill_stage_steps",
            f"fewer than max_steps ({self.max_steps}): the adaptation needs steps of its own",
            self.distill_stage_steps,
        )
        if self.distill_stage_target_only and self.method == "duda":
            _check(
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
        super().__post_init__()

    @property
    def train_samples(self) -> int:
        """The training set's length: one epoch is the whole run, so no sample index is ever drawn twice.

        Steps x the Trainer's batch per process (`train_batch_size`: `per_device_train_batch_size`, times the GPUs of
        one process under DataParallel) x gradient accumulation x processes.
        """
        return self.max_steps * self.train_batch_size * self.gradient_accumulation_steps * self.world_size

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

    def in_distill_stage(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based) belongs to the distillation stage."""
        return step >= self.adaptation_steps


@dataclass
class ModelArguments:
    """Which networks to build (docs/method.md, "The networks")."""

    student: str = field(
        default="mit-b0",
        metadata=_help("Deployed student: mit-b0..mit-b5, tiny, tiny-wide, a Hub id or a local SegFormer folder."),
    )
    aux_student: str = field(
        default="mit-b5", metadata=_help("Auxiliary student whose EMA is the teacher (method=duda); same choices as --student.")
    )
    init: str = field(
        default="imagenet",
        metadata=_help(
            "Initialisation of mit-bN students: 'imagenet' (encoder from the Hub checkpoint nvidia/mit-bN) or 'random' (no download).",
            choices=["imagenet", "random"],
        ),
    )

    def __post_init__(self):
        _check(self.init in ("imagenet", "random"), "ModelArguments.init", "'imagenet' or 'random'", self.init)


@dataclass
class DataArguments:
    """Where the domains come from (docs/design.md, "Data contract") and how they are cropped."""

    source_dataset: str | None = field(default=None, metadata=_help("Labelled source domain: Hub dataset id or save_to_disk folder."))
    target_dataset: str | None = field(default=None, metadata=_help("Unlabelled target training domain (labels, if any, are dropped)."))
    target_eval_dataset: str | None = field(default=None, metadata=_help("Labelled target validation domain for mIoU."))
    source_split: str = field(default="train", metadata=_help("Split of the source dataset (Hub ids and DatasetDict folders)."))
    target_split: str = field(default="train", metadata=_help("Split of the target dataset."))
    target_eval_split: str = field(default="validation", metadata=_help("Split of the target validation dataset."))
    source_format: str | None = field(
        default=None,
        metadata=_help(
            "Native layout of --source_dataset, read in place: gta5, synthia, cityscapes, acdc, darkzurich. Empty: a save_to_disk folder or Hub id."
        ),
    )
    target_format: str | None = field(default=None, metadata=_help("Native layout of --target_dataset (see --source_format)."))
    target_eval_format: str | None = field(default=None, metadata=_help("Native layout of --target_eval_dataset (see --source_format)."))
    source_conditions: list[str] = field(
        default_factory=list, metadata=_help("ACDC / Dark Zurich conditions of the source (empty: all; Dark Zurich: night).")
    )
    target_conditions: list[str] = field(
        default_factory=list, metadata=_help("ACDC (fog night rain snow) / Dark Zurich (day twilight night) conditions of the target.")
    )
    target_eval_conditions: list[str] = field(
        default_factory=list, metadata=_help("ACDC / Dark Zurich conditions of the target validation set.")
    )
    source_label_type: str = field(
        default="trainid",
        metadata=_help("Label encoding of a stored or Hub source: trainid, labelid (Cityscapes ids) or color (Cityscapes palette)."),
    )
    target_eval_label_type: str = field(
        default="trainid", metadata=_help("Label encoding of a stored or Hub target validation set (see --source_label_type).")
    )
    image_column: str = field(default="image", metadata=_help("Image column name in the datasets."))
    label_column: str = field(default="label", metadata=_help("Label column name (Cityscapes trainIds, 255 = ignore)."))
    # Sizes: --crop_size is H W (height first, as DAFormer's crop_size); the three resize flags are W H (width first, as
    # DAFormer's img_scale and PIL). The library takes (height, width) only: the `*_hw` properties below convert them.
    crop_size: list[int] = field(
        default_factory=lambda: [512, 512], metadata=_help("Training crop, H W (height width; one value: a square). DAFormer: 512 512.")
    )
    source_resize: list[int] = field(
        default_factory=list,
        metadata=_help("Resize source images before cropping to W H (width height; GTA: 1280 720). Empty: keep size."),
    )
    target_resize: list[int] = field(
        default_factory=list,
        metadata=_help("Resize target images before cropping to W H (width height; Cityscapes: 1024 512). Empty: keep size."),
    )
    eval_resize: list[int] = field(
        default_factory=list,
        metadata=_help(
            "Evaluation input size, W H (width height); logits are upsampled to label size (Cityscapes: 1024 512). Empty: native size."
        ),
    )
    crop_cat_max_ratio: float = field(
        default=0.75,
        metadata=_help("Source crops are retried (up to 10 times) while one class covers more than this share. DAFormer: 0.75."),
    )
    eval_synthia_subsets: bool = field(
        default=False, metadata=_help("Also report mIoU16 and mIoU13 (SYNTHIA -> Cityscapes); on by itself with --source_format synthia.")
    )
    max_eval_samples: int | None = field(default=None, metadata=_help("Evaluate on the first N target validation images only."))

    def __post_init__(self):
        _check(len(self.crop_size) in (1, 2), "DataArguments.crop_size", "one or two integers (H W)", self.crop_size)
        if len(self.crop_size) == 1:
            self.crop_size = [self.crop_size[0]] * 2
        _check(0 < self.crop_cat_max_ratio <= 1, "DataArguments.crop_cat_max_ratio", "in (0, 1]", self.crop_cat_max_ratio)
        from .data.domains import LABEL_TYPES
        from .data.native import FORMATS

        for name in ("source_format", "target_format", "target_eval_format"):
            _check(
                getattr(self, name) in (None, "", *FORMATS),
                f"DataArguments.{name}",
                f"empty or one of {sorted(FORMATS)}",
                getattr(self, name),
            )
        for name in ("source_label_type", "target_eval_label_type"):
            _check(getattr(self, name) in LABEL_TYPES, f"DataArguments.{name}", f"one of {list(LABEL_TYPES)}", getattr(self, name))
        for name in ("source_resize", "target_resize", "eval_resize"):
            value = getattr(self, name)
            _check(
                len(value) in (0, 2) and all(v > 0 for v in value), f"DataArguments.{name}", "empty or two positive integers (W H)", value
            )

    # The flags' sizes as the library takes them: (height, width), or None for "keep the images' size".
    @property
    def crop_size_hw(self) -> tuple[int, int]:
        """`--crop_size H W` as (height, width)."""
        height, width = self.crop_size
        return height, width

    @property
    def source_resize_hw(self) -> tuple[int, int] | None:
        """`--source_resize W H` as (height, width)."""
        return _flag_wh_to_hw(self.source_resize)

    @property
    def target_resize_hw(self) -> tuple[int, int] | None:
        """`--target_resize W H` as (height, width)."""
        return _flag_wh_to_hw(self.target_resize)

    @property
    def eval_size_hw(self) -> tuple[int, int] | None:
        """`--eval_resize W H` as (height, width)."""
        return _flag_wh_to_hw(self.eval_resize)


def _flag_wh_to_hw(value: list[int]) -> tuple[int, int] | None:
    """A `W H` flag value as (height, width); empty: None."""
    if not value:
        return None
    width, height = value
    return height, width
