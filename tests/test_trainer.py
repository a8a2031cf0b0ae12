"""Tiny end-to-end DudaTrainer runs: every network learns, the EMA is exact, checkpoints resume exactly."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import build_trainer
from duda_hf.training.trainer import DudaTrainer, NonFiniteLossError

from .conftest import tiny_argv


def make_trainer(benchmark, output_dir, *extra):
    return build_trainer(*parse_args(tiny_argv(benchmark, output_dir, *extra)))


class SnapshotAux(TrainerCallback):
    """Keeps the auxiliary student's parameters and float buffers after every optimizer step."""

    def __init__(self):
        self.snapshots = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        tensors = list(model.aux_student.parameters()) + [b for b in model.aux_student.buffers() if b.is_floating_point()]
        self.snapshots.append([t.detach().clone() for t in tensors])


def test_duda_run_trains_both_students_and_keeps_an_exact_ema(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path, "--save_strategy", "steps", "--save_steps", "4")
    duda = trainer.model
    before = {name: p.detach().clone() for name, p in duda.named_parameters() if p.requires_grad}
    assert before and all(name.startswith(("student.", "aux_student.")) for name in before)
    teacher = [t.detach().clone() for t in list(duda.teacher.parameters()) + [b for b in duda.teacher.buffers() if b.is_floating_point()]]
    snapshots = SnapshotAux()
    trainer.add_callback(snapshots)
    trainer.train()

    unchanged = [name for name, p in duda.named_parameters() if p.requires_grad and torch.equal(p, before[name])]
    assert unchanged == []
    assert not any(p.requires_grad for p in duda.teacher.parameters())

    assert len(snapshots.snapshots) == 4
    # DAFormer's `_update_ema(iter)` at iteration t = 1, 2, ...: alpha_t = min(1 - 1/(t + 1), 0.999) = 1/2, 2/3, 3/4, 4/5
    for aux, alpha in zip(snapshots.snapshots, (1 / 2, 2 / 3, 3 / 4, 4 / 5)):
        teacher = [alpha * t + (1 - alpha) * a for t, a in zip(teacher, aux)]
    actual = list(duda.teacher.parameters()) + [b for b in duda.teacher.buffers() if b.is_floating_point()]
    for expected, value in zip(teacher, actual):
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)

    state = load_file(tmp_path / "checkpoint-4" / "model.safetensors")
    prefixes = {key.split(".")[0] for key in state}
    assert {"student", "aux_student", "teacher", "class_discrepancy", "class_seen"} <= prefixes
    for key, value in duda.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert not (tmp_path / ".partial-checkpoints" / "checkpoint-4").exists()

    logged = {key for entry in trainer.state.log_history for key in entry}
    expected_terms = {"loss_student_source", "loss_aux_source", "loss_aux_mix", "loss_student_mix", "loss_student_kd"}
    assert expected_terms | {"pseudo_label_quality", "lam_t", "class_weight_road"} <= logged
    lams = [entry["lam_t"] for entry in trainer.state.log_history if "lam_t" in entry]
    assert lams == [0.0, 0.0, 0.5, 1.0]  # preadapt 1 step, ramp 2 steps
    assert bool(duda.class_seen.any())


@pytest.mark.parametrize("schedule, teacher_after", [("daformer", [1 / 2, 2 / 3, 3 / 4]), ("copy_first", [1.0, 1.0, 1.0])])
def test_the_ema_schedule_by_hand(tmp_path, schedule, teacher_after):
    """DAFormer (dacs.py): the teacher starts as a copy of the network (`_init_ema_weights` at iteration 0), then
    `_update_ema(t)` at t = 1, 2, ... uses alpha = min(1 - 1/(t + 1), ema_alpha). With every teacher weight 0 and every
    network weight 1, the teacher holds 1 - alpha_1 * alpha_2 * ... = 1/2, 2/3, 3/4 (0.5 * 0 + 0.5 * 1, then
    2/3 * 1/2 + 1/3, ...). `copy_first` (the earlier duda-hf) copies the network at the first update."""
    from transformers.trainer_callback import TrainerControl, TrainerState

    from duda_hf.method.config import DudaConfig
    from duda_hf.networks.duda_model import build_duda_model
    from duda_hf.training.callbacks import EmaTeacherCallback

    args = DudaConfig(output_dir=str(tmp_path), ema_schedule=schedule, max_steps=10, report_to=[])
    duda = build_duda_model("duda", "tiny", "tiny", init="random")
    with torch.no_grad():
        for param in duda.teacher.parameters():
            param.zero_()
        for param in duda.aux_student.parameters():
            param.fill_(1.0)
    state = TrainerState()
    for step, expected in enumerate(teacher_after, start=1):
        state.global_step = step
        EmaTeacherCallback().on_step_end(args, state, TrainerControl(), model=duda)
        values = torch.cat([param.flatten() for param in duda.teacher.parameters()])
        torch.testing.assert_close(values, torch.full_like(values, expected), rtol=0, atol=1e-6)


