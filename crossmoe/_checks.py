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


def check_probability(value: Any, name: str) -> float:
    """``float(value)`` for a real number in ``[0, 1]`` (not a bool), else a ``ValueError`` that names it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def atom_columns(names: Any, atoms: tuple[str, ...], where: str) -> tuple[tuple[str, ...] | None, Any]:
    """``(names as a tuple, their columns among atoms)`` for a ``names`` argument; ``(None, None)`` for None.

    The columns are None too when ``names`` is all of ``atoms`` in order (nothing to select). ``where`` names the
    atoms in the error (``"crossmoe.nethack.ATOMS"``). Raises ``TypeError`` unless ``names`` is a sequence of
    strings, and ``ValueError`` for a name that is not an atom.
    """
    import numpy as np

    if names is None:
        return None, None
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"names must be a sequence of atom names or None, got {names!r}")
    index = {name: column for column, name in enumerate(atoms)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise ValueError(f"names must be atoms of {where}, got unknown names {unknown[:5]}")
    names = tuple(names)
    return names, None if names == atoms else np.array([index[name] for name in names])
