"""The DAFormer head as a transformers architecture (model type `daformer`): `DaformerConfig`,
`DaformerForSemanticSegmentation`, and their registration with transformers' Auto classes.

Importing `duda_hf` registers them (see `duda_hf.networks.registration`), and so does importing this package.
"""

from __future__ import annotations

from .configuration_daformer import DaformerConfig


def register() -> None:
    """`AutoConfig` knows the `daformer` model type and `AutoModelForSemanticSegmentation` (so
    `pipeline("image-segmentation")`) builds `DaformerForSemanticSegmentation`; a saved folder names both code files in
    its config (`auto_map`) and carries them, for `trust_remote_code=True`."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    from .modeling_daformer import DaformerForSemanticSegmentation

    AutoConfig.register(DaformerConfig.model_type, DaformerConfig, exist_ok=True)
    AutoModelForSemanticSegmentation.register(DaformerConfig, DaformerForSemanticSegmentation, exist_ok=True)
    DaformerConfig.register_for_auto_class()
    DaformerForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")


register()

__all__ = ["DaformerConfig", "register"]
