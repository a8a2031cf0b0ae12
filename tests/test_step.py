"""The step as data: named, weighted terms from a pure function; the trainer adds them up, updates state and logs them."""

import pytest
import torch
from transformers import set_seed

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import build_trainer
from duda_hf.method.losses import channel_distillation_loss, kd_loss, weighted_cross_entropy
from duda_hf.method.step import TERMS, LossTerm, duda_step
from duda_hf.training.trainer import DudaTrainer

from .conftest import tiny_argv


def make_trainer(benchmark, output_dir, *extra, loss_terms=()):
    trainer = build_trainer(*parse_args(tiny_argv(benchmark, output_dir, *extra)))
    if loss_terms:  # the same networks, data and arguments, with the extra terms
        trainer = DudaTrainer(trainer.model, trainer.args, trainer.train_dataset, trainer.eval_dataset, loss_terms=loss_terms)
    return trainer


def fixed_batch(trainer, size: int = 2) -> dict[str, torch.Tensor]:
    samples = [trainer.train_dataset[i] for i in range(size)]
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


def test_the_loss_is_the_sum_of_the_pure_steps_weighted_terms_in_order(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path)
    trainer.state.global_step = 2  # preadapt 1 step, ramp 2 steps: lam_t = 0.5, both student terms on the mix
    duda, inputs = trainer.model, fixed_batch(trainer)
    state = {name: value.clone() for name, value in duda.state_dict().items()}

    torch.manual_seed(0)
    generator = trainer._step_generator(torch.device("cpu"))
    result = duda_step(duda, inputs, trainer.args, step=2, generator=generator, autocast=trainer.accelerator.autocast)
    # pure: the networks' weights, the teacher and the inconsistency state are as they were; nothing logged or kept
    # (BatchNorm running statistics are the forward pass's own)
    changed = [name for name, value in duda.state_dict().items() if not torch.equal(value, state[name]) and "running_" not in name]
    changed = [name for name in changed if not name.endswith("num_batches_tracked")]
    assert changed == []
    assert trainer.step_log.count == 0 and trainer.debug_tensors is None
    assert list(result.terms) == ["loss_aux_source", "loss_aux_mix", "loss_student_source", "loss_student_mix", "loss_student_kd"]
    later = ["loss_feature_distance", "loss_student_kd_clean", "loss_student_cwd", "loss_aux_masked", "loss_student_masked"]
    assert [term.name for term in TERMS["duda"]] == [*result.terms, *later]
    assert set(result.diagnostics) == {"pseudo_label_quality", "lam_t", "class_weight", "teacher_pixel_share", "teacher_pixel_weight"}
    assert result.diagnostics["lam_t"] == 0.5

    # the terms are weighted: (1 - lam_t) wCE and lam_t KD, as docs/method.md writes L_stu
    t = result.tensors
    hard = weighted_cross_entropy(t.student_mix, t.mixed_label, t.pixel_weight)
    soft_target = torch.where(
        t.mask.bool().unsqueeze(1), torch.nn.functional.one_hot(t.source_label.clamp(max=18), 19).permute(0, 3, 1, 2).float(), t.probs_tau
    )
    soft = kd_loss(t.student_mix, soft_target, 1.0, t.pixel_weight, t.mixed_label != 255)
    assert torch.equal(result.terms["loss_student_mix"], 0.5 * hard)
    assert torch.equal(result.terms["loss_student_kd"], 0.5 * soft)

    # compute_loss: the same step (same generator, same dropout draws), the sum in the terms' order, bit for bit
    expected = (
        weighted_cross_entropy(t.aux_source, t.source_label)
        + weighted_cross_entropy(t.aux_mix, t.mixed_label, t.mixed_weight)
        + weighted_cross_entropy(t.student_source, t.source_label)
        + (1 - 0.5) * hard
        + 0.5 * soft
    )
    trainer.micro_step = (-1, 0)
    torch.manual_seed(0)
    loss = trainer.compute_loss(duda, inputs)
    assert torch.equal(loss, expected)
    assert torch.equal(loss, sum(result.terms.values()))
    # ... and then the state updates: the inconsistency state and the log
    assert bool(duda.class_seen.any()) and not torch.equal(duda.class_discrepancy, state["class_discrepancy"])
    logged = trainer.step_log.pop_means()
    assert logged["loss_student_kd"] == round(float(result.terms["loss_student_kd"].detach()), 5)
    assert logged["lam_t"] == 0.5 and len([name for name in logged if name.startswith("class_weight_")]) == 19


