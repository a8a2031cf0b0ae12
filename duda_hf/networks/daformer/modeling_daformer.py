"""`DaformerForSemanticSegmentation`: transformers' MiT encoder (`SegformerModel`) with the DAFormer decode head.

The head follows lhoyer/DAFormer (`mmseg/models/decode_heads/daformer_head.py` with
`lhoyer/DAFormer/configs/_base_/models/daformer_sepaspp_mitb5.py`): each of the four encoder levels is embedded by a linear layer to
`decoder_hidden_size` channels and resized (bilinear, `align_corners=False`) to the first level's stride-4 grid; the
four are concatenated in level order (1, 2, 3, 4: SegFormer's head takes them the other way round) and fused by a
depthwise-separable ASPP without image pooling (a 1x1 conv-BN-ReLU for dilation 1; for each other dilation a
depthwise 3x3 conv-BN-ReLU then a pointwise conv-BN-ReLU) whose outputs, concatenated, pass a 3x3 conv-BN-ReLU
bottleneck; then `Dropout2d` and a 1x1 classifier. The module names are the original's (`embed_layers.N.proj`,
`fuse_layer.aspp_modules.N.{conv,bn}`, `...depthwise_conv`/`pointwise_conv`, `fuse_layer.bottleneck`), but
`conv_seg`, which is `classifier` here as in SegFormer.

Its outputs follow `SegformerForSemanticSegmentation`: logits at stride 4, `loss` with `labels` (the logits upsampled
to the labels, cross-entropy ignoring `semantic_loss_ignore_index`), and the encoder's four levels as
`hidden_states` when asked for.

With `hrda_scales` set (an imported HRDA or MIC(HRDA) network) it predicts as HRDA does at inference
(`lhoyer/HRDA`, `mmseg/models/segmentors/hrda_encoder_decoder.py` and `mmseg/models/decode_heads/hrda_head.py`): the
context image (the input at the smaller scale) through the encoder, the head and the scale attention (`scale_attention`,
the same head with a 1x1 fusion, a sigmoid on its output), the image at the detail scale in overlapping detail windows
through the encoder and the head, and the two fused (`hrda_fuse`). Its logits are at stride 4 of the detail image.

This file imports only torch and transformers (and its own config), so that a saved folder carries it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import SegformerModel, SegformerPreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_daformer import DaformerConfig


class DaformerConvModule(nn.Module):
    """mmcv's `ConvModule` with BatchNorm and ReLU: a convolution without bias, `bn`, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False)
        self.conv.daformer_init = "conv_module"
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv(hidden_states)))


class DaformerSeparableConvModule(nn.Module):
    """mmcv's `DepthwiseSeparableConvModule`: a depthwise 3x3 `ConvModule` (dilated), then a pointwise one."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__()
        self.depthwise_conv = DaformerConvModule(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels)
        self.pointwise_conv = DaformerConvModule(in_channels, out_channels, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(hidden_states))


class DaformerASPPFusion(nn.Module):
    """DAFormer's `ASPPWrapper` with `sep=True, pool=False`: the ASPP branches, concatenated, then the bottleneck."""

    def __init__(self, in_channels: int, channels: int, dilations: list[int]):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            DaformerConvModule(in_channels, channels, 1) if dilation == 1 else DaformerSeparableConvModule(in_channels, channels, dilation)
            for dilation in dilations
        )
        self.bottleneck = DaformerConvModule(len(dilations) * channels, channels, 3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(hidden_states) for branch in self.aspp_modules], dim=1))


class DaformerMLP(nn.Module):
    """The linear embedding of one encoder level (DAFormer's `MLP`): `(B, C, H, W)` -> `(B, decoder_hidden_size, H, W)`."""

    def __init__(self, input_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)
        self.proj.daformer_init = "linear"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = hidden_states.shape
        embedded = self.proj(hidden_states.flatten(2).transpose(1, 2))
        return embedded.transpose(1, 2).reshape(batch, -1, height, width)


