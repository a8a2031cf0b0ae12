"""The data layer's error: a dataset argument or file that cannot be used, with what to do about it."""

from __future__ import annotations


class DomainError(ValueError):
    """A dataset argument that cannot be used, with what to do about it."""