def test_resume_reproduces_the_uninterrupted_run(tiny_benchmark, tmp_path):
    full = make_trainer(tiny_benchmark, tmp_path / "full", "--save_strategy", "steps", "--save_steps", "2")
    full.train()
    resumed = make_trainer(tiny_benchmark, tmp_path / "full", "--save_strategy", "no")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))

    def losses(trainer):
        return {e["step"]: (e["loss"], e["loss_aux_mix"], e.get("loss_student_kd")) for e in trainer.state.log_history if "loss" in e}

    expected = losses(full)
    got = losses(resumed)
    assert sorted(got) == [1, 2, 3, 4]  # steps 1-2 come back with the checkpoint's log history
    for step in (3, 4):
        assert got[step] == pytest.approx(expected[step], rel=1e-4)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("method, terms", [("self_training", {"loss_student_mix"}), ("source_only", set())])
def test_baselines(tiny_benchmark, tmp_path, method, terms):
    trainer = make_trainer(tiny_benchmark, tmp_path, "--method", method, "--max_steps", "2")
    assert trainer.model.aux_student is None
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry if key.startswith("loss_")}
    assert logged == {"loss_student_source"} | terms
    metrics = trainer.evaluate()
    assert 0 <= metrics["eval_student_mIoU"] <= 100
    assert ("eval_teacher_mIoU" in metrics) == (method == "self_training")


