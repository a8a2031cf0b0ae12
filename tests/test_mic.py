"""MIC's masked image consistency (lhoyer/MIC: `masking_transforms.py`, `masking_consistency_module.py`): the mask's
geometry and the loss by hand, and the term in a DUDA step, in self-training, after a resume and (test_ddp.py)
under 2-process DDP."""

import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import build_trainer, run_training
from duda_hf.method.config import resolve_block_size
from duda_hf.method.masking import block_mask, block_mask_from_draws, mask_images
from duda_hf.method.step import aux_masked_ce, student_masked_ce
from duda_hf.method.step_tensors import masked_batch
from duda_hf.networks.inputs import IMAGENET_MEAN

from .conftest import tiny_argv
from .test_precision import fixed_batch, make_trainer


def test_the_mask_keeps_the_blocks_whose_draw_is_above_the_ratio_resized_nearest():
    # top: 0.9 kept, 0.1 masked; bottom: 0.71 kept, 0.7 masked (not above the ratio: MIC's `>`)
    draws = torch.tensor([[[[0.9, 0.1], [0.71, 0.7]]]])
    mask = block_mask_from_draws(draws, (4, 6), ratio=0.7)
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(mask, expected[None, None])


@pytest.mark.parametrize(
    "size, block, grid",
    [((512, 512), 32, (16, 16)), ((80, 100), 32, (2, 3)), ((1024, 2048), 64, (16, 32)), ((48, 48), 32, (2, 2))],
)
def test_the_grid_has_round_h_over_block_by_round_w_over_block_cells(size, block, grid):
    """Python's rounding, as MIC's (80 / 32 = 2.5 -> 2, 48 / 32 = 1.5 -> 2); each cell one draw."""
    generator = torch.Generator().manual_seed(0)
    mask = block_mask(1, size, block, 0.5, generator, torch.device("cpu"))
    expected_draws = torch.rand((1, 1, *grid), generator=torch.Generator().manual_seed(0))
    assert mask.shape == (1, 1, *size)
    assert torch.equal(mask, block_mask_from_draws(expected_draws, size, 0.5))


def test_the_block_size_scales_with_the_crop_as_mics():
    assert resolve_block_size(1 / 16, 512, 512) == 32  # MIC(DAFormer), 512 crops
    assert resolve_block_size(1 / 16, 1024, 1024) == 64  # MIC(HRDA), 1024 crops
    assert resolve_block_size(1 / 16, 128, 256) == 8  # the shorter side
    assert resolve_block_size(48, 512, 512) == 48  # pixels


def test_a_masked_pixel_takes_the_networks_mean_colour_which_it_normalises_to_zero():
    images = torch.rand(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    masked = mask_images(images, mask, IMAGENET_MEAN)
    assert torch.equal(masked[..., 0, 0], images[..., 0, 0]) and torch.equal(masked[..., 1, 1], images[..., 1, 1])
    assert masked[0, :, 0, 1].tolist() == pytest.approx(list(IMAGENET_MEAN))
    from duda_hf.networks.inputs import normalize_images

    assert normalize_images(masked)[0, :, 1, 0].abs().max() < 1e-6  # MIC: 0 after normalisation


def test_the_masked_loss_by_hand():
    """Two pixels: one labelled 0 where softmax gives class 0 probability 1/2, one ignored; quality weight 0.8.
    DAFormer's denominator (every pixel): 0.8 ln 2 / 2; times mic_lambda 0.5. Over the valid pixels: 0.8 ln 2 / 1."""
    logits = torch.zeros(1, 19, 1, 2)
    logits[0, 0] = math.log(18)  # e^l0 = 18 = the other 18 classes' sum
    labels = torch.tensor([[[0, 255]]])
    weight = torch.full((1, 1, 2), 0.8)
    for denominator, expected in (("all_pixels", 0.5 * 0.8 * math.log(2) / 2), ("valid_pixels", 0.5 * 0.8 * math.log(2))):
        t = SimpleNamespace(
            args=SimpleNamespace(mic_lambda=0.5, loss_denominator=denominator),
            aux_masked=logits,
            student_masked=logits,
            masked_label=labels,
            masked_weight=weight,
            aux_detail_masked=None,  # no HRDA (tests/test_hrda.py: MIC's term with HRDA's detail loss)
        )
        assert float(aux_masked_ce(t)) == pytest.approx(expected, rel=1e-6)
        assert float(student_masked_ce(t)) == pytest.approx(expected, rel=1e-6)
    off = SimpleNamespace(aux_masked=None, student_masked=None)
    assert aux_masked_ce(off) is None and student_masked_ce(off) is None


@pytest.mark.parametrize("mode", ["separatetrg", "separate"])
def test_the_masked_batch_takes_mics_images_labels_and_weights(tiny_benchmark, tmp_path, mode):
    trainer = make_trainer(tiny_benchmark, tmp_path, "--mic_lambda", "1", "--mic_mode", mode, "--mic_mask_ratio", "0")
    batch = fixed_batch(trainer)
    source, target = batch["source_image"].float() / 255, batch["target_image"].float() / 255
    source_label = batch["source_label"].long()
    pseudo = torch.full_like(source_label, 7)
    weight = torch.full(source_label.shape, 0.25)
    args = trainer.args
    images, labels, weights = masked_batch(
        trainer.model, args, source, source_label, target, pseudo, weight, torch.Generator().manual_seed(0)
    )
    if mode == "separate":  # MIC: one of two from the source batch (weight 1), the other from the target batch
        assert torch.equal(images, torch.cat([source[:1], target[:1]]))  # ratio 0: nothing masked
        assert torch.equal(labels, torch.cat([source_label[:1], pseudo[:1]]))
        assert torch.equal(weights[0], torch.ones_like(weights[0])) and torch.equal(weights[1], weight[0])
    else:
        assert torch.equal(images, target) and torch.equal(labels, pseudo) and torch.equal(weights, weight)
    args.mic_mask_ratio = 0.999999  # every block masked: the mean colour everywhere
    images, _, _ = masked_batch(trainer.model, args, source, source_label, target, pseudo, weight, torch.Generator().manual_seed(0))
    assert torch.allclose(images, torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand_as(images))


def _confident_step(trainer):
    with torch.no_grad():  # a confident teacher, so that the pseudo-labels weigh something
        trainer.model.teacher.decode_head.classifier.weight.mul_(1000)
    trainer.state.global_step = 2
    return trainer.compute_loss(trainer.model, fixed_batch(trainer))


def test_in_a_duda_step_the_masked_term_trains_the_auxiliary_student_only(tiny_benchmark, tmp_path):
    trainer = make_trainer(tiny_benchmark, tmp_path, "--mic_lambda", "1", "--preadapt_steps", "0", "--distill_ramp_steps", "4")
    _confident_step(trainer)
    logged = trainer.step_log.pop_means()
    assert logged["loss_aux_masked"] > 0 and "loss_student_masked" not in logged
    # the term alone: its gradient reaches the auxiliary student and nothing else
    from duda_hf.method.step import step_tensors

    tensors = step_tensors(
        trainer.model, fixed_batch(trainer), trainer.args, step=2, generator=torch.Generator().manual_seed(0), autocast=torch.enable_grad
    )
    trainer.model.zero_grad(set_to_none=True)
    aux_masked_ce(tensors).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.aux_student.parameters())
    assert all(p.grad is None for p in trainer.model.student.parameters())


