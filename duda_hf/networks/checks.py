"""A local model folder checked before transformers reads it, so that a broken copy is named plainly.

Without `config.json`, transformers builds a default SegFormer and fails with a long weight-mismatch report that
never names the file; a truncated `model.safetensors` fails inside safetensors with a bare `SafetensorError`.
"""

from __future__ import annotations

import json
from pathlib import Path

from duda_hf.networks.loading import ModelUnavailableError


def check_model_folder(folder: str | Path, role: str = "--model") -> None:
    """Raise `ModelUnavailableError` naming the file when `folder` lacks `config.json` or complete weights.

    Args:
        role: the flag the folder came from, for the message.
    """
    from safetensors import safe_open

    folder = Path(folder)
    where = f"{role} '{folder}'"
    config = folder / "config.json"
    if not config.is_file():
        present = sorted(path.name for path in folder.iterdir())
        raise ModelUnavailableError(
            f"{where} has no config.json (it holds {present or 'nothing'}): it is not a complete model folder. Copy the "
            "whole exported folder (config.json, model.safetensors, preprocessor_config.json), e.g. a run's student/."
        )
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelUnavailableError(f"{where}: config.json is not valid JSON ({error}); copy it again from the exported folder") from None
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelUnavailableError(f"{where} has no model.safetensors; copy the whole exported folder (safetensors weights only)")
    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except Exception as error:  # SafetensorError: a truncated or damaged file (the header names more bytes than there are)
        raise ModelUnavailableError(
            f"{where}: model.safetensors is truncated or damaged ({weights.stat().st_size:,} bytes; safetensors: {error}). "
            "Copy it again (the copy or download was probably interrupted)."
        ) from None
