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

    HRDA (Hoyer et al., ECCV 2022; `lhoyer/HRDA`, `HRDAEncoderDecoder` and `HRDAHead`), off unless `hrda_scales` is set:
        hrda_scales (`list[float]`, defaults to None): the context and detail scales (HRDA: `[0.5, 1.0]`); set, the
            network predicts HRDA's fused multi-resolution output and has a `scale_attention` head.
        hrda_detail_crop (`list[int]`, defaults to `[512, 512]`): the detail crop (height, width) at the detail scale,
            slid over the image at inference with half its size as stride (`hrda_slide_overlapping`).
        hrda_slide_overlapping (`bool`, defaults to True): the detail windows' stride is half their size (else their size).
        hrda_attention_classwise (`bool`, defaults to True): one attention map per class (else one for all).
        hrda_attention_width (`int`, defaults to 256): the scale attention head's width (HRDA's `attention_embed_dim`).
    """

    model_type = "daformer"

    aspp_dilations: list[int] | tuple[int, ...] = (1, 6, 12, 18)
    decoder_hidden_size: int = 256
    layer_norm_eps: float = 1e-6
    classifier_dropout_prob: float | int = 0.1
    hrda_scales: list[float] | None = None
    hrda_detail_crop: list[int] | tuple[int, ...] = (512, 512)
    hrda_slide_overlapping: bool = True
    hrda_attention_classwise: bool = True
    hrda_attention_width: int = 256


__all__ = ["DaformerConfig"]
