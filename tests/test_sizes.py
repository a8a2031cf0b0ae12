"""One size convention: every size flag is H W, height first, and the library takes (height, width); a resize given
width first, which would turn landscape images portrait, stops the program at start-up in one line.

Every size here is non-square, so a size transposed anywhere (training, evaluation, export, model card, the
evaluation program) shows as a wrong shape.
"""

import json

import numpy as np
import pytest
from PIL import Image

from .conftest import one_line_error, tiny_argv

# --eval_resize 64 96 is H W: the networks must see 64 x 96 (H x W) images; the tiny benchmark's are 64 x 128
EVAL_FLAGS = ("--eval_resize", "64", "96")
TRAIN_FLAGS = ("--crop_size", "48", "64", "--source_resize", "60", "112", "--target_resize", "56", "120")


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


def test_every_size_flag_is_height_first():
    from duda_hf.cli.arguments import DataArguments

    data_args = DataArguments(crop_size=[48, 64], source_resize=[60, 112], target_resize=[56, 120], eval_resize=[64, 96])
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


@pytest.mark.slow
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
        ((), (64, 96), [64, 96], "whole, input 96x64"),
        (("--eval_size", "56", "112"), (56, 112), [56, 112], "whole, input 112x56"),
        # windows of 32 x 48 (H x W) every 24 x 64 cover the 56 x 112 input in 2 x 2 tiles: one batch of 4
        (
            ("--eval_size", "56", "112", "--mode", "slide", "--window", "32", "48", "--stride", "24", "64"),
            (32, 48),
            [56, 112],
            "slide, input 112x56, window 48x32 stride 64x24",
        ),
    ],
)
def test_evaluate_takes_eval_size_window_and_stride_height_first(
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


# ---------------------------------------------------------------------------------------------------------------------
# A size given width first is an error where the images' size is known: at the start of training, evaluation and
# conversion. The tiny benchmark's images are 128x64 (W x H), landscape.


@pytest.mark.parametrize(
    ("flag", "images"),
    [("--source_resize", "--source_dataset"), ("--target_resize", "--target_dataset"), ("--eval_resize", "--target_eval_dataset")],
)
def test_training_refuses_a_resize_that_turns_the_images_portrait(tiny_benchmark, tmp_path, capfd, flag, images):
    from duda_hf.cli import train_duda

    argv = tiny_argv(tiny_benchmark, tmp_path / "run", flag, "112", "60")
    assert one_line_error(train_duda.main, argv, capfd) == (
        f"error: {flag} 112 60 would make the 128x64 (W x H) {images} images portrait: sizes are H W, height first; "
        f"did you mean {flag} 60 112?"
    )


def test_a_square_resize_or_square_images_are_never_an_error(tiny_benchmark, tmp_path):
    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import build_trainer
    from duda_hf.data.checks import check_resize

    square = ("--source_resize", "96", "96", "--target_resize", "80", "80", "--eval_resize", "64", "64")
    trainer = build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path, *square)))
    assert trainer.train_dataset.source_resize_hw == (96, 96)
    check_resize("--source_resize", (112, 60), [(64, 64), (32, 32)], "--source_dataset")  # square images
    check_resize("--source_resize", (112, 60), [(64, 128), (128, 64)], "--source_dataset")  # both orientations
    check_resize("--source_resize", None, [(64, 128)], "--source_dataset")  # no resize


def test_the_message_names_the_common_size_when_the_images_differ():
    from duda_hf.data.checks import check_resize
    from duda_hf.data.errors import DomainError

    with pytest.raises(DomainError) as raised:
        check_resize("--source_resize", (60, 112), [(1914, 1052), (1914, 1052), (1920, 1080), (64, 64)], "--source_dataset")
    assert str(raised.value) == (
        "--source_resize 60 112 would make the --source_dataset images (portrait: 1052x1914 and 2 other sizes, W x H) "
        "landscape: sizes are H W, height first; did you mean --source_resize 112 60?"
    )


def test_evaluate_refuses_an_eval_size_that_turns_the_images_portrait(tiny_benchmark, tmp_path, capfd):
    from duda_hf.cli import evaluate_duda
    from duda_hf.export.network import export_network
    from duda_hf.networks.loading import build_network

    student = export_network(build_network("tiny", "random"), tmp_path / "student", eval_size_hw=(32, 64))
    argv = ["--model", str(student), "--dataset", tiny_benchmark["target_val"], "--output_dir", str(tmp_path / "eval")]
    assert one_line_error(evaluate_duda.main, [*argv, "--eval_size", "128", "64"], capfd) == (
        "error: --eval_size 128 64 would make the 128x64 (W x H) --dataset images portrait: sizes are H W, height first; "
        "did you mean --eval_size 64 128?"
    )
    assert not (tmp_path / "eval").exists()
    assert evaluate_duda.main([*argv, "--eval_size", "64", "64", "--max_samples", "1"]) == 0  # square: no error
