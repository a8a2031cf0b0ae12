"""The pretraining domain and `duda-pretrain-synthetic`: the CPU analogue of the paper's ImageNet start."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from duda_hf.data.synthetic import build_pretraining_domain, render_scene

# the pretraining domain the tests build and the command then reuses (the default is 1200 + 100 images)
SMALL_DOMAIN = ("--num_train", "8", "--num_val", "4")


def test_pretraining_scenes_share_the_layouts_and_randomise_the_look():
    pretrain = render_scene(np.random.default_rng(5), "pretrain", height=64, width=128)
    source = render_scene(np.random.default_rng(5), "source", height=64, width=128)
    again = render_scene(np.random.default_rng(5), "pretrain", height=64, width=128)
    assert np.array_equal(pretrain[1], source[1])  # the same label map: only the appearance differs
    assert np.array_equal(pretrain[0], again[0])  # deterministic for a seed
    other = render_scene(np.random.default_rng(6), "pretrain", height=64, width=128)
    sky = (pretrain[1] == 10) & (other[1] == 10)
    # the same class gets unrelated colours in two scenes (the source domain keeps one sky colour)
    assert sky.any() and np.abs(pretrain[0][sky].astype(int).mean(0) - other[0][sky].astype(int).mean(0)).max() > 20


def test_pretrain_command_writes_cached_networks_that_train_as_students(tmp_path, tiny_benchmark, capsys):
    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.pretrain_synthetic import main
    from duda_hf.cli.training_run import build_trainer

    from .conftest import tiny_argv

    argv = ["--out", str(tmp_path / "pretrained"), "--data", str(tmp_path / "data"), "--networks", "tiny", "--steps", "2", *SMALL_DOMAIN]
    data = build_pretraining_domain(tmp_path / "data", num_train=8, num_val=4)
    assert sorted(data) == ["pretrain", "pretrain_val"]
    assert main(argv) == 0
    folder = tmp_path / "pretrained" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "plots",  # its pretraining run's pictures, which its card shows
        "preprocessor_config.json",
        "pretraining.json",
    ]
    record = json.loads((folder / "pretraining.json").read_text())
    assert record["settings"] == {"network": "tiny", "steps": 2, "seed": 0, "batch_size": 4, "crop_size": 128, "learning_rate": 6e-4}
    assert 0 <= record["pretrain_val_mIoU"] <= 100
    weights = (folder / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(argv) == 0  # cached: reused, not trained again
    assert "tiny: reusing" in capsys.readouterr().out and (folder / "model.safetensors").read_bytes() == weights

    trainer = build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path / "run", "--student", str(folder), "--max_steps", "1")))
    from transformers import AutoModelForSemanticSegmentation

    torch.testing.assert_close(
        trainer.model.student.state_dict(), AutoModelForSemanticSegmentation.from_pretrained(folder).state_dict(), rtol=0, atol=0
    )


@pytest.mark.slow
def test_an_interrupted_pretraining_resumes_from_its_checkpoint_and_ends_identical(tmp_path, monkeypatch, capsys, caplog):
    """A run stopped after its step-2 checkpoint continues from it and writes the same weights as a run never stopped."""
    from duda_hf.cli import pretrain_synthetic

    data = build_pretraining_domain(tmp_path / "data", num_train=8, num_val=4)
    argv = ["--data", str(tmp_path / "data"), "--networks", "tiny", "--steps", "4", "--save_every", "2", *SMALL_DOMAIN]
    assert pretrain_synthetic.main([*argv, "--out", str(tmp_path / "straight")]) == 0
    expected = (tmp_path / "straight" / "tiny" / "model.safetensors").read_bytes()

    from duda_hf import jsonio

    def crash_on_the_record(path, value, **kwargs):
        if Path(path).name == "pretraining.json":
            raise OSError("simulated crash after training, before the finished folder was moved into place")
        return write_json(path, value, **kwargs)

    write_json = jsonio.write_json
    monkeypatch.setattr(jsonio, "write_json", crash_on_the_record)
    with pytest.raises(OSError, match="simulated crash"):
        pretrain_synthetic.pretrain("tiny", data, tmp_path / "stopped", 4, 0, 2)
    monkeypatch.setattr(jsonio, "write_json", write_json)
    run_dir = tmp_path / "stopped" / ".runs" / "tiny"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.rmtree(run_dir / "checkpoint-4")  # as if stopped between steps 2 and 4

    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="duda_hf.training.resume"):
        assert pretrain_synthetic.main([*argv, "--out", str(tmp_path / "stopped")]) == 0
    assert f"tiny: continuing the interrupted run in {run_dir}" in capsys.readouterr().out
    assert "checkpoint-2: step 2 of 4" in caplog.text  # resumed, not started again
    assert (tmp_path / "stopped" / "tiny" / "model.safetensors").read_bytes() == expected
    assert not run_dir.exists()  # the run's checkpoints go once the folder is in place
