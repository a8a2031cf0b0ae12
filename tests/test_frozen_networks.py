"""Frozen networks stay out of checkpoints: recorded in networks.json, rebuilt at resume, checked against their source."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import build_trainer
from duda_hf.export.network import export_network
from duda_hf.networks.duda_model import DudaModel, build_duda_model
from duda_hf.networks.frozen import FrozenNetworkError, weights_sha256
from duda_hf.networks.loading import build_network
from duda_hf.training.resume import ResumeError

from .conftest import tiny_argv
from .test_init_console import COMMIT, _imagenet_cache


def make_trainer(benchmark, output_dir, *extra):
    return build_trainer(*parse_args(tiny_argv(benchmark, output_dir, *extra)))


@pytest.fixture
def teacher_folder(tmp_path):
    torch.manual_seed(11)
    return export_network(build_network("tiny-wide"), tmp_path / "teacher")


def test_an_extra_teacher_from_a_folder_is_recorded_not_stored_and_the_resume_is_exact(tiny_benchmark, tmp_path, teacher_folder):
    flags = ("--extra_teachers", str(teacher_folder), "--save_strategy", "steps", "--save_steps", "2")
    full = make_trainer(tiny_benchmark, tmp_path / "run", *flags)
    full.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    stored = load_file(checkpoint / "model.safetensors")
    assert not [key for key in stored if key.startswith("extra_teachers.")]
    assert {"student", "aux_student", "teacher"} <= {key.split(".")[0] for key in stored}
    frozen = json.loads((checkpoint / "networks.json").read_text())["frozen_sources"]
    teacher = full.model.extra_teachers[0]
    assert frozen == {"extra_teacher_0": {"source": str(teacher_folder), "revision": None, "weights_sha256": weights_sha256(teacher)}}

    resumed = make_trainer(tiny_benchmark, tmp_path / "run", *flags)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)

    # `CHECKPOINT@extra_teacher_0` builds the teacher from its source and checks it
    again = build_network(f"{checkpoint}@extra_teacher_0")
    assert weights_sha256(again) == frozen["extra_teacher_0"]["weights_sha256"]


@pytest.mark.slow
def test_a_frozen_teacher_whose_weights_changed_is_refused_in_one_line(tiny_benchmark, tmp_path, teacher_folder):
    flags = ("--extra_teachers", str(teacher_folder), "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "2")
    make_trainer(tiny_benchmark, tmp_path / "run", *flags).train()
    weights = teacher_folder / "model.safetensors"
    state = load_file(weights)
    name = min(state)
    state[name] = state[name] + 1
    save_file(state, weights, metadata={"format": "pt"})

    resumed = make_trainer(tiny_benchmark, tmp_path / "run", *flags[:2], "--max_steps", "4")
    with pytest.raises(FrozenNetworkError) as error:
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    message = str(error.value)
    assert "\n" not in message
    assert f"the extra_teacher_0 rebuilt from {teacher_folder} is not the one the run was trained with" in message
    assert f"restore its weights ({teacher_folder} as it was) before resuming" in message
    with pytest.raises(FrozenNetworkError, match="is not the one the run was trained with"):
        build_network(f"{tmp_path / 'run' / 'checkpoint-2'}@extra_teacher_0")

    # without the teacher, or with a preset in its place (whose weights the checkpoint lacks: Trainer warns first)
    for extra in ((), ("--extra_teachers", "tiny-wide")):
        other = make_trainer(tiny_benchmark, tmp_path / "run", "--max_steps", "4", *extra)
        with pytest.raises(
            FrozenNetworkError, match=r"was trained with the frozen networks extra_teacher_0 \(.*\) but this run builds none"
        ):
            other.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))

    # a checkpoint of a run without frozen networks (recorded as none), resumed with one
    make_trainer(tiny_benchmark, tmp_path / "plain", "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "2").train()
    assert json.loads((tmp_path / "plain" / "checkpoint-2" / "networks.json").read_text())["frozen_sources"] == {}
    added = make_trainer(tiny_benchmark, tmp_path / "plain", "--extra_teachers", str(teacher_folder), "--max_steps", "4")
    with pytest.raises(FrozenNetworkError, match=r"was trained with the frozen networks none but this run builds extra_teacher_0"):
        added.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-2"))


EARLIER = ("--ema_schedule", "copy_first", "--loss_denominator", "valid_pixels", "--lr_schedule", "trainer")
EARLIER += ("--weight_decay_exempt", "norms_and_biases", "--teacher_train_mode", "false")


@pytest.mark.slow
def test_a_checkpoint_of_the_earlier_format_with_its_frozen_teacher_still_resumes(tiny_benchmark, tmp_path, teacher_folder):
    """Checkpoints written before 2026-12-07 hold the frozen networks in model.safetensors, no `frozen_sources`, and
    training arguments without the flags that came with DAFormer's defaults: resumed with the defaults they stop in one
    line that names the flags; with those flags they load as before (the stored weights win) and resume exactly."""
    flags = ("--extra_teachers", str(teacher_folder), "--save_strategy", "steps", "--save_steps", "2", *EARLIER)
    full = make_trainer(tiny_benchmark, tmp_path / "run", *flags)
    full.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    stored = load_file(checkpoint / "model.safetensors")
    teacher = full.model.extra_teachers[0].state_dict()
    stored.update({f"extra_teachers.0.{key}": value.contiguous() for key, value in teacher.items()})
    save_file(stored, checkpoint / "model.safetensors", metadata={"format": "pt"})
    networks = json.loads((checkpoint / "networks.json").read_text())
    del networks["frozen_sources"]
    (checkpoint / "networks.json").write_text(json.dumps(networks))
    saved_args = json.loads((checkpoint / "training_args.json").read_text())
    for flag in EARLIER[::2]:
        del saved_args[flag[2:]]
    (checkpoint / "training_args.json").write_text(json.dumps(saved_args))

    with pytest.raises(ResumeError) as error:
        make_trainer(tiny_benchmark, tmp_path / "run", *flags[:6]).train(resume_from_checkpoint=str(checkpoint))
    assert "\n" not in str(error.value)
    assert f"Resume with `{' '.join(EARLIER)}` to continue it as it was trained" in str(error.value)

    resumed = make_trainer(tiny_benchmark, tmp_path / "run", *flags)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_the_feature_distance_encoder_is_left_out_and_a_random_preset_teacher_kept():
    """The ImageNet encoder is a function of `nvidia/mit-bN`; a preset extra teacher is built at random, so it stays."""
    torch.manual_seed(0)
    student, aux = build_network("tiny"), build_network("tiny-wide")
    encoder = build_network("tiny-wide").segformer
    random_teacher = build_network("tiny")
    duda = DudaModel(
        student, aux, extra_teachers=[random_teacher], imagenet_encoder=encoder, frozen_sources={"imagenet_encoder": "nvidia/mit-b0"}
    )
    stored = duda.checkpoint_state_dict()
    assert not [key for key in stored if key.startswith("imagenet_encoder.")]
    assert [key for key in stored if key.startswith("extra_teachers.0.")]
    assert set(duda.state_dict()) - set(stored) == {f"imagenet_encoder.{key}" for key in encoder.state_dict()}
    assert duda.network_configs()["frozen_sources"] == {
        "imagenet_encoder": {"source": "nvidia/mit-b0", "revision": None, "weights_sha256": weights_sha256(encoder)}
    }
    # a state dict without the encoder loads strictly: the encoder keeps its weights
    before = {key: value.clone() for key, value in encoder.state_dict().items()}
    duda.load_state_dict({key: torch.zeros_like(value) for key, value in stored.items()})
    assert all(torch.equal(encoder.state_dict()[key], value) for key, value in before.items())
    assert all(bool((value == 0).all()) for value in duda.student.state_dict().values())
    with pytest.raises(ValueError, match=r"frozen_sources names \['extra_teacher_3'\], which this model does not have"):
        DudaModel(build_network("tiny"), build_network("tiny"), frozen_sources={"extra_teacher_3": "org/x"})
    assert build_duda_model("duda", "tiny", "tiny-wide", init="random", extra_teachers=["tiny"]).frozen_sources == {}


def test_weights_sha256_by_hand():
    """The digest covers each tensor's name, dtype, shape and bytes in name order (computed here with hashlib)."""
    import hashlib
    import struct

    module = torch.nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, -2.0]]))
        module.bias.fill_(0.5)
    digest = hashlib.sha256()
    for name, values in (("bias", [0.5]), ("weight", [1.0, -2.0])):
        shape = "(1,)" if name == "bias" else "(1, 2)"
        digest.update(f"{name}|torch.float32|{shape}|".encode())
        digest.update(struct.pack(f"<{len(values)}f", *values))
    assert weights_sha256(module) == digest.hexdigest()
    module.to(memory_format=torch.channels_last)  # the layout does not count
    assert weights_sha256(module) == digest.hexdigest()


