"""The exported student's model card: Hub metadata, the recipe, results and the teacher premise."""

from __future__ import annotations

import os
from importlib import metadata, resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from duda_hf.evaluation.report import percent, teacher_premise
from duda_hf.evaluation.results_file import read_results
from duda_hf.networks.presets import mit_encoder


def _templates():
    """The folder of the card templates, `model_cards/` at the top of the repository. pyproject.toml maps it into the
    package as `duda_hf.model_cards` (package-dir, package-data): the folder itself in an editable install, a copy in
    a wheel, so installed wheels write cards too. A checkout put on sys.path without an install has no such mapping:
    the folder beside the package."""
    try:
        return resources.files("duda_hf.model_cards")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "model_cards"


TEMPLATE = _templates() / "duda_student.md"


DATASET_NAMES = {"gta5": "GTA5", "synthia": "SYNTHIA", "cityscapes": "Cityscapes", "acdc": "ACDC", "darkzurich": "Dark Zurich"}


# What the card's recipe table shows, in this order (keys of `recipe_summary`).
RECIPE_KEYS = (
    "method",
    "student",
    "aux_student",
    "teacher",
    "init",
    "source_dataset",
    "target_dataset",
    "max_steps",
    "batch_size",
    "crop_size",
    "learning_rate",
    "ema_alpha",
    "pseudo_label_threshold",
    "preadapt_steps",
    "distill_ramp_steps",
    "kd_temperature",
    "kd_confidence_weight",
    "kd_clean_target",
    "cwd_weight",
    "cwd_temperature",
    "distill_stage_steps",
    "distill_stage_target_only",
    "inconsistency_beta",
    "class_mix",
    "rare_class_sampling",
    "extra_teachers",
    "teacher_weights",
    "seed",
)


# Recipe settings that only some methods use: a baseline's card does not list what its run ignored (also for an
# eval_results.json written before recipe_summary left them out).
DUDA_ONLY_KEYS = frozenset(
    {
        "aux_student",
        "preadapt_steps",
        "distill_ramp_steps",
        "kd_temperature",
        "kd_confidence_weight",
        "kd_clean_target",
        "cwd_weight",
        "cwd_temperature",
        "distill_stage_steps",
        "distill_stage_target_only",
        "inconsistency_beta",
        "extra_teachers",
        "teacher_weights",
    }
)
ADAPTATION_KEYS = frozenset({"ema_alpha", "pseudo_label_threshold", "class_mix"})  # the target's pseudo-labels and mixing
# distill: the student's terms of duda from frozen teachers (no large pair, no EMA, no stage)
DISTILL_UNUSED_KEYS = frozenset({"aux_student", "ema_alpha", "distill_stage_steps", "distill_stage_target_only", "extra_teachers"})
UNUSED_KEYS = {
    "duda": frozenset(),
    "distill": DISTILL_UNUSED_KEYS,
    "self_training": DUDA_ONLY_KEYS,
    "source_only": DUDA_ONLY_KEYS | ADAPTATION_KEYS,
}


# The pictures a run writes (`plots/`, beside the student's files) that its card shows, with their captions.
CARD_PLOTS = (
    ("plots/miou_over_training.png", "Target mIoU of the networks over training"),
    ("plots/per_class_iou.png", "Per-class IoU at the end of training"),
)


def dataset_label(spec: str | None, format: str | None = None) -> str:
    """Readable dataset name: the native format's name, or the folder / Hub id."""
    if format:
        return DATASET_NAMES.get(format, format)
    return Path(spec).name if spec and os.path.isdir(spec) else (spec or "unknown")


def dataset_origin(spec: str | None, format: str | None = None, split: str | None = None, conditions=()) -> dict:
    """Where a domain came from, as the card's Hub metadata needs it: `name` (readable, with the ACDC / Dark Zurich
    conditions read), `hub_id` (a Hub dataset id, only when the data came from the Hub), `native` (the native format,
    when it came from a native folder) and `split`."""
    from_hub = bool(spec) and not format and not Path(spec).expanduser().exists()
    name = dataset_label(spec, format) + (f" ({', '.join(conditions)})" if conditions else "")
    return {"name": name, "hub_id": spec if from_hub else None, "native": format or None, "split": split}


