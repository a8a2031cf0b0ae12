"""The DAFormer head as a transformers architecture (model type `daformer`): `DaformerConfig`,
`DaformerForSemanticSegmentation`, and their registration with transformers' Auto classes.

Importing `duda_hf` registers them (see `duda_hf.networks.registration`), and so does importing this package.
"""

from __future__ import annotations

from .configuration_daformer import DaformerConfig


def register_config() -> None:
    """`AutoConfig` knows the `daformer` model type; a saved config names its code (`auto_map`). No torch needed."""
    from transformers import AutoConfig

    AutoConfig.register(DaformerConfig.model_type, DaformerConfig, exist_ok=True)
    DaformerConfig.register_for_auto_class()


def register() -> None:
    """`register_config`, and `AutoModelForSemanticSegmentation` (so `pipeline("image-segmentation")`) builds
    `DaformerForSemanticSegmentation`; a saved folder carries both code files for `trust_remote_code=True`."""
    from transformers import AutoModelForSemanticSegmentation

    from .modeling_daformer import DaformerForSemanticSegmentation

    register_config()
    AutoModelForSemanticSegmentation.register(DaformerConfig, DaformerForSemanticSegmentation, exist_ok=True)
    DaformerForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")


register()

__all__ = ["DaformerConfig", "register", "register_config"]
