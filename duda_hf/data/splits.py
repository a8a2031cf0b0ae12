"""Split names: native dataset folders call the validation split `val`, `datasets` and the Hub call it `validation`.

Both names are accepted wherever a split is asked for; this table is the one place that says so.
"""

from __future__ import annotations

# `datasets` name -> native folder name
NATIVE_SPLIT_NAMES = {"validation": "val"}


def native_split(split: str) -> str:
    """The native folders' name of `split` (`validation` -> `val`; other names unchanged)."""
    return NATIVE_SPLIT_NAMES.get(split, split)


def other_split_name(split: str) -> str | None:
    """The same split under the other convention (`validation` <-> `val`), or None when it has only one name."""
    if split in NATIVE_SPLIT_NAMES:
        return NATIVE_SPLIT_NAMES[split]
    return next((name for name, native in NATIVE_SPLIT_NAMES.items() if native == split), None)
