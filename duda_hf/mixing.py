"""ClassMix and strong augmentation (METHOD.md step 2), as batched tensor ops on the training device.

Randomness comes from an explicit `torch.Generator`, so a step's mix is a function of (seed, step) and a
resumed run repeats it exactly. Parameter sampling and application are separate functions, so the
application is tested on exact values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch

from .data.labels import IGNORE_INDEX


def class_mix_masks(source_labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image ClassMix masks: half (rounded up) of the classes present in each source label map.

    Args:
        source_labels: `(B, H, W)` long trainIds with `IGNORE_INDEX`.
        generator: random source; must live on `source_labels.device`.

    Returns:
        `(B, H, W)` float mask, 1 where the source pixel is pasted onto the target image.
    """
    masks = torch.zeros(source_labels.shape, dtype=torch.float32, device=source_labels.device)
    for i, labels in enumerate(source_labels):
        classes = torch.unique(labels)
        classes = classes[classes != IGNORE_INDEX]
        if classes.numel() == 0:
            continue
        order = torch.randperm(classes.numel(), generator=generator, device=classes.device)
        chosen = classes[order[: math.ceil(classes.numel() / 2)]]
        masks[i] = torch.isin(labels, chosen).float()
    return masks


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`mask * source + (1 - mask) * target`, broadcasting a `(B, H, W)` mask over channels.

    Integer inputs (label maps) stay integer: the mask is binary, so `torch.where` is exact.
    """
    if source.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask.bool(), source, target)


@dataclass
class AugmentParams:
    """Per-image parameters of the strong augmentation, each a `(B,)` tensor.

    `jitter`/`blur` say whether that transform applies to the image; factors of 1 (hue 0) are identities.
    """

    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor


def sample_augment_params(
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    jitter_strength: float = 0.2,
    jitter_p: float = 0.8,
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.15, 1.15),
) -> AugmentParams:
    """Draw the colour-jitter and blur parameters for a batch (torchvision ColorJitter ranges)."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch_size, generator=generator, device=device)

    s = jitter_strength
    return AugmentParams(
        jitter=torch.rand(batch_size, generator=generator, device=device) < jitter_p,
        brightness=uniform(max(0.0, 1 - s), 1 + s),
        contrast=uniform(max(0.0, 1 - s), 1 + s),
        saturation=uniform(max(0.0, 1 - s), 1 + s),
        hue=uniform(-min(s, 0.5), min(s, 0.5)),
        blur=torch.rand(batch_size, generator=generator, device=device) < blur_p,
        sigma=uniform(*blur_sigma),
    )


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def color_jitter(
    images: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in this fixed order, per image, clamped to [0, 1].

    Args:
        images: `(B, 3, H, W)` RGB in [0, 1].
        brightness, contrast, saturation: `(B,)` multiplicative factors (1 = identity).
        hue: `(B,)` shift as a fraction of the colour wheel in [-0.5, 0.5] (0 = identity).
    """
    view = (-1, 1, 1, 1)
    images = (images * brightness.view(view)).clamp(0, 1)
    mean = _grayscale(images).mean(dim=(2, 3), keepdim=True)
    images = (mean + (images - mean) * contrast.view(view)).clamp(0, 1)
    gray = _grayscale(images)
    images = (gray + (images - gray) * saturation.view(view)).clamp(0, 1)
    hsv = kornia.color.rgb_to_hsv(images)
    shifted_h = torch.remainder(hsv[:, :1] + hue.view(view) * 2 * math.pi, 2 * math.pi)
    return kornia.color.hsv_to_rgb(torch.cat([shifted_h, hsv[:, 1:]], dim=1)).clamp(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image isotropic Gaussian blur with standard deviation `sigma` `(B,)`; kernel radius ceil(3 * max sigma)."""
    radius = max(1, math.ceil(3 * float(sigma.max())))
    sigma_xy = sigma.view(-1, 1).expand(-1, 2).to(images.dtype)
    return kornia.filters.gaussian_blur2d(images, (2 * radius + 1, 2 * radius + 1), sigma_xy, border_type="reflect")


def strong_augment(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply colour jitter then Gaussian blur to the images that drew them (`params.jitter`, `params.blur`).

    Args:
        images: `(B, 3, H, W)` RGB in [0, 1].
    """
    view = (-1, 1, 1, 1)
    if bool(params.jitter.any()):
        jittered = color_jitter(images, params.brightness, params.contrast, params.saturation, params.hue)
        images = torch.where(params.jitter.view(view), jittered, images)
    if bool(params.blur.any()):
        blurred = gaussian_blur(images, params.sigma)
        images = torch.where(params.blur.view(view), blurred, images)
    return images
