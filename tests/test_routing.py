import entmax as entmax_ref
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crossmoe import RouterOutput, SparsemaxRouter


def _x(batch=16, dim=12, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize(
    ("alpha", "reference"),
    [
        (1.0, lambda z: torch.softmax(z, -1)),
        (1.5, lambda z: entmax_ref.entmax15(z, dim=-1)),
        (2.0, lambda z: entmax_ref.sparsemax(z, dim=-1)),
        (1.3, lambda z: entmax_ref.entmax_bisect(z, alpha=1.3, dim=-1)),
    ],
)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_weights_are_entmax_of_tempered_logits(alpha, reference, temperature):
    router = SparsemaxRouter(12, 5, alpha=alpha, temperature=temperature)
    out = router(_x())
    assert isinstance(out, RouterOutput)
    assert out.weights.shape == out.logits.shape == (16, 5)
    torch.testing.assert_close(out.weights, reference(out.logits / temperature))


def test_sparsemax_routing_gives_exact_zeros_softmax_none():
    router = SparsemaxRouter(12, 8, hidden_dim=0, alpha=2.0, temperature=0.1)
    assert (router(_x()).weights == 0).any()
    router.alpha = 1.0
    assert (router(_x()).weights > 0).all()


@given(
    alpha=st.floats(1.0, 2.0),
    temperature=st.floats(0.05, 5.0),
    hidden=st.sampled_from([0, 8]),
    seed=st.integers(0, 1000),
)
def test_weights_lie_on_the_simplex(alpha, temperature, hidden, seed):
    router = SparsemaxRouter(12, 4, hidden_dim=hidden, alpha=alpha, temperature=temperature)
    weights = router(_x(seed=seed)).weights
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(16), atol=1e-5, rtol=0)


@given(alpha=st.sampled_from([1.0, 1.3, 1.5, 2.0]), seed=st.integers(0, 1000))
def test_routing_of_a_sample_does_not_depend_on_the_batch(alpha, seed):
    router = SparsemaxRouter(12, 4, alpha=alpha)
    x = _x(seed=seed)
    alone = router(x[:1]).weights
    x[1:] = _x(seed=seed + 1)[1:]
    torch.testing.assert_close(router(x).weights[:1], alone)
    torch.testing.assert_close(router(x.flip(0)).weights[-1:], alone)


def test_routing_is_deterministic():
    router = SparsemaxRouter(12, 4).train()
    x = _x()
    assert torch.equal(router(x).weights, router(x).weights)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_every_parameter_gets_a_finite_gradient(alpha):
    router = SparsemaxRouter(12, 4, alpha=alpha)
    out = router(_x())
    (out.weights * torch.randn(16, 4)).sum().backward()  # through the entmax only
    for name, parameter in router.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_autocast_route_in_float32(dtype):
    router = SparsemaxRouter(12, 4, alpha=1.3)
    x = _x()
    expected = router(x).weights
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(router(x).weights, expected)
    half = SparsemaxRouter(12, 4, alpha=1.3).to(dtype)
    weights = half(x.to(dtype)).weights
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()


def test_float64_is_kept():
    router = SparsemaxRouter(12, 4).double()
    assert router(_x().double()).weights.dtype == torch.float64


def test_alpha_and_temperature_are_plain_settable_floats_not_state():
    router = SparsemaxRouter(12, 4)
    router.alpha, router.temperature = 1.25, 0.7
    assert (router.alpha, router.temperature) == (1.25, 0.7)
    assert "alpha" not in str(list(router.state_dict()))
    assert "alpha=1.25" in repr(router)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.9}, r"alpha must lie in \[1, 2\] .* got 0.9"),
        ({"alpha": 2.5}, r"alpha must lie in \[1, 2\]"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        ({"temperature": -1.0}, "temperature must be a finite number > 0"),
        ({"num_experts": 1}, "num_experts must be >= 2, got 1"),
        ({"dim": 0}, "dim must be a positive integer"),
        ({"hidden_dim": -1}, "hidden_dim must be >= 0"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = {"dim": 12, "num_experts": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        SparsemaxRouter(**args)


def test_setter_and_forward_errors():
    router = SparsemaxRouter(12, 4)
    with pytest.raises(ValueError, match="alpha must lie"):
        router.alpha = 3.0
    with pytest.raises(ValueError, match="temperature must be"):
        router.temperature = float("inf")
    with pytest.raises(ValueError, match=r"x must be \(B, 12\), got \(2, 3, 12\)"):
        router(torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match=r"x must be \(B, 12\), got \(2, 11\)"):
        router(torch.randn(2, 11))


def test_compiled_routing_state_follows_alpha_and_temperature_through_setters_and_casts():
    """The tensor copy that compiled graphs read stays equal to the float attributes, exact in float64."""
    from crossmoe import TemperatureAnnealingScheduler

    router = SparsemaxRouter(8, 4, alpha=1.37, temperature=0.6)
    assert router.routing_state.tolist() == [1.37, 0.6]
    router.alpha, router.temperature = 1.9, 0.45
    assert router.routing_state.tolist() == [1.9, 0.45]
    state = TemperatureAnnealingScheduler(warmup=10, transition=30, total=50, unit="updates")(20)
    state.apply(router)
    assert router.routing_state.tolist() == [state.alpha, state.temperature]
    for cast in (torch.nn.Module.half, torch.nn.Module.bfloat16, torch.nn.Module.double):
        cast(router)
        assert router.routing_state.dtype == torch.float64
        assert router.routing_state.tolist() == [state.alpha, state.temperature]
    meta = SparsemaxRouter(8, 4, alpha=1.37, temperature=0.6, hidden_dim=0).to("meta").to_empty(device="cpu")
    assert meta.routing_state.tolist() == [1.37, 0.6]
    assert "routing_state" not in router.state_dict()  # not state: a checkpoint holds the weights only
