"""Problems found early and said in one line: label ids at evaluation, broken model folders, empty datasets, image/label
size mismatches (from the file headers), crops larger than the images, recipe types, resume targets, and the
programs' one-line errors."""

import io
import logging
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from duda_hf.cli import evaluate_duda, train_duda
from duda_hf.cli.arguments import parse_args
from duda_hf.cli.recipe import RecipeError
from duda_hf.cli.training_run import build_trainer
from duda_hf.data.checks import check_pairs, header_sizes
from duda_hf.data.domains import load_domain
from duda_hf.data.errors import DomainError
from duda_hf.evaluation.confusion import StreamingConfusion
from duda_hf.evaluation.inference import evaluate_networks
from duda_hf.export.network import export_network
from duda_hf.networks.loading import build_network
from duda_hf.training.resume import ResumeError, resolve_checkpoint

from .conftest import broken_model_copy, load_strict_json, one_line_error, tiny_argv

ROOT = Path(__file__).resolve().parents[1]


def save_pairs(path: Path, labels: list[np.ndarray], image_size_hw=None, label_files=True) -> str:
    """A save_to_disk folder of random images and the given labels, stored from PNG files (their names are kept)."""
    rng = np.random.default_rng(0)
    files = path.parent / f"{path.name}_files"
    files.mkdir(parents=True)
    rows = {"image": [], "label": []}
    for number, label in enumerate(labels):
        height, width = image_size_hw or label.shape[:2]
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(files / f"frame{number}.png")
        Image.fromarray(label.astype(np.uint8)).save(files / f"frame{number}_gtFine_labelIds.png")
        rows["image"].append(str(files / f"frame{number}.png"))
        rows["label"].append(str(files / f"frame{number}_gtFine_labelIds.png") if label_files else Image.fromarray(label.astype(np.uint8)))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return export_network(build_network("tiny", "random"), tmp_path_factory.mktemp("guards") / "student", eval_size_hw=(32, 64))


# ---------------------------------------------------------------------------------------------------------------------
# 1. Evaluation checks label values as training does; the report states the pixels scored and ignored


def label_ids(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 34, (32, 64))  # Cityscapes label ids 0..33


def test_evaluation_refuses_label_ids_with_the_count_an_example_file_and_the_fix(student, tmp_path, capfd):
    data = save_pairs(tmp_path / "ids", [label_ids(0), label_ids(1)])
    argv = ["--model", str(student), "--dataset", data, "--output_dir", str(tmp_path / "out")]
    err = one_line_error(evaluate_duda.main, argv, capfd)  # was exit 0, a wrong mIoU over the pixels whose id is below 19
    wrong = int(np.isin(label_ids(0), np.arange(19, 34)).sum())
    assert f"#0 (frame0_gtFine_labelIds.png): {wrong:,} of 2,048 pixels hold [19, 20" in err
    assert "pass --label_type labelid" in err
    assert not (tmp_path / "out").exists()  # stopped before any inference

    assert evaluate_duda.main([*argv, "--label_type", "labelid"]) == 0
    metrics = load_strict_json(tmp_path / "out" / "eval_results.json")["metrics"]["student"]
    ignored = sum(int(np.isin(label_ids(seed), [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]).sum()) for seed in (0, 1))
    assert (metrics["pixels_scored"], metrics["pixels_ignored"]) == (2 * 2048 - ignored, ignored)
    report = (tmp_path / "out" / "report.md").read_text()
    assert (
        f"- **pixels**: {2 * 2048 - ignored:,} scored ({100 * (2 * 2048 - ignored) / 4096:.1f}%), {ignored:,} ignored (label 255)" in report
    )