@pytest.mark.parametrize("exempt", ["encoder_norms", "norms_and_biases"])
def test_optimizer_groups_head_lr_and_no_decay(tiny_benchmark, tmp_path, exempt):
    """DAFormer's mmcv `paramwise_cfg` (custom keys `head`: lr_mult 10, `norm`: decay_mult 0; `head` wins in a head):
    no decay on the encoders' norms only, so biases and the head's BatchNorm decay; or none on any 1-D parameter."""
    trainer = make_trainer(tiny_benchmark, tmp_path, "--weight_decay", "0.05", "--weight_decay_exempt", exempt)
    optimizer = trainer.create_optimizer()
    seen = set()
    trainable = {id(p): n for n, p in trainer.model.named_parameters() if p.requires_grad}
    for group in optimizer.param_groups:
        names = [trainable[id(p)] for p in group["params"]]
        seen.update(id(p) for p in group["params"])
        heads = {".decode_head." in f".{name}" for name in names}
        assert len(heads) == 1
        is_head = heads.pop()
        assert group["initial_lr"] == pytest.approx(1e-3 * (10 if is_head else 1))  # the schedule's base rate
        if exempt == "encoder_norms":
            no_decay = {not is_head and "norm" in name for name in names}
        else:
            no_decay = {p.ndim <= 1 for p in group["params"]}
        assert len(no_decay) == 1
        assert group["weight_decay"] == (0.0 if no_decay.pop() else 0.05)
    assert seen == set(trainable)  # every trainable parameter once, teachers never
    decays = {trainable[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    bias = "student.segformer.encoder.patch_embeddings.0.proj.bias"
    bias = bias if bias in decays else next(name for name in decays if name.endswith("proj.bias") and ".decode_head." not in name)
    head_norm = next(name for name in decays if ".decode_head." in name and "norm" in name)
    encoder_norm = next(name for name in decays if ".decode_head." not in name and "norm" in name)
    expected = (0.05, 0.05, 0.0) if exempt == "encoder_norms" else (0.0, 0.0, 0.0)
    assert (decays[bias], decays[head_norm], decays[encoder_norm]) == expected


def test_the_learning_rate_follows_daformers_poly_schedule_by_hand(tiny_benchmark, tmp_path):
    """mmcv's PolyLrUpdaterHook (power 1, min_lr 0) with linear warmup (warmup_ratio 1e-6), as DAFormer sets it: at
    iteration t the rate is base * (1 - t/T), times 1 - (1 - t/W) * (1 - 1e-6) while t < W. Here T = 10, W = 4,
    base 1e-3 (heads 1e-2); the rate of step t is the one the optimizer holds before it."""
    trainer = make_trainer(tiny_benchmark, tmp_path, "--max_steps", "10", "--warmup_steps", "4")
    optimizer, schedule = trainer.optimizer, trainer.lr_scheduler
    expected = [
        (1 - t / 10) * ((1 - (1 - t / 4) * (1 - 1e-6)) if t < 4 else 1.0) for t in range(10)
    ]  # 1e-6, 0.9 * 0.25000075, 0.8 * 0.5000005, 0.7 * 0.75000025, 0.6, 0.5, ...
    assert expected[:5] == pytest.approx([1e-6, 0.225000675, 0.400000400, 0.525000175, 0.6], rel=1e-9)
    for t in range(10):
        rates = sorted({group["lr"] for group in optimizer.param_groups})
        assert rates == pytest.approx([1e-3 * expected[t], 1e-2 * expected[t]], rel=1e-9, abs=1e-15), t
        optimizer.step()
        schedule.step()
    assert schedule.state_dict()["last_epoch"] == 10  # the step; the settings are the run's arguments, as Trainer's
    trainer_schedule = make_trainer(tiny_benchmark, tmp_path / "trainer", "--lr_schedule", "trainer").lr_scheduler
    assert trainer_schedule is None  # Trainer makes its own at `train`


def test_optimizer_cls_and_kwargs_is_honoured_with_the_head_groups(tiny_benchmark, tmp_path):
    built = make_trainer(tiny_benchmark, tmp_path)
    trainer = DudaTrainer(built.model, built.args, built.train_dataset, optimizer_cls_and_kwargs=(torch.optim.SGD, {"momentum": 0.5}))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD) and {group["momentum"] for group in optimizer.param_groups} == {0.5}
    assert {group["initial_lr"] for group in optimizer.param_groups} == {1e-3, 1e-3 * built.args.head_lr_multiplier}


def test_non_finite_loss_names_step_and_term(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path)
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / "trainer_state.json").write_text("{}")
    batch = trainer.train_dataset[0]
    inputs = {key: value.unsqueeze(0) for key, value in batch.items()}
    inputs["source_image"] = inputs["source_image"].float() * math.nan
    # the first non-finite term in the order of the sum: the auxiliary student's source term
    with pytest.raises(NonFiniteLossError, match=r"step 1: term 'loss_aux_source'.*checkpoint-7"):
        trainer.compute_loss(trainer.model, inputs)


