import math

import entmax as entmax_ref
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crossmoe.diagnostics import (
    attention_sparsity,
    context_norm,
    dead_experts,
    expert_usage,
    moe_diagnostics,
    routing_entropy,
)

ROUTER_WEIGHTS = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])

# (B=2, H=1, Nq=2, Nk=4); sample 0 keeps the first three keys, sample 1 keeps all four.
MASKED_ATTENTION = torch.tensor(
    [
        [[[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]],
        [[[0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 1.0, 0.0]]],
    ]
)
CONTEXT_MASK = torch.tensor([[True, True, True, False], [True, True, True, True]])


def test_attention_sparsity_counts_weights_below_threshold():
    attention = torch.tensor([[[[0.5, 0.5, 0.0, 0.0]], [[1e-7, 0.3, 0.7 - 1e-7, 0.0]]]])
    assert attention_sparsity(attention) == pytest.approx(4 / 8)
    assert attention_sparsity(attention, threshold=0.4) == pytest.approx(5 / 8)
    assert attention_sparsity(torch.full((2, 2, 3, 3), 1 / 3)) == 0.0


def test_attention_sparsity_without_mask_counts_every_key():
    assert attention_sparsity(MASKED_ATTENTION) == pytest.approx(8 / 16)


def test_attention_sparsity_with_mask_counts_only_kept_keys():
    # kept entries: 3 + 3 + 4 + 4 = 14; zeros among them: 1 + 2 + 0 + 3 = 6
    assert attention_sparsity(MASKED_ATTENTION, context_mask=CONTEXT_MASK) == pytest.approx(6 / 14)


def test_attention_sparsity_returns_a_python_float():
    assert isinstance(attention_sparsity(MASKED_ATTENTION, context_mask=CONTEXT_MASK), float)


def test_expert_usage_is_fraction_of_argmax_assignments():
    torch.testing.assert_close(expert_usage(ROUTER_WEIGHTS), torch.tensor([0.5, 0.25, 0.25]))
    torch.testing.assert_close(expert_usage(ROUTER_WEIGHTS.reshape(2, 2, 3)), torch.tensor([0.5, 0.25, 0.25]))


@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(2, 6)),
    seed=st.integers(0, 2**16),
)
def test_expert_usage_sums_to_one_and_matches_a_hand_count(shape, seed):
    weights = torch.softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3, dim=-1)
    usage = expert_usage(weights)
    num_experts = shape[-1]
    winners = [max(range(num_experts), key=row.__getitem__) for row in weights.reshape(-1, num_experts).tolist()]
    counted = torch.tensor([winners.count(e) / len(winners) for e in range(num_experts)])
    assert usage.shape == (num_experts,)
    torch.testing.assert_close(usage, counted)
    assert usage.sum().item() == pytest.approx(1.0)


def test_dead_experts_counts_an_expert_sparsemax_never_uses():
    logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    logits[:, 3] = -10.0
    weights = entmax_ref.sparsemax(logits, dim=-1)
    assert (weights[:, :3] > 0).any(dim=0).all()
    assert dead_experts(weights) == 1
    assert dead_experts(torch.softmax(logits, dim=-1)) == 0


def test_dead_experts_uses_threshold_inclusively():
    weights = torch.tensor([[0.999, 0.001, 0.0], [0.99, 0.01, 0.0]])
    assert dead_experts(weights) == 1
    assert dead_experts(weights, threshold=0.01) == 2
    assert dead_experts(weights, threshold=0.005) == 1


def test_context_norm_is_mean_l2_norm():
    assert context_norm(torch.tensor([[3.0, 4.0], [0.0, 0.0]])) == pytest.approx(2.5)
    batched = torch.tensor([[[3.0, 4.0], [6.0, 8.0]], [[0.0, 1.0], [0.0, 0.0]]])
    assert context_norm(batched) == pytest.approx((5.0 + 10.0 + 1.0 + 0.0) / 4)


def test_moe_diagnostics_reports_every_statistic_under_its_name():
    context = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    stats = moe_diagnostics(
        ROUTER_WEIGHTS,
        attention=MASKED_ATTENTION,
        context=context,
        context_mask=CONTEXT_MASK,
        names=("survival", "combat", "exploration"),
    )
    expected_entropy = -sum(w * math.log(w) for row in ROUTER_WEIGHTS.tolist() for w in row) / 4
    assert stats == {
        "routing_entropy": pytest.approx(expected_entropy),
        "dead_experts": 0.0,
        "usage/survival": pytest.approx(0.5),
        "usage/combat": pytest.approx(0.25),
        "usage/exploration": pytest.approx(0.25),
        # column means of ROUTER_WEIGHTS
        "weight/survival": pytest.approx(1.6 / 4),
        "weight/combat": pytest.approx(1.1 / 4),
        "weight/exploration": pytest.approx(1.3 / 4),
        "attention_sparsity": pytest.approx(6 / 14),
        "context_norm": pytest.approx(2.0),
    }
    assert all(isinstance(value, float) for value in stats.values())


def test_moe_diagnostics_default_names_and_optional_inputs():
    weights = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    stats = moe_diagnostics(weights)
    assert set(stats) == {
        "routing_entropy",
        "dead_experts",
        "usage/expert_0",
        "usage/expert_1",
        "usage/expert_2",
        "usage/expert_3",
        "weight/expert_0",
        "weight/expert_1",
        "weight/expert_2",
        "weight/expert_3",
    }
    assert stats["dead_experts"] == 2.0
    assert stats["routing_entropy"] == pytest.approx(math.log(2) / 2)
    assert stats["usage/expert_0"] == 1.0
    assert [stats[f"weight/expert_{e}"] for e in range(4)] == pytest.approx([0.75, 0.25, 0.0, 0.0])


@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(2, 5)),
    seed=st.integers(0, 2**16),
)
def test_moe_diagnostics_weight_is_the_mean_routing_weight_per_expert(shape, seed):
    weights = torch.softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3, dim=-1)
    num_experts = shape[-1]
    names = tuple(f"e{i}" for i in range(num_experts))
    stats = moe_diagnostics(weights, names=names)
    rows = weights.reshape(-1, num_experts).tolist()
    for e, name in enumerate(names):
        assert stats[f"weight/{name}"] == pytest.approx(sum(row[e] for row in rows) / len(rows), abs=1e-6)
    # unlike the top-1 share, the mean weights of a simplex sum to one
    assert sum(stats[f"weight/{name}"] for name in names) == pytest.approx(1.0, abs=1e-5)


def test_moe_diagnostics_entropy_matches_loss_function():
    weights = torch.softmax(torch.randn(8, 5, generator=torch.Generator().manual_seed(3)), dim=-1)
    assert moe_diagnostics(weights)["routing_entropy"] == pytest.approx(routing_entropy(weights).item())


@pytest.mark.parametrize("names", [("survival", "combat"), ("a", "b", "c", "d")])
def test_moe_diagnostics_rejects_wrong_number_of_names(names):
    with pytest.raises(ValueError, match=r"names must hold E=3 names, got"):
        moe_diagnostics(ROUTER_WEIGHTS, names=names)