class DaformerDecodeHead(nn.Module):
    """The DAFormer head; with `scale_attention`, HRDA's scale attention: the same head at `hrda_attention_width` with a
    1x1 conv-BN-ReLU fusion (HRDA's `fusion_cfg` type 'conv') and one output per class (or one)."""

    def __init__(self, config: DaformerConfig, scale_attention: bool = False):
        super().__init__()
        width = config.hrda_attention_width if scale_attention else config.decoder_hidden_size
        self.embed_layers = nn.ModuleList(DaformerMLP(size, width) for size in config.hidden_sizes)
        if scale_attention:
            self.fuse_layer = DaformerConvModule(width * len(config.hidden_sizes), width, 1)
        else:
            self.fuse_layer = DaformerASPPFusion(width * len(config.hidden_sizes), width, list(config.aspp_dilations))
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        outputs = config.num_labels if not scale_attention or config.hrda_attention_classwise else 1
        self.classifier = nn.Conv2d(width, outputs, kernel_size=1)
        self.classifier.daformer_init = "classifier"

    def forward(self, encoder_hidden_states) -> torch.Tensor:
        stride4_size = encoder_hidden_states[0].shape[2:]
        embedded = []
        for hidden_state, embed in zip(encoder_hidden_states, self.embed_layers):
            level = embed(hidden_state)
            if level.shape[2:] != stride4_size:
                level = F.interpolate(level, size=stride4_size, mode="bilinear", align_corners=False)
            embedded.append(level)
        fused = self.fuse_layer(torch.cat(embedded, dim=1))
        return self.classifier(self.dropout(fused))


def hrda_resize(images: torch.Tensor, scale: float) -> torch.Tensor:
    """HRDA's `resize(img, s)`: bilinear by `scale_factor` (mmseg's `resize`, `align_corners=False`), the image itself at 1."""
    return images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)


def hrda_fuse(context: torch.Tensor, attention: torch.Tensor, detail: torch.Tensor, factor: float) -> torch.Tensor:
    """HRDA's fusion (`HRDAHead.forward` without a crop): `up((1 - a) * context) + up(a) * detail`, where `a` is the
    scale attention (after its sigmoid) on the context grid and `up` resizes by `factor` = detail scale / context scale.

    Where that resize misses the detail grid by a cell (an image side that is not a multiple of 8, e.g. 540: HRDA
    itself fails there), `up` resizes to the detail grid's size instead."""

    def up(values: torch.Tensor) -> torch.Tensor:
        resized = hrda_resize(values, factor)
        if resized.shape[-2:] != detail.shape[-2:]:
            resized = F.interpolate(values, size=detail.shape[-2:], mode="bilinear", align_corners=False)
        return resized

    return up(attention) * detail + up((1 - attention) * context)


def hrda_fuse_crop(
    context: torch.Tensor, attention: torch.Tensor, detail: torch.Tensor, box: tuple[int, int, int, int], context_scale: float
) -> torch.Tensor:
    """HRDA's fusion in training (`HRDAHead.forward` with a crop box): the scale attention is zeroed outside the detail
    crop (on the context grid, whose stride is `4 / context_scale` detail pixels: HRDA's `os / lr_scale`), the detail
    crop's logits are inserted into zeros on the detail grid (stride 4), and `up(a) * inserted + up((1 - a) * context)`.

    Args:
        box: the detail crop `(y1, y2, x1, x2)` in pixels of the detail (full-resolution) image, each divisible by
            `4 / context_scale` (HRDA: 8) so that the grids align.
    """
    stride = 4 / context_scale
    y1, y2, x1, x2 = (int(v / stride) for v in box)
    mask = context.new_zeros((context.shape[0], 1, *context.shape[2:]))
    mask[:, :, y1:y2, x1:x2] = 1
    factor = 1 / context_scale
    # the detail grid: the context grid resized by `factor` (`F.interpolate`'s size for a scale factor: floor)
    inserted = context.new_zeros((*context.shape[:2], *(math.floor(side * factor) for side in context.shape[2:])))
    y1, y2, x1, x2 = (int(v / 4) for v in box)
    inserted[:, :, y1:y2, x1:x2] = detail
    return hrda_fuse(context, attention * mask, inserted, factor)