def test_signals_act_as_before_once_training_has_ended_by_an_error(tiny_benchmark, tmp_path):
    """The preemption handlers are installed while `train` runs; if it ends by an exception (no `on_train_end`), the
    next Ctrl-C puts the previous handler back and acts as it would (here: KeyboardInterrupt), not swallowed."""
    import os
    import signal

    from duda_hf.method.step import LossTerm

    def nan_term(t):
        return t.student_source.sum() * math.nan

    built = make_trainer(tiny_benchmark, tmp_path)
    trainer = DudaTrainer(built.model, built.args, built.train_dataset, built.eval_dataset, loss_terms=[LossTerm("loss_nan", nan_term)])
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(NonFiniteLossError, match="loss_nan"):
        trainer.train()
    assert signal.getsignal(signal.SIGINT) is not before  # still the training handler: on_train_end never ran
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before and signal.getsignal(signal.SIGTERM) is not None
    # the same trainer trains again (a retry in a notebook) and fails again: its handlers still lead back to the first
    with pytest.raises(NonFiniteLossError):
        trainer.train()
    with pytest.raises(NonFiniteLossError):
        trainer.train()  # installed over its own handler, which must not become "the previous one"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_training_script_writes_student_results_tensorboard_and_debug_images(tiny_benchmark, tmp_path):
    import subprocess
    import sys

    argv = tiny_argv(
        tiny_benchmark, tmp_path, "--report_to", "tensorboard", "--debug_image_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2"
    )
    done = subprocess.run([sys.executable, "scripts/train_duda.py", *argv], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "target-validation mIoU (6 images): student" in done.stdout and "teacher" in done.stdout
    results = json.loads((tmp_path / "eval_results.json").read_text())
    metrics = results["metrics"]
    assert results["settings"]["method"] == "duda" and metrics["student"]["num_images"] == 6
    assert len(metrics["student"]["per_class_iou"]) == 19 and 0 <= metrics["teacher"]["mIoU"] <= 1
    # how far the student has learnt its teacher, at each evaluation (steps 2 and 4) and per class
    agreement = [entry["eval_student_teacher_agreement"] for entry in results["history"]]
    assert len(agreement) == 2 and all(0 <= value <= 100 for value in agreement)
    assert agreement[-1] == round(100 * metrics["student_vs_teacher"]["overall_accuracy"], 2)
    assert [entry["step"] for entry in results["per_class_history"]] == [2, 4]
    last = results["per_class_history"][-1]
    assert set(last) == {"step", "student", "auxiliary", "teacher", "student_vs_teacher"}
    assert last["student"] == metrics["student"]["per_class_iou"] and len(last["student_vs_teacher"]) == 19
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "plots",  # the pictures its card shows
        "preprocessor_config.json",
    ]
    assert list(tmp_path.rglob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "debug").iterdir()) == ["step_2.png", "step_4.png"]
    # The student loads with plain transformers, in a process that never imports duda_hf.
    check = (
        "import sys, torch\n"
        "from transformers import SegformerForSemanticSegmentation, AutoImageProcessor\n"
        f"model = SegformerForSemanticSegmentation.from_pretrained({str(tmp_path / 'student')!r})\n"
        f"processor = AutoImageProcessor.from_pretrained({str(tmp_path / 'student')!r})\n"
        "assert 'duda_hf' not in sys.modules\n"
        "out = model(pixel_values=torch.zeros(1, 3, 64, 128)).logits\n"
        "print(model.config.id2label[0], model.config.id2label[18], tuple(out.shape), processor.size['height'], processor.size['width'])\n"
    )
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["road", "bicycle", "(1,", "19,", "16,", "32)", "64", "128"]


def test_extra_teacher_is_frozen_and_fused(tiny_benchmark, tmp_path):
    from duda_hf.export.network import export_network
    from duda_hf.networks.loading import build_network

    folder = export_network(build_network("tiny"), tmp_path / "extra_teacher")
    trainer = make_trainer(
        tiny_benchmark, tmp_path / "run", "--extra_teachers", str(folder), "--teacher_weights", "3", "1", "--max_steps", "2"
    )
    duda = trainer.model
    assert len(duda.extra_teachers) == 1 and not any(p.requires_grad for p in duda.extra_teachers.parameters())
    frozen = {k: v.clone() for k, v in duda.extra_teachers.state_dict().items()}
    trainer.train()
    assert not duda.extra_teachers.training
    for key, value in duda.extra_teachers.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert len(duda.teacher_logits(torch.rand(1, 3, 64, 64))) == 2


def test_feature_distance_with_an_imagenet_encoder(tiny_benchmark, tmp_path):
    import copy

    trainer = make_trainer(tiny_benchmark, tmp_path, "--max_steps", "2", "--fd_lambda", "0.5", "--fd_classes", "0", "2", "10")
    duda = trainer.model
    duda.imagenet_encoder = copy.deepcopy(duda.aux_student.segformer).requires_grad_(False)
    # Perturb the reference so the distance is non-zero from the first step.
    with torch.no_grad():
        for p in duda.imagenet_encoder.parameters():
            p.add_(0.05)
    trainer.train()
    logged = [e["loss_feature_distance"] for e in trainer.state.log_history if "loss_feature_distance" in e]
    assert len(logged) == 2 and min(logged) > 0


def test_evaluation_reports_the_auxiliary_student_beside_teacher_and_student(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path, "--max_steps", "1")
    metrics = trainer.evaluate()
    assert {"eval_auxiliary_mIoU", "eval_student_mIoU", "eval_teacher_mIoU"} <= set(metrics)
    assert set(trainer.last_eval_results) == {"student", "auxiliary", "teacher", "student_vs_teacher"}


