"""Argument checks shared by every layer: raise before any work is done, naming the argument.

Each check returns the (normalised) value so that it can be used inline::

    self.n = check_positive_int(n, "n")

A wrong *type* raises ``TypeError``, a value of the right type outside its
range ``ValueError``; both messages name the argument, the expected value and
what was given.
"""

from __future__ import annotations

import collections.abc
import math
import os
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

__all__ = [
    "check_number",
    "check_positive",
    "check_non_negative",
    "check_int",
    "check_positive_int",
    "check_probability",
    "check_label_smoothing",
    "check_choice",
    "check_generator",
    "check_path",
    "describe_type",
    "check_type",
    "brief",
]

# Longest repr of a user's value that an error message prints (a value can be a 10^6-element list).
BRIEF_CHARS = 80


def brief(value: Any, limit: int = BRIEF_CHARS) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (with ``…`` where cut): what error messages print."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_number(value: Any, name: str, *, minimum: Optional[float] = None, exclusive: bool = False,
                 maximum: Optional[float] = None, maximum_exclusive: bool = False) -> float:
    """``float(value)`` if it is a finite real number within the given bounds; else raise naming ``name``."""
    lo = "" if minimum is None else (f" > {minimum:g}" if exclusive else f" >= {minimum:g}")
    hi = "" if maximum is None else (f" < {maximum:g}" if maximum_exclusive else f" <= {maximum:g}")
    expected = f"a finite number{lo}{' and' if lo and hi else ''}{hi}"
    if not _is_number(value):
        raise TypeError(f"{name} must be {expected}, got {brief(value)}")
    value = float(value)
    if (not math.isfinite(value)
            or (minimum is not None and (value <= minimum if exclusive else value < minimum))
            or (maximum is not None and (value >= maximum if maximum_exclusive else value > maximum))):
        raise ValueError(f"{name} must be {expected}, got {brief(value)}")
    return value


def _check_real(value: Any, name: str, kind: str, strictly_positive: bool) -> float:
    if not _is_number(value):
        raise TypeError(f"{name} must be {kind} finite number, got {brief(value)}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (strictly_positive and value == 0):
        raise ValueError(f"{name} must be {kind} finite number, got {brief(value)}")
    return value


def check_positive(value: Any, name: str) -> float:
    """``float(value)``; raise ``TypeError``/``ValueError`` naming ``name`` unless it is finite and > 0."""
    return _check_real(value, name, "a positive", strictly_positive=True)


def check_non_negative(value: Any, name: str) -> float:
    """``float(value)`` if it is finite and >= 0."""
    return _check_real(value, name, "a non-negative", strictly_positive=False)


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {brief(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {brief(value)}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is an integer >= 1."""
    return check_int(value, name, 1)


def check_probability(value: Any, name: str) -> float:
    """``float(value)`` if it lies in [0, 1]."""
    return check_number(value, name, minimum=0.0, maximum=1.0)


def check_label_smoothing(value: Any, name: str = "label_smoothing") -> float:
    """A label-smoothing amount ε in [0, 1)."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number in [0, 1), got {brief(value)}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {brief(value)}")
    return float(value)


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {brief(value)}")
    return value


def check_generator(generator: Any, name: str = "generator") -> None:
    """Raise unless ``generator`` is a ``torch.Generator`` or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")


def check_path(path: Any, name: str = "path") -> Path:
    """``Path(path)`` if it is a ``str`` or ``os.PathLike``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


# ---------------------------------------------------------------------------
# values against a type annotation (settings of methods and of the trainer)
# ---------------------------------------------------------------------------


def describe_type(annotation: Any) -> str:
    """A readable name of a type annotation: ``float``, ``one of 'self', 'cam'``, ``list of int``, ``… or None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        inner = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or None" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, tuple, collections.abc.Sequence):
        return f"list of {describe_type(args[0]) if args else 'values'}"
    if origin in (dict, collections.abc.Mapping):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def check_type(value: Any, annotation: Any, name: str) -> Any:
    """``value`` if it fits ``annotation`` (bool, int, float, str, Optional, Literal, sequences, mappings).

    Ints count as floats, bools count as nothing but bools (a YAML ``"false"``
    is a string, not a bool). Raises ``TypeError`` (``ValueError`` for a
    Literal) naming ``name``, the expected type and the value given.
    """
    if annotation is Any:
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return value
        for option in (a for a in args if a is not type(None)):
            try:
                return check_type(value, option, name)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{name} must be {describe_type(annotation)}, got {brief(value)}")
    if origin is typing.Literal:
        if value not in args or type(value) not in {type(a) for a in args}:
            raise ValueError(f"{name} must be {describe_type(annotation)}, got {brief(value)}")
        return value
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be {describe_type(annotation)}, got {brief(value)}")
        element = args[0] if args else Any
        for i, item in enumerate(value):
            check_type(item, element, f"{name}[{i}]")
        return value
    if origin in (dict, collections.abc.Mapping) or annotation in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise TypeError(f"{name} must be a mapping, got {brief(value)}")
        return value
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: _is_number(v),
          str: lambda v: isinstance(v, str)}.get(annotation, lambda v: isinstance(v, annotation))
    if not ok(value):
        raise TypeError(f"{name} must be {describe_type(annotation)}, got {brief(value)}")
    return value
