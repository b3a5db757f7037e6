"""Values people give (seconds, counts), checked in one place, with messages that say what is wrong.

``seconds()`` and ``count()`` check what Python code passes (a string is a
TypeError there); ``seconds_arg()`` and ``count_arg()`` are the same checks as
argparse types, for the magics and the command line, which parse text first.
"""

from __future__ import annotations

import argparse
import math
import operator
from collections.abc import Callable

__all__ = ["count", "count_arg", "seconds", "seconds_arg"]

_index = operator.index


def seconds(
    what: str, value: object, *, zero_ok: bool = False, within: tuple[float, float] | None = None
) -> float:
    """``value`` as a number of seconds: finite and > 0 (>= 0 with ``zero_ok``), or within
    [low, high]. TypeError or ValueError names ``what`` (left out when empty)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(_named(what, f"must be a number of seconds, got {value!r}"))
    number = float(value)
    if within is not None:
        low, high = within
        if not (math.isfinite(number) and low <= number <= high):
            raise ValueError(_named(what, f"must be between {low:g} and {high:g} seconds, got {value}"))
    elif not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(_named(what, f"must be a finite number of seconds {bound}, got {value}"))
    return number


def count(what: str, value: object) -> int:
    """``value`` as a whole number >= 0 (anything ``operator.index`` takes)."""
    try:
        number = _index(value)  # type: ignore[arg-type]  # any object: TypeError says what is wrong
    except TypeError:
        raise TypeError(_named(what, f"must be a whole number, got {value!r}")) from None
    if number < 0:
        raise ValueError(_named(what, f"must be >= 0, got {number}"))
    return number


def seconds_arg(
    name: str, *, zero_ok: bool = False, within: tuple[float, float] | None = None
) -> Callable[[str], float]:
    """An argparse type for a number of seconds given as text (``--eta 3``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        try:
            return seconds("", value, zero_ok=zero_ok, within=within)
        except ValueError:
            # Say it as it was typed: "-1", not "-1.0".
            bound = f"between {within[0]:g} and {within[1]:g} seconds" if within else None
            bound = bound or f"a finite number of seconds {'>= 0' if zero_ok else '> 0'}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}") from None

    parse.__name__ = name  # what argparse calls it in its own messages
    return parse


def count_arg(text: str) -> int:
    """An argparse type for a whole number >= 0 given as text (``--total 100``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    try:
        return count("", value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _named(what: str, problem: str) -> str:
    return f"{what} {problem}" if what else problem
