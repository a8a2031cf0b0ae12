"""HRDA's multi-resolution training of the large pair (`--hrda`; lhoyer/HRDA `hrda_encoder_decoder.py`, `hrda_head.py`):
the fusion with a detail crop and the losses by hand, the crop's geometry, a DUDA run that resumes bit for bit, and
(tests/test_ddp.py) 2-process DDP. HRDA's inference and import: tests/test_daformer.py."""

import json
import math
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from duda_hf.cli.arguments import parse_args
from duda_hf.cli.training_run import build_trainer, run_training
from duda_hf.method.config import DudaConfig
from duda_hf.method.step import _aux_ce, duda_step
from duda_hf.method.step_tensors import hrda_detail_box
from duda_hf.networks.daformer.modeling_daformer import hrda_fuse_crop

from .conftest import assert_resume_ends_with, tiny_argv
from .test_precision import fixed_batch

HRDA = ("--aux_student", "tiny-wide-daformer", "--hrda", "true")


def test_the_training_fusion_masks_the_attention_to_the_detail_crop_and_inserts_its_logits_by_hand():
    """A 8x16 image, context scale 0.5 (a 1x2 context grid at stride 8), the detail crop its right half (0, 8, 8, 16):
    the attention (0.5) counts in the right context cell only; the crop's 2x2 logits land at columns 2-3 of the 2x4
    detail grid."""
    context = torch.full((1, 1, 1, 2), 2.0)
    attention = torch.full((1, 1, 1, 2), 0.5)
    detail = torch.tensor([[[[4.0, 8.0], [0.0, -4.0]]]])
    # (1 - a) * c = [2, 1] -> up x2 (bilinear, half-pixel) [2, 1.75, 1.25, 1]; up(a) = [0, 0.125, 0.375, 0.5]
    expected = torch.tensor([[[[2.0, 1.75, 0.375 * 4 + 1.25, 0.5 * 8 + 1.0], [2.0, 1.75, 1.25, 0.5 * -4 + 1.0]]]])
    assert torch.equal(hrda_fuse_crop(context, attention, detail, (0, 8, 8, 16), 0.5), expected)


def test_the_detail_crop_is_drawn_as_hrdas_get_crop_bbox():
    generator = torch.Generator().manual_seed(3)
    box = hrda_detail_box((64, 96), (32, 48), 8, generator)
    # (64 - 32 + 1) // 8 = 4 choices down, (96 - 48 + 1) // 8 = 6 across, one draw each, in that order
    same = torch.Generator().manual_seed(3)
    y1, x1 = int(torch.randint(4, (1,), generator=same)) * 8, int(torch.randint(6, (1,), generator=same)) * 8
    assert box == (y1, y1 + 32, x1, x1 + 48)
    seen = {hrda_detail_box((64, 96), (32, 48), 8, torch.Generator().manual_seed(s))[::2] for s in range(200)}
    assert seen == {(y, x) for y in range(0, 32, 8) for x in range(0, 48, 8)}  # every multiple of 8 up to the margin
    assert hrda_detail_box((32, 48), (32, 48), 8, generator) == (0, 32, 0, 48)
    with pytest.raises(ValueError, match="larger than the training crop"):
        hrda_detail_box((32, 48), (64, 48), 8, generator)


def test_the_loss_is_hrdas_fused_and_detail_cross_entropy_by_hand():
    """Zero logits: each pixel's cross-entropy is log 19, so the loss is log 19 times the weights' mean over all
    pixels (DAFormer's denominator), 0.9 of it on the whole crop and 0.1 on the detail crop."""
    weights = torch.ones(1, 8, 8)
    weights[:, :4, :4] = 0.5  # the detail crop (0, 4, 0, 4) weighs 0.5, the whole crop 7/8 on average
    labels = torch.randint(0, 19, (1, 8, 8), generator=torch.Generator().manual_seed(0))
    t = SimpleNamespace(args=SimpleNamespace(loss_denominator="all_pixels", hrda_detail_loss=0.1), detail_box=(0, 4, 0, 4))
    loss = _aux_ce(t, torch.zeros(1, 19, 2, 2), torch.zeros(1, 19, 1, 1), labels, weights)
    assert float(loss) == pytest.approx(0.9 * math.log(19) * 7 / 8 + 0.1 * math.log(19) * 0.5, rel=1e-6)
    assert float(_aux_ce(t, torch.zeros(1, 19, 2, 2), None, labels, weights)) == pytest.approx(math.log(19) * 7 / 8, rel=1e-6)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "self_training", "hrda": True}, "only method='duda' has"),
        ({"hrda": True, "hrda_context_scale": 1.0}, r"hrda_context_scale must be in \(0, 1\)"),
        ({"hrda": True, "hrda_detail_crop": [32]}, "empty \\(half the crop\\) or two positive integers"),
        ({"hrda": True, "hrda_context_scale": 0.25}, "hrda_crop_divisible must be a multiple of the context grid's stride .* = 16"),
    ],
)
def test_hrda_settings_that_cannot_run_are_refused(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        DudaConfig(output_dir=str(tmp_path), **settings)


def test_the_detail_crop_is_half_the_crop_and_a_multiple_of_the_crop_divisor(tmp_path):
    config = DudaConfig(output_dir=str(tmp_path), hrda=True)
    assert config.hrda_detail_crop_hw((1024, 1024)) == (512, 512)
    with pytest.raises(ValueError, match=r"detail crop \(50, 50\) \(H W\) must be a multiple of --hrda_crop_divisible 8"):
        config.hrda_detail_crop_hw((100, 100))


def test_hrda_needs_a_daformer_head_large_network(tiny_benchmark, tmp_path):
    with pytest.raises(
        ValueError, match="--hrda needs an auxiliary student with the DAFormer head .* got a SegformerForSemanticSegmentation"
    ):
        build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path, "--hrda", "true")))