@pytest.mark.parametrize("step, present", [(0, "loss_student_mix"), (3, "loss_student_kd")])
def test_a_term_whose_weight_is_zero_is_left_out(tiny_benchmark, tmp_path, step, present):
    trainer = make_trainer(tiny_benchmark, tmp_path)
    generator = trainer._step_generator(torch.device("cpu"))
    result = duda_step(
        trainer.model, fixed_batch(trainer), trainer.args, step=step, generator=generator, autocast=trainer.accelerator.autocast
    )
    assert list(result.terms) == ["loss_aux_source", "loss_aux_mix", "loss_student_source", present]
    assert result.diagnostics["lam_t"] == (0.0 if step == 0 else 1.0)


TARGET = 1.0  # the toy term pulls the student's classifier bias towards this value
TOY_WEIGHT = 0.5


def toy_term(t):
    """0.5 * ||b - 1||^2 on the student's classifier bias: its gradient is b - 1."""
    return TOY_WEIGHT * (t.model.student.decode_head.classifier.bias - TARGET).square().sum()


@pytest.mark.slow
def test_a_loss_term_added_through_the_trainer_is_logged_and_optimised(tiny_benchmark, tmp_path):
    # plain SGD at a constant rate: one step moves each parameter by exactly -lr * gradient
    extra = ("--max_steps", "1", "--optim", "sgd", "--lr_schedule", "trainer", "--lr_scheduler_type", "constant", "--warmup_steps", "0")
    plain = make_trainer(tiny_benchmark, tmp_path / "plain", *extra)
    toy = make_trainer(tiny_benchmark, tmp_path / "toy", *extra, loss_terms=[LossTerm("loss_toy", toy_term)])
    bias0 = toy.model.student.decode_head.classifier.bias.detach().clone()
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, toy.model.state_dict()[name]), name  # the same start
    for trainer in (plain, toy):
        set_seed(3)  # the same dropout and drop-path draws in both runs
        trainer.train()

    # logged under its name, with the value it had at the step; the logged loss is the sum of the logged terms
    (entry,) = [e for e in toy.state.log_history if "loss" in e]
    (plain_entry,) = [e for e in plain.state.log_history if "loss" in e]
    assert entry["loss_toy"] == round(float(TOY_WEIGHT * (bias0 - TARGET).square().sum()), 5)
    assert set(entry) - set(plain_entry) == {"loss_toy"}
    assert entry["loss"] == pytest.approx(sum(value for name, value in entry.items() if name.startswith("loss_")), abs=5e-5)
    assert entry["loss"] == pytest.approx(plain_entry["loss"] + entry["loss_toy"], rel=1e-6)

    # optimised: the bias moved by an extra -lr * (b - 1); every other parameter moved as without the term
    bias = toy.model.student.decode_head.classifier.bias
    (lr,) = [group["lr"] for group in toy.optimizer.param_groups if any(p is bias for p in group["params"])]
    assert lr == pytest.approx(1e-3 * 10)  # a decode head: head_lr_multiplier x lr
    moved = bias.detach() - plain.model.student.decode_head.classifier.bias.detach()
    torch.testing.assert_close(moved, -lr * 2 * TOY_WEIGHT * (bias0 - TARGET), rtol=0, atol=1e-6)
    assert bool((bias.detach() - TARGET).abs().lt((bias0 - TARGET).abs()).all())  # every entry closer to the target
    different = [
        name
        for name, value in toy.model.state_dict().items()
        if name != "student.decode_head.classifier.bias" and not torch.equal(value, plain.model.state_dict()[name])
    ]
    assert different == []


