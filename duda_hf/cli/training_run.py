"""The training job behind `duda-train` (`duda_hf/cli/train_duda.py`): recipe + flags -> data -> networks -> DudaTrainer -> student/."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from transformers import set_seed

from duda_hf.cli.arguments import DataArguments, ModelArguments
from duda_hf.cli.recipe import RecipeError
from duda_hf.data.checks import check_training_data
from duda_hf.data.domains import load_domain
from duda_hf.data.pairing import DudaTrainDataset
from duda_hf.data.rcs import RareClassSampler, class_pixel_counts
from duda_hf.evaluation.confusion import SYNTHIA_SUBSETS
from duda_hf.evaluation.report import plot_miou_history, plot_per_class_iou
from duda_hf.evaluation.results_file import read_results, training_run_results
from duda_hf.export.model_card import build_model_card, card_files, recipe_summary
from duda_hf.export.network import export_network
from duda_hf.jsonio import write_json
from duda_hf.method.config import DudaConfig
from duda_hf.networks.duda_model import build_duda_model
from duda_hf.training.resume import resolve_checkpoint
from duda_hf.training.trackers import name_the_run
from duda_hf.training.trainer import DudaTrainer


def _require(value, flag: str) -> None:
    if not value:
        raise RecipeError(
            f"{flag} is required (a save_to_disk folder, a Hub dataset id, or a native folder with --*_format), in the recipe or on the command line"
        )


def build_trainer(model_args: ModelArguments, data_args: DataArguments, config: DudaConfig) -> DudaTrainer:
    """Load and validate the domains, build the networks and return a ready `DudaTrainer`."""
    for flag in ("source_dataset", "target_dataset", "target_eval_dataset"):
        _require(getattr(data_args, flag), f"--{flag}")
    if config.export_onnx:  # a missing extra fails now, not after training
        from duda_hf.export.onnx_export import require_onnx_packages

        require_onnx_packages()
    set_seed(config.seed)
    source, target, target_eval = (
        load_domain(
            getattr(data_args, f"{name}_dataset"),
            getattr(data_args, f"{name}_split"),
            with_labels=with_labels,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            role=f"--{name}_dataset",
            format=getattr(data_args, f"{name}_format"),
            conditions=tuple(getattr(data_args, f"{name}_conditions")),
            label_type=getattr(data_args, f"{name}_label_type", "trainid"),
        )
        for name, with_labels in (("source", True), ("target", False), ("target_eval", True))
    )
    if data_args.max_eval_samples:
        target_eval = target_eval.select(range(min(data_args.max_eval_samples, len(target_eval))))
    # Before the first step, from the file headers: image/label sizes, resizes that keep the images' orientation, crops
    # that fit the images.
    check_training_data(
        source,
        target,
        target_eval,
        data_args.crop_size_hw,
        source_resize_hw=data_args.source_resize_hw,
        target_resize_hw=data_args.target_resize_hw,
        eval_resize_hw=data_args.eval_size_hw,
    )
    # Class statistics validate every label and drive rare class sampling; computed once, then cached.
    with config.main_process_first(desc="class statistics"):
        source_counts = class_pixel_counts(source, "--source_dataset")
        class_pixel_counts(target_eval, "--target_eval_dataset")
    sampler = RareClassSampler(source_counts, config.rcs_temperature, config.rcs_min_pixels) if config.rare_class_sampling else None
    train_dataset = DudaTrainDataset(
        source,
        target,
        data_args.crop_size_hw,
        num_samples=config.train_samples,
        seed=config.seed,
        source_resize_hw=data_args.source_resize_hw,
        target_resize_hw=data_args.target_resize_hw,
        rare_class_sampler=sampler,
        rcs_min_crop_pixels=config.rcs_min_crop_ratio * config.rcs_min_pixels,
        cat_max_ratio=data_args.crop_cat_max_ratio,
        target_margins=tuple(config.pseudo_label_image_margins) or None,
    )
    model = build_duda_model(
        config.method,
        model_args.student,
        model_args.aux_student,
        init=model_args.init,
        extra_teachers=config.frozen_teachers,
        fd_lambda=config.fd_lambda,
        teacher_train_mode=config.teacher_train_mode,
        hrda={
            "context_scale": config.hrda_context_scale,
            "detail_crop": config.hrda_detail_crop_hw(data_args.crop_size_hw),
            "attention_classwise": config.hrda_attention_classwise,
        }
        if config.hrda
        else None,
    )
    # SYNTHIA -> Cityscapes is also reported on 16 and 13 classes (docs/datasets.md, "SYNTHIA")
    subsets = SYNTHIA_SUBSETS if data_args.source_format == "synthia" or data_args.eval_synthia_subsets else None
    return DudaTrainer(model, config, train_dataset, target_eval, eval_size_hw=data_args.eval_size_hw, eval_class_subsets=subsets)


def run_training(model_args: ModelArguments, data_args: DataArguments, config: DudaConfig) -> dict:
    """Train, evaluate and export. Returns the run's results as written to eval_results.json (`settings`, `metrics`, the
    series; duda_hf/evaluation/results_file.py)."""
    started = time.monotonic()
    trainer = build_trainer(model_args, data_args, config)
    # which checkpoint, which step, what it restores (`last` with none: says it starts from step 0)
    with config.main_process_first(local=True, desc="the checkpoint"):  # a Hub download: once per machine, then the cache
        resume = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir, announce=trainer.is_world_process_zero())
    name_the_run(config, resume)  # the trackers' run: the resumed run's own, or a new name
    trainer.train(resume_from_checkpoint=resume)
    if trainer.last_eval_step != trainer.state.global_step:
        trainer.evaluate()
    # eval_results.json (schema: duda_hf/evaluation/results_file.py): what ran apart from what it scored
    results = training_run_results(
        recipe_summary(model_args, data_args, config),
        trainer.last_eval_results,
        # every evaluation of the run: the networks' target mIoU over training (DUDA's premise, step by step)
        history=[entry for entry in trainer.state.log_history if any(key.endswith("_mIoU") for key in entry)],
        # per evaluation of this process's run: each network's per-class IoU and the student-teacher agreement per class
        per_class_history=trainer.per_class_history,
        # every logging step: the loss terms and diagnostics (pseudo-label quality, lam_t, what the student sees of
        # the teacher, the class weights)
        train_history=[entry for entry in trainer.state.log_history if "loss" in entry],
        # training images that could not be decoded and were replaced (counted up to the last logging step)
        bad_samples=trainer.bad_samples.summary(),
        seconds=round(time.monotonic() - started, 1),
    )
    if trainer.is_world_process_zero():
        # the evaluation size, or the first validation image's (PIL's size is width, height)
        eval_size_hw = data_args.eval_size_hw or trainer.eval_dataset[0]["image"].size[::-1]
        export_network(trainer.model.student, Path(config.output_dir) / "student", eval_size_hw=eval_size_hw)
        if trainer.model.teacher is not None:  # for comparison (`evaluate_duda.py --compare`), exported the same way
            export_network(trainer.model.teacher, Path(config.output_dir) / "teacher", eval_size_hw=eval_size_hw)
        if config.export_onnx:  # before the card, which then says how to run it, and before any push
            from duda_hf.export.onnx_export import export_onnx, onnx_summary

            print(onnx_summary(export_onnx(Path(config.output_dir) / "student", progress=not config.disable_tqdm)))
        write_plots(results, Path(config.output_dir) / "plots", Path(config.output_dir) / "student" / "plots")
        write_json(Path(config.output_dir) / "eval_results.json", results)
        repo_id = trainer.hub_model_id or config.hub_model_id or f"your-org/{Path(config.output_dir).name}"
        card = build_model_card(
            results,
            repo_id,
            eval_size_hw=eval_size_hw,
            architecture=type(trainer.model.student).__name__,
            **card_files(Path(config.output_dir) / "student"),
        )
        card.save(Path(config.output_dir) / "student" / "README.md")
        if config.push_to_hub:  # the final student (with its card) goes to the repo root, loadable by repo id
            trainer.push_to_hub(commit_message=f"DUDA student after {trainer.state.global_step} steps")
    return results


def write_plots(results: dict, folder: Path, *copies: Path) -> None:
    """The run's pictures: the networks' target mIoU over training (`miou_over_training.png`, from its evaluations) and
    the student's and the teacher's per-class IoU at the end (`per_class_iou.png`), in `folder` and each of `copies`
    (the student's `plots/`, which its model card shows and a push uploads). `results`: eval_results.json's content."""
    results = read_results(results)
    folder.mkdir(parents=True, exist_ok=True)
    method = results["settings"].get("method")
    plot_miou_history(results["history"], folder / "miou_over_training.png", f"{method}: target mIoU over training")
    networks = {name: results["metrics"][name] for name in ("student", "teacher") if name in results["metrics"]}
    plot_per_class_iou(networks, folder / "per_class_iou.png", "per-class IoU on the target validation set")
    for copy in copies:
        copy.mkdir(parents=True, exist_ok=True)
        for picture in ("miou_over_training.png", "per_class_iou.png"):
            shutil.copyfile(folder / picture, copy / picture)
