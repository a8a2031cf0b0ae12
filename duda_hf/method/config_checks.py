"""The rules a `DudaConfig` must satisfy: the values each choice flag takes, and `check_config`.

`DudaConfig.__post_init__` runs `check_config` before it fills any value, so that what is checked is what the user
wrote. Each broken rule raises one `ValueError` that names the flag, the value it got and what it must be.
"""

from __future__ import annotations

from duda_hf.data.labels import NUM_CLASSES

METHODS = ("duda", "distill", "self_training", "source_only")
DISTILLING_METHODS = ("duda", "distill")  # the methods whose student learns a teacher by gradual distillation
EMA_SCHEDULES = ("daformer", "copy_first")
LR_SCHEDULES = ("daformer", "trainer")
WEIGHT_DECAY_EXEMPT = ("encoder_norms", "norms_and_biases")
LOSS_DENOMINATORS = ("all_pixels", "valid_pixels")
MIC_MODES = ("separatetrgaug", "separatetrg", "separate")
HRDA_STUDENT_INPUTS = ("full", "context")


def check_flag(condition: bool, name: str, allowed: str, value) -> None:
    if not condition:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_config(config) -> None:
    """Raise a `ValueError` on the first flag of `config` (a `DudaConfig`) that breaks a rule; change nothing."""
    _check_ranges(config)
    _check_methods(config)
    _check_schedule(config)