def test_the_metric_counts_ignored_and_other_label_values_and_evaluation_refuses_the_latter(student, tmp_path):
    metric = StreamingConfusion()
    metric.update(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 255, 26, 3]], dtype=torch.uint8))
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[-1, 255]]))  # wide labels take the other path
    assert (int(metric.matrix.sum()), int(metric.ignored_pixels), int(metric.invalid_pixels)) == (2, 2, 2)
    assert {"pixels_scored": 2, "pixels_ignored": 2}.items() <= metric.compute().items()

    from transformers import SegformerForSemanticSegmentation

    dataset = load_domain(save_pairs(tmp_path / "ids", [label_ids(0)], label_files=False))
    network = SegformerForSemanticSegmentation.from_pretrained(student).eval()
    with pytest.raises(DomainError, match=r"of 2,048 label pixels in 1 images hold values that are neither a class.*'labelid'"):
        evaluate_networks({"student": network}, dataset, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------------------------
# 3. A broken model folder: one line from duda-evaluate (the Space's banner: tests/test_space.py)


@pytest.mark.parametrize("broken", ["no config.json", "truncated model.safetensors"])
def test_evaluate_names_a_broken_model_folder_in_one_line(student, tmp_path, capfd, broken):
    folder = broken_model_copy(student, tmp_path / "student", broken)
    expected = "has no config.json" if broken == "no config.json" else "model.safetensors is truncated or damaged ("
    data = save_pairs(tmp_path / "data", [np.zeros((32, 64))])
    argv = ["--model", str(folder), "--dataset", data, "--output_dir", str(tmp_path / "out")]
    assert expected in one_line_error(evaluate_duda.main, argv, capfd)  # was an 87-line load report, or a bare SafetensorError


# ---------------------------------------------------------------------------------------------------------------------
# 6. The programs' own errors: one line and exit status 2; DUDA_DEBUG=1 shows the traceback


def test_training_errors_are_one_line_with_exit_status_2(tiny_benchmark, tmp_path, capfd, monkeypatch):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("crop_sise: 64\n")
    cases = {
        "does not exist": tiny_argv(tiny_benchmark, tmp_path, "--source_dataset", str(tmp_path / "missing")),
        "has unknown keys ['crop_sise']": ["--config", str(unknown), *tiny_argv(tiny_benchmark, tmp_path)],
        "DudaConfig.max_steps must be > 0": tiny_argv(tiny_benchmark, tmp_path, "--max_steps", "0"),
    }
    for expected, argv in cases.items():
        assert expected in one_line_error(train_duda.main, argv, capfd)
    monkeypatch.setenv("DUDA_DEBUG", "1")
    with pytest.raises(ValueError, match="max_steps must be > 0"):
        train_duda.main(tiny_argv(tiny_benchmark, tmp_path, "--max_steps", "0"))


def test_an_error_that_is_not_the_projects_keeps_its_traceback(tiny_benchmark, tmp_path, monkeypatch):
    def broken(*args):
        return {}["student"]  # a bug, not a message for the user

    monkeypatch.setattr("duda_hf.cli.training_run.run_training", broken)
    with pytest.raises(KeyError):
        train_duda.main(tiny_argv(tiny_benchmark, tmp_path))


@pytest.mark.slow
def test_the_installed_command_prints_one_line_and_no_traceback(tiny_benchmark, tmp_path):
    command = Path(sys.executable).parent / "duda-train"
    done = subprocess.run(
        [str(command), *tiny_argv(tiny_benchmark, tmp_path, "--max_steps", "0")], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: DudaConfig.max_steps must be > 0 (DUDA trains for a number of steps, not epochs), got 0"
    ]


# ---------------------------------------------------------------------------------------------------------------------
# 7. Data problems found before the first step


def test_an_empty_dataset_is_named(tmp_path, tiny_benchmark):
    empty = load_domain(tiny_benchmark["source"]).select([])
    empty.save_to_disk(str(tmp_path / "empty"))  # datasets itself cannot open this folder again (IndexError)
    with pytest.raises(DomainError, match=r"--source_dataset '.*empty' is empty: 0 rows"):
        load_domain(str(tmp_path / "empty"), role="--source_dataset")
    datasets.DatasetDict({"train": load_domain(tiny_benchmark["target_val"]), "val": empty}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DomainError, match=r"has empty splits \['val'\]"):
        load_domain(str(tmp_path / "dict"), role="--target_eval_dataset")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says `width` x `height` and whose pixel data is cut off: readable size, undecodable image."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: data.index(b"IDAT") + 8]  # the chunks before the pixels, and 4 bytes of compressed pixels


def test_size_mismatches_are_found_from_the_headers_before_training(tmp_path, tiny_benchmark):
    labels = [Image.new("L", (32, 16)), Image.new("L", (32, 16)), Image.new("L", (40, 16))]
    images = [{"bytes": _png_header_only(32, 16), "path": f"frame{n}.png"} for n in range(3)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(tmp_path / "data"))
    dataset = load_domain(str(tmp_path / "data"))
    assert header_sizes(dataset, "image", "--source_dataset") == [(16, 32)] * 3  # no image could be decoded
    with pytest.raises(DomainError, match=r"--source_dataset: 1 of 3 images differ in size.*#2 \(frame2.png\): image 32x16, label 40x16"):
        check_pairs(dataset, "--source_dataset")

    source = save_pairs(tmp_path / "source", [np.zeros((64, 128))] * 2, image_size_hw=(60, 128))
    with pytest.raises(DomainError, match=r"2 of 2 images differ in size from their labels.*#0 \(frame0.png\): image 128x60, label 128x64"):
        build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path / "run", "--source_dataset", source)))


