"""Networks by preset name: MiT sizes (mit-b0..mit-b5), the CPU sizes (tiny, tiny-wide), each with SegFormer's head or
DAFormer's (`-daformer`), two other families, and UperNet on DINOv2, with 19 Cityscapes labels (no download)."""

from __future__ import annotations

from transformers import (
    Dinov2Config,
    MobileNetV2Config,
    MobileViTV2Config,
    PretrainedConfig,
    SegformerConfig,
    UperNetConfig,
)

from duda_hf.data.labels import ID2LABEL, LABEL2ID, NUM_CLASSES
from duda_hf.networks.daformer import DaformerConfig

# MiT encoder sizes (Xie et al., 2021; the nvidia/mit-bN configs). Decoder width: 256 for b0/b1, 768 above.
MIT_SIZES = {
    "mit-b0": ([2, 2, 2, 2], [32, 64, 160, 256], 256),
    "mit-b1": ([2, 2, 2, 2], [64, 128, 320, 512], 256),
    "mit-b2": ([3, 4, 6, 3], [64, 128, 320, 512], 768),
    "mit-b3": ([3, 4, 18, 3], [64, 128, 320, 512], 768),
    "mit-b4": ([3, 8, 27, 3], [64, 128, 320, 512], 768),
    "mit-b5": ([3, 6, 40, 3], [64, 128, 320, 512], 768),
}


# Test and CPU sizes (random init only): an 8-64 student and a 16-128 large network. Trained from scratch on the
# synthetic benchmark the larger one is not stronger (docs/reproducibility.md, "The teacher premise").
SMALL_SIZES = {
    "tiny": ([1, 1, 1, 1], [8, 16, 32, 64], 32),
    "tiny-wide": ([1, 1, 1, 1], [16, 32, 64, 128], 64),
}


# Small random-init presets of two other families, for tests and the CPU benchmark: a MobileNetV2 with a
# DeepLabV3 head (output stride 8) and a MobileViTV2 (output stride 8, a narrow ASPP).
OTHER_FAMILY_PRESETS = {
    "mobilenetv2-deeplabv3-tiny": lambda: MobileNetV2Config(
        depth_multiplier=0.25, output_stride=8, image_size=128, classifier_dropout_prob=0.1, tf_padding=False
    ),
    "mobilevitv2-tiny": lambda: MobileViTV2Config(width_multiplier=0.5, output_stride=8, aspp_out_channels=64, image_size=128),
}


# Vision foundation model networks (issue 32; VFM-UDA's teachers): transformers' UperNet head on a DINOv2 ViT backbone.
# Sizes of the facebook/dinov2-* checkpoints: (hidden size, layers, heads, the 1-based layers UperNet reads, as Depth
# Anything reads DINOv2: 0-based [2, 5, 8, 11] for small and base, [4, 11, 17, 23] for large). `--init imagenet` loads the backbone from `facebook/<size>`
# (self-supervised on LVD-142M; the flag's name is the MiT presets'), the UperNet head is new. `dinov2-upernet-tiny` is a
# random CPU size for tests and the synthetic benchmark.
DINOV2_SIZES = {
    "dinov2-small": (384, 12, 6, (3, 6, 9, 12)),
    "dinov2-base": (768, 12, 12, (3, 6, 9, 12)),
    "dinov2-large": (1024, 24, 16, (5, 12, 18, 24)),
}
UPERNET_SUFFIX = "-upernet"
DINOV2_PRESETS = (*(f"{size}{UPERNET_SUFFIX}" for size in DINOV2_SIZES), "dinov2-upernet-tiny")
UPERNET_WIDTH = 512  # mmseg's UperNet channels


def dinov2_repo(name: str) -> str | None:
    """The Hub checkpoint a DINOv2 preset's backbone starts from with `--init imagenet` (None: always random)."""
    size = name.removesuffix(UPERNET_SUFFIX)
    return f"facebook/{size}" if size in DINOV2_SIZES else None


def _dinov2_upernet_config(name: str) -> UperNetConfig:
    if name == "dinov2-upernet-tiny":
        hidden, layers, heads, stages, width = 32, 4, 2, (1, 2, 3, 4), 32
    else:
        (hidden, layers, heads, stages), width = DINOV2_SIZES[name.removesuffix(UPERNET_SUFFIX)], UPERNET_WIDTH
    backbone = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        patch_size=14,
        image_size=518,
        out_features=[f"stage{i}" for i in stages],
        reshape_hidden_states=True,
        use_mask_token=False,  # masked-image pretraining only: a parameter segmentation never uses (DDP would wait for it)
    )
    # no auxiliary FCN head: its loss needs labels, so in duda-hf's step it would only cost compute (and stall DDP)
    return UperNetConfig(backbone_config=backbone, hidden_size=width, use_auxiliary_head=False)


# The same encoders with the DAFormer decode head (`networks.daformer`): `mit-b5-daformer` is DUDA's (and DAFormer's,
# HRDA's, MIC's) large network. Decoder width: DAFormer's 256 for every MiT size; the small sizes keep theirs.
DAFORMER_SUFFIX = "-daformer"
DAFORMER_PRESETS = tuple(f"{name}{DAFORMER_SUFFIX}" for name in (*MIT_SIZES, *SMALL_SIZES))
DAFORMER_DECODER_WIDTH = 256


MODEL_PRESETS = tuple(MIT_SIZES) + tuple(SMALL_SIZES) + DAFORMER_PRESETS + tuple(OTHER_FAMILY_PRESETS) + DINOV2_PRESETS


def mit_encoder(name: str) -> str | None:
    """The ImageNet MiT size (`mit-b0`..`mit-b5`) a preset's encoder starts from with `--init imagenet`, or None
    (a small preset, another family, or not a preset)."""
    encoder = name.removesuffix(DAFORMER_SUFFIX)
    return encoder if encoder in MIT_SIZES else None


def random_only(name: str) -> bool:
    """A preset that is always built from scratch, whatever `--init` says (the small sizes, with either head)."""
    return name.removesuffix(DAFORMER_SUFFIX) in SMALL_SIZES


def preset_config(name: str) -> PretrainedConfig:
    """The config of a preset name with 19 Cityscapes labels (no download)."""
    if name in OTHER_FAMILY_PRESETS or name in DINOV2_PRESETS:
        config = OTHER_FAMILY_PRESETS[name]() if name in OTHER_FAMILY_PRESETS else _dinov2_upernet_config(name)
        config.num_labels, config.id2label, config.label2id = NUM_CLASSES, dict(ID2LABEL), dict(LABEL2ID)
        return config
    daformer = name.endswith(DAFORMER_SUFFIX)
    encoder = name.removesuffix(DAFORMER_SUFFIX)
    depths, hidden_sizes, decoder = {**MIT_SIZES, **SMALL_SIZES}[encoder]
    heads = [1, 2, 5, 8] if encoder.startswith("mit") else [1, 1, 2, 4]
    if daformer and encoder in MIT_SIZES:
        decoder = DAFORMER_DECODER_WIDTH
    return (DaformerConfig if daformer else SegformerConfig)(
        depths=depths,
        hidden_sizes=hidden_sizes,
        decoder_hidden_size=decoder,
        num_attention_heads=heads,
        num_labels=NUM_CLASSES,
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
    )
