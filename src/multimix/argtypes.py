"""Argument types of the command line: numbers read and range-checked by argparse, and errors in one bounded line.

``int_at_least(1)`` and ``finite_at_least(0.0)`` are argparse ``type`` functions:
a value out of range is refused while the arguments are parsed, before any
work, as ``multimix speed: error: argument --repeats: must be an integer >= 1,
got 0``. Integer flags also take integral scientific notation (``--n 1e7``).
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

from .checks import brief

__all__ = ["MAX_MESSAGE_CHARS", "OneLineParser", "parse_int", "parse_float", "int_at_least", "finite_at_least"]

MAX_MESSAGE_CHARS = 2000  # longest error line printed (each value in it is already cut by checks.brief)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one bounded line (``multimix train: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message[:MAX_MESSAGE_CHARS]} (see {self.prog} --help)\n")


def parse_int(text: str) -> int:
    """An integer flag: ``128``, ``1_000``, or an integral number in scientific notation (``1e7``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {brief(text)}") from None
    if not (math.isfinite(value) and value == int(value) and abs(value) < 2**63):
        raise argparse.ArgumentTypeError(f"expected an integer below 2^63, got {brief(text)}")
    return int(value)


def parse_float(text: str) -> float:
    """A number flag (finiteness and range are the setting's own checks)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {brief(text)}") from None


def int_at_least(minimum: int, maximum: Optional[int] = None):
    """An argparse ``type``: an integer (see :func:`parse_int`) in [minimum, maximum]."""
    def parse(text: str) -> int:
        value = parse_int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {brief(value)}")
        return value
    return parse


def finite_at_least(minimum: float):
    """An argparse ``type``: a finite number >= ``minimum``."""
    def parse(text: str) -> float:
        value = parse_float(text)
        if not (math.isfinite(value) and value >= minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number >= {minimum:g}, got {brief(value)}")
        return value
    return parse
