"""A trained network as a plain transformers model folder: config with Cityscapes labels, safetensors, image processor."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import (
    PreTrainedModel,
)

from duda_hf.data.labels import ID2LABEL, LABEL2ID
from duda_hf.networks.inputs import input_normalization


def export_network(model: PreTrainedModel, output_dir: str | os.PathLike, eval_size_hw: tuple[int, int] | None = None) -> Path:
    """Write `model` as a plain transformers model of its own class: config (Cityscapes labels), safetensors, and an
    image processor that resizes to a fixed size and normalises as the network was trained.

    The processor is a `SegformerImageProcessor` (resize, rescale, normalise; it serves any family in the
    `image-segmentation` pipeline), or a `MobileViTImageProcessor` for a network trained on BGR inputs; written
    through their PIL-backend classes, which need no torchvision and write the same file.

    Args:
        eval_size_hw: `(height, width)` the image processor resizes to (Cityscapes: 512, 1024); None keeps 512 x 512.
    """
    from transformers import MobileViTImageProcessorPil, SegformerImageProcessorPil

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = dict(LABEL2ID)
    model.save_pretrained(output_dir)
    height, width = eval_size_hw or (512, 512)
    mean, std, bgr = input_normalization(model)
    size = {"height": height, "width": width}
    if bgr:  # MobileViT's processor: no normalisation, channels flipped
        if (mean, std) != ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)):
            raise ValueError("a BGR network with mean/std normalisation has no transformers image processor to export it with")
        processor = MobileViTImageProcessorPil(size=size, do_center_crop=False, do_flip_channel_order=True, do_reduce_labels=False)
    else:
        processor = SegformerImageProcessorPil(size=size, image_mean=list(mean), image_std=list(std), do_reduce_labels=False)
    processor.save_pretrained(output_dir)
    return output_dir
