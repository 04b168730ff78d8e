"""DeviceCache: per-device constant tensors, built once outside inference mode."""

import copy
import pickle

import pytest
import torch

from crossmoe._cache import DeviceCache

CPU = torch.device("cpu")


class _Builder:
    def __init__(self):
        self.calls = []

    def __call__(self, device, *capacity):
        self.calls.append((device, *capacity))
        return torch.arange(capacity[0] if capacity else 3, device=device)


def test_value_is_built_once_per_device():
    cache, build = DeviceCache(), _Builder()
    first = cache.get(CPU, build)
    assert cache.get("cpu", build) is first  # a device string names the same device
    assert build.calls == [(CPU,)]
    assert len(cache) == 1


def test_value_built_in_inference_mode_serves_a_later_backward():
    cache = DeviceCache()
    with torch.inference_mode():
        value = cache.get(CPU, lambda device: torch.ones(3, device=device))
    assert not value.is_inference()
    weight = torch.ones(3, requires_grad=True)
    (weight * value).sum().backward()  # an inference tensor saved for backward would raise here
    assert torch.equal(weight.grad, torch.ones(3))


def test_sized_value_grows_by_doubling_and_serves_smaller_sizes():
    cache, build = DeviceCache(initial_capacity=4), _Builder()
    assert len(cache.get(CPU, build, size=2)) == 4
    assert len(cache.get(CPU, build, size=4)) == 4
    assert len(cache.get(CPU, build, size=5)) == 8  # double the capacity ...
    assert len(cache.get(CPU, build, size=20)) == 20  # ... or the size, whichever is larger
    assert len(cache.get(CPU, build, size=3)) == 20  # a smaller size is served by the larger value
    assert [call[1] for call in build.calls] == [4, 8, 20]


def test_copies_and_pickles_start_empty():
    cache = DeviceCache(initial_capacity=8)
    cache.get(CPU, lambda device, capacity: torch.zeros(capacity, device=device), size=1)
    for clone in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert len(clone) == 0 and clone.initial_capacity == 8
    cache.clear()
    assert len(cache) == 0


def test_invalid_arguments_raise_value_error():
    with pytest.raises(ValueError, match="initial_capacity must be a positive integer, got 0"):
        DeviceCache(initial_capacity=0)
    with pytest.raises(ValueError, match="size must be >= 0, got -1"):
        DeviceCache().get(CPU, lambda device, capacity: torch.zeros(capacity), size=-1)


def test_nethack_condition_masks_are_cached_outside_inference_mode():
    pytest.importorskip("nle")
    from crossmoe.nethack.encoders import _condition_masks

    with torch.inference_mode():
        masks = _condition_masks(CPU)
    assert _condition_masks(CPU) is masks and not masks.is_inference()
