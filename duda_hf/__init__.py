"""duda-hf: Distilled Unsupervised Domain Adaptation (DUDA) for SegFormer, on Hugging Face transformers.

The top-level names load on first use (PEP 562), so that `duda_hf.data` and the light scripts (dataset
conversion) start without importing torch and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The DAFormer architecture joins transformers' AutoConfig / AutoModelForSemanticSegmentation: now if transformers is
# loaded, else once it is first imported (which then also loads torch); `import duda_hf` alone loads neither.
importlib.import_module(".networks.registration", __name__).install()

_EXPORTS = {
    "DudaConfig": ".method.config",
    "DataArguments": ".cli.arguments",
    "ModelArguments": ".cli.arguments",
    "DudaModel": ".networks.duda_model",
    "build_duda_model": ".networks.duda_model",
    "build_network": ".networks.loading",
    "export_network": ".export.network",
    "DudaTrainer": ".training.trainer",
}
__all__ = [
    "DataArguments",
    "DudaConfig",
    "DudaModel",
    "DudaTrainer",
    "ModelArguments",
    "build_duda_model",
    "build_network",
    "export_network",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'duda_hf' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
