"""Shared fixtures: a tiny synthetic benchmark made by the tests, and tiny DUDA arguments."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """Paths of a 16/16/6-image synthetic benchmark at 64x128."""
    from duda_hf.data.synthetic import build_synthetic_benchmark

    root = tmp_path_factory.mktemp("synthetic")
    return build_synthetic_benchmark(root, num_source=16, num_target=16, num_target_val=6, height=64, width=128, seed=0)


def tiny_argv(benchmark, output_dir, *extra):
    """Command-line flags of a few-step DUDA run on the tiny benchmark with tiny random networks."""
    return [
        "--source_dataset",
        benchmark["source"],
        "--target_dataset",
        benchmark["target"],
        "--target_eval_dataset",
        benchmark["target_val"],
        "--student",
        "tiny",
        "--aux_student",
        "tiny-wide",
        "--init",
        "random",
        "--crop_size",
        "64",
        "--per_device_train_batch_size",
        "2",
        "--rcs_min_pixels",
        "50",
        "--pseudo_label_ignore_top",
        "2",
        "--pseudo_label_ignore_bottom",
        "4",
        "--max_steps",
        "4",
        "--warmup_steps",
        "1",
        "--preadapt_steps",
        "1",
        "--distill_ramp_steps",
        "2",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--seed",
        "3",
        "--output_dir",
        str(output_dir),
        *extra,
    ]


def load_strict_json(path):
    """Parse a file as strict JSON, as `JSON.parse` and jq do: Python's NaN / Infinity / -Infinity are errors."""

    def reject(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(Path(path).read_text(), parse_constant=reject)


def broken_model_copy(model_dir, destination, how: str):
    """A copy of an exported model folder, broken `how`: "no config.json" or "truncated model.safetensors" (half of it)."""
    import shutil

    folder = Path(shutil.copytree(model_dir, destination))
    if how == "no config.json":
        (folder / "config.json").unlink()
    else:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy or download
    return folder


def assert_resume_ends_with(argv, checkpoint, final):
    """A run built from `argv` and resumed from `checkpoint` ends with the weights `final` (a checkpoint's
    model.safetensors, loaded) bit for bit; returns its trainer."""
    import torch

    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import build_trainer

    resumed = build_trainer(*parse_args(argv))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    state = resumed.model.checkpoint_state_dict()
    assert state.keys() == final.keys()
    for key, value in final.items():
        assert torch.equal(state[key], value), key
    return resumed


def one_line_error(main, argv, capfd) -> str:
    """Run a program's `main` in this process: it must return 2 and write exactly one line, `error: ...`, on stderr."""
    capfd.readouterr()
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err