def test_mic_student_and_self_training_give_the_student_the_masked_term(tiny_benchmark, tmp_path):
    runs = {
        "duda": ("duda", "--mic_student", "true", "--kd_clean_target", "1"),
        "self_training": ("self_training",),
        # another family as the student (its own head, stride 8), beside the SegFormer pair
        "duda_mobilenet_student": ("duda", "--mic_student", "true", "--student", "mobilenetv2-deeplabv3-tiny"),
    }
    for name, (method, *extra) in runs.items():
        trainer = make_trainer(tiny_benchmark, tmp_path / name, "--method", method, "--mic_lambda", "1", *extra)
        _confident_step(trainer)
        logged = trainer.step_log.pop_means()
        assert logged["loss_student_masked"] > 0, name
        assert ("loss_aux_masked" in logged) == (method == "duda"), name


def test_without_mic_the_step_is_unchanged(tiny_benchmark, tmp_path):
    """MIC draws after everything else, so a run with it off keeps its bits; with it on, the other terms are the same."""
    losses = {}
    for name, extra in (("off", ()), ("on", ("--mic_lambda", "1"))):
        trainer = make_trainer(tiny_benchmark, tmp_path / name, "--preadapt_steps", "0", "--distill_ramp_steps", "4", *extra)
        _confident_step(trainer)
        losses[name] = trainer.step_log.pop_means()
    for name, value in losses["off"].items():
        if name.startswith("loss_") and name not in ("loss_aux_source", "loss_aux_mix"):
            assert losses["on"][name] == value, name
    assert "loss_aux_masked" in losses["on"] and "loss_aux_masked" not in losses["off"]


def test_bad_mic_flags_are_refused_in_one_line(tiny_benchmark, tmp_path):
    with pytest.raises(ValueError, match="mic_lambda trains the network that makes the pseudo-labels, which method 'source_only' does not"):
        make_trainer(tiny_benchmark, tmp_path, "--method", "source_only", "--mic_lambda", "1")
    with pytest.raises(ValueError, match="mic_student needs method='duda'"):
        make_trainer(tiny_benchmark, tmp_path, "--method", "self_training", "--mic_lambda", "1", "--mic_student", "true")
    with pytest.raises(ValueError, match="mic_mask_ratio must be in"):
        make_trainer(tiny_benchmark, tmp_path, "--mic_lambda", "1", "--mic_mask_ratio", "1")


@pytest.mark.slow
def test_a_mic_run_resumes_bit_identically(tiny_benchmark, tmp_path):
    output = tmp_path / "run"
    argv = tiny_argv(
        tiny_benchmark,
        output,
        "--mic_lambda",
        "1",
        "--pseudo_label_threshold",
        "0",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
    )
    run_training(*parse_args(argv))
    resumed = tmp_path / "resumed"
    shutil.copytree(output / "checkpoint-2", resumed / "checkpoint-2")
    trainer = build_trainer(*parse_args([a if a != str(output) else str(resumed) for a in argv]))
    trainer.train(resume_from_checkpoint=str(resumed / "checkpoint-2"))
    final = load_file(output / "checkpoint-4" / "model.safetensors")
    assert any(entry.get("loss_aux_masked", 0) > 0 for entry in trainer.state.log_history)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, final[name]), name


def test_the_console_adds_the_masked_terms_to_their_networks_not_to_other():
    from duda_hf.method.step import TERMS
    from duda_hf.training.console import TERM_GROUPS, training_line

    grouped = {term for _, terms in TERM_GROUPS for term in terms}
    assert {term.name for terms in TERMS.values() for term in terms} <= grouped  # "other" is for loss_terms= only
    logs = {"loss": 2.0, "loss_aux_source": 1.0, "loss_aux_masked": 0.25, "loss_student_source": 0.5, "loss_student_masked": 0.25}
    assert training_line(logs, 3, 10) == "step 3/10  loss 2.0000  aux 1.2500  student 0.7500"
