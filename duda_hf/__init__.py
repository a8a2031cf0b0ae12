"""duda-hf: Distilled Unsupervised Domain Adaptation (DUDA) for SegFormer, on Hugging Face transformers."""

from .config import DataArguments, DudaConfig, ModelArguments
from .models import DudaModel, build_duda_model, build_segformer, export_segformer
from .trainer import DudaTrainer

__version__ = "0.1.0"
__all__ = [
    "DataArguments",
    "DudaConfig",
    "DudaModel",
    "DudaTrainer",
    "ModelArguments",
    "build_duda_model",
    "build_segformer",
    "export_segformer",
]