@pytest.mark.parametrize(("student_input", "student_size"), [("full", (16, 16)), ("context", (8, 8))])
def test_an_hrda_step_trains_the_detail_crop_beside_the_fused_prediction(tiny_benchmark, tmp_path, student_input, student_size):
    flags = (*HRDA, "--hrda_student_input", student_input, "--kd_clean_target", "1", "--mic_lambda", "1")
    trainer = build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path, *flags)))
    aux = trainer.model.aux_student
    assert aux.config.hrda_scales == [0.5, 1.0] and aux.config.hrda_detail_crop == [32, 32]  # half of the 64 crop
    assert trainer.model.teacher.scale_attention is not None  # the EMA teacher is an HRDA network too
    result = duda_step(
        trainer.model, fixed_batch(trainer), trainer.args, step=2, generator=torch.Generator().manual_seed(1), autocast=nullcontext
    )
    t = result.tensors
    y1, y2, x1, x2 = t.detail_box
    assert (y2 - y1, x2 - x1) == (32, 32) and all(v % 8 == 0 for v in t.detail_box) and y2 <= 64 and x2 <= 64
    assert t.aux_source.shape[-2:] == (16, 16) and t.aux_detail_source.shape[-2:] == (8, 8)  # stride 4 of crop and detail
    assert t.aux_detail_mix is not None and t.aux_detail_masked is not None  # MIC's masked images get HRDA's losses too
    assert t.student_source.shape[-2:] == student_size and t.student_target.shape[-2:] == student_size
    assert {"loss_aux_source", "loss_aux_mix", "loss_aux_masked"} <= set(result.terms)
    sum(result.terms.values()).backward()
    assert all(p.grad is not None for p in aux.scale_attention.parameters())


@pytest.mark.slow
def test_an_hrda_run_evaluates_with_fused_inference_and_resumes_bit_for_bit(tiny_benchmark, tmp_path):
    argv = tiny_argv(tiny_benchmark, tmp_path / "run", *HRDA, "--save_strategy", "steps", "--save_steps", "2")
    results = run_training(*parse_args(argv))
    assert {"student", "auxiliary", "teacher"} <= set(results["metrics"])
    exported = json.loads((tmp_path / "run" / "teacher" / "config.json").read_text())  # evaluated and exported as HRDA
    assert (exported["hrda_scales"], exported["hrda_detail_crop"]) == ([0.5, 1.0], [32, 32])
    final = load_file(tmp_path / "run" / "checkpoint-4" / "model.safetensors")
    assert any(key.startswith("aux_student.scale_attention.") for key in final)
    assert any(key.startswith("teacher.scale_attention.") for key in final)
    assert_resume_ends_with(argv, tmp_path / "run" / "checkpoint-2", final)


def test_the_image_margins_are_marked_on_the_image_before_it_is_cropped_by_hand():
    """HRDA's pseudo-label cropping v2 on a 6x8 image with margins 1 (top), 2 (bottom), 1 (left), 3 (right): valid rows
    1-3 and columns 1-4 of the image; a 4x4 crop at (2, 3) keeps its first two rows and first two columns, and a crop
    reaching past a padded image's border (rows 6-7) loses those rows."""
    from duda_hf.data.pairing import image_margin_mask

    expected = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert image_margin_mask((6, 8), (2, 3), (4, 4), (1, 2, 1, 3)).tolist() == expected
    assert image_margin_mask((6, 8), (4, 0), (4, 8), (0, 0, 0, 0)).tolist() == [[1] * 8, [1] * 8, [0] * 8, [0] * 8]


def test_the_image_margins_reach_the_pseudo_label_weights(tiny_benchmark, tmp_path):
    """Each training sample carries its crop's mask (flipped with the crop), and the step zeroes those pixels' weights."""
    import numpy as np

    from duda_hf.data.pairing import image_margin_mask

    flags = ("--pseudo_label_ignore_top", "0", "--pseudo_label_ignore_bottom", "0", "--pseudo_label_image_margins", "8", "16", "24", "4")
    trainer = build_trainer(*parse_args(tiny_argv(tiny_benchmark, tmp_path, *flags, "--pseudo_label_threshold", "0")))
    sample = trainer.train_dataset[0]
    assert sample["target_valid"].shape == (64, 64) and sample["target_valid"].dtype == torch.uint8
    # the tiny target images are 64x128 and the crop 64x64: every crop loses the top 8 and bottom 16 rows, and its
    # columns are those of one of the 65 crops' (flipped or not)
    valid = sample["target_valid"].numpy()
    assert valid[:8].sum() == 0 and valid[-16:].sum() == 0 and valid[8:48].sum() > 0
    crops = [image_margin_mask((64, 128), (0, left), (64, 64), (8, 16, 24, 4)) for left in range(65)]
    assert any(np.array_equal(valid, mask) or np.array_equal(valid, mask[:, ::-1]) for mask in crops)
    result = duda_step(
        trainer.model, fixed_batch(trainer), trainer.args, step=0, generator=torch.Generator().manual_seed(1), autocast=nullcontext
    )
    batch = fixed_batch(trainer)
    torch.testing.assert_close(result.tensors.outside_margins, batch["target_valid"].float(), rtol=0, atol=0)
