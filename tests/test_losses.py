"""Exact-value tests of the pure loss functions on hand-made tensors."""

import math

import pytest
import torch

from duda_hf.method.losses import (
    channel_distillation_loss,
    class_iou_counts,
    distillation_weight,
    feature_distance,
    fuse_teacher_logits,
    fuse_teacher_probs,
    inconsistency_class_weights,
    kd_loss,
    pseudo_label,
    target_pixel_weight,
    update_class_discrepancy,
    weighted_cross_entropy,
)


def logits(*values):
    """(1, C, 1, 1) logits from per-class values."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def test_fuse_teacher_probs_weighted_mean_and_temperature():
    first, second = logits(0.0, math.log(3)), logits(math.log(3), 0.0)  # softmax (.25, .75) and (.75, .25)
    probs, probs_tau = fuse_teacher_probs([first, second], weights=[1.0, 3.0], temperature=2.0)
    assert probs.flatten().tolist() == pytest.approx([0.25 * 0.25 + 0.75 * 0.75, 0.25 * 0.75 + 0.75 * 0.25])
    r3 = math.sqrt(3)
    expected_first = [1 / (1 + r3), r3 / (1 + r3)]
    expected = [0.25 * expected_first[0] + 0.75 * expected_first[1], 0.25 * expected_first[1] + 0.75 * expected_first[0]]
    assert probs_tau.flatten().tolist() == pytest.approx(expected)


def test_fuse_teacher_probs_single_teacher_upsamples_and_checks_weights():
    probs, _ = fuse_teacher_probs([torch.zeros(1, 2, 2, 2)], size=(4, 4))
    assert probs.shape == (1, 2, 4, 4) and torch.all(probs == 0.5)
    with pytest.raises(ValueError, match="2 teachers but 1 teacher_weights"):
        fuse_teacher_probs([torch.zeros(1, 2, 1, 1)] * 2, weights=[1.0])


def test_pseudo_label_and_quality():
    confidence = torch.tensor([0.99, 0.6, 0.97, 0.968])
    probs = torch.stack([confidence, 1 - confidence], dim=0).view(1, 2, 1, 4)
    labels, quality = pseudo_label(probs, threshold=0.968)
    assert labels.tolist() == [[[0, 0, 0, 0]]]
    assert quality.item() == pytest.approx(0.75)  # 0.968 itself counts
    labels, _ = pseudo_label(1 - probs, threshold=0.968)
    assert labels.tolist() == [[[1, 1, 1, 1]]]


def test_target_pixel_weight_zeroes_margins():
    weight = target_pixel_weight(torch.tensor(0.5), (1, 4, 2), ignore_top=1, ignore_bottom=1)
    assert weight.tolist() == [[[0, 0], [0.5, 0.5], [0.5, 0.5], [0, 0]]]
    assert torch.all(target_pixel_weight(torch.tensor(0.25), (2, 3, 3)) == 0.25)


def test_weighted_cross_entropy_divides_by_every_pixel_as_daformer():
    """DAFormer's mmseg: `F.cross_entropy(reduction='none', ignore_index=255)` (0 at ignored pixels), times `seg_weight`,
    then `.mean()` over the batch: the sum over labelled pixels divided by all B*H*W pixels, ignored ones included."""
    two_class = torch.zeros(1, 2, 1, 3)  # ln 2 per pixel
    labels = torch.tensor([[[0, 1, 255]]])
    weight = torch.tensor([[[1.0, 0.5, 7.0]]])
    # (1 * ln 2 + 0.5 * ln 2 + 7 * 0) / 3
    assert weighted_cross_entropy(two_class, labels, weight).item() == pytest.approx(0.5 * math.log(2), rel=1e-6)
    assert weighted_cross_entropy(two_class, labels).item() == pytest.approx(2 / 3 * math.log(2), rel=1e-6)
    # A zero weight still counts in the denominator (the quality weight scales the loss).
    zero = torch.tensor([[[0.0, 1.0, 1.0]]])
    assert weighted_cross_entropy(two_class, labels, zero).item() == pytest.approx(1 / 3 * math.log(2), rel=1e-6)
    # --loss_denominator valid_pixels: divided by the 2 labelled pixels instead
    assert weighted_cross_entropy(two_class, labels, weight, denominator="valid_pixels").item() == pytest.approx(
        0.75 * math.log(2), rel=1e-6
    )
    assert weighted_cross_entropy(two_class, labels, zero, denominator="valid_pixels").item() == pytest.approx(0.5 * math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="denominator must be 'all_pixels' or 'valid_pixels', got 'weights'"):
        weighted_cross_entropy(two_class, labels, denominator="weights")


def test_the_two_denominators_differ_by_the_share_of_ignored_pixels():
    """The issue's case: with 1 pixel in 8 ignored (12.5%), the valid-pixel mean is 8/7 = 1.143 times DAFormer's."""
    logits = torch.tensor([[[[0.0, 1.0, 2.0, 0.5], [1.5, 0.0, 0.25, 3.0]], [[1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 1.0, 0.0]]]])  # (1, 2, 2, 4)
    labels = torch.tensor([[[0, 1, 0, 1], [255, 0, 1, 0]]])
    per_pixel = [  # -log softmax at the label, by hand
        math.log(1 + math.exp(1.0)),
        math.log(1 + math.exp(1.0)),
        math.log(1 + math.exp(-2.0)),
        math.log(1 + math.exp(-1.5)),
        math.log(1 + math.exp(1.0)),
        math.log(1 + math.exp(-0.75)),
        math.log(1 + math.exp(-3.0)),
    ]
    daformer = weighted_cross_entropy(logits, labels).item()
    assert daformer == pytest.approx(sum(per_pixel) / 8, rel=1e-6)
    valid = weighted_cross_entropy(logits, labels, denominator="valid_pixels").item()
    assert valid == pytest.approx(sum(per_pixel) / 7, rel=1e-6)
    assert valid / daformer == pytest.approx(8 / 7, rel=1e-6)


def test_weighted_cross_entropy_upsamples_logits():
    small = torch.tensor([[[[2.0]], [[0.0]]]])  # (1, 2, 1, 1)
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    assert weighted_cross_entropy(small, labels).item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)))


def test_kd_loss_exact():
    target = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    student = logits(0.0, math.log(3))
    assert kd_loss(student, target).item() == pytest.approx(0.5 * math.log(4 / 3))
    r3 = math.sqrt(3)
    q = [1 / (1 + r3), r3 / (1 + r3)]
    expected = 4 * (0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1]))
    assert kd_loss(student, target, temperature=2.0).item() == pytest.approx(expected)
    one_hot = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert kd_loss(student, one_hot).item() == pytest.approx(-math.log(0.25))


def test_kd_loss_weight_and_valid():
    student = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # one-hot class 0: KL = ln 2 per pixel
    weight = torch.tensor([[[0.5, 1.0]]])
    assert kd_loss(student, target, weight=weight).item() == pytest.approx(0.75 * math.log(2))
    valid = torch.tensor([[[True, False]]])
    # divided as the cross-entropy: by both pixels (0.5 ln 2 / 2), or by the valid one
    assert kd_loss(student, target, weight=weight, valid=valid).item() == pytest.approx(0.25 * math.log(2))
    assert kd_loss(student, target, weight=weight, valid=valid, denominator="valid_pixels").item() == pytest.approx(0.5 * math.log(2))


@pytest.mark.parametrize("step, expected", [(0, 0.0), (9, 0.0), (10, 0.0), (15, 0.5), (19, 0.9), (20, 1.0), (100, 1.0)])
def test_distillation_weight_ramp(step, expected):
    assert distillation_weight(step, preadapt_steps=10, ramp_steps=10) == pytest.approx(expected)


def test_distillation_weight_without_ramp_is_a_step():
    assert distillation_weight(4, 5, 0) == 0.0 and distillation_weight(5, 5, 0) == 1.0


def test_class_iou_counts():
    prediction = torch.tensor([[[0, 0, 1, 1, 2]]])
    target = torch.tensor([[[0, 1, 1, 1, 255]]])
    valid = torch.tensor([[[True, True, True, True, True]]])
    intersection, union = class_iou_counts(prediction, target, valid, num_classes=3)
    assert intersection.tolist() == [1, 2, 0]
    assert union.tolist() == [2, 3, 0]  # the ignore pixel (predicted 2) counts nowhere
    intersection, union = class_iou_counts(prediction, target, valid & torch.tensor([[[True, False, True, True, True]]]), 3)
    assert intersection.tolist() == [1, 2, 0] and union.tolist() == [1, 2, 0]


def test_update_class_discrepancy_first_sight_then_ema():
    d, seen = torch.zeros(3), torch.zeros(3, dtype=torch.bool)
    d, seen = update_class_discrepancy(d, seen, torch.tensor([1.0, 2.0, 0.0]), torch.tensor([2.0, 3.0, 0.0]), momentum=0.9)
    assert d.tolist() == pytest.approx([0.5, 1 / 3, 0.0]) and seen.tolist() == [True, True, False]
    d, seen = update_class_discrepancy(d, seen, torch.tensor([2.0, 0.0, 1.0]), torch.tensor([2.0, 0.0, 4.0]), momentum=0.9)
    assert d.tolist() == pytest.approx([0.45, 1 / 3, 0.75]) and seen.tolist() == [True, True, True]


def test_inconsistency_class_weights():
    d = torch.tensor([0.5, 0.25, 0.0])
    seen = torch.tensor([True, True, False])
    assert inconsistency_class_weights(d, seen, beta=1.0).tolist() == pytest.approx([7 / 6, 5 / 6, 1.0])
    assert inconsistency_class_weights(d, seen, beta=0.0).tolist() == [1.0, 1.0, 1.0]
    assert inconsistency_class_weights(d, torch.zeros(3, dtype=torch.bool)).tolist() == [1.0, 1.0, 1.0]


def test_feature_distance_on_thing_cells_only():
    features = torch.zeros(1, 1, 2, 2)
    reference = torch.tensor([[[[3.0, 5.0], [7.0, 11.0]]]])
    labels = torch.zeros(4, 4, dtype=torch.long)
    labels[:2, :2] = 11  # person fills the top-left cell
    labels[:2, 2:] = torch.tensor([[11, 11], [11, 0]])  # person covers 3/4 of the top-right cell
    labels[2:, :2] = torch.tensor([[11, 11], [0, 0]])  # 1/2: below the 0.75 ratio
    labels[2:, 2:] = 255
    value = feature_distance(features, reference, labels.unsqueeze(0), classes=(11,), scale_min_ratio=0.75)
    assert value.item() == pytest.approx((3.0 + 5.0) / 2)
    assert feature_distance(features, reference, labels.unsqueeze(0), classes=(13,)).item() == 0.0


def test_channel_distillation_loss_exact():
    """Per class, the map over positions is a distribution: teacher channel 0 = softmax([0, 2 ln 3] / 2) = (1/4, 3/4),
    channel 1 flat; the student is flat everywhere. KL = 1/4 ln(1/2) + 3/4 ln(3/2) for channel 0, 0 for channel 1;
    the loss is tau^2 = 4 times their mean."""
    teacher = torch.tensor([[0.0, 2 * math.log(3)], [5.0, 5.0]]).view(1, 2, 1, 2)
    student = torch.zeros(1, 2, 1, 2)
    expected = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    assert channel_distillation_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # a position outside `valid` counts in neither distribution, whatever its logits
    teacher3 = torch.cat([teacher, torch.tensor([9.0, -3.0]).view(1, 2, 1, 1)], dim=-1)
    student3 = torch.cat([student, torch.tensor([-7.0, 4.0]).view(1, 2, 1, 1)], dim=-1)
    valid = torch.tensor([[[True, True, False]]])
    assert channel_distillation_loss(student3, teacher3, 2.0, valid).item() == pytest.approx(expected, rel=1e-6)
    assert channel_distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    # every class weighs the same whatever its area: the mean over (images, classes), not over pixels
    two = channel_distillation_loss(torch.zeros(2, 2, 1, 2), torch.cat([teacher, teacher.flip(1)]), 2.0)
    assert two.item() == pytest.approx(expected, rel=1e-6)


def test_fuse_teacher_logits_weighted_mean_at_the_first_teachers_size():
    first = torch.full((1, 2, 2, 2), 4.0)
    second = torch.full((1, 2, 1, 1), -4.0)  # resized (bilinear) to 2x2: -4 everywhere
    fused = fuse_teacher_logits([first, second], weights=[3.0, 1.0])
    assert fused.shape == (1, 2, 2, 2) and torch.equal(fused, torch.full((1, 2, 2, 2), 2.0))  # 3/4 * 4 + 1/4 * -4
    one = torch.randn(1, 3, 2, 2, dtype=torch.bfloat16)
    assert torch.equal(fuse_teacher_logits([one]), one.float())
    with pytest.raises(ValueError, match="got 2 teachers but 1 teacher_weights"):
        fuse_teacher_logits([first, first], weights=[1.0])
