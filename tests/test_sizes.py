"""One size convention: the library takes (height, width); the W H flags are converted once, where they are parsed.

Every size here is non-square, so a size transposed anywhere (training, evaluation, export, model card, the
evaluation program) shows as a wrong shape.
"""

import json

import numpy as np
import pytest
from PIL import Image

from .conftest import tiny_argv

# --eval_resize 96 64 is W H: the networks must see 64 x 96 (H x W) images; the tiny benchmark's are 64 x 128
EVAL_FLAGS = ("--eval_resize", "96", "64")
TRAIN_FLAGS = ("--crop_size", "48", "64", "--source_resize", "112", "60", "--target_resize", "120", "56")


def record_inputs(network, shapes: list) -> None:
    """Append `(training, (H, W))` of every `pixel_values` the network is called with."""

    def hook(module, args, kwargs):
        pixel_values = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        shapes.append((module.training, tuple(pixel_values.shape[-2:])))

    network.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture(scope="module")
def sized_run(tiny_benchmark, tmp_path_factory):
    """A 2-step run with non-square crop, resizes and evaluation size; the student's inputs, by mode."""
    from duda_hf.cli import arguments, training_run

    shapes, built = [], {}
    build_trainer = training_run.build_trainer

    def recording_build_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        record_inputs(trainer.model.student, shapes)
        built["trainer"] = trainer
        return trainer

    output_dir = tmp_path_factory.mktemp("sizes") / "run"
    argv = tiny_argv(tiny_benchmark, output_dir, "--max_steps", "2", *TRAIN_FLAGS, *EVAL_FLAGS)
    training_run.build_trainer = recording_build_trainer
    try:
        training_run.run_training(*arguments.parse_args(argv))
    finally:
        training_run.build_trainer = build_trainer
    return output_dir, shapes, built["trainer"]


def test_flags_in_w_h_order_become_height_width_once():
    from duda_hf.cli.arguments import DataArguments

    data_args = DataArguments(crop_size=[48, 64], source_resize=[112, 60], target_resize=[120, 56], eval_resize=[96, 64])
    assert data_args.crop_size_hw == (48, 64)
    assert data_args.source_resize_hw == (60, 112)
    assert data_args.target_resize_hw == (56, 120)
    assert data_args.eval_size_hw == (64, 96)
    assert DataArguments().source_resize_hw is None and DataArguments().eval_size_hw is None


def test_image_helpers_take_height_width():
    from duda_hf.data.images import to_label_array, to_rgb_array

    image, label = Image.new("RGB", (128, 64)), Image.new("L", (128, 64))  # PIL: (W, H)
    assert to_rgb_array(image, (60, 112)).shape == (60, 112, 3)
    assert to_label_array(label, (60, 112)).shape == (60, 112)
    assert to_rgb_array(image).shape == (64, 128, 3)


def test_training_crops_resizes_and_evaluates_without_transposing(sized_run, tiny_benchmark):
    _, shapes, trainer = sized_run
    dataset = trainer.train_dataset
    assert dataset.crop_size_hw == (48, 64)
    assert (dataset.source_resize_hw, dataset.target_resize_hw) == ((60, 112), (56, 120))
    item = dataset[0]
    assert item["source_image"].shape == (3, 48, 64) and item["target_image"].shape == (3, 48, 64)
    assert item["source_label"].shape == (48, 64)
    training = {shape for is_training, shape in shapes if is_training}
    evaluation = {shape for is_training, shape in shapes if not is_training}
    assert training == {(48, 64)}
    assert evaluation == {(64, 96)}


def test_export_and_model_card_carry_the_evaluation_size(sized_run):
    output_dir, _, _ = sized_run
    for network in ("student", "teacher"):
        processor = json.loads((output_dir / network / "preprocessor_config.json").read_text())
        assert processor["size"] == {"height": 64, "width": 96}
    card = (output_dir / "student" / "README.md").read_text()
    assert "resizes inputs to 96x64 (W x H)" in card
    assert "whole-image inference at\n96x64," in card


def test_push_rewrites_the_card_with_the_processor_size(sized_run, tmp_path, monkeypatch):
    import shutil

    from duda_hf.cli import push_to_hub

    output_dir, _, _ = sized_run
    run = tmp_path / "run"
    shutil.copytree(output_dir / "student", run / "student")
    shutil.copy(output_dir / "eval_results.json", run / "eval_results.json")
    (run / "student" / "README.md").unlink()
    pushed = []
    monkeypatch.setattr(push_to_hub, "push_folder", lambda model_dir, repo_id, **kwargs: pushed.append(repo_id) or "url")
    assert push_to_hub.main(["--model_dir", str(run / "student"), "--repo_id", "me/sizes"]) == 0
    assert pushed == ["me/sizes"]
    assert "resizes inputs to 96x64 (W x H)" in (run / "student" / "README.md").read_text()


@pytest.mark.parametrize(
    ("flags", "expected_inputs", "eval_size", "inference"),
    [
        # the student's image processor says 64 x 96 (H x W)
        ((), (64, 96), [96, 64], "whole, input 96x64"),
        (("--eval_size", "112", "56"), (56, 112), [112, 56], "whole, input 112x56"),
        # windows of 32 x 48 (H x W) every 24 x 64 cover the 56 x 112 input in 2 x 2 tiles: one batch of 4
        (
            ("--eval_size", "112", "56", "--mode", "slide", "--window", "32", "48", "--stride", "24", "64"),
            (32, 48),
            [112, 56],
            "slide, input 112x56, window 48x32 stride 64x24",
        ),
    ],
)
def test_evaluate_takes_eval_size_w_h_and_window_h_w(
    sized_run, tiny_benchmark, tmp_path, monkeypatch, flags, expected_inputs, eval_size, inference
):
    from duda_hf.cli import evaluate_duda

    output_dir, _, _ = sized_run
    shapes, load_model = [], evaluate_duda.load_model

    def recording_load_model(name_or_path, role="--model"):
        model, *rest = load_model(name_or_path, role)
        record_inputs(model, shapes)
        return (model, *rest)

    monkeypatch.setattr(evaluate_duda, "load_model", recording_load_model)
    out = tmp_path / "eval"
    argv = ["--model", str(output_dir / "student"), "--dataset", tiny_benchmark["target_val"], "--max_samples", "2"]
    assert evaluate_duda.main([*argv, "--output_dir", str(out), *flags]) == 0
    assert {shape for _, shape in shapes} == {expected_inputs}
    # batched (--batch_size 4): the two images in one forward pass; in slide mode their 2 x 4 windows, 4 a pass
    assert len(shapes) == (2 if "--mode" in flags else 1)
    report = json.loads((out / "eval_results.json").read_text())
    assert report["settings"]["eval_size"] == eval_size
    assert f"**inference**: {inference}" in (out / "report.md").read_text()
    assert np.isfinite(report["metrics"]["student"]["mIoU"])