def _check_ranges(config) -> None:
    """Each flag on its own: a choice among its values, or a number in its range."""
    check_flag(config.method in METHODS, "DudaConfig.method", f"one of {METHODS}", config.method)
    check_flag(0 <= config.ema_alpha < 1, "DudaConfig.ema_alpha", "in [0, 1)", config.ema_alpha)
    check_flag(config.ema_schedule in EMA_SCHEDULES, "DudaConfig.ema_schedule", f"one of {EMA_SCHEDULES}", config.ema_schedule)
    check_flag(
        config.loss_denominator in LOSS_DENOMINATORS, "DudaConfig.loss_denominator", f"one of {LOSS_DENOMINATORS}", config.loss_denominator
    )
    check_flag(config.lr_schedule in LR_SCHEDULES, "DudaConfig.lr_schedule", f"one of {LR_SCHEDULES}", config.lr_schedule)
    check_flag(
        config.weight_decay_exempt in WEIGHT_DECAY_EXEMPT,
        "DudaConfig.weight_decay_exempt",
        f"one of {WEIGHT_DECAY_EXEMPT}",
        config.weight_decay_exempt,
    )
    check_flag(0 <= config.pseudo_label_threshold <= 1, "DudaConfig.pseudo_label_threshold", "in [0, 1]", config.pseudo_label_threshold)
    for name in ("pseudo_label_ignore_top", "pseudo_label_ignore_bottom", "rcs_min_pixels", "debug_image_steps"):
        check_flag(getattr(config, name) >= 0, f"DudaConfig.{name}", ">= 0", getattr(config, name))
    check_flag(0 <= config.color_jitter_strength <= 1, "DudaConfig.color_jitter_strength", "in [0, 1]", config.color_jitter_strength)
    for name in ("color_jitter_p", "blur_p", "inconsistency_momentum", "fd_scale_min_ratio", "max_bad_sample_share"):
        check_flag(0 <= getattr(config, name) <= 1, f"DudaConfig.{name}", "in [0, 1]", getattr(config, name))
    check_flag(
        0 < config.blur_sigma_min <= config.blur_sigma_max,
        "DudaConfig.blur_sigma_min/blur_sigma_max",
        "0 < blur_sigma_min <= blur_sigma_max",
        (config.blur_sigma_min, config.blur_sigma_max),
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
        check_flag(getattr(config, name) >= 0, f"DudaConfig.{name}", ">= 0", getattr(config, name))
    check_flag(config.mic_mode in MIC_MODES, "DudaConfig.mic_mode", f"one of {MIC_MODES}", config.mic_mode)
    check_flag(0 <= config.mic_mask_ratio < 1, "DudaConfig.mic_mask_ratio", "in [0, 1)", config.mic_mask_ratio)
    check_flag(
        config.mic_block_size > 0, "DudaConfig.mic_block_size", "> 0 (pixels, or below 1 a fraction of the crop)", config.mic_block_size
    )
    check_flag(0 < config.hrda_context_scale < 1, "DudaConfig.hrda_context_scale", "in (0, 1)", config.hrda_context_scale)
    check_flag(0 <= config.hrda_detail_loss < 1, "DudaConfig.hrda_detail_loss", "in [0, 1)", config.hrda_detail_loss)
    context_stride = 4 / config.hrda_context_scale  # the context grid's stride in full-resolution pixels
    check_flag(
        context_stride == int(context_stride) and config.hrda_crop_divisible % int(context_stride) == 0,
        "DudaConfig.hrda_crop_divisible",
        f"a multiple of the context grid's stride 4 / hrda_context_scale = {context_stride:g}",
        config.hrda_crop_divisible,
    )
    check_flag(
        len(config.hrda_detail_crop) in (0, 2) and all(v > 0 for v in config.hrda_detail_crop),
        "DudaConfig.hrda_detail_crop",
        "empty (half the crop) or two positive integers (H W)",
        config.hrda_detail_crop,
    )
    check_flag(
        config.hrda_student_input in HRDA_STUDENT_INPUTS,
        "DudaConfig.hrda_student_input",
        "'full' or 'context'",
        config.hrda_student_input,
    )
    check_flag(
        len(config.pseudo_label_image_margins) in (0, 4) and all(v >= 0 for v in config.pseudo_label_image_margins),
        "DudaConfig.pseudo_label_image_margins",
        "empty or four non-negative integers (top bottom left right)",
        config.pseudo_label_image_margins,
    )
    check_flag(config.kd_temperature > 0, "DudaConfig.kd_temperature", "> 0", config.kd_temperature)
    check_flag(config.cwd_temperature > 0, "DudaConfig.cwd_temperature", "> 0", config.cwd_temperature)
    check_flag(config.rcs_temperature > 0, "DudaConfig.rcs_temperature", "> 0", config.rcs_temperature)
    check_flag(config.head_lr_multiplier > 0, "DudaConfig.head_lr_multiplier", "> 0", config.head_lr_multiplier)
    check_flag(config.poly_power > 0, "DudaConfig.poly_power", "> 0", config.poly_power)
    check_flag(
        all(0 <= c < NUM_CLASSES for c in config.fd_classes),
        "DudaConfig.fd_classes",
        f"trainIds in [0, {NUM_CLASSES - 1}]",
        config.fd_classes,
    )


def _check_methods(config) -> None:
    """Flags that belong to some methods only, and the teachers each method needs."""
    if config.mic_lambda > 0 and config.method in ("source_only", "distill"):
        raise ValueError(
            "DudaConfig.mic_lambda trains the network that makes the pseudo-labels, which method "
            f"'{config.method}' does not train: use it with --method duda or self_training, or set it to 0"
        )
    if config.hrda and config.method != "duda":
        raise ValueError("DudaConfig.hrda trains the large pair with HRDA, which only method='duda' has; drop --hrda")
    if config.mic_student and config.method != "duda":
        raise ValueError("DudaConfig.mic_student needs method='duda' (in self_training MIC already trains the student)")
    if config.teacher_weights:
        expected = len(config.frozen_teachers) + (config.method != "distill")
        teachers = (
            f"one per --teacher ({len(config.teacher)})"
            if config.method == "distill"
            else f"EMA teacher + {len(config.extra_teachers)} extra teachers"
        )
        check_flag(
            len(config.teacher_weights) == expected,
            "DudaConfig.teacher_weights",
            f"empty or {expected} values ({teachers})",
            config.teacher_weights,
        )
        check_flag(
            all(w >= 0 for w in config.teacher_weights) and sum(config.teacher_weights) > 0,
            "DudaConfig.teacher_weights",
            "non-negative with a positive sum",
            config.teacher_weights,
        )
    if config.extra_teachers and config.method != "duda":
        use = "name every teacher with --teacher" if config.method == "distill" else "drop --extra_teachers or set --method duda"
        raise ValueError(f"DudaConfig.extra_teachers needs method='duda' (it adds frozen teachers to the EMA teacher); {use}")
    if config.method == "distill" and not config.teacher:
        raise ValueError(
            "method='distill' learns from frozen teachers: name at least one with --teacher (a folder such as an "
            "imported checkpoint or a run's teacher/, a Hub id, or CHECKPOINT_DIR@teacher)"
        )
    if config.method == "distill" and (config.distill_stage_steps or config.distill_stage_target_only):
        raise ValueError(
            "DudaConfig.distill_stage_steps / distill_stage_target_only stop the large pair of method='duda' for a "
            "stage; method='distill' has no large pair (the whole run learns from the frozen teachers): drop them"
        )
    if config.teacher and config.method != "distill":
        raise ValueError(
            f"DudaConfig.teacher names the frozen teachers of method='distill', not of '{config.method}'; set --method "
            "distill, or with --method duda add frozen teachers to the EMA teacher with --extra_teachers"
        )


def _check_schedule(config) -> None:
    """The run's length, the learning-rate schedule and the distillation stage."""
    scheduler_type = getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type)
    if config.lr_schedule == "daformer" and scheduler_type != "polynomial":
        raise ValueError(
            f"--lr_scheduler_type {scheduler_type} is Trainer's schedule, which --lr_schedule daformer (the default) "
            "replaces; add --lr_schedule trainer to use it"
        )
    check_flag(config.max_steps > 0, "DudaConfig.max_steps", "> 0 (DUDA trains for a number of steps, not epochs)", config.max_steps)
    check_flag(
        config.distill_stage_steps_resolved < config.max_steps,
        "DudaConfig.distill_stage_steps",
        f"fewer than max_steps ({config.max_steps}): the adaptation needs steps of its own",
        config.distill_stage_steps,
    )
    if config.distill_stage_target_only and config.method == "duda":
        check_flag(
            config.distill_stage_steps_resolved > 0 and (config.kd_clean_target > 0 or config.cwd_weight > 0),
            "DudaConfig.distill_stage_target_only",
            "used with distill_stage_steps > 0 and kd_clean_target or cwd_weight > 0 (the stage's only terms)",
            config.distill_stage_target_only,
        )
    # In the stage the auxiliary student gets no gradient, so DDP must not wait for one.
    check_flag(
        not (config.distill_stage_steps_resolved and config.ddp_find_unused_parameters is False),
        "DudaConfig.ddp_find_unused_parameters",
        "true or unset (auto) with a distillation stage, whose auxiliary student gets no gradient for DDP to wait for",
        config.ddp_find_unused_parameters,
    )
