"""torch.compile of the policies: one graph, the same outputs and gradients as eager, the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nle")

from crossmoe.functional import _entmax_backward, entmax
from crossmoe.nethack import make_baseline_policy, make_policy, make_vector_env
from crossmoe.routing import SparsemaxRouter

DIM = 32


@pytest.fixture(scope="module")
def real_obs():
    envs = make_vector_env(6, seed=3)
    obs, _ = envs.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(25):
        obs, *_ = envs.step(rng.integers(envs.single_action_space.n, size=6))
    obs = {key: value.copy() for key, value in obs.items()}
    envs.close()
    return obs


def _factories():
    return [
        pytest.param(lambda: make_policy(dim=DIM, alpha=1.0), id="moe"),
        pytest.param(lambda: make_policy(dim=DIM, fusion="concat", alpha=1.0), id="moe-concat"),
        pytest.param(lambda: make_baseline_policy(dim=DIM), id="mlp"),
    ]


@pytest.mark.parametrize("factory", _factories())
def test_forward_tensors_compiles_to_one_graph(real_obs, factory):
    """No graph break in the hot path: everything after prepare() is one graph."""
    torch._dynamo.reset()
    policy = factory()
    explanation = torch._dynamo.explain(policy.forward_tensors)(policy.prepare(real_obs))
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("factory", _factories())
def test_compiled_policy_matches_eager_on_numpy_and_torch_inputs(real_obs, factory):
    torch._dynamo.reset()
    torch.manual_seed(0)
    policy = factory()
    compiled = torch.compile(policy)
    as_torch = {key: torch.as_tensor(value) for key, value in real_obs.items()}
    eager_out = policy(real_obs)
    for obs in (real_obs, as_torch):
        out = compiled(obs)
        torch.testing.assert_close(out.logits, eager_out.logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.value, eager_out.value, rtol=1e-4, atol=1e-5)
    # policy.compile() compiles forward_tensors only, so numpy inputs work in every autograd mode.
    policy.compile()
    with torch.inference_mode():
        for obs in (real_obs, as_torch):
            out = policy(obs)
            torch.testing.assert_close(out.logits, eager_out.logits, rtol=1e-4, atol=1e-5)
    # Gradients too: the PPO update runs through the compiled graph.
    eager_grads = torch.autograd.grad(
        eager_out.logits.logsumexp(-1).sum() + eager_out.value.square().sum(), list(policy.parameters())
    )
    out = policy(real_obs)
    grads = torch.autograd.grad(out.logits.logsumexp(-1).sum() + out.value.square().sum(), list(policy.parameters()))
    for grad, expected in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_compiled_router_follows_the_schedule_without_recompiling(real_obs):
    """alpha and temperature are tensor inputs of the compiled graph: moving them does not recompile."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    policy = make_policy(dim=DIM, alpha=1.0, uniform_router_init=False)  # uniform routing has no zeros
    compiled = torch.compile(policy.forward_tensors)
    obs = policy.prepare(real_obs)
    compiled(obs)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for alpha, temperature in ((1.3, 0.8), (1.5, 0.7), (2.0, 0.5)):
        for router in policy.modules():
            if isinstance(router, SparsemaxRouter):
                router.alpha, router.temperature = alpha, temperature
        out = compiled(obs)
        torch.testing.assert_close(out.router_weights, policy(real_obs).router_weights, rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
    assert bool((out.router_weights == 0).any())  # sparsemax at the end: some experts get exactly zero


@pytest.mark.parametrize("alpha", [1.0, 1.3, 1.5, 2.0])
def test_closed_form_entmax_backward_matches_autograd(alpha):
    """The compiled router's backward formula against entmax's own autograd (softmax, bisection, 1.5, sparsemax)."""
    logits = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(8, 5, dtype=torch.float64)
    probs = entmax(logits, alpha)
    (expected,) = torch.autograd.grad(probs, logits, grad)
    torch.testing.assert_close(_entmax_backward(probs.detach(), grad, alpha), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.3, 2.0])
def test_traced_graph_matches_eager_values_and_gradients_at_sparse_alphas(real_obs, alpha):
    """The whole traced graph (aot_eager: dynamo + AOTAutograd, no C++ build) against eager, entmax op included."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    # a random router init, so that sparse routing gives some experts exactly zero from the first step
    policy = make_policy(dim=DIM, alpha=alpha, temperature=0.5, uniform_router_init=False)
    obs = policy.prepare(real_obs)
    traced = torch.compile(policy.forward_tensors, backend="aot_eager")
    results = []
    for forward in (policy.forward_tensors, traced):
        out = forward(obs)
        loss = out.logits.logsumexp(-1).sum() + out.value.square().sum() + out.router_weights.square().sum()
        results.append((out, torch.autograd.grad(loss, list(policy.parameters()))))
    (eager, eager_grads), (out, grads) = results
    torch.testing.assert_close(out.router_weights, eager.router_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, eager.logits, rtol=1e-5, atol=1e-6)
    if alpha == 2.0:
        assert bool((eager.router_weights == 0).any())  # sparse routing: the backward's support matters
    for (name, _), grad, expected in zip(policy.named_parameters(), grads, eager_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_entmax_custom_op_passes_torch_opcheck():
    from crossmoe.functional import _entmax_op

    if _entmax_op is None:
        pytest.skip("torch < 2.4 has no torch.library.custom_op")
    for alpha in (1.0, 1.3, 1.5, 2.0):
        logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(_entmax_op, (logits, torch.tensor(alpha, dtype=torch.float64)))


def test_a_batch_over_the_static_query_cap_runs_eagerly(real_obs):
    """With applicable_queries, the compiled graph gathers max_queries operators per sample; a batch in which some
    state has more applicable operators must not run it (the graph would drop operators), and gives eager's result."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    probe = make_policy(dim=DIM)
    counts = probe.logic_encoder.applicable_operators(probe.prepare(real_obs)).sum(1)
    cap = int(counts.min())
    assert int(counts.max()) > cap  # the states differ in how many operators apply
    policy = make_policy(dim=DIM, alpha=1.0, max_queries=cap)
    eager = policy(real_obs)
    policy.compile(backend="aot_eager")
    calls = []
    compiled = policy._compiled_forward
    policy._compiled_forward = lambda *args: calls.append(1) or compiled(*args)
    out = policy(real_obs)
    assert not calls
    torch.testing.assert_close(out.logits, eager.logits)
    # The states within the cap take the compiled graph, and it agrees with eager there.
    fits = (counts <= cap).nonzero().squeeze(1).numpy()
    assert len(fits) > 0
    within = {key: value[fits] for key, value in real_obs.items()}
    out = policy(within)
    assert calls
    policy._compiled_forward = None
    torch.testing.assert_close(out.logits, policy(within).logits, rtol=1e-5, atol=1e-6)
