"""Exact-value tests of ClassMix and the strong augmentation."""

import math

import pytest
import torch

from duda_hf.method.mixing import AugmentParams, class_mix_masks, color_jitter, gaussian_blur, mix, sample_augment_params, strong_augment


def test_class_mix_masks_pick_half_of_each_images_classes():
    labels = torch.tensor(
        [
            [[0, 0, 1, 1], [2, 2, 255, 255]],  # 3 classes -> 2 chosen
            [[5, 5, 5, 5], [7, 7, 7, 7]],  # 2 classes -> 1 chosen
        ]
    )
    masks = class_mix_masks(labels, torch.Generator().manual_seed(0))
    assert masks.dtype == torch.float32 and masks.shape == labels.shape
    for label, mask in zip(labels, masks):
        chosen = set(label[mask.bool()].tolist())
        present = set(label.unique().tolist()) - {255}
        assert len(chosen) == math.ceil(len(present) / 2) and chosen <= present
        # whole classes: every pixel of a chosen class is in the mask
        assert torch.equal(mask.bool(), torch.isin(label, torch.tensor(sorted(chosen))))
    again = class_mix_masks(labels, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_class_mix_masks_differ_per_image_and_skip_empty():
    labels = torch.tensor([[[0, 1]], [[0, 1]], [[255, 255]]])
    seen = set()
    for seed in range(20):
        masks = class_mix_masks(labels, torch.Generator().manual_seed(seed))
        seen.add(tuple(masks[0].flatten().tolist()) + tuple(masks[1].flatten().tolist()))
        assert masks[2].sum() == 0
    assert len(seen) > 2  # images draw their classes independently


def test_mix_images_and_labels():
    mask = torch.tensor([[[1.0, 0.0]]])
    source = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]]])
    target = torch.zeros_like(source)
    assert mix(mask, source, target).tolist() == [[[[1.0, 0.0]], [[3.0, 0.0]], [[5.0, 0.0]]]]
    mixed = mix(mask, torch.tensor([[[4, 4]]]), torch.tensor([[[9, 9]]]))
    assert mixed.tolist() == [[[4, 9]]] and mixed.dtype == torch.int64


def one(value):
    return torch.tensor([value])


def test_color_jitter_exact_values():
    gray = torch.full((1, 3, 2, 2), 0.8)
    assert torch.allclose(color_jitter(gray, one(0.5), one(1.0), one(1.0), one(0.0)), torch.full_like(gray, 0.4), atol=1e-6)
    image = torch.tensor([[[[0.2, 0.6]], [[0.2, 0.6]], [[0.2, 0.6]]]])
    flat = color_jitter(image, one(1.0), one(0.0), one(1.0), one(0.0))
    assert torch.allclose(flat, torch.full_like(image, 0.4), atol=1e-6)  # contrast 0: the mean gray
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    desaturated = color_jitter(red, one(1.0), one(1.0), one(0.0), one(0.0))
    assert torch.allclose(desaturated.flatten(), torch.full((3,), 0.299), atol=1e-6)
    cyan = color_jitter(red, one(1.0), one(1.0), one(1.0), one(0.5))
    assert torch.allclose(cyan.flatten(), torch.tensor([0.0, 1.0, 1.0]), atol=1e-5)


def test_color_jitter_identity():
    image = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    ones, zeros = torch.ones(2), torch.zeros(2)
    assert torch.allclose(color_jitter(image, ones, ones, ones, zeros), image, atol=1e-5)


def test_gaussian_blur_kernel_and_constant():
    sigma = 1.0
    delta = torch.zeros(1, 3, 9, 9)
    delta[..., 4, 4] = 1.0
    blurred = gaussian_blur(delta, torch.tensor([sigma]))
    taps = torch.exp(-(torch.arange(-3, 4, dtype=torch.float32) ** 2) / (2 * sigma**2))
    peak = (1 / taps.sum()) ** 2
    assert blurred[0, 0, 4, 4].item() == pytest.approx(peak.item(), rel=1e-5)
    assert blurred.sum().item() == pytest.approx(3.0, rel=1e-5)
    constant = torch.full((2, 3, 6, 6), 0.3)
    assert torch.allclose(gaussian_blur(constant, torch.tensor([0.5, 1.15])), constant, atol=1e-6)


def test_strong_augment_applies_only_where_drawn():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    params = AugmentParams(
        jitter=torch.tensor([True, False]),
        brightness=torch.tensor([0.5, 0.5]),
        contrast=torch.ones(2),
        saturation=torch.ones(2),
        hue=torch.zeros(2),
        blur=torch.tensor([False, False]),
        sigma=torch.ones(2),
    )
    out = strong_augment(images, params)
    assert torch.allclose(out[0], images[0] * 0.5, atol=1e-5)
    assert torch.equal(out[1], images[1])


def test_sample_augment_params_ranges_and_determinism():
    params = sample_augment_params(1000, torch.Generator().manual_seed(3), jitter_strength=0.2, jitter_p=0.8, blur_p=0.5)
    for name in ("brightness", "contrast", "saturation"):
        values = getattr(params, name)
        assert values.min() >= 0.8 and values.max() <= 1.2
    assert params.hue.abs().max() <= 0.2
    assert params.sigma.min() >= 0.15 and params.sigma.max() <= 1.15
    assert 0.74 < params.jitter.float().mean() < 0.86 and 0.44 < params.blur.float().mean() < 0.56
    again = sample_augment_params(1000, torch.Generator().manual_seed(3))
    assert torch.equal(params.sigma, again.sigma) and torch.equal(params.jitter, again.jitter)
