"""`--method distill --teacher NAME …`: the student alone learns DUDA's student terms from frozen teachers (a folder,
an imported checkpoint, `CHECKPOINT_DIR@teacher`), with no auxiliary student and no EMA teacher."""

import copy
import json
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import load_file

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import run_training
from duda_hf.method.config import DudaConfig
from duda_hf.method.step import TERMS, duda_step
from duda_hf.networks.duda_model import DudaModel
from duda_hf.networks.frozen import weights_sha256
from duda_hf.networks.loading import build_network

from .conftest import assert_resume_ends_with, tiny_argv

STUDENT_TERMS = ("loss_student_source", "loss_student_mix", "loss_student_kd", "loss_student_kd_clean", "loss_student_cwd")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "distill"}, "name at least one with --teacher"),
        ({"method": "duda", "teacher": ["t"]}, "DudaConfig.teacher names the frozen teachers of method='distill', not of 'duda'"),
        ({"method": "distill", "teacher": ["t"], "extra_teachers": ["u"]}, "name every teacher with --teacher"),
        ({"method": "distill", "teacher": ["t"], "mic_lambda": 1.0}, "which method 'distill' does not train"),
        ({"method": "distill", "teacher": ["t", "u"], "teacher_weights": [1, 1, 1]}, r"empty or 2 values \(one per --teacher \(2\)\)"),
        ({"method": "distill", "teacher": ["t"], "distill_stage_steps": 0.25}, "method='distill' has no large pair"),
    ],
    ids=["no_teacher", "teacher_with_duda", "extra_teachers", "mic", "weights", "stage"],
)
def test_distill_settings_that_cannot_run_are_refused_with_the_fix(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        DudaConfig(output_dir=str(tmp_path), **settings)


def test_distill_gives_the_students_terms_of_a_duda_step_whose_only_teacher_is_the_frozen_one(tmp_path):
    """Bit for bit: `distill` from T is DUDA's student step with the EMA teacher's fusion weight 0 and T as extra teacher."""
    torch.manual_seed(0)
    student, aux, frozen = build_network("tiny"), build_network("tiny-wide"), build_network("tiny-wide")
    common = {"output_dir": str(tmp_path), "max_steps": 8, "preadapt_steps": 2, "distill_ramp_steps": 4}
    common.update(kd_clean_target=1.0, cwd_weight=1.0, pseudo_label_threshold=0.0, pseudo_label_ignore_top=2, pseudo_label_ignore_bottom=2)
    duda_args = DudaConfig(method="duda", extra_teachers=["T"], teacher_weights=[0, 1], **common)
    distill_args = DudaConfig(method="distill", teacher=["T"], **common)
    duda = DudaModel(copy.deepcopy(student), aux, "duda", extra_teachers=[copy.deepcopy(frozen)])
    distill = DudaModel(copy.deepcopy(student), None, "distill", extra_teachers=[copy.deepcopy(frozen)])
    assert distill.teacher is None and distill.aux_student is None
    generator = torch.Generator().manual_seed(5)
    inputs = {
        "source_image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=generator),
        "source_label": torch.randint(0, 19, (2, 32, 32), generator=generator),
        "target_image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=generator),
    }
    results = {}
    for name, model, args in (("duda", duda, duda_args), ("distill", distill, distill_args)):
        # step 4: lam_t = (4 - 2) / 4 = 0.5, so the hard and the soft terms both count
        torch.manual_seed(1)  # the global stream: the student's dropout
        results[name] = duda_step(model, inputs, args, step=4, generator=torch.Generator().manual_seed(9), autocast=nullcontext)
    assert [term.name for term in TERMS["distill"]] == list(STUDENT_TERMS)
    assert list(results["distill"].terms) == list(STUDENT_TERMS)
    for term in STUDENT_TERMS:
        assert torch.equal(results["distill"].terms[term], results["duda"].terms[term]), term
    assert results["distill"].diagnostics["lam_t"] == 0.5
    sum(results["distill"].terms.values()).backward()
    assert all(p.grad is not None for p in distill.student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in distill.extra_teachers.parameters())


@pytest.fixture(scope="module")
def duda_run(tiny_benchmark, tmp_path_factory):
    """A finished 4-step DUDA run with its checkpoints and its exported teacher/."""
    output = tmp_path_factory.mktemp("duda") / "run"
    run_training(*parse_args(tiny_argv(tiny_benchmark, output, "--save_strategy", "steps", "--save_steps", "2")))
    return output


def test_distill_from_a_runs_teacher_folder_and_checkpoint_role_trains_the_student_alone_and_resumes_exactly(
    tiny_benchmark, tmp_path, duda_run
):
    teachers = (str(duda_run / "teacher"), f"{duda_run / 'checkpoint-4'}@teacher")
    flags = ("--method", "distill", "--teacher", *teachers, "--kd_clean_target", "1", "--save_strategy", "steps", "--save_steps", "2")
    argv = tiny_argv(tiny_benchmark, tmp_path / "run", *flags, "--eval_strategy", "steps", "--eval_steps", "4")
    model_args, data_args, config = parse_args(argv)
    results = run_training(model_args, data_args, config)

    # the two frozen teachers are the DUDA run's final EMA teacher, from its export and from its checkpoint
    expected = {
        k.removeprefix("teacher."): v
        for k, v in load_file(duda_run / "checkpoint-4" / "model.safetensors").items()
        if k.startswith("teacher.")
    }
    checkpoint = tmp_path / "run" / "checkpoint-4"
    networks = json.loads((checkpoint / "networks.json").read_text())
    assert set(networks) == {"student", "extra_teacher_0", "extra_teacher_1", "frozen_sources"}
    # the folder is a lasting source: recorded, not stored; the checkpoint role is stored (its run may rotate it away)
    assert networks["frozen_sources"]["extra_teacher_0"]["source"] == str(duda_run / "teacher")
    stored = load_file(checkpoint / "model.safetensors")
    assert {key.split(".")[0] for key in stored} == {"student", "extra_teachers", "class_discrepancy", "class_seen"}
    assert not [key for key in stored if key.startswith("extra_teachers.0.")]
    for key, value in expected.items():
        assert torch.equal(stored[f"extra_teachers.1.{key}"], value), key
    # the student learnt; no EMA teacher is exported: the teacher is the user's own
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file() and not (tmp_path / "run" / "teacher").exists()
    metrics = results["metrics"]
    assert {"student", "teacher", "teacher_1", "student_vs_teacher"} <= set(metrics) and "auxiliary" not in metrics
    assert metrics["teacher"]["mIoU"] == metrics["teacher_1"]["mIoU"]  # one network, twice
    assert results["settings"]["teacher"] == list(teachers) and "aux_student" not in results["settings"]
    card = (tmp_path / "run" / "student" / "README.md").read_text()
    assert "distilled without target labels from a frozen adapted teacher" in card and f"| teacher (frozen, {teachers[0]}) |" in card

    # a resume from step 2 rebuilds the folder teacher, checks it, and ends with the same bits
    resumed = assert_resume_ends_with(argv, tmp_path / "run" / "checkpoint-2", load_file(checkpoint / "model.safetensors"))
    assert weights_sha256(resumed.model.extra_teachers[0]) == networks["frozen_sources"]["extra_teacher_0"]["weights_sha256"]


def test_a_preset_named_as_a_teacher_is_trained_from_nothing_and_the_run_says_so(tmp_path, caplog):
    from duda_hf.networks.duda_model import build_duda_model

    with caplog.at_level("WARNING", logger="duda_hf.networks.duda_model"):
        build_duda_model("distill", "tiny", None, init="random", extra_teachers=["tiny-wide"])
    assert [record.getMessage().split(":")[0] for record in caplog.records] == ["--teacher tiny-wide is a preset"]


def test_the_console_shows_every_frozen_teacher_after_the_student_in_order():
    from duda_hf.training.console import evaluation_line, scored_networks

    logs = {"eval_teacher_10_mIoU": 1.0, "eval_teacher_2_mIoU": 2.0, "eval_teacher_mIoU": 3.0, "eval_student_mIoU": 4.0}
    logs["eval_student_teacher_agreement"] = 50.0
    assert evaluation_line(logs, 8) == "step 8  target mIoU: student 4.00  teacher 3.00  teacher_2 2.00  teacher_10 1.00  (agreement 50.0%)"
    assert scored_networks(["student_vs_teacher", "auxiliary", "student", "teacher_x"]) == ["student", "auxiliary"]
