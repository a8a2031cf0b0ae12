"""MIC's masked images (Hoyer et al., CVPR 2023; lhoyer/MIC, `seg/mmseg/models/utils/masking_transforms.py`).

`BlockMaskGenerator` draws one uniform number per `block x block` cell of a `round(H / block) x round(W / block)`
grid, keeps a cell where its draw is above the mask ratio, resizes the grid to the image (nearest) and multiplies the
normalised image by it: a masked pixel becomes 0 after normalisation, the normalisation's mean colour. Here images
are RGB in [0, 1] and each network normalises its own input, so a masked pixel is set to that network's mean colour
(`mask_images`), which it normalises to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def block_mask_from_draws(draws: torch.Tensor, size: tuple[int, int], ratio: float) -> torch.Tensor:
    """MIC's mask from its draws: `(B, 1, h, w)` uniform numbers, one per block -> `(B, 1, H, W)` float, 1 where the
    image is kept (the block's draw is above `ratio`), 0 where it is masked."""
    keep = (draws > ratio).to(draws.dtype)
    return F.interpolate(keep, size=size, mode="nearest")


def block_mask(
    batch: int, size: tuple[int, int], block: int, ratio: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """A block mask for `batch` images of `size` (H, W): `round(H / block) x round(W / block)` draws (Python's
    rounding, as MIC's), from `generator`."""
    height, width = size
    grid = (batch, 1, max(1, round(height / block)), max(1, round(width / block)))
    return block_mask_from_draws(torch.rand(grid, generator=generator, device=device), size, ratio)


def mask_images(images: torch.Tensor, mask: torch.Tensor, fill: tuple[float, float, float]) -> torch.Tensor:
    """`images` `(B, 3, H, W)` RGB in [0, 1] where `mask` is 1, the colour `fill` (RGB, Python scalars: nothing is
    copied from the host) where it is 0."""
    return torch.cat([images[:, c : c + 1] * mask + value * (1 - mask) for c, value in enumerate(fill)], dim=1)
