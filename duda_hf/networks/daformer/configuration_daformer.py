"""The config of `DaformerForSemanticSegmentation`: SegFormer's MiT encoder fields and DAFormer's decoder.

This file and `modeling_daformer.py` import only transformers and torch: a saved or pushed model folder carries them
(`auto_map`), so `AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)` loads it where
duda_hf is not installed.
"""

from __future__ import annotations

from transformers import SegformerConfig


class DaformerConfig(SegformerConfig):
    r"""A MiT encoder (every `SegformerConfig` field) with the DAFormer decode head (Hoyer et al., CVPR 2022;
    `lhoyer/DAFormer/configs/_base_/models/daformer_sepaspp_mitb5.py`).

    Differences from `SegformerConfig`'s defaults, all as in DAFormer:
        decoder_hidden_size (`int`, defaults to 256): the width of each level's embedding and of the fused features
            (DAFormer's `embed_dims` and `channels`).
        aspp_dilations (`list[int]`, defaults to `[1, 6, 12, 18]`): the dilations of the depthwise-separable ASPP that
            fuses the four levels (dilation 1 is a 1x1 convolution; no image pooling branch).
        layer_norm_eps (`float`, defaults to 1e-6): the epsilon of the MiT blocks' and stages' LayerNorms (the original
            MiT's; the patch embeddings' and the key/value reduction's LayerNorms keep PyTorch's 1e-5, as there).
        classifier_dropout_prob (`float`, defaults to 0.1): `Dropout2d` before the classifier.
    """

    model_type = "daformer"

    aspp_dilations: list[int] | tuple[int, ...] = (1, 6, 12, 18)
    decoder_hidden_size: int = 256
    layer_norm_eps: float = 1e-6
    classifier_dropout_prob: float | int = 0.1


__all__ = ["DaformerConfig"]