def hrda_windows(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """The `(start, end)` of HRDA's detail windows along one side (`extract_slide_feat`: the last window flush with the
    end; a side shorter than the crop is one window)."""
    grids = max(size - crop + stride - 1, 0) // stride + 1
    windows = []
    for index in range(grids):
        end = min(index * stride + crop, size)
        windows.append((max(end - crop, 0), end))
    return windows


@dataclass
class DaformerSegmenterOutput(SemanticSegmenterOutput):
    """`SemanticSegmenterOutput` with, in HRDA's training forward, the detail crop's own logits (`detail_logits`)."""

    detail_logits: torch.FloatTensor | None = None


class DaformerPreTrainedModel(SegformerPreTrainedModel):
    config_class = DaformerConfig
    base_model_prefix = "segformer"

    def _init_weights(self, module: nn.Module) -> None:
        """The encoder as SegFormer's; the head as DAFormer's (mmcv): each `ConvModule`'s convolution Kaiming-normal
        (fan out, ReLU), its BatchNorm 1 and 0, the classifier normal with std 0.01 and bias 0, the linear embeddings
        PyTorch's default."""
        from transformers import initialization as init

        kind = getattr(module, "daformer_init", None)  # set on the head's layers where they are built
        if kind == "conv_module":
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif kind == "linear":
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)
        elif kind == "classifier":
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class DaformerForSemanticSegmentation(DaformerPreTrainedModel):
    """A MiT encoder (transformers' `SegformerModel`) with the DAFormer decode head; see the module's docstring."""

    def __init__(self, config: DaformerConfig):
        super().__init__(config)
        self.segformer = SegformerModel(config)
        # The original MiT's blocks and stages normalise with eps 1e-6 (`layer_norm_eps`); transformers' SegformerModel
        # builds them with PyTorch's 1e-5 whatever the config says. Its patch embeddings' and key/value reduction's
        # LayerNorms are 1e-5 in the original too.
        for name, module in self.segformer.named_modules():
            if isinstance(module, nn.LayerNorm) and "patch_embeddings" not in name and "attention" not in name:
                module.eps = config.layer_norm_eps
        self.decode_head = DaformerDecodeHead(config)
        self.scale_attention = DaformerDecodeHead(config, scale_attention=True) if config.hrda_scales else None
        self.post_init()

    def _hrda_context(self, pixel_values: torch.Tensor, context_scale: float, **kwargs):
        """The context image (`pixel_values` at `context_scale`) through the encoder, the head and the scale attention
        (a sigmoid on its output): `(logits, attention, the encoder's four levels)`."""
        context = self.segformer(hrda_resize(pixel_values, context_scale), output_hidden_states=True, **kwargs)
        attention = torch.sigmoid(self.scale_attention(context.hidden_states))
        return self.decode_head(context.hidden_states), attention, context.hidden_states

    def _hrda_train_logits(self, pixel_values: torch.Tensor, box: tuple[int, int, int, int], **kwargs):
        """HRDA's training forward (`HRDAEncoderDecoder._forward_train_features` and `HRDAHead.forward` with the crop
        box): the context image and the detail crop `box` of the full-resolution image through the encoder and the
        head, fused by `hrda_fuse_crop`: `(fused logits, the detail crop's logits, the context's four levels)`."""
        context_scale = min(self.config.hrda_scales)
        context_logits, attention, hidden_states = self._hrda_context(pixel_values, context_scale, **kwargs)
        y1, y2, x1, x2 = box
        detail = self.segformer(pixel_values[:, :, y1:y2, x1:x2], output_hidden_states=True).hidden_states
        detail_logits = self.decode_head(detail)
        return hrda_fuse_crop(context_logits, attention, detail_logits, box, context_scale), detail_logits, hidden_states

    def _hrda_logits(self, pixel_values: torch.Tensor, **kwargs) -> tuple[torch.Tensor, tuple]:
        """HRDA's inference (`HRDAEncoderDecoder.encode_decode` with `hr_slide_inference`): the context image through
        the encoder, the head and the scale attention; the detail image in overlapping detail windows, all in one
        batch, their logits averaged where they overlap (`HRDAHead.decode_hr`); then `hrda_fuse`. Logits at stride 4
        of the detail image; the context image's four levels as hidden states."""
        context_scale, detail_scale = sorted(self.config.hrda_scales)
        context_logits, attention, hidden_states = self._hrda_context(pixel_values, context_scale, **kwargs)
        image = hrda_resize(pixel_values, detail_scale)
        batch, _, height, width = image.shape
        crop_h, crop_w = self.config.hrda_detail_crop
        stride_h, stride_w = (crop_h // 2, crop_w // 2) if self.config.hrda_slide_overlapping else (crop_h, crop_w)
        boxes = [(y, x) for y in hrda_windows(height, crop_h, stride_h) for x in hrda_windows(width, crop_w, stride_w)]
        crops = torch.cat([image[:, :, y1:y2, x1:x2] for (y1, y2), (x1, x2) in boxes])
        crop_logits = self.decode_head(self.segformer(crops, output_hidden_states=True).hidden_states)
        boxes = [tuple(int(v / 4) for v in (y1, y2, x1, x2)) for (y1, y2), (x1, x2) in boxes]  # `scale_box` by the stride
        out_h, out_w = max(box[1] for box in boxes), max(box[3] for box in boxes)
        # averaged in fp32 whatever the autocast (HRDA's `torch.zeros`)
        summed = crop_logits.new_zeros((batch, crop_logits.shape[1], out_h, out_w), dtype=torch.float32)
        count = crop_logits.new_zeros((batch, 1, out_h, out_w), dtype=torch.float32)
        for index, (y1, y2, x1, x2) in enumerate(boxes):
            summed += F.pad(crop_logits[index * batch : (index + 1) * batch].float(), (x1, out_w - x2, y1, out_h - y2))
            count[:, :, y1:y2, x1:x2] += 1
        detail_logits = summed / count
        return hrda_fuse(context_logits, attention, detail_logits, detail_scale / context_scale), hidden_states

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        hrda_detail_box: tuple[int, int, int, int] | None = None,
        **kwargs,
    ) -> DaformerSegmenterOutput | tuple:
        """`hrda_detail_box` (an HRDA network in training): the detail crop `(y1, y2, x1, x2)` of HRDA's training
        forward; the output then also holds the crop's own logits as `detail_logits` (HRDA's detail loss)."""
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        if output_attentions is None:
            output_attentions = bool(getattr(self.config, "output_attentions", False))
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        if output_attentions:
            kwargs["output_attentions"] = True
        detail_logits = None
        if hrda_detail_box is not None:
            if self.scale_attention is None:
                raise ValueError("hrda_detail_box is for an HRDA network (hrda_scales set in its config)")
            logits, detail_logits, hidden_states = self._hrda_train_logits(pixel_values, tuple(hrda_detail_box), **kwargs)
            attentions = None
        elif self.scale_attention is not None:
            logits, hidden_states = self._hrda_logits(pixel_values, **kwargs)
            attentions = None
        else:
            outputs = self.segformer(pixel_values, output_hidden_states=True, **kwargs)
            logits, hidden_states, attentions = (
                self.decode_head(outputs.hidden_states),
                outputs.hidden_states,
                getattr(outputs, "attentions", None),
            )
        loss = None
        if labels is not None:
            if self.config.num_labels < 2:  # SegFormer's binary (one-label) loss is not provided
                raise ValueError(f"the DAFormer head's loss needs at least 2 labels, not {self.config.num_labels}")
            upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(upsampled, labels, ignore_index=self.config.semantic_loss_ignore_index)
        output = DaformerSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=attentions,
            detail_logits=detail_logits,
        )
        if not return_dict:
            return output.to_tuple()
        return output


__all__ = ["DaformerForSemanticSegmentation", "DaformerPreTrainedModel", "DaformerSegmenterOutput"]
