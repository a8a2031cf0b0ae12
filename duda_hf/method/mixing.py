"""ClassMix and strong augmentation (docs/method.md, step 2), as batched tensor ops on the training device.

Randomness comes from an explicit `torch.Generator`, so a step's mix is a function of (seed, step) and a
resumed run repeats it exactly. Parameter sampling and application are separate functions, so the
application is tested on exact values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch

from duda_hf.data.labels import NUM_CLASSES


def class_mix_masks(source_labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image ClassMix masks: half (rounded up) of the classes present in each source label map.

    Each image gives its present classes random keys and keeps the ceil(n/2) smallest, a uniform draw of
    that many classes. Batched, with no data-dependent shapes, so nothing waits for the device.

    Args:
        source_labels: `(B, H, W)` long trainIds with `IGNORE_INDEX` (any value outside 0..18 is never chosen).
        generator: random source; must live on `source_labels.device`.

    Returns:
        `(B, H, W)` float mask, 1 where the source pixel is pasted onto the target image.
    """
    batch = source_labels.shape[0]
    # every value outside the classes goes to an extra bin that is never chosen
    bins = torch.where((source_labels >= 0) & (source_labels < NUM_CLASSES), source_labels, NUM_CLASSES).view(batch, -1)
    present = torch.zeros(batch, NUM_CLASSES + 1, dtype=torch.bool, device=bins.device)
    present.scatter_(1, bins, True)
    present[:, NUM_CLASSES] = False
    keys = torch.rand(batch, NUM_CLASSES + 1, generator=generator, device=bins.device)
    keys = torch.where(present, keys, 2.0)  # absent classes sort last
    rank = keys.argsort(dim=1).argsort(dim=1)
    wanted = (present.sum(dim=1, keepdim=True) + 1) // 2
    chosen = present & (rank < wanted)
    return chosen.gather(1, bins).view(source_labels.shape).float()


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
    sigma_max: float | None = None  # host-side bound on `sigma`: the blur kernel size without reading the device


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
        sigma_max=float(blur_sigma[1]),
    )


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    # Python scalars, not a weight tensor copied from the host (which would wait for the device)
    return images[:, 0:1] * 0.299 + images[:, 1:2] * 0.587 + images[:, 2:3] * 0.114


def color_jitter(
    images: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in this fixed order, per image, clamped to [0, 1].

    As torchvision's `ColorJitter` (DAFormer's): brightness multiplies, contrast and saturation blend with the
    grey image's mean and the grey image. The hue shift is kornia's; the first three stay written out here because
    kornia's brightness adds instead of multiplying, and its mean- and grey-subtracting contrast and saturation
    differ from these in the last bit of float32 (about 1e-7), which would change every run's numbers.

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
    return kornia.enhance.adjust_hue(images, hue * (2 * math.pi)).clamp(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, sigma_max: float | None = None) -> torch.Tensor:
    """Per-image isotropic Gaussian blur with standard deviation `sigma` `(B,)`, reflecting at the borders
    (`kornia.filters.gaussian_blur2d`, separable, one normalised kernel per image).

    The kernel radius is ceil(3 * sigma_max); `sigma_max` defaults to `sigma.max()`, which reads the device: the
    training step passes its host-side bound instead, so the size of the kernel never waits for the device.
    """
    radius = max(1, math.ceil(3 * (float(sigma.max()) if sigma_max is None else sigma_max)))
    sigma = sigma.to(images.dtype).view(-1, 1).expand(-1, 2)
    return kornia.filters.gaussian_blur2d(images, (2 * radius + 1, 2 * radius + 1), sigma, border_type="reflect", separable=True)


def strong_augment(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply colour jitter then Gaussian blur to the images that drew them (`params.jitter`, `params.blur`).

    Args:
        images: `(B, 3, H, W)` RGB in [0, 1].
    """
    view = (-1, 1, 1, 1)
    # Both transforms run on the whole batch and are selected per image: no data-dependent branch, so no
    # host synchronisation (the cost is a few element-wise passes over the batch).
    jittered = color_jitter(images, params.brightness, params.contrast, params.saturation, params.hue)
    images = torch.where(params.jitter.view(view), jittered, images)
    blurred = gaussian_blur(images, params.sigma, params.sigma_max)
    return torch.where(params.blur.view(view), blurred, images)