def test_a_crop_larger_than_the_images_is_an_error_unless_they_are_resized(tiny_benchmark, tmp_path):
    with pytest.raises(DomainError, match=r"--crop_size 96 96 \(H W\) is larger than 16 of 16 --source_dataset images.*at most 64 96"):
        build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path, "--crop_size", "96")))
    with pytest.raises(DomainError, match=r"16 of 16 --target_dataset images.*--target_resize H W"):
        build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path, "--crop_size", "96", "--source_resize", "96", "192")))
    trainer = build_trainer(
        *parse_args(
            tiny_argv(tiny_benchmark, tmp_path, "--crop_size", "96", "--source_resize", "96", "192", "--target_resize", "96", "192")
        )
    )
    assert trainer.train_dataset[0]["source_image"].shape == (3, 96, 96)


def test_recipe_values_are_converted_or_named(tiny_benchmark, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("crop_size: 64\nlearning_rate: 6e-5\nrare_class_sampling: 'false'\n")  # YAML reads 6e-5 as a string
    _, data_args, config = parse_args(["--config", str(recipe)])
    assert data_args.crop_size == [64, 64] and config.learning_rate == 6e-5 and config.rare_class_sampling is False
    for text, message in (
        ("crop_size: big", r"crop_size must be a list, each an integer \(e.g. crop_size: \[512, 512\]"),
        ("max_steps: 1.5", r"max_steps must be an integer, got 1.5"),
        ("save_strategy: no", r"save_strategy must be one of \['no', 'steps', 'epoch', 'best'\], got False \(YAML reads a bare no"),
    ):
        recipe.write_text(text + "\n")
        with pytest.raises(RecipeError, match=message):
            parse_args(["--config", str(recipe)])


# ---------------------------------------------------------------------------------------------------------------------
# 5. Resume says what it resumes from (end to end, with the step and what is restored: tests/test_faults.py)


def test_resume_last_without_a_checkpoint_says_it_starts_afresh_and_a_wrong_path_lists_the_checkpoints(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="duda_hf.training.resume"):
        assert resolve_checkpoint("last", str(tmp_path / "new_run")) is None
    assert f"--resume_from_checkpoint last: no checkpoint in {tmp_path / 'new_run'}, so training starts from step 0" in caplog.text
    (tmp_path / "run" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    with pytest.raises(ResumeError, match=r"'.*checkpoint-40' is not a checkpoint.*\['checkpoint-4'\]"):
        resolve_checkpoint(str(tmp_path / "run" / "checkpoint-40"), str(tmp_path / "run"))
