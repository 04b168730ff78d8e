"""Argument checks shared by the public constructors: a clear error that names the argument."""

from __future__ import annotations

import numbers
from typing import Any


def check_int(value: Any, name: str, minimum: int = 1, hint: str = "") -> int:
    """``int(value)`` for an integer ``>= minimum`` (numpy integers too).

    Raises ``TypeError`` for anything that is not an integer (a float, a string, a bool) and ``ValueError`` below
    ``minimum``; both name the argument.
    """
    expected = "a positive integer" if minimum == 1 else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer ({expected}{hint}), got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {expected}{hint}, got {value!r}")
    return int(value)


def check_real(value: Any, name: str) -> float:
    """``float(value)`` for a real number (not a bool), else ``TypeError``; range checks stay with the caller."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)