def test_evaluation_batched_with_workers_gives_the_numbers_of_one_image_at_a_time(tiny_benchmark, tmp_path):
    """`per_device_eval_batch_size` and `dataloader_num_workers` change how fast the evaluation runs, not its numbers;
    with persistent workers one loader serves every evaluation, as Trainer keeps its own."""
    trainer = make_trainer(tiny_benchmark, tmp_path, "--max_steps", "1", "--per_device_eval_batch_size", "1")
    expected = trainer.evaluate()
    per_class = json.dumps(trainer.last_eval_results)  # NaN for absent classes: compared as text
    trainer.args.per_device_eval_batch_size, trainer.args.dataloader_num_workers = 4, 2
    trainer.args.dataloader_persistent_workers = True
    assert trainer.evaluate() == expected and json.dumps(trainer.last_eval_results) == per_class
    loader = trainer._kept_evaluation_loader[1]
    assert (loader.batch_size, loader.num_workers, loader.persistent_workers) == (4, 2, True)
    assert trainer.evaluate() == expected and trainer._kept_evaluation_loader[1] is loader


def test_a_network_of_a_training_checkpoint_is_a_student_or_teacher(tiny_benchmark, tmp_path):
    from duda_hf.networks.loading import ModelUnavailableError, build_network

    trainer = make_trainer(tiny_benchmark, tmp_path / "run", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    images = torch.rand(1, 3, 32, 64)
    for role in ("student", "aux_student", "teacher"):
        network = build_network(f"{checkpoint}@{role}").eval()
        original = getattr(trainer.model, role).eval()
        with torch.no_grad():
            torch.testing.assert_close(network(pixel_values=images).logits, original(pixel_values=images).logits, rtol=0, atol=0)
    with pytest.raises(ModelUnavailableError, match=r"no network 'extra_teacher_0'.*aux_student"):
        build_network(f"{checkpoint}@extra_teacher_0")
    # the teacher of one run as the auxiliary student of the next (and as an extra teacher)
    again = make_trainer(
        tiny_benchmark,
        tmp_path / "next",
        "--aux_student",
        f"{checkpoint}@teacher",
        "--extra_teachers",
        f"{checkpoint}@student",
        "--max_steps",
        "1",
    )
    torch.testing.assert_close(again.model.aux_student.state_dict(), trainer.model.teacher.state_dict(), rtol=0, atol=0)


def test_the_run_says_when_the_teacher_is_not_stronger_than_the_student():
    from duda_hf.evaluation.report import teacher_premise

    def results(student, auxiliary, teacher, method="duda"):
        return {"method": method, "student": {"mIoU": student}, "auxiliary": {"mIoU": auxiliary}, "teacher": {"mIoU": teacher}}

    assert teacher_premise(results(0.50, 0.60, 0.58)) is None  # 8 points stronger: the premise holds
    assert teacher_premise(results(0.50, 0.40, 0.40, method="self_training")) is None
    note = teacher_premise(results(0.30, 0.24, 0.2341))  # the auxiliary is no stronger either: no EMA advice
    assert note.startswith("The teacher (23.41 mIoU) is not clearly stronger than the student it teaches (30.00 mIoU; less than 1 above)")
    assert "pretrained" in note and "--ema_alpha" not in note
    lagging = teacher_premise(results(0.30, 0.35, 0.28))
    assert "auxiliary student itself scores 35.00" in lagging and "--ema_alpha" in lagging
    # the advice follows the run: a large network that already started pretrained is not told to start pretrained
    for recipe, advice in (
        ({"aux_student": "tiny-wide", "init": "random"}, "start the auxiliary student from pretrained weights (--init imagenet"),
        ({"aux_student": "mit-b5", "init": "imagenet"}, "already starts from pretrained weights (mit-b5): train it longer"),
        ({"aux_student": "tiny-wide", "init": "imagenet"}, "start the auxiliary student from pretrained weights (--init imagenet"),
        ({"aux_student": "mit-b5", "init": "random"}, "start the auxiliary student from pretrained weights (--init imagenet"),
        (
            {"aux_student": "pretrained_synthetic/tiny-wide", "init": "random"},
            "already starts from pretrained weights (pretrained_synthetic/tiny-wide)",
        ),
    ):
        note = teacher_premise({**results(0.30, 0.24, 0.2341), "recipe": recipe})
        assert advice in note and (("--init imagenet" in note) == advice.startswith("start"))