@pytest.mark.parametrize("name", ["loss_student_source", "toy"])
def test_an_extra_term_needs_a_new_loss_name(tiny_benchmark, tmp_path, name):
    trainer = make_trainer(tiny_benchmark, tmp_path)
    with pytest.raises(ValueError, match=rf"loss term '{name}': name it 'loss_<what>'"):
        DudaTrainer(trainer.model, trainer.args, loss_terms=[LossTerm(name, toy_term)])


def test_the_training_set_must_cover_the_run_in_order(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path)  # 4 steps x batch 2: 8 samples
    assert len(trainer.train_dataset) == 8
    with pytest.raises(ValueError, match=r"has 7 samples but the run draws 8 .*num_samples=8"):
        DudaTrainer(trainer.model, trainer.args, list(range(7)))
    trainer.args.train_sampling_strategy = "random"
    with pytest.raises(ValueError, match=r"train_sampling_strategy='random': set it to 'sequential'"):
        DudaTrainer(trainer.model, trainer.args, trainer.train_dataset)


@pytest.mark.slow
def test_kd_confidence_weight_false_lets_an_unconfident_teacher_teach(tiny_benchmark, tmp_path):
    """At step 0 a random teacher has no pixel above the 0.968 confidence threshold (quality 0): the specified KD
    term weighs its target pixels by that quality, `--kd_confidence_weight false` by 1 (times the class weights)."""
    kd = {}
    for flag in ("true", "false"):
        trainer = make_trainer(
            tiny_benchmark, tmp_path / flag, "--preadapt_steps", "0", "--distill_ramp_steps", "0", "--kd_confidence_weight", flag
        )
        generator = trainer._step_generator(torch.device("cpu"))
        result = duda_step(
            trainer.model, fixed_batch(trainer), trainer.args, step=0, generator=generator, autocast=trainer.accelerator.autocast
        )
        t = result.tensors
        assert float(t.quality) == 0.0 and t.lam == 1.0
        kd[flag] = result.terms["loss_student_kd"]
        if flag == "false":  # the same KD over the target pixels with weight 1 x class weight, source pixels 1
            weight = torch.where(t.mask == 1, 1.0, t.outside_margins) * t.class_pixel_weight
            soft_target = torch.where(
                t.mask[:, None] == 1,
                torch.nn.functional.one_hot(t.source_label.clamp(max=18), 19).permute(0, 3, 1, 2).float(),
                t.probs_tau,
            )
            expected = kd_loss(t.student_mix, soft_target, 1.0, weight, t.mixed_label != 255)
            assert torch.allclose(kd[flag], expected, rtol=1e-6)
    # with quality 0 only the pasted source pixels count under the specified weighting; without it the target too
    assert float(kd["false"]) != pytest.approx(float(kd["true"]), rel=1e-3)


