"""Constant tensors derived from a module's fixed data, built once per device.

A value built while :func:`torch.inference_mode` is on is an inference tensor:
cached and reused by a later training step, it breaks that step's backward
pass. :class:`DeviceCache` therefore always builds outside inference mode, so
one cached value serves every mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch

from crossmoe.functional import is_compiling

__all__ = ["DeviceCache"]

T = TypeVar("T")


class DeviceCache(Generic[T]):
    """One value per device, built on first use outside inference mode and then reused.

    The cache holds derived data only, so copies and pickles of its owner
    start with an empty cache.

    Example:
        >>> ones = DeviceCache()
        >>> ones.get(torch.device("cpu"), lambda device: torch.ones(3, device=device))
        tensor([1., 1., 1.])
    """

    def __init__(self) -> None:
        self._values: dict[torch.device, T] = {}

    def get(self, device: torch.device | str, build: Callable[[torch.device], T]) -> T:
        """The value cached for ``device``, built as ``build(device)`` when missing.

        Under ``torch.compile`` the value is built inside the graph instead:
        reading and filling the dict would make the compiled graph guard on its
        contents and recompile once it changes.
        """
        device = torch.device(device)
        if is_compiling():
            return build(device)
        if device not in self._values:
            with torch.inference_mode(False):
                self._values[device] = build(device)
        return self._values[device]

    def clear(self) -> None:
        """Drop every cached value."""
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._values = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(devices={sorted(str(device) for device in self._values)})"