def _run_imagenet(benchmark, home, output_dir, *extra) -> subprocess.CompletedProcess:
    """A 4-step DUDA run, `mit-b0` with `mit-b0-daformer`, `--init imagenet` offline from a stand-in cache, with the
    feature distance (its encoder a copy of `nvidia/mit-b0`'s), a checkpoint at step 2."""
    argv = tiny_argv(benchmark, output_dir, "--student", "mit-b0", "--aux_student", "mit-b0-daformer", "--init", "imagenet")
    argv += ["--fd_lambda", "0.005", "--per_device_train_batch_size", "1", "--max_eval_samples", "1"]
    argv += ["--save_strategy", "steps", "--save_steps", "2", *extra]
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "duda_hf.cli.train_duda", *argv], check=False, capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_the_imagenet_encoder_is_rebuilt_from_the_cache_at_resume(tiny_benchmark, tmp_path):
    home = _imagenet_cache(tmp_path / "home")
    full = _run_imagenet(tiny_benchmark, home, tmp_path / "run")
    assert full.returncode == 0, full.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert not [key for key in load_file(checkpoint / "model.safetensors") if key.startswith("imagenet_encoder.")]
    record = json.loads((checkpoint / "networks.json").read_text())["frozen_sources"]["imagenet_encoder"]
    assert (record["source"], record["revision"]) == ("nvidia/mit-b0", COMMIT)

    resumed = _run_imagenet(tiny_benchmark, home, tmp_path / "resumed", "--resume_from_checkpoint", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for network in ("student", "teacher"):
        a = load_file(tmp_path / "run" / network / "model.safetensors")
        b = load_file(tmp_path / "resumed" / network / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), network

    # the cached ImageNet weights changed since: the resume stops with one line before any step
    weights = next((home / "hub" / "models--nvidia--mit-b0" / "snapshots" / COMMIT).glob("*.safetensors"))
    state = load_file(weights)
    norm = next(key for key in sorted(state) if "layer_norm" in key and key.endswith("weight"))  # an encoder weight
    state[norm] = state[norm] * 2
    save_file(state, weights, metadata={"format": "pt"})
    refused = _run_imagenet(tiny_benchmark, home, tmp_path / "refused", "--resume_from_checkpoint", str(checkpoint))
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert f"the imagenet_encoder rebuilt from nvidia/mit-b0 (revision {COMMIT}) is not the one the run was trained with" in last
    assert f"restore its weights (`hf download nvidia/mit-b0 --revision {COMMIT}`) before resuming" in last
    assert "Traceback" not in refused.stderr


def test_a_train_mode_teacher_with_image_pooling_takes_one_image():
    """DAFormer's teacher runs in train mode; DeepLabV3's image-pooling BatchNorm then sees one value per channel for a
    batch of one image, which has no batch statistics: that layer uses its running ones, the others the batch's."""
    torch.manual_seed(0)
    duda = build_duda_model("self_training", "mobilenetv2-deeplabv3-tiny", init="random")
    image = torch.rand(1, 3, 64, 64)
    (one,) = duda.teacher_logits(image)
    assert torch.isfinite(one).all()
    assert duda.teacher.training  # the hooks gave train mode back
    pair = torch.cat([image, torch.rand(1, 3, 64, 64)])
    (two,) = duda.teacher_logits(pair)
    duda.teacher.eval()
    (evaluated,) = duda.teacher_logits(pair)
    assert not torch.allclose(two, evaluated)  # with two images: the batch's statistics, not the running ones
    state = {key: value.clone() for key, value in duda.teacher.state_dict().items()}
    duda.teacher.train()
    duda.teacher_logits(pair)
    assert all(torch.equal(state[key], value) for key, value in duda.teacher.state_dict().items())  # no buffer moved
