"""Constant tensors derived from a module's fixed data, built once per device.

A value built while :func:`torch.inference_mode` is on is an inference tensor:
cached and reused by a later training step, it breaks that step's backward
pass. :class:`DeviceCache` therefore always builds outside inference mode, so
one cached value serves every mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

import torch

from crossmoe.functional import is_compiling

__all__ = ["DeviceCache"]

T = TypeVar("T")


class DeviceCache(Generic[T]):
    """One value per device, built on first use outside inference mode and then reused.

    Without ``size``, :meth:`get` builds the value once per device as
    ``build(device)``. With ``size``, the cached value also has a capacity:
    :meth:`get` builds it as ``build(device, capacity)`` and rebuilds it, at
    least doubling the capacity, only when asked for a size above it. The
    value built for a capacity must therefore serve every smaller size (for
    example as a prefix that the caller slices).

    The cache holds derived data only, so copies and pickles of its owner
    start with an empty cache.

    Args:
        initial_capacity: The smallest capacity of a sized value.

    Example:
        >>> ones = DeviceCache()
        >>> ones.get(torch.device("cpu"), lambda device: torch.ones(3, device=device))
        tensor([1., 1., 1.])
        >>> ranges = DeviceCache(initial_capacity=4)
        >>> ranges.get("cpu", lambda device, capacity: torch.arange(capacity, device=device), size=2)
        tensor([0, 1, 2, 3])
    """

    def __init__(self, *, initial_capacity: int = 1) -> None:
        if initial_capacity < 1:
            raise ValueError(f"initial_capacity must be a positive integer, got {initial_capacity}")
        self.initial_capacity = initial_capacity
        self._values: dict[torch.device, tuple[int, T]] = {}

    @overload
    def get(self, device: torch.device | str, build: Callable[[torch.device], T]) -> T: ...

    @overload
    def get(self, device: torch.device | str, build: Callable[[torch.device, int], T], *, size: int) -> T: ...

    def get(self, device: torch.device | str, build: Callable[..., T], *, size: int | None = None) -> T:
        """The value cached for ``device``, built by ``build`` when missing (or, with ``size``, too small).

        Under ``torch.compile`` the value is built inside the graph instead
        (with capacity ``size``): reading and filling the dict would make the
        compiled graph guard on its contents and recompile once it changes.
        """
        device = torch.device(device)
        if is_compiling():
            return build(device) if size is None else build(device, size)
        cached = self._values.get(device)
        if size is None:
            if cached is None:
                cached = (0, self._build(build, device))
                self._values[device] = cached
            return cached[1]
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if cached is None or cached[0] < size:
            capacity = max(size, self.initial_capacity if cached is None else 2 * cached[0])
            cached = (capacity, self._build(build, device, capacity))
            self._values[device] = cached
        return cached[1]

    @staticmethod
    def _build(build: Callable[..., T], *args: Any) -> T:
        with torch.inference_mode(False):
            return build(*args)

    def clear(self) -> None:
        """Drop every cached value."""
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __getstate__(self) -> dict[str, Any]:
        return {"initial_capacity": self.initial_capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.initial_capacity = state["initial_capacity"]
        self._values = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(devices={sorted(str(device) for device in self._values)})"
