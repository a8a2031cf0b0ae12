"""DudaConfig defaults, docstring and validation messages; recipes parse; offline model errors are fast and clear."""

import ast
import dataclasses
import inspect
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments

from duda_hf.cli.arguments import ModelArguments, load_recipe, parse_args
from duda_hf.cli.recipe import RecipeError
from duda_hf.method.config import DudaConfig, resolve_block_size

ROOT = Path(__file__).resolve().parents[1]


def test_daformer_defaults(tmp_path):
    config = DudaConfig(output_dir=str(tmp_path))
    assert (config.learning_rate, config.weight_decay, config.max_steps, config.warmup_steps) == (6e-5, 0.01, 40000, 1500)
    assert (config.ema_alpha, config.pseudo_label_threshold, config.head_lr_multiplier) == (0.999, 0.968, 10.0)
    assert (config.pseudo_label_ignore_top, config.pseudo_label_ignore_bottom) == (15, 120)
    assert (config.rcs_temperature, config.rcs_min_pixels, config.rcs_min_crop_ratio) == (0.01, 3000, 0.5)
    assert config.lr_scheduler_kwargs == {"lr_end": 0.0, "power": 1.0}
    # DAFormer to the letter (docs/method.md): mmcv's poly schedule, decay on all but the encoders' norms, the EMA's
    # first update at 1/2, cross-entropy over every pixel, the teacher in train mode
    assert (config.lr_schedule, config.weight_decay_exempt, config.ema_schedule) == ("daformer", "encoder_norms", "daformer")
    assert (config.loss_denominator, config.teacher_train_mode) == ("all_pixels", True)
    assert config.preadapt_steps_resolved == 10000 and config.distill_ramp_steps_resolved == 10000
    assert config.remove_unused_columns is False and config.ddp_find_unused_parameters is False


def test_a_trainer_schedule_needs_the_trainer_schedule_flag(tmp_path):
    """--lr_scheduler_type is not silently ignored under DAFormer's schedule."""
    with pytest.raises(ValueError, match="--lr_scheduler_type cosine is Trainer's schedule, which --lr_schedule daformer"):
        DudaConfig(output_dir=str(tmp_path), lr_scheduler_type="cosine")
    assert DudaConfig(output_dir=str(tmp_path), lr_schedule="trainer", lr_scheduler_type="cosine").lr_scheduler_type == "cosine"


