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

    def __call__(self, device):
        self.calls.append(device)
        return torch.arange(3, device=device)


def test_value_is_built_once_per_device():
    cache, build = DeviceCache(), _Builder()
    first = cache.get(CPU, build)
    assert cache.get("cpu", build) is first  # a device string names the same device
    assert build.calls == [CPU]
    assert len(cache) == 1


def test_value_built_in_inference_mode_serves_a_later_backward():
    cache = DeviceCache()
    with torch.inference_mode():
        value = cache.get(CPU, lambda device: torch.ones(3, device=device))
    assert not value.is_inference()
    weight = torch.ones(3, requires_grad=True)
    (weight * value).sum().backward()  # an inference tensor saved for backward would raise here
    assert torch.equal(weight.grad, torch.ones(3))


def test_copies_and_pickles_start_empty():
    cache = DeviceCache()
    cache.get(CPU, lambda device: torch.zeros(2, device=device))
    for clone in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert len(clone) == 0
        assert torch.equal(clone.get(CPU, lambda device: torch.ones(2, device=device)), torch.ones(2))
    cache.clear()
    assert len(cache) == 0


def test_nethack_condition_masks_are_cached_outside_inference_mode():
    pytest.importorskip("nle")
    from crossmoe.nethack.encoders import _condition_masks

    with torch.inference_mode():
        masks = _condition_masks(CPU)
    assert _condition_masks(CPU) is masks and not masks.is_inference()
