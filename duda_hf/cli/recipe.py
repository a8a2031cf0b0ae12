"""YAML recipes: each value checked against its flag's type before it becomes a default of the parser.

argparse converts a default only when it is a string, so a recipe value of the wrong type (`crop_size: 64` for a
list, `max_steps: ten`) used to reach the dataclasses as is and fail there with a bare `TypeError`. Here every
value is converted as the command line would convert it, and one that cannot be is an error naming the key,
what it takes and an example.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers.hf_argparser import string_to_bool


class RecipeError(ValueError):
    """A YAML recipe that cannot be used."""


def _convert(value, action: argparse.Action):
    """One scalar as the flag's type, or ValueError."""
    kind = action.type
    if isinstance(value, (list, dict)):
        if kind in (int, float, string_to_bool) or action.choices:
            raise ValueError
        return value  # fields that take a list or a mapping as one value (e.g. lr_scheduler_kwargs)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)  # an int, an integral float (1000.0) or a string of digits
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)  # also YAML's strings for exponents without a dot ("6e-5")
    if kind is string_to_bool:
        if not isinstance(value, (bool, str)):
            raise ValueError
        try:
            return string_to_bool(value)
        except argparse.ArgumentTypeError as error:
            raise ValueError from error
    if action.choices:
        converted = kind(str(value)) if kind else str(value)
        if converted not in action.choices:
            raise ValueError
        return converted
    return str(value) if kind is str and value is not None else value


def _expected(action: argparse.Action) -> str:
    kinds = {int: "an integer", float: "a number", string_to_bool: "true or false"}
    if action.choices:
        one = f"one of {[getattr(c, 'value', c) for c in action.choices]}"
    else:
        one = kinds.get(action.type, "a string")
    if action.nargs in ("+", "*"):
        example = {int: "[512, 512]", float: "[1.0, 0.5]"}.get(action.type, "[a, b]")
        return f"a list, each {one} (e.g. {action.dest}: {example}; a single value is a list of one)"
    return one


def typed_recipe(recipe: dict, parser: argparse.ArgumentParser, path: str | Path) -> dict:
    """`recipe` with every value converted to its flag's type (a scalar for a list flag becomes a list of one).

    Raises:
        RecipeError: naming the first key whose value cannot be converted, what it takes and an example.
    """
    typed = {}
    for key, value in recipe.items():
        action = parser._option_string_actions.get(f"--{key}")
        if action is None or value is None:
            typed[key] = value
            continue
        try:
            if action.nargs in ("+", "*"):
                typed[key] = [_convert(item, action) for item in (value if isinstance(value, list) else [value])]
            else:
                typed[key] = _convert(value, action)
        except (ValueError, TypeError):
            quote = " (YAML reads a bare no, yes, off or on as a boolean: quote it, e.g. 'no')" if isinstance(value, bool) else ""
            raise RecipeError(f"recipe '{path}': {key} must be {_expected(action)}, got {value!r}{quote}") from None
    return typed