def test_feature_distance_classes_are_daformers_thing_classes(tmp_path):
    # DAFormer (lhoyer/DAFormer), configs/_base_/uda/dacs_a999_fdthings.py, the config of its GTA->Cityscapes result:
    # imnet_feature_dist_classes=[6, 7, 11, 12, 13, 14, 15, 16, 17, 18]. Pole (5) is a "stuff" class there.
    from duda_hf.data.labels import CITYSCAPES_CLASSES

    config = DudaConfig(output_dir=str(tmp_path))
    assert config.fd_classes == [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    assert [CITYSCAPES_CLASSES[c] for c in config.fd_classes] == [
        "traffic light",
        "traffic sign",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ]


def test_every_field_has_help():
    import dataclasses

    from duda_hf.cli.arguments import DataArguments

    for cls in (DudaConfig, ModelArguments, DataArguments):
        own = [f for f in dataclasses.fields(cls) if cls is not DudaConfig or f.name in DudaConfig.__annotations__]
        missing = [f.name for f in own if not f.metadata.get("help")]
        assert missing == [], f"{cls.__name__} fields without help: {missing}"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("method", "dacs", r"DudaConfig.method must be one of \('duda', 'distill', 'self_training', 'source_only'\), got 'dacs'"),
        ("ema_alpha", 1.0, r"DudaConfig.ema_alpha must be in \[0, 1\), got 1.0"),
        ("pseudo_label_threshold", 1.5, r"DudaConfig.pseudo_label_threshold must be in \[0, 1\], got 1.5"),
        ("color_jitter_p", -0.1, r"DudaConfig.color_jitter_p must be in \[0, 1\], got -0.1"),
        ("blur_sigma_min", 2.0, r"DudaConfig.blur_sigma_min/blur_sigma_max must be 0 < blur_sigma_min <= blur_sigma_max"),
        ("kd_temperature", 0.0, r"DudaConfig.kd_temperature must be > 0, got 0.0"),
        ("inconsistency_beta", -1.0, r"DudaConfig.inconsistency_beta must be >= 0, got -1.0"),
        ("fd_classes", [19], r"DudaConfig.fd_classes must be trainIds in \[0, 18\], got \[19\]"),
        ("max_steps", -1, r"DudaConfig.max_steps must be > 0"),
        ("teacher_weights", [1.0, 2.0], r"DudaConfig.teacher_weights must be empty or 1 values"),
    ],
)
def test_validation_names_field_and_range(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        DudaConfig(output_dir=str(tmp_path), **{field: value})


def test_extra_teachers_need_duda(tmp_path):
    with pytest.raises(ValueError, match="extra_teachers needs method='duda'"):
        DudaConfig(output_dir=str(tmp_path), method="self_training", extra_teachers=["some/teacher"])


def test_model_init_choices():
    with pytest.raises(ValueError, match="ModelArguments.init must be 'imagenet' or 'random', got 'scratch'"):
        ModelArguments(init="scratch")


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_parse_into_configs(recipe, tmp_path):
    distill = "_distill_" in recipe.name  # the teacher is the user's: named on the command line
    teacher = ["--teacher", "imported/mic-gta2cs"] if distill else []
    model_args, data_args, config = parse_args(["--config", str(recipe), "--output_dir", str(tmp_path), *teacher])
    assert data_args.source_dataset and data_args.target_dataset and data_args.target_eval_dataset
    assert config.output_dir == str(tmp_path)  # the command line overrides the recipe
    if distill:  # the base recipe with the student's terms as kept on the synthetic benchmark
        base = load_recipe(ROOT / "configs" / "gta2cs_duda_b5_b0.yaml")
        kept = {"method": "distill", "preadapt_steps": 0, "distill_ramp_steps": 0, "kd_clean_target": 5.0}
        kept.update(kd_temperature=0.5, kd_confidence_weight=False)
        assert load_recipe(recipe) == {**base, **kept, "output_dir": "outputs/gta2cs_distill_b0"}
        assert config.teacher == ["imported/mic-gta2cs"] and (config.preadapt_steps_resolved, config.distill_ramp_steps_resolved) == (0, 0)
        with pytest.raises(ValueError, match="name at least one with --teacher"):
            parse_args(["--config", str(recipe), "--output_dir", str(tmp_path)])
        return
    if "_hrda_" in recipe.name:  # the MIC recipe at HRDA's full resolution, the large pair trained as HRDA
        base = load_recipe(recipe.with_name(recipe.name.replace("_hrda_mic", "").replace(".yaml", "_mic.yaml")))
        hrda = {key: value for key, value in load_recipe(recipe).items() if base.get(key) != value}
        changed = {"output_dir", "hrda", "source_resize", "target_resize", "eval_resize", "crop_size", "rcs_min_crop_ratio"}
        margins = {"pseudo_label_ignore_top", "pseudo_label_ignore_bottom"}
        image_margins = set() if recipe.name.startswith("cs2") else {"pseudo_label_image_margins"}
        assert set(hrda) == changed | margins | image_margins
        assert (config.hrda, data_args.crop_size, config.rcs_min_crop_ratio, config.mic_lambda) == (True, [1024, 1024], 2.0, 1.0)
        assert config.hrda_detail_crop_hw(data_args.crop_size_hw) == (512, 512) and config.hrda_context_scale == 0.5
        assert resolve_block_size(config.mic_block_size, *data_args.crop_size) == 64  # MIC(HRDA) at 1024 crops
        # HRDA's pseudo-label cropping v2 (margins of the image, not of the crop); none on ACDC and Dark Zurich (HRDA's
        # experiment 49)
        assert (config.pseudo_label_ignore_top, config.pseudo_label_ignore_bottom) == (0, 0)
        assert config.pseudo_label_image_margins == ([] if recipe.name.startswith("cs2") else [30, 240, 30, 30])
        assert data_args.target_resize == ([1080, 1920] if recipe.name.startswith("cs2") else [1024, 2048])  # H W
        return
    if recipe.name == "synthetic_pretrained_cpu.yaml":  # the pair that scripts/pretrain_synthetic.py writes
        assert (model_args.student, model_args.aux_student) == ("pretrained_synthetic/tiny", "pretrained_synthetic/tiny-wide")
        assert config.max_steps == 2000 and config.ema_alpha == 0.99
    elif recipe.name != "synthetic_cpu.yaml":
        # the large pair is DAFormer's network, the deployed student a plain SegFormer
        assert (model_args.student, model_args.aux_student, config.method) == ("mit-b0", "mit-b5-daformer", "duda")
        assert config.max_steps == 40000 and config.learning_rate == 6e-5 and data_args.crop_size == [512, 512]
    if recipe.name.startswith("synthetic_"):  # 1500 adaptation steps, then a 500-step distillation stage
        assert (config.max_steps, config.distill_stage_steps_resolved, config.adaptation_steps) == (2000, 500, 1500)
        assert (config.kd_clean_target, config.kd_temperature) == (1.0, 0.5)
    else:  # the paper recipes: the paper's step as specified
        assert (config.distill_stage_steps, config.kd_clean_target, config.cwd_weight, config.kd_temperature) == (0, 0, 0, 1.0)
    if recipe.name.endswith("_mic.yaml"):  # the base recipe, MIC on the large pair: MIC's settings for the benchmark
        base = load_recipe(recipe.with_name(recipe.name.replace("_mic", "")))
        mic = load_recipe(recipe)
        assert {key: value for key, value in mic.items() if not key.startswith("mic_") and key != "output_dir"} == {
            key: value for key, value in base.items() if key != "output_dir"
        }
        mode = "separate" if recipe.name.startswith("cs2") else "separatetrgaug"  # MIC's experiments 80 and 81
        assert (config.mic_lambda, config.mic_mode, config.mic_mask_ratio, config.mic_student) == (1.0, mode, 0.7, False)
        assert resolve_block_size(config.mic_block_size, *data_args.crop_size) == 32  # MIC(DAFormer) at 512 crops
    else:
        assert config.mic_lambda == 0


def test_command_line_overrides_recipe(tmp_path):
    recipe = ROOT / "configs" / "synthetic_cpu.yaml"
    _, data_args, config = parse_args(
        ["--config", str(recipe), "--max_steps", "7", "--crop_size", "32", "48", "--output_dir", str(tmp_path)]
    )
    assert config.max_steps == 7 and data_args.crop_size == [32, 48] and config.learning_rate == 6e-4
    assert config.distill_stage_steps_resolved == 2  # the recipe's stage is a share of max_steps (0.25 of 7, rounded)


def test_a_recipe_overrides_its_base_and_a_base_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("max_steps: 10\nlearning_rate: 0.1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmax_steps: 20\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nema_alpha: 0.9\n")
    assert load_recipe(tmp_path / "c.yaml") == {"max_steps": 20, "learning_rate": 0.1, "ema_alpha": 0.9}
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    with pytest.raises(RecipeError, match="leads back to itself"):
        load_recipe(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(RecipeError, match="missing.yaml' does not exist"):
        load_recipe(tmp_path / "d.yaml")


def test_recipe_with_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 10\nema_alfa: 0.99\n")
    with pytest.raises(RecipeError, match=r"unknown keys \['ema_alfa'\]"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def _offline_build(tmp_path, **env):
    code = (
        "import time\n"
        "from duda_hf.networks.loading import ModelUnavailableError, build_network\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    build_network('mit-b0', 'imagenet')\n"
        "except ModelUnavailableError as error:\n"
        "    print(f'{time.monotonic() - start:.2f}'); print(error)\n"
    )
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environment, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, message = done.stdout.split("\n", 1)
    return float(seconds), message


@pytest.mark.slow
def test_missing_weights_offline_fail_fast_with_a_way_forward(tmp_path):
    seconds, message = _offline_build(tmp_path, HF_HUB_OFFLINE="1")
    assert seconds < 2.0
    assert "nvidia/mit-b0" in message and "--init random" in message and "local" in message


@pytest.mark.slow
def test_unreachable_hub_fails_fast_without_offline_flag(tmp_path):
    seconds, message = _offline_build(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    assert seconds < 2.0 and "--init random" in message


# ---- the docstring lists every field with its default (read from the code, not from a list kept by hand) ----

PARAMETER_HEADING = re.compile(r"    > Parameters that control \S.*")
PARAMETER_ENTRY = re.compile(r"    (\w+) \(`([^`]+)`, \*optional\*, defaults to `(.*)`\):")
REPLACED_DEFAULT = re.compile(r"replaces `TrainingArguments`' `([^`]*)`")


def _default(dataclass_field):
    if dataclass_field.default_factory is not dataclasses.MISSING:
        return dataclass_field.default_factory()
    return getattr(dataclass_field.default, "value", dataclass_field.default)  # an enum as its value


def _declared_type(cls, name: str) -> str:
    """The annotation `name` was declared with, as text. Not `Field.type`: HfArgumentParser rewrites that in place."""
    annotation = next(vars(c)["__annotations__"][name] for c in cls.__mro__ if name in vars(c).get("__annotations__", {}))
    if isinstance(annotation, str):  # `from __future__ import annotations`: the source text
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def parameter_doc_problems(cls, doc: str, base=TrainingArguments) -> list[str]:
    """What the `Parameters:` section of `doc` gets wrong about dataclass `cls`, which extends `base`.

    Each field `cls` declares itself, and each field of `base` whose default `cls` changes, has one entry under a
    `> Parameters that control ...` heading, `name (`type`, *optional*, defaults to `X`):`, where `X` read as a
    Python literal is the field's default and `type` its annotation; an entry whose default differs from `base`'s
    says "replaces `TrainingArguments`' `Y`" with `base`'s default `Y`, and no other entry says it; no entry names a
    field that does not exist. An empty list: the docstring is right.
    """
    lines = inspect.cleandoc(doc).splitlines()
    if "Parameters:" not in lines:
        return ["no 'Parameters:' section"]
    problems, entries, heading, description = [], {}, None, None
    for line in lines[lines.index("Parameters:") + 1 :]:
        if not line.strip():
            continue
        if PARAMETER_HEADING.fullmatch(line):
            heading = line
        elif line.startswith("        ") and description is not None:
            description.append(line.strip())
        elif match := PARAMETER_ENTRY.fullmatch(line):
            name, type_name, default = match.groups()
            if heading is None:
                problems.append(f"{name}: listed before any '> Parameters that control' heading")
            description = []
            entries.setdefault(name, []).append((type_name, default, description))
        else:
            problems.append(f"unreadable line in Parameters: {line!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    base_defaults = {f.name: _default(f) for f in dataclasses.fields(base)}
    changed = {name for name in base_defaults if repr(base_defaults[name]) != repr(_default(fields[name]))}
    for name in sorted((set(vars(cls).get("__annotations__", {})) | changed) - set(entries)):
        problems.append(f"{name}: not documented")
    for name, found in entries.items():
        if len(found) > 1:
            problems.append(f"{name}: documented {len(found)} times")
        if name not in fields:
            problems.append(f"{name}: documented, but {cls.__name__} has no such field")
            continue
        type_name, default, description = found[0]
        if type_name != _declared_type(cls, name):
            problems.append(f"{name}: documented as `{type_name}`, declared as `{_declared_type(cls, name)}`")
        try:
            documented = ast.literal_eval(default)
        except (ValueError, SyntaxError):
            problems.append(f"{name}: default `{default}` is not a Python literal")
        else:
            if repr(documented) != repr(_default(fields[name])):
                problems.append(f"{name}: documented default `{default}`, the field's is {_default(fields[name])!r}")
        replaced = REPLACED_DEFAULT.search(" ".join(description))
        if name in changed and (replaced is None or repr(ast.literal_eval(replaced[1])) != repr(base_defaults[name])):
            problems.append(f"{name}: must say it replaces `TrainingArguments`' `{base_defaults[name]!r}`")
        elif name not in changed and replaced:
            problems.append(f"{name}: says it replaces a `TrainingArguments` default, but it keeps it")
    return problems


def test_the_docstring_lists_every_field_with_its_default():
    assert parameter_doc_problems(DudaConfig, DudaConfig.__doc__) == []


@pytest.mark.parametrize(
    "old, new, problem",
    [
        (
            "ema_alpha (`float`, *optional*, defaults to `0.999`)",
            "ema_alpha (`float`, *optional*, defaults to `0.99`)",
            "ema_alpha: documented default `0.99`",
        ),
        ("ema_alpha (", "ema_alfa (", "ema_alfa: documented, but DudaConfig has no such field"),
        ("ema_alpha (", "ema_alfa (", "ema_alpha: not documented"),
        (
            "        > Parameters that control the method and its teachers\n",
            "",
            "method: listed before any '> Parameters that control' heading",
        ),
        ("`TrainingArguments`' `5e-05`", "`TrainingArguments`' `1e-05`", "learning_rate: must say it replaces"),
        ("`TrainingArguments`' `0.0`", "Trainer's `0.0`", "weight_decay: must say it replaces"),
        ("(KL * tau^2).", "(KL * tau^2). It replaces `TrainingArguments`' `1.0`.", "kd_temperature: says it replaces"),
        ("kd_temperature (`float`", "kd_temperature (`int`", "kd_temperature: documented as `int`, declared as `float`"),
        (
            "        > Parameters that control the EMA teacher\n",
            '        > Parameters that control the EMA teacher\n\n        method (`str`, *optional*, defaults to `"duda"`):\n',
            "method: documented 2 times",
        ),
    ],
)
def test_the_docstring_check_catches_a_wrong_entry(old, new, problem):
    assert DudaConfig.__doc__.count(old) == 1
    problems = parameter_doc_problems(DudaConfig, DudaConfig.__doc__.replace(old, new))
    assert any(p.startswith(problem) for p in problems), problems


def test_the_docstring_check_catches_a_missing_field():
    doc = DudaConfig.__doc__
    start = doc.index("        export_onnx (")
    assert "export_onnx: not documented" in parameter_doc_problems(DudaConfig, doc[:start])


# ---- __post_init__ checks, fills what was left to it, and says what it changes ----

CONFIG_LOGGER = "duda_hf.method.config"


def _config_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == CONFIG_LOGGER]


def test_a_machine_without_gpu_runs_on_cpus_and_says_so(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=CONFIG_LOGGER)
    monkeypatch.setattr("duda_hf.method.config._has_accelerator", lambda: False)
    config = DudaConfig(output_dir=str(tmp_path), use_cpu=False, dataloader_pin_memory=True)
    assert (config.use_cpu, config.dataloader_pin_memory) == (True, False)
    assert _config_lines(caplog) == [
        (
            "no GPU (CUDA, MPS or XPU) found: use_cpu set to True and dataloader_pin_memory to False (were False, True), "
            "so that `accelerate launch --multi_gpu` forms one DDP group of CPU processes"
        )
    ]
    caplog.clear()  # nothing to change, nothing said
    DudaConfig(output_dir=str(tmp_path), use_cpu=True, dataloader_pin_memory=False)
    assert _config_lines(caplog) == []


def test_with_a_gpu_nothing_is_changed_or_said(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=CONFIG_LOGGER)
    monkeypatch.setattr("duda_hf.method.config._has_accelerator", lambda: True)
    config = DudaConfig(output_dir=str(tmp_path))
    assert (config.use_cpu, config.dataloader_pin_memory, config.torch_compile) == (False, True, False)
    assert config.accelerator_config.non_blocking is True  # the None ("auto") default, filled as documented
    assert _config_lines(caplog) == []


def test_compilation_moves_to_the_networks_and_says_so(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=CONFIG_LOGGER)
    config = DudaConfig(output_dir=str(tmp_path), torch_compile_backend="eager")
    assert (config.torch_compile, config.torch_compile_backend, config.compile_networks) == (
        False,
        None,
        {"backend": "eager", "mode": None},
    )
    compile_lines = [line for line in _config_lines(caplog) if line.startswith("torch_compile:")]
    assert compile_lines == [
        (
            "torch_compile: each network is compiled in place ({'backend': 'eager', 'mode': None}); torch_compile, "
            "torch_compile_backend and torch_compile_mode are turned off on the arguments, so that accelerate does not "
            "compile the wrapper too (training_args.json records them as requested)"
        )
    ]


def test_find_unused_parameters_is_auto_and_a_false_with_a_stage_is_refused(tmp_path):
    def config(**flags):
        return DudaConfig(output_dir=str(tmp_path), max_steps=100, **flags)

    assert DudaConfig.__dataclass_fields__["ddp_find_unused_parameters"].default is None
    assert config().ddp_find_unused_parameters is False
    assert config(distill_stage_steps=10).ddp_find_unused_parameters is True
    assert config(ddp_find_unused_parameters=True).ddp_find_unused_parameters is True  # what the user wrote stays
    assert config(distill_stage_steps=10, method="self_training").ddp_find_unused_parameters is False  # no stage there
    with pytest.raises(
        ValueError,
        match=r"DudaConfig.ddp_find_unused_parameters must be true or unset \(auto\) with a distillation stage, .*got False",
    ):
        config(distill_stage_steps=10, ddp_find_unused_parameters=False)


def test_the_auto_defaults_are_filled_as_documented(tmp_path):
    config = DudaConfig(output_dir=str(tmp_path), poly_power=0.9)
    assert config.lr_scheduler_kwargs == {"lr_end": 0.0, "power": 0.9}
    assert DudaConfig(output_dir=str(tmp_path), lr_scheduler_kwargs={"lr_end": 1e-7}).lr_scheduler_kwargs == {"lr_end": 1e-7}
    assert DudaConfig(output_dir=str(tmp_path), report_to="tensorboard, none").report_to == ["tensorboard", "none"]
