"""`--init imagenet` (every GPU recipe's default) on the console of a real training run, offline: one line per
network saying where its weights come from, and transformers' load report only when the ImageNet checkpoint is not
what is expected."""

import os
import re
import subprocess
import sys

import pytest

from .conftest import tiny_argv

COMMIT = "0" * 40
MISSING = "segformer.stages.3.layer_norm.weight"  # an encoder weight
EXTRA = "segformer.stages.3.extra.weight"  # a weight no MiT has


def _imagenet_cache(home, *, broken: bool = False):
    """A Hugging Face home whose Hub cache holds a stand-in for `nvidia/mit-b0`: an ImageNet classifier of MiT-B0's
    shape (1000 labels, random weights), in the cache layout; `broken`: without one encoder weight, with one extra."""
    import torch
    from transformers import SegformerConfig, SegformerForImageClassification

    torch.manual_seed(0)
    config = SegformerConfig(depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], num_attention_heads=[1, 2, 5, 8], num_labels=1000)
    imagenet = SegformerForImageClassification(config)
    state = imagenet.state_dict()
    if broken:
        del state[MISSING]
        state[EXTRA] = torch.ones(3)
    repo = home / "hub" / "models--nvidia--mit-b0"
    imagenet.save_pretrained(repo / "snapshots" / COMMIT, state_dict=state)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return home


def _train(benchmark, home, output_dir) -> str:
    """stdout and stderr of a 2-step DUDA run, student `mit-b0`, auxiliary `mit-b0-daformer` (with the feature
    distance, whose encoder is a copy of the auxiliary's), both `--init imagenet`, offline."""
    argv = tiny_argv(benchmark, output_dir, "--student", "mit-b0", "--aux_student", "mit-b0-daformer", "--init", "imagenet")
    argv += ["--fd_lambda", "0.005", "--max_steps", "2", "--per_device_train_batch_size", "1", "--max_eval_samples", "1"]
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["COLUMNS"] = "120"
    env["CI"] = "true"  # transformers then hands its records to the root logger too: each must still show once
    done = subprocess.run(
        [sys.executable, "-m", "duda_hf.cli.train_duda", *argv], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _loading_lines(output: str) -> list[str]:
    return re.findall(r"^\S+ \S+ (INFO|WARNING) duda_hf\.networks\.loading: (.*)$", output, re.MULTILINE)


@pytest.mark.slow
def test_the_imagenet_init_says_one_line_per_network(tiny_benchmark, tmp_path):
    output = _train(tiny_benchmark, _imagenet_cache(tmp_path / "home"), tmp_path / "run")
    assert _loading_lines(output) == [
        ("INFO", "mit-b0: encoder from nvidia/mit-b0 (ImageNet), new 19-class SegFormer head"),
        ("INFO", "mit-b0-daformer: encoder from nvidia/mit-b0 (ImageNet), new 19-class DAFormer head"),
    ]
    # no load report (its table lists the ImageNet classifier and every weight of the new heads), no complaint that
    # 19 labels do not match the checkpoint's 1000, no weight-loading bar
    for noise in ("LOAD REPORT", "UNEXPECTED", "MISSING", "num_labels", "id2label", "Loading weights"):
        assert noise not in output, noise
    assert re.search(r"^step 2/2  loss ", output, re.MULTILINE)


@pytest.mark.slow
def test_an_imagenet_checkpoint_that_differs_keeps_the_load_report(tiny_benchmark, tmp_path):
    output = _train(tiny_benchmark, _imagenet_cache(tmp_path / "home", broken=True), tmp_path / "run")
    assert output.count("LOAD REPORT") == 2  # transformers' report, for each network
    assert re.search(rf"^{re.escape(MISSING)}\s+\| MISSING", output, re.MULTILINE)
    assert re.search(rf"^{re.escape(EXTRA)}\s+\| UNEXPECTED", output, re.MULTILINE)
    problems = (
        f"; but 1 encoder weight missing from nvidia/mit-b0, so random: {MISSING}; "
        f"1 weight of nvidia/mit-b0 not used (besides its classifier): {EXTRA} (transformers' load report above)"
    )
    assert _loading_lines(output) == [
        ("WARNING", "mit-b0: encoder from nvidia/mit-b0 (ImageNet), new 19-class SegFormer head" + problems),
        ("WARNING", "mit-b0-daformer: encoder from nvidia/mit-b0 (ImageNet), new 19-class DAFormer head" + problems),
    ]
    assert "num_labels" not in output
