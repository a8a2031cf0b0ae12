"""A network's input normalisation: ImageNet's by default, or its own image processor's kept in its config."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


# A network's input normalisation, kept in its config when it is not ImageNet's mean and std in RGB order (a network
# loaded with its own image processor, e.g. MobileViT's unnormalised BGR); checkpoints and exports carry it.
INPUT_NORMALIZATION_KEY = "duda_input_normalization"


def input_normalization(network: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """`(mean, std, bgr)` a network's inputs are normalised with: ImageNet's in RGB order unless its config says."""
    spec = getattr(getattr(network, "config", None), INPUT_NORMALIZATION_KEY, None)
    if not spec:
        return IMAGENET_MEAN, IMAGENET_STD, False
    return tuple(spec["mean"]), tuple(spec["std"]), bool(spec["bgr"])


def network_inputs(images: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """`(B, 3, H, W)` RGB in [0, 1] normalised the way `network` expects (`input_normalization`)."""
    mean, std, bgr = input_normalization(network)
    inputs = normalize_images(images, mean, std)
    return inputs.flip(1) if bgr else inputs


def normalize_images(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalisation of `(B, 3, H, W)` RGB in [0, 1]: ImageNet statistics (the exported image processor's) by default.

    Per channel with Python scalars: no statistics tensor is copied from the host, which on an accelerator
    would wait for every queued kernel.
    """
    return torch.cat([(images[:, c : c + 1] - m) / s for c, (m, s) in enumerate(zip(mean, std))], dim=1)


class InputCache:
    """One batch normalised for each network that reads it, computed once per distinct normalisation."""

    def __init__(self, images: torch.Tensor):
        self.images, self.normalized = images, {}

    def __call__(self, network: nn.Module) -> torch.Tensor:
        key = input_normalization(network)
        if key not in self.normalized:
            self.normalized[key] = network_inputs(self.images, network)
        return self.normalized[key]