def test_what_the_student_sees_of_the_teacher_is_logged(tiny_benchmark, tmp_path):
    """`teacher_pixel_share`: the share of the mix's pixels that carry the teacher's output (target pixels outside the
    margins); `teacher_pixel_weight`: the mean weight the soft term gives them (quality x class weight, as specified)."""
    trainer = make_trainer(tiny_benchmark, tmp_path)
    generator = trainer._step_generator(torch.device("cpu"))
    result = duda_step(
        trainer.model, fixed_batch(trainer), trainer.args, step=2, generator=generator, autocast=trainer.accelerator.autocast
    )
    t = result.tensors
    teacher_pixels = (t.mask == 0) & (t.outside_margins == 1)
    assert 0 < float(result.diagnostics["teacher_pixel_share"]) < 1
    assert float(result.diagnostics["teacher_pixel_share"]) == pytest.approx(teacher_pixels.float().mean().item(), abs=1e-7)
    expected = (t.quality * t.class_pixel_weight)[teacher_pixels].mean().item()
    assert float(result.diagnostics["teacher_pixel_weight"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_kd_on_the_clean_target_is_the_students_clean_output_against_the_teachers(tiny_benchmark, tmp_path):
    """`--kd_clean_target w` adds `w * lam_t * KD(s(x_t), p_tau)` over the target pixels outside the margins, weighted
    by the pseudo-label's class weight; the student's clean-target logits come from the same forward pass."""
    trainer = make_trainer(
        tiny_benchmark, tmp_path, "--kd_clean_target", "2", "--kd_temperature", "2", "--kd_confidence_weight", "false", "--cwd_weight", "3"
    )
    duda, inputs = trainer.model, fixed_batch(trainer)
    torch.manual_seed(0)
    generator = trainer._step_generator(torch.device("cpu"))
    result = duda_step(duda, inputs, trainer.args, step=2, generator=generator, autocast=trainer.accelerator.autocast)
    t = result.tensors
    assert list(result.terms)[-2:] == ["loss_student_kd_clean", "loss_student_cwd"] and t.lam == 0.5
    # the student's logits on the clean target: the last images of its one forward pass over source, mix and target
    torch.manual_seed(0)  # the same drop-path draws (the teacher, in eval mode, draws none)
    from duda_hf.networks.inputs import network_inputs

    images = torch.cat([t.source_image, t.mixed_image, t.target_image])
    logits = duda.student(pixel_values=network_inputs(images, duda.student)).logits
    assert torch.equal(t.student_target, logits[4:])
    weight = t.outside_margins * t.class_weights[t.pseudo_label]
    assert torch.equal(result.terms["loss_student_kd_clean"], 2.0 * 0.5 * kd_loss(t.student_target, t.probs_tau, 2.0, weight))
    # by hand: KL(p_tau || softmax(s / 2)) * 4 per pixel, weighted, over every label pixel
    student = torch.nn.functional.interpolate(t.student_target.float(), size=t.probs_tau.shape[-2:], mode="bilinear")
    per_pixel = (t.probs_tau * (t.probs_tau.clamp(min=1e-30).log() - student.div(2).log_softmax(1))).sum(1) * 4
    assert float(result.terms["loss_student_kd_clean"]) == pytest.approx(float((per_pixel * weight).mean()), rel=1e-4)
    # channel-wise distillation towards the EMA teacher's logits on the same clean images, at the logits' size
    teacher = duda.teacher(pixel_values=network_inputs(t.target_image, duda.teacher)).logits
    assert torch.equal(t.teacher_logits[0], teacher)
    valid = torch.nn.functional.interpolate(t.outside_margins[:, None], size=teacher.shape[-2:], mode="nearest")[:, 0] > 0
    cwd = channel_distillation_loss(t.student_target, teacher, 4.0, valid)
    assert torch.equal(result.terms["loss_student_cwd"], 3.0 * 0.5 * cwd)
    # at weight 0 (the default) the student does not see the clean target at all
    plain = make_trainer(tiny_benchmark, tmp_path / "plain")
    generator = plain._step_generator(torch.device("cpu"))
    result = duda_step(plain.model, fixed_batch(plain), plain.args, step=2, generator=generator, autocast=plain.accelerator.autocast)
    assert not {"loss_student_kd_clean", "loss_student_cwd"} & set(result.terms) and result.tensors.student_target is None
    # self-training ignores them (one recipe serves every method): the same step as without the flags
    reference = {}
    for flags in ((), ("--kd_clean_target", "1", "--cwd_weight", "1")):
        baseline = make_trainer(tiny_benchmark, tmp_path / f"st{len(flags)}", "--method", "self_training", *flags)
        torch.manual_seed(0)
        generator = baseline._step_generator(torch.device("cpu"))
        inputs = fixed_batch(baseline)
        result = duda_step(baseline.model, inputs, baseline.args, step=2, generator=generator, autocast=baseline.accelerator.autocast)
        assert result.tensors.student_target is None
        if flags:
            assert list(result.terms) == list(reference) and all(torch.equal(result.terms[k], reference[k]) for k in reference)
        reference = result.terms


def test_the_distillation_stage_schedule_and_its_checks(tiny_benchmark, tmp_path):
    from duda_hf.method.config import DudaConfig

    config = DudaConfig(output_dir=str(tmp_path), max_steps=2000, distill_stage_steps=0.25, report_to="none")
    assert (config.distill_stage_steps_resolved, config.adaptation_steps) == (500, 1500)
    # the lam_t schedule counts in the adaptation steps: 25% + 25% of 1500
    assert (config.preadapt_steps_resolved, config.distill_ramp_steps_resolved) == (375, 375)
    assert [config.in_distill_stage(step) for step in (0, 1499, 1500, 1999)] == [False, False, True, True]
    assert config.ddp_find_unused_parameters is True  # the auxiliary student gets no gradient in the stage
    plain = DudaConfig(output_dir=str(tmp_path), max_steps=2000, report_to="none")
    assert (plain.adaptation_steps, plain.preadapt_steps_resolved, plain.in_distill_stage(1999)) == (2000, 500, False)
    assert plain.ddp_find_unused_parameters is False
    with pytest.raises(ValueError, match=r"distill_stage_steps.*fewer than max_steps \(100\)"):
        DudaConfig(output_dir=str(tmp_path), max_steps=100, distill_stage_steps=100, report_to="none")
    # the baselines ignore the stage (one recipe serves every method): self-training adapts, and its teacher follows,
    # for all of max_steps
    baseline = DudaConfig(output_dir=str(tmp_path), max_steps=100, distill_stage_steps=10, method="self_training", report_to="none")
    assert (baseline.adaptation_steps, baseline.in_distill_stage(99), baseline.ddp_find_unused_parameters) == (100, False, False)


def test_in_the_distillation_stage_only_the_student_learns_from_the_frozen_teacher(tiny_benchmark, tmp_path):
    from transformers import TrainerCallback

    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in (2, 4):
                snapshots[state.global_step] = {k: v.clone() for k, v in model.state_dict().items()}

    trainer = make_trainer(
        tiny_benchmark,
        tmp_path,
        "--distill_stage_steps",
        "2",
        "--kd_clean_target",
        "1",
        "--preadapt_steps",
        "0",
        "--distill_ramp_steps",
        "1",
    )
    trainer.add_callback(Snapshot())
    trainer.train()
    before, after = snapshots[2], snapshots[4]

    def changed(prefix):
        return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]

    # steps 3 and 4 are the stage: the auxiliary student and its EMA teacher stay exactly as they were after step 2
    assert changed("aux_student.") == [] and changed("teacher.") == []
    assert any(".weight" in k for k in changed("student."))
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [("loss_aux_source" in entry, entry["lam_t"]) for entry in logs] == [(True, 0.0), (True, 1.0), (False, 1.0), (False, 1.0)]
    assert all("loss_student_kd" in entry and "loss_student_kd_clean" in entry for entry in logs[1:])


@pytest.mark.slow
def test_a_target_only_stage_learns_from_the_clean_target_alone(tiny_benchmark, tmp_path):
    """`--distill_stage_target_only`: in the stage the student's only term is the clean-target distillation."""
    trainer = make_trainer(
        tiny_benchmark,
        tmp_path,
        *("--distill_stage_steps", "2", "--kd_clean_target", "1", "--distill_stage_target_only", "true"),
        *("--preadapt_steps", "0", "--distill_ramp_steps", "1"),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    terms = [sorted(key for key in entry if key.startswith("loss_")) for entry in logs]
    assert terms[2:] == [["loss_student_kd_clean"], ["loss_student_kd_clean"]]
    assert "loss_student_source" in terms[1] and "loss_aux_source" in terms[1]
    assert logs[3]["loss"] == pytest.approx(logs[3]["loss_student_kd_clean"], rel=1e-3)
    from duda_hf.method.config import DudaConfig

    with pytest.raises(ValueError, match=r"distill_stage_target_only.*kd_clean_target or cwd_weight > 0"):
        DudaConfig(output_dir=str(tmp_path), max_steps=10, distill_stage_steps=2, distill_stage_target_only=True, report_to="none")
