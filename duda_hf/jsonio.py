"""Strict JSON for every file the project writes: no `NaN` or `Infinity`, which are not JSON.

Python's `json` writes them by default, and `JSON.parse`, `jq` and other strict parsers then reject the whole
file. Here a number that is undefined is written as `null`: the IoU of a class absent from both the labels and
the predictions, the accuracy of a class absent from the labels, a mean over no class (docs/design.md,
"JSON outputs"). `allow_nan=False` makes any value that slips past the conversion fail loudly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def strict(value):
    """`value` as plain JSON types: numpy / torch arrays and scalars become lists and numbers, non-finite floats None."""
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return strict(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value, **kwargs) -> str:
    """`json.dumps` of `strict(value)`; raises ValueError on anything non-finite it could not convert."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, value, indent: int = 2) -> None:
    """Write `value` to `path` as strict JSON (see `dumps`), with a final newline."""
    Path(path).write_text(dumps(value, indent=indent) + "\n")