def recipe_summary(model_args, data_args, config) -> dict:
    """The settings a model card reports, as plain JSON values (a run's eval_results.json keeps them as `settings`)."""
    return {
        "method": config.method,
        "student": model_args.student,
        **({"aux_student": model_args.aux_student} if config.method == "duda" else {}),  # the others train no large pair
        **({"teacher": list(config.teacher)} if config.method == "distill" else {}),
        "init": model_args.init,
        "source_dataset": dataset_label(data_args.source_dataset, data_args.source_format),
        "target_dataset": dataset_label(data_args.target_dataset, data_args.target_format),
        "target_eval_dataset": dataset_label(data_args.target_eval_dataset, data_args.target_eval_format),
        "origins": {
            role: dataset_origin(
                getattr(data_args, f"{role}_dataset"),
                getattr(data_args, f"{role}_format"),
                getattr(data_args, f"{role}_split"),
                tuple(getattr(data_args, f"{role}_conditions")),
            )
            for role in ("source", "target", "target_eval")
        },
        "max_steps": config.max_steps,
        "batch_size": f"{config.per_device_train_batch_size} source + "
        f"{config.per_device_train_batch_size} target per device x {config.world_size} x {config.gradient_accumulation_steps} accumulation",
        "crop_size": "x".join(map(str, data_args.crop_size)),
        "learning_rate": config.learning_rate,
        "ema_alpha": config.ema_alpha,
        "pseudo_label_threshold": config.pseudo_label_threshold,
        "preadapt_steps": config.preadapt_steps_resolved,
        "distill_ramp_steps": config.distill_ramp_steps_resolved,
        "kd_temperature": config.kd_temperature,
        # the soft term's weighting and this project's additions (docs/method.md), which only the distilling methods use
        **(
            {
                "kd_confidence_weight": config.kd_confidence_weight,
                "kd_clean_target": config.kd_clean_target,
                "cwd_weight": config.cwd_weight,
                "cwd_temperature": config.cwd_temperature,
                "distill_stage_steps": config.distill_stage_steps_resolved,
                "distill_stage_target_only": config.distill_stage_target_only,
            }
            if config.method in ("duda", "distill")
            else {}
        ),
        "inconsistency_beta": config.inconsistency_beta,
        "class_mix": config.class_mix,
        "rare_class_sampling": config.rare_class_sampling,
        "extra_teachers": list(config.extra_teachers or []),
        "teacher_weights": list(config.teacher_weights or []),
        "seed": config.seed,
        "duda_hf_version": _package_version(),  # the card names the version that trained, not the one that pushes
    }


