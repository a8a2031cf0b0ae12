"""A network's input normalisation: ImageNet's by default, or its own image processor's kept in its config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def input_multiple(network: nn.Module) -> int:
    """The side an input of `network` must be a multiple of: the patch size of a ViT backbone (DINOv2's 14 in UperNet,
    whose patch embedding drops the pixels past the last whole patch), 1 for any other network."""
    backbone = getattr(getattr(network, "config", None), "backbone_config", None)
    return int(getattr(backbone, "patch_size", None) or 1)


def run_network(network: nn.Module, pixel_values: torch.Tensor, **kwargs):
    """`network(pixel_values=..., **kwargs)` on inputs of any size: for a network whose inputs must be a multiple of
    `input_multiple` (a ViT backbone's patch size) the normalised inputs are padded at the bottom and right with zeros
    (the mean colour) to the next multiple, and the logits cropped back to the share of them the inputs cover, so the
    logits keep the output stride of the network on the inputs' own grid (UperNet: the input size)."""
    multiple = input_multiple(network)
    height, width = pixel_values.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return network(pixel_values=pixel_values, **kwargs)
    outputs = network(pixel_values=F.pad(pixel_values, (0, pad_w, 0, pad_h)), **kwargs)
    logits_h, logits_w = outputs.logits.shape[-2:]
    outputs.logits = outputs.logits[..., : round(height * logits_h / (height + pad_h)), : round(width * logits_w / (width + pad_w))]
    return outputs