def card_plots(model_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """The run's pictures in an exported folder, as `(path in the folder, caption)`: what its card can show."""
    return [(path, caption) for path, caption in CARD_PLOTS if (Path(model_dir) / path).is_file()]


def card_files(model_dir: str | os.PathLike) -> dict:
    """What an exported folder holds beside the model that its card tells of: `build_model_card`'s `onnx`,
    `onnx_quantized` and `plots`."""
    folder = Path(model_dir)
    return {
        "onnx": (folder / "onnx" / "model.onnx").is_file(),
        "onnx_quantized": (folder / "onnx" / "model_quantized.onnx").is_file(),
        "plots": card_plots(folder),
    }


def _teacher_label(recipe: dict, method: str | None) -> str:
    if method == "self_training":
        return "teacher (EMA of the student)"
    if method == "distill":
        return f"teacher (frozen, {(recipe.get('teacher') or ['given'])[0]})"
    return f"teacher (EMA of the auxiliary student, {recipe.get('aux_student', 'large network')})"


def _model_index_dataset(origin: dict | None) -> tuple[str, str, str] | None:
    """`(type, name, split)` of the evaluation set for the Hub's model-index: a Hub id, or a native dataset's official name;
    None for a local folder (on the Hub a type is a link to a dataset repo, which a folder name is not)."""
    if not origin:
        return None
    if origin.get("hub_id"):
        return origin["hub_id"], origin["hub_id"], origin.get("split") or "validation"
    if origin.get("native"):
        return origin["native"], origin["name"], origin.get("split") or "validation"
    return None


def _package_version() -> str | None:
    try:
        return metadata.version("duda-hf")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed: no version to name
        return None


def build_model_card(
    results: dict,
    repo_id: str,
    *,
    license: str = "other",
    eval_size_hw: tuple[int, int] | None = None,
    architecture: str = "SegformerForSemanticSegmentation",
    onnx: bool = False,
    onnx_quantized: bool = False,
    plots: list[tuple[str, str]] = (),
) -> ModelCard:
    """A model card for an exported student from a run's `eval_results.json` (its `settings` and `metrics`).

    Every sentence is true of the run it describes: the method's own account (DUDA, self-training or source only),
    the datasets by where they came from (Hub metadata names Hub datasets only), and the run's numbers.

    Args:
        results: the run's eval_results.json content, in either schema (`duda_hf.evaluation.results_file`).
        repo_id: where the model lives on the Hub (used in the usage snippet and the model-index).
        eval_size_hw: `(height, width)` the image processor resizes to; None: the native size.
        architecture: the student's transformers class (its config's `architectures`).
        onnx: the folder holds `onnx/model.onnx`: the card says how to run it.
        onnx_quantized: it also holds `onnx/model_quantized.onnx` (int8).
        plots: `(path in the folder, caption)` of the pictures the folder holds (`card_plots`): embedded in the card.
            (`card_files(folder)` gives `onnx`, `onnx_quantized` and `plots` as a folder holds them.)
    """
    family = architecture.removesuffix("ForSemanticSegmentation")
    results = read_results(results)
    recipe, metrics = results["settings"], results["metrics"]
    method = recipe.get("method")
    origins = recipe.get("origins") or {}
    student_metrics = metrics["student"]
    eval_dataset = recipe.get("target_eval_dataset") or "target validation set"
    extra = [k for k in ("mIoU16", "mIoU13") if k in student_metrics]
    models = [("student (this model)", student_metrics)]
    if metrics.get("auxiliary"):
        models.append((f"auxiliary student ({recipe.get('aux_student', 'large network')})", metrics["auxiliary"]))
    if metrics.get("teacher"):
        models.append((_teacher_label(recipe, method), metrics["teacher"]))
    hub_datasets = [origins[role]["hub_id"] for role in ("source", "target") if (origins.get(role) or {}).get("hub_id")]
    index_dataset = _model_index_dataset(origins.get("target_eval"))
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license,
        tags=[
            "semantic-segmentation",
            family.lower(),
            *(("domain-adaptation", "unsupervised-domain-adaptation") if method in ("duda", "distill", "self_training") else ()),
            *(("distillation", "duda") if method == "duda" else ("knowledge-distillation",) if method == "distill" else ()),
        ],
        datasets=list(dict.fromkeys(hub_datasets)) or None,
        base_model=f"nvidia/{mit_encoder(str(recipe['student']))}"
        if recipe.get("init") == "imagenet" and mit_encoder(str(recipe.get("student", "")))
        else None,
        metrics=["mean_iou"],
        model_name=repo_id.split("/")[-1],
        eval_results=[
            EvalResult(
                task_type="image-segmentation",
                task_name="Semantic Segmentation",
                dataset_type=index_dataset[0],
                dataset_name=index_dataset[1],
                dataset_split=index_dataset[2],
                metric_type="mean_iou",
                metric_name="mIoU",
                metric_value=round(100 * student_metrics["mIoU"], 2),
            )
        ]
        if index_dataset
        else None,
    )
    per_class_rows = [
        {"name": cls, "cells": " | ".join(percent(m["per_class_iou"][cls]) for _, m in models)} for cls in student_metrics["per_class_iou"]
    ]
    names = {origins[role]["name"].split(" (")[0] for role in ("source", "target", "target_eval") if origins.get(role)} or {
        recipe.get(key) for key in ("source_dataset", "target_dataset") if recipe.get(key)
    }
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE.read_text(encoding="utf-8"),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        method=method,
        package_version=recipe.get("duda_hf_version"),
        student=recipe.get("student", "student"),
        family=family,
        architecture=architecture,
        remote_code=architecture == "DaformerForSemanticSegmentation",  # not a transformers class: its code travels with it
        onnx=onnx,
        onnx_quantized=onnx_quantized,
        aux_student=recipe.get("aux_student", "auxiliary student"),
        teachers=", ".join(recipe.get("teacher") or []) or "frozen teachers",
        source=recipe.get("source_dataset", "the source domain"),
        target=recipe.get("target_dataset", "the target domain"),
        eval_dataset=eval_dataset,
        num_images=student_metrics.get("num_images", "?"),
        eval_size=f"{eval_size_hw[1]}x{eval_size_hw[0]}" if eval_size_hw else None,  # as people read sizes: W x H
        extra_metrics=extra,
        summary_rows=[{"name": n, "mIoU": percent(m["mIoU"]), "extra": [percent(m.get(k)) for k in extra]} for n, m in models],
        per_class_header=" | ".join(n for n, _ in models),
        per_class_rule="|".join("---" for _ in models),
        per_class_rows=per_class_rows,
        recipe=[(key, recipe[key]) for key in RECIPE_KEYS if key in recipe and key not in UNUSED_KEYS.get(method, ())],
        premise=teacher_premise(results),
        plots=list(plots),
        licensed_datasets=[name for name in DATASET_NAMES.values() if name in names],
        other_datasets=sorted(name for name in names if name not in DATASET_NAMES.values()),
    )
