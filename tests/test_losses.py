import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from crossmoe import AuxLossWeights, aux_loss
from crossmoe.losses import (
    expert_diversity_loss,
    expert_overlap_penalty,
    hypergraph_alignment_loss,
    load_balance_loss,
    router_z_loss,
    routing_entropy,
    semantic_orthogonality_loss,
    temporal_consistency_loss,
)

LOSS_NAMES = ("load_balance", "router_z", "diversity", "orthogonality", "alignment", "temporal", "overlap", "entropy")


def _randn(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def _simplex(*shape, seed=0, scale=2.0):
    return torch.softmax(_randn(*shape, seed=seed, scale=scale), dim=-1)


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


def _reference_target(operator_scores, operator_to_expert, applicable, num_experts):
    target = torch.zeros(operator_scores.shape[0], num_experts, dtype=torch.float64)
    for b in range(operator_scores.shape[0]):
        kept = [o for o in range(operator_scores.shape[1]) if applicable[b, o]]
        normaliser = sum(math.exp(float(operator_scores[b, o])) for o in kept)
        for o in kept:
            target[b, operator_to_expert[o]] += math.exp(float(operator_scores[b, o])) / normaliser
    return target


def _reference_balanced_target(operator_scores, operator_to_expert, applicable, num_experts, smoothing=0.0):
    """Softmax over the experts with an applicable operator of the mean score of those operators, then smoothed."""
    target = torch.zeros(operator_scores.shape[0], num_experts, dtype=torch.float64)
    for b in range(operator_scores.shape[0]):
        means = {}
        for e in range(num_experts):
            owned = [
                float(operator_scores[b, o])
                for o in range(len(operator_to_expert))
                if applicable[b, o] and int(operator_to_expert[o]) == e
            ]
            if owned:
                means[e] = sum(owned) / len(owned)
        normaliser = sum(math.exp(m) for m in means.values())
        for e in range(num_experts):
            share = math.exp(means[e]) / normaliser if e in means else 0.0
            target[b, e] = (1 - smoothing) * share + smoothing / num_experts
    return target


def _implied_target(loss_fn, router_weights, eps=1e-6):
    """The target a KL-to-``router_weights`` loss uses, read off its gradient: dL/dw_e = -t_e / (w_e + eps) / B."""
    weights = router_weights.detach().clone().requires_grad_()
    loss_fn(weights).backward()
    return -weights.grad * (weights.detach() + eps) * weights.shape[0]


def _reference_kl(target, router_weights, eps=1e-6):
    num_experts = router_weights.shape[-1]
    rows = []
    for t, w in zip(target.tolist(), router_weights.tolist(), strict=True):
        smoothed = [(w_e + eps) / (1 + num_experts * eps) for w_e in w]
        rows.append(sum(t_e * math.log(t_e / s_e) for t_e, s_e in zip(t, smoothed, strict=True) if t_e > 0))
    return sum(rows) / len(rows)


simplex_shapes = st.tuples(st.integers(1, 8), st.integers(2, 6))


# load_balance_loss


def test_load_balance_is_one_at_perfect_balance_and_num_experts_at_collapse():
    num_experts = 4
    balanced = torch.eye(num_experts, dtype=torch.float64).repeat(3, 1)
    collapsed = torch.zeros(12, num_experts, dtype=torch.float64)
    collapsed[:, 2] = 1.0
    assert load_balance_loss(balanced).item() == pytest.approx(1.0)
    assert load_balance_loss(collapsed).item() == pytest.approx(num_experts)
    assert load_balance_loss(torch.full((5, num_experts), 0.25, dtype=torch.float64)).item() == pytest.approx(1.0)


def test_load_balance_matches_hand_computed_switch_loss():
    probs = _f64([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    # f = (2, 1, 1) / 4, P = (1.6, 1.1, 1.3) / 4
    expected = 3 * (0.5 * 0.4 + 0.25 * 0.275 + 0.25 * 0.325)
    assert load_balance_loss(probs).item() == pytest.approx(expected)
    assert load_balance_loss(probs.reshape(2, 2, 3)).item() == pytest.approx(expected)


def test_load_balance_gradient_flows_through_mean_probabilities_only():
    probs = _f64([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]]).requires_grad_()
    load_balance_loss(probs).backward()
    expected_row = 3 * _f64([0.5, 0.25, 0.25]) / 4
    torch.testing.assert_close(probs.grad, expected_row.expand(4, 3))


@given(assignment=st.lists(st.integers(0, 4), min_size=1, max_size=20))
def test_load_balance_of_one_hot_routing_is_e_times_sum_of_squared_fractions(assignment):
    num_experts = 5
    probs = F.one_hot(torch.tensor(assignment), num_experts).to(torch.float64)
    fractions = [assignment.count(i) / len(assignment) for i in range(num_experts)]
    expected = num_experts * sum(f * f for f in fractions)
    loss = load_balance_loss(probs).item()
    assert loss == pytest.approx(expected)
    assert loss >= 1.0 - 1e-12


@given(shape=simplex_shapes, seed=st.integers(0, 2**16), scale=st.floats(0.0, 10.0))
def test_load_balance_lies_between_zero_and_num_experts(shape, seed, scale):
    loss = load_balance_loss(_simplex(*shape, seed=seed, scale=scale)).item()
    assert 0.0 <= loss <= shape[1] + 1e-9


# router_z_loss


def test_router_z_loss_is_mean_squared_logsumexp():
    logits = _f64([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    lse = [math.log(math.e + math.e**2 + math.e**3), math.log(3.0)]
    expected = (lse[0] ** 2 + lse[1] ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected)
    assert router_z_loss(logits.reshape(2, 1, 3)).item() == pytest.approx(expected)


@given(shape=simplex_shapes, seed=st.integers(0, 2**16), scale=st.floats(0.0, 20.0))
def test_router_z_loss_is_non_negative_and_zero_when_logsumexp_vanishes(shape, seed, scale):
    logits = _randn(*shape, seed=seed, scale=scale)
    assert router_z_loss(logits).item() >= 0.0
    centred = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    assert router_z_loss(centred).item() == pytest.approx(0.0, abs=1e-12)


# expert_diversity_loss


def test_diversity_matches_hand_computed_cosine_for_two_experts():
    expert_logits = _f64([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    # pi_1 = (1/2, 1/2), pi_2 = (3/4, 1/4): cosine = 0.5 / sqrt(0.5 * 0.625)
    assert expert_diversity_loss(expert_logits).item() == pytest.approx(2 / math.sqrt(5))


def test_diversity_matches_pairwise_cosine_reference():
    expert_logits = _randn(3, 4, 6, seed=1, scale=2.0)
    policies = torch.softmax(expert_logits, dim=-1)
    per_sample = []
    for b in range(3):
        pairs = [F.cosine_similarity(policies[b, i], policies[b, j], dim=0) for i in range(4) for j in range(i + 1, 4)]
        per_sample.append(torch.stack(pairs).mean())
    expected = torch.stack(per_sample).mean()
    torch.testing.assert_close(expert_diversity_loss(expert_logits), expected)


def test_diversity_is_one_when_all_experts_propose_the_same_distribution():
    expert_logits = _randn(2, 1, 7, seed=2).expand(2, 4, 7)
    assert expert_diversity_loss(expert_logits).item() == pytest.approx(1.0)


@given(
    num_experts=st.integers(2, 5),
    extra_actions=st.integers(0, 3),
    seed=st.integers(0, 2**16),
    scale=st.floats(20.0, 40.0),
)
def test_diversity_is_lower_for_disjoint_experts_than_identical_ones(num_experts, extra_actions, seed, scale):
    num_actions = num_experts + extra_actions
    actions = torch.randperm(num_actions, generator=torch.Generator().manual_seed(seed))[:num_experts]
    disjoint = F.one_hot(actions, num_actions).to(torch.float64).unsqueeze(0) * scale
    identical = disjoint[:, :1].expand(1, num_experts, num_actions)
    disjoint_loss = expert_diversity_loss(disjoint).item()
    assert disjoint_loss < 1e-6
    assert disjoint_loss < expert_diversity_loss(identical).item()


@given(shape=st.tuples(st.integers(1, 4), st.integers(2, 5), st.integers(1, 6)), seed=st.integers(0, 2**16))
def test_diversity_lies_in_unit_interval(shape, seed):
    loss = expert_diversity_loss(_randn(*shape, seed=seed, scale=5.0)).item()
    assert 0.0 <= loss <= 1.0 + 1e-12


def _reference_weighted_diversity(expert_logits, weights):
    policies = torch.softmax(expert_logits, dim=-1)
    numerator = denominator = 0.0
    for b in range(expert_logits.shape[0]):
        for i in range(expert_logits.shape[1]):
            for j in range(expert_logits.shape[1]):
                if i != j:
                    pair = float(weights[b, i] * weights[b, j])
                    cosine = float(F.cosine_similarity(policies[b, i], policies[b, j], dim=0))
                    numerator += pair * cosine
                    denominator += pair
    return numerator / denominator


def test_weighted_diversity_matches_pair_weighted_cosine_reference():
    expert_logits = _randn(4, 3, 5, seed=40, scale=2.0)
    weights = _f64([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.6, 0.4]])
    loss = expert_diversity_loss(expert_logits, weights)
    assert loss.item() == pytest.approx(_reference_weighted_diversity(expert_logits, weights))
    # a sample routed to one expert has no pair and does not count
    assert expert_diversity_loss(expert_logits[[0, 1, 3]], weights[[0, 1, 3]]).item() == pytest.approx(loss.item())


@given(shape=st.tuples(st.integers(1, 4), st.integers(2, 5), st.integers(1, 6)), seed=st.integers(0, 2**16))
def test_weighted_diversity_with_uniform_weights_equals_unweighted(shape, seed):
    expert_logits = _randn(*shape, seed=seed, scale=3.0)
    uniform = torch.full(shape[:2], 1.0 / shape[1], dtype=torch.float64)
    torch.testing.assert_close(expert_diversity_loss(expert_logits, uniform), expert_diversity_loss(expert_logits))


def test_weighted_diversity_gives_an_unrouted_expert_no_gradient():
    expert_logits = _randn(6, 3, 5, seed=41, scale=2.0).requires_grad_()
    weights = _simplex(6, 3, seed=42)
    weights[:, 2] = 0.0  # expert 2 is never routed to
    weights = weights / weights.sum(-1, keepdim=True)
    (weighted_grad,) = torch.autograd.grad(expert_diversity_loss(expert_logits, weights), expert_logits)
    assert torch.equal(weighted_grad[:, 2], torch.zeros(6, 5, dtype=torch.float64))
    assert weighted_grad[:, :2].abs().sum() > 0
    (unweighted_grad,) = torch.autograd.grad(expert_diversity_loss(expert_logits), expert_logits)
    assert unweighted_grad[:, 2].abs().sum() > 0  # the unweighted loss pushes it away from the others


def test_weighted_diversity_detaches_the_weights_and_checks_their_shape():
    expert_logits = _randn(2, 3, 4, seed=43).requires_grad_()
    weights = _simplex(2, 3, seed=44).requires_grad_()
    expert_diversity_loss(expert_logits, weights).backward()
    assert weights.grad is None and expert_logits.grad is not None
    with pytest.raises(ValueError, match=r"weights must be \(\.\.\., E\) = \(2, 3\), got shape \(2, 4\)"):
        expert_diversity_loss(expert_logits, torch.rand(2, 4, dtype=torch.float64))


# semantic_orthogonality_loss


def test_orthogonality_is_zero_for_orthonormal_and_scaled_orthogonal_vectors():
    assert semantic_orthogonality_loss(torch.eye(4, 6, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)
    basis, _ = torch.linalg.qr(_randn(6, 6, seed=3))
    scaled_orthogonal = basis.T[:4] * _f64([0.5, 2.0, 3.0, 10.0]).unsqueeze(-1)
    assert semantic_orthogonality_loss(scaled_orthogonal).item() == pytest.approx(0.0, abs=1e-12)


def test_orthogonality_is_e_times_e_minus_one_for_parallel_vectors():
    direction = _randn(1, 5, seed=4)
    parallel = direction * _f64([[1.0], [2.0], [0.5], [-3.0]])
    assert semantic_orthogonality_loss(parallel).item() == pytest.approx(4 * 3)


def test_orthogonality_matches_hand_value_and_averages_over_batch():
    at_45_degrees = _f64([[1.0, 0.0], [1.0, 1.0]])
    # off-diagonal cosine 1/sqrt(2), squared twice
    assert semantic_orthogonality_loss(at_45_degrees).item() == pytest.approx(1.0)
    batch = torch.stack([_f64([[1.0, 0.0], [0.0, 2.0]]), at_45_degrees, _f64([[1.0, 1.0], [2.0, 2.0]])])
    assert semantic_orthogonality_loss(batch).item() == pytest.approx((0.0 + 1.0 + 2.0) / 3)


@given(shape=st.tuples(st.integers(1, 3), st.integers(2, 5), st.integers(1, 6)), seed=st.integers(0, 2**16))
def test_orthogonality_lies_between_zero_and_all_parallel_value(shape, seed):
    num_experts = shape[1]
    loss = semantic_orthogonality_loss(_randn(*shape, seed=seed)).item()
    assert 0.0 <= loss <= num_experts * (num_experts - 1) + 1e-9


# hypergraph_alignment_loss

OPERATOR_TO_EXPERT = torch.tensor([0, 0, 1])
OPERATOR_SCORES = _f64([[0.0, math.log(2.0), math.log(3.0)]])


def test_alignment_sum_target_is_softmax_mass_per_expert_over_all_operators():
    router_weights = _f64([[0.2, 0.8]])
    # softmax(scores) = (1, 2, 3) / 6, so the target is (1/2, 1/2)
    expected = _reference_kl(_f64([[0.5, 0.5]]), router_weights)
    loss = hypergraph_alignment_loss(router_weights, OPERATOR_SCORES, OPERATOR_TO_EXPERT, target="sum", smoothing=0.0)
    assert loss.item() == pytest.approx(expected)
    exact = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert loss.item() == pytest.approx(exact, abs=1e-5)


def test_alignment_sum_target_uses_only_applicable_operators():
    router_weights = _f64([[0.5, 0.5], [0.5, 0.5]])
    scores = OPERATOR_SCORES.expand(2, 3)
    applicable = torch.tensor([[True, False, True], [True, True, False]])
    # row 0: softmax over {0, 2} = (1, 3) / 4; row 1: all mass on expert 0
    target = _f64([[0.25, 0.75], [1.0, 0.0]])
    expected = _reference_kl(target, router_weights)
    loss = hypergraph_alignment_loss(
        router_weights, scores, OPERATOR_TO_EXPERT, applicable, target="sum", smoothing=0.0
    )
    assert loss.item() == pytest.approx(expected)
    assert torch.isfinite(loss)


def test_alignment_excludes_rows_without_applicable_operator():
    router_weights = _f64([[0.3, 0.7], [0.9, 0.1], [0.6, 0.4]])
    scores = OPERATOR_SCORES.expand(3, 3)
    applicable = torch.tensor([[True, True, True], [False, False, False], [True, False, True]])
    expected = _reference_kl(_f64([[0.5, 0.5], [0.25, 0.75]]), router_weights[[0, 2]])
    loss = hypergraph_alignment_loss(
        router_weights, scores, OPERATOR_TO_EXPERT, applicable, target="sum", smoothing=0.0
    )
    assert loss.item() == pytest.approx(expected)
    # the default (balanced) target leaves the same rows out
    balanced = _reference_balanced_target(scores[[0, 2]], OPERATOR_TO_EXPERT, applicable[[0, 2]], 2, smoothing=0.1)
    loss = hypergraph_alignment_loss(router_weights, scores, OPERATOR_TO_EXPERT, applicable)
    assert loss.item() == pytest.approx(_reference_kl(balanced, router_weights[[0, 2]]))


def test_alignment_is_zero_with_gradient_path_when_no_row_has_an_operator():
    router_weights = _f64([[0.3, 0.7], [0.9, 0.1]]).requires_grad_()
    applicable = torch.zeros(2, 3, dtype=torch.bool)
    for target in ("balanced", "sum"):
        loss = hypergraph_alignment_loss(
            router_weights, OPERATOR_SCORES.expand(2, 3), OPERATOR_TO_EXPERT, applicable, target=target
        )
        assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(router_weights.grad, torch.zeros(2, 2, dtype=torch.float64))


def test_alignment_target_is_detached_from_operator_scores():
    router_weights = _f64([[0.2, 0.8], [0.6, 0.4]]).requires_grad_()
    operator_scores = _randn(2, 3, seed=5).requires_grad_()
    for target in ("balanced", "sum"):
        hypergraph_alignment_loss(router_weights, operator_scores, OPERATOR_TO_EXPERT, target=target).backward()
    assert operator_scores.grad is None
    assert router_weights.grad is not None and router_weights.grad.abs().sum() > 0


@st.composite
def alignment_problems(draw):
    batch = draw(st.integers(1, 4))
    num_operators = draw(st.integers(1, 6))
    num_experts = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**16))
    operator_to_expert = torch.tensor(
        draw(st.lists(st.integers(0, num_experts - 1), min_size=num_operators, max_size=num_operators))
    )
    row = st.lists(st.booleans(), min_size=num_operators, max_size=num_operators).filter(any)
    applicable = torch.tensor([draw(row) for _ in range(batch)])
    operator_scores = _randn(batch, num_operators, seed=seed, scale=3.0)
    return operator_scores, operator_to_expert, applicable, num_experts, seed


@pytest.mark.parametrize("target", ["sum", "balanced"])
@given(problem=alignment_problems(), smoothing=st.sampled_from([0.0, 0.1, 0.5]))
def test_alignment_is_smallest_when_router_weights_equal_target(problem, smoothing, target):
    operator_scores, operator_to_expert, applicable, num_experts, seed = problem
    if target == "sum":
        expected = _reference_target(operator_scores, operator_to_expert, applicable, num_experts)
        expected = (1 - smoothing) * expected + smoothing / num_experts
    else:
        expected = _reference_balanced_target(operator_scores, operator_to_expert, applicable, num_experts, smoothing)
    other = _simplex(operator_scores.shape[0], num_experts, seed=seed + 1, scale=3.0)
    kwargs = {"target": target, "smoothing": smoothing}
    at_target = hypergraph_alignment_loss(expected, operator_scores, operator_to_expert, applicable, **kwargs).item()
    elsewhere = hypergraph_alignment_loss(other, operator_scores, operator_to_expert, applicable, **kwargs).item()
    assert elsewhere == pytest.approx(_reference_kl(expected, other), rel=1e-6, abs=1e-9)
    assert 0.0 <= at_target < 1e-5
    assert elsewhere >= 0.0
    assume(0.5 * (expected - other).abs().sum(-1).max().item() > 0.1)
    assert elsewhere > at_target


def test_alignment_balanced_target_matches_hand_computation():
    router_weights = _f64([[0.2, 0.8]])
    # expert 0 owns scores (0, log 2): mean log(2) / 2; expert 1 owns log 3. softmax: (sqrt 2, 3) / (sqrt 2 + 3)
    share = math.sqrt(2) / (math.sqrt(2) + 3)
    for smoothing in (0.0, 0.1, 0.5):
        target = [(1 - smoothing) * share + smoothing / 2, (1 - smoothing) * (1 - share) + smoothing / 2]
        exact = sum(t * math.log(t / w) for t, w in zip(target, (0.2, 0.8), strict=True))
        loss = hypergraph_alignment_loss(router_weights, OPERATOR_SCORES, OPERATOR_TO_EXPERT, smoothing=smoothing)
        assert loss.item() == pytest.approx(exact, abs=1e-5)
        assert loss.item() == pytest.approx(_reference_kl(_f64([target]), router_weights))
        implied = _implied_target(
            lambda w, smoothing=smoothing: hypergraph_alignment_loss(
                w, OPERATOR_SCORES, OPERATOR_TO_EXPERT, smoothing=smoothing
            ),
            router_weights,
        )
        torch.testing.assert_close(implied, _f64([target]))
    # the default is the balanced target with smoothing 0.1
    default = hypergraph_alignment_loss(router_weights, OPERATOR_SCORES, OPERATOR_TO_EXPERT)
    assert default.item() == pytest.approx(
        hypergraph_alignment_loss(
            router_weights, OPERATOR_SCORES, OPERATOR_TO_EXPERT, target="balanced", smoothing=0.1
        ).item()
    )


def test_alignment_balanced_target_does_not_grow_with_the_number_of_applicable_operators():
    # expert 0 owns five operators, expert 1 one, all with the same score
    operator_to_expert = torch.tensor([0, 0, 0, 0, 0, 1])
    scores = torch.full((1, 6), 0.7, dtype=torch.float64)
    router_weights = _f64([[0.9, 0.1]])

    def target(applicable, kind):
        return _implied_target(
            lambda w: hypergraph_alignment_loss(w, scores, operator_to_expert, applicable, target=kind, smoothing=0.0),
            router_weights,
        )

    every = torch.ones(1, 6, dtype=torch.bool)
    one_each = torch.tensor([[True, False, False, False, False, True]])
    torch.testing.assert_close(target(every, "balanced"), _f64([[0.5, 0.5]]))
    torch.testing.assert_close(target(one_each, "balanced"), _f64([[0.5, 0.5]]))
    # the sum target counts operators: five to one
    torch.testing.assert_close(target(every, "sum"), _f64([[5 / 6, 1 / 6]]))
    torch.testing.assert_close(target(one_each, "sum"), _f64([[0.5, 0.5]]))


def test_alignment_smoothing_floors_every_expert_at_smoothing_over_e():
    # three experts; only expert 1 has an applicable operator
    operator_to_expert = torch.tensor([0, 1, 2])
    scores = _f64([[5.0, -1.0, 3.0]])
    applicable = torch.tensor([[False, True, False]])
    router_weights = _f64([[0.3, 0.4, 0.3]])
    for kind in ("balanced", "sum"):
        for smoothing, expected in ((0.0, [0.0, 1.0, 0.0]), (0.3, [0.1, 0.8, 0.1])):
            implied = _implied_target(
                lambda w, kind=kind, smoothing=smoothing: hypergraph_alignment_loss(
                    w, scores, operator_to_expert, applicable, target=kind, smoothing=smoothing
                ),
                router_weights,
            )
            torch.testing.assert_close(implied, _f64([expected]))
    # with the floor, routing nothing to the experts without operators costs smoothing / E * log(1 / eps) each
    zero_weight = _f64([[0.0, 1.0, 0.0]])
    floored = hypergraph_alignment_loss(zero_weight, scores, operator_to_expert, applicable, smoothing=0.3)
    unfloored = hypergraph_alignment_loss(zero_weight, scores, operator_to_expert, applicable, smoothing=0.0)
    assert floored.item() == pytest.approx(_reference_kl(_f64([[0.1, 0.8, 0.1]]), zero_weight))
    assert floored.item() > 2.0 and unfloored.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": "mean"}, "target must be 'balanced' or 'sum', got 'mean'"),
        ({"smoothing": -0.1}, r"smoothing must lie in \[0, 1\], got -0.1"),
        ({"smoothing": 1.5}, r"smoothing must lie in \[0, 1\], got 1.5"),
    ],
)
def test_alignment_rejects_bad_target_and_smoothing(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hypergraph_alignment_loss(_f64([[0.5, 0.5]]), OPERATOR_SCORES, OPERATOR_TO_EXPERT, **kwargs)


# temporal_consistency_loss

TEMPORAL_WEIGHTS = _f64(
    [
        [[1.0, 0.0], [0.5, 0.5]],
        [[0.0, 1.0], [0.5, 0.5]],
        [[0.0, 1.0], [1.0, 0.0]],
    ]
)


def test_temporal_loss_is_mean_squared_step_change():
    # pair (0, 1): changes 2 and 0; pair (1, 2): changes 0 and 0.5
    dones = torch.zeros(3, 2, dtype=torch.bool)
    assert temporal_consistency_loss(TEMPORAL_WEIGHTS, dones).item() == pytest.approx(2.5 / 4)


def test_temporal_loss_excludes_pairs_that_cross_an_episode_start():
    dones = torch.zeros(3, 2, dtype=torch.bool)
    dones[1, 0] = True
    assert temporal_consistency_loss(TEMPORAL_WEIGHTS, dones).item() == pytest.approx(0.5 / 3)
    dones[0] = True
    assert temporal_consistency_loss(TEMPORAL_WEIGHTS, dones).item() == pytest.approx(0.5 / 3)
    float_dones = dones.to(torch.float64)
    assert temporal_consistency_loss(TEMPORAL_WEIGHTS, float_dones).item() == pytest.approx(0.5 / 3)


def test_temporal_loss_is_zero_when_no_pair_is_left():
    all_new = torch.ones(3, 2, dtype=torch.bool)
    assert temporal_consistency_loss(TEMPORAL_WEIGHTS, all_new).item() == 0.0
    single_step = TEMPORAL_WEIGHTS[:1]
    assert temporal_consistency_loss(single_step, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(2, 5)),
    seed=st.integers(0, 2**16),
    done_rate=st.floats(0.0, 1.0),
)
def test_temporal_loss_is_non_negative_and_zero_for_constant_routing(shape, seed, done_rate):
    dones = torch.rand(shape[:2], generator=torch.Generator().manual_seed(seed)) < done_rate
    assert temporal_consistency_loss(_simplex(*shape, seed=seed), dones).item() >= 0.0
    constant = _simplex(1, *shape[1:], seed=seed).expand(*shape)
    assert temporal_consistency_loss(constant, dones).item() == 0.0


# expert_overlap_penalty


@pytest.mark.parametrize("num_experts", [2, 3, 4, 8])
def test_overlap_is_half_one_minus_one_over_e_for_uniform_and_zero_for_one_hot(num_experts):
    uniform = torch.full((3, num_experts), 1.0 / num_experts, dtype=torch.float64)
    one_hot = torch.eye(num_experts, dtype=torch.float64)
    assert expert_overlap_penalty(uniform).item() == pytest.approx(0.5 * (1 - 1 / num_experts))
    assert expert_overlap_penalty(one_hot).item() == 0.0


def test_overlap_matches_hand_computed_pairwise_products():
    weights = _f64([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    assert expert_overlap_penalty(weights).item() == pytest.approx((0.15 + 0.10 + 0.06 + 0.0) / 2)


@given(shape=simplex_shapes, seed=st.integers(0, 2**16), scale=st.floats(0.0, 10.0))
def test_overlap_is_pairwise_sum_bounded_by_uniform_value(shape, seed, scale):
    weights = _simplex(*shape, seed=seed, scale=scale)
    num_experts = shape[1]
    pairwise = sum(weights[:, i] * weights[:, j] for i in range(num_experts) for j in range(i + 1, num_experts))
    penalty = expert_overlap_penalty(weights).item()
    assert penalty == pytest.approx(pairwise.mean().item(), abs=1e-12)
    assert 0.0 <= penalty <= 0.5 * (1 - 1 / num_experts) + 1e-12


# routing_entropy


@pytest.mark.parametrize("num_experts", [2, 4, 7])
def test_entropy_is_log_e_for_uniform_and_zero_for_one_hot(num_experts):
    uniform = torch.full((2, num_experts), 1.0 / num_experts, dtype=torch.float64)
    assert routing_entropy(uniform).item() == pytest.approx(math.log(num_experts))
    assert routing_entropy(torch.eye(num_experts, dtype=torch.float64)).item() == 0.0


def test_entropy_of_sparse_weights_is_finite_and_in_nats():
    weights = _f64([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    expected = (math.log(2) + (0.5 * math.log(4) + 0.5 * math.log(2))) / 2
    assert routing_entropy(weights).item() == pytest.approx(expected)


@pytest.mark.parametrize("alpha", [1.5, 1.7, 2.0])
def test_entropy_gradient_is_finite_through_entmax_with_exact_zeros(alpha):
    from crossmoe.functional import entmax

    logits = _f64([[3.0, 0.0, -3.0, -5.0]]).requires_grad_()
    weights = entmax(logits, alpha=alpha)
    assert (weights == 0).any()
    routing_entropy(weights).backward()
    assert torch.isfinite(logits.grad).all()


@given(shape=simplex_shapes, seed=st.integers(0, 2**16), scale=st.floats(0.0, 10.0))
def test_entropy_lies_between_zero_and_log_e(shape, seed, scale):
    entropy = routing_entropy(_simplex(*shape, seed=seed, scale=scale)).item()
    assert -1e-12 <= entropy <= math.log(shape[1]) + 1e-12


# value errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: load_balance_loss(torch.rand(4)), "probs must be"),
        (lambda: router_z_loss(torch.tensor(1.0)), "logits must be"),
        (lambda: expert_diversity_loss(torch.rand(4)), "expert_logits must be"),
        (lambda: expert_diversity_loss(torch.rand(3, 1, 5)), "at least 2 experts"),
        (lambda: semantic_orthogonality_loss(torch.rand(4)), "expert_features must be"),
        (lambda: expert_overlap_penalty(torch.tensor(0.5)), "weights must be"),
        (lambda: routing_entropy(torch.tensor(0.5)), "weights must be"),
        (lambda: temporal_consistency_loss(torch.rand(4, 3), torch.zeros(4)), r"weights must be \(T, B, E\)"),
        (lambda: temporal_consistency_loss(torch.rand(4, 2, 3), torch.zeros(4, 3)), "dones must be"),
        (lambda: temporal_consistency_loss(torch.rand(4, 2, 3), torch.zeros(4)), "dones must be"),
    ],
)
def test_losses_reject_wrong_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"router_weights": torch.rand(2)}, "router_weights must be"),
        ({"router_weights": torch.rand(2, 2, 2)}, "router_weights must be"),
        ({"operator_scores": torch.rand(3)}, "operator_scores must be"),
        ({"operator_scores": torch.rand(3, 3)}, "operator_scores must be"),
        ({"operator_to_expert": torch.tensor([0, 0, 1], dtype=torch.int32)}, "operator_to_expert must be a LongTensor"),
        ({"operator_to_expert": torch.tensor([0, 1])}, "operator_to_expert must be a LongTensor"),
        ({"operator_to_expert": torch.tensor([[0, 0, 1]])}, "operator_to_expert must be a LongTensor"),
        ({"operator_to_expert": torch.tensor([0, 2, 1])}, "operator_to_expert values"),
        ({"operator_to_expert": torch.tensor([0, -1, 1])}, "operator_to_expert values"),
        ({"applicable": torch.ones(2, 3)}, "applicable must be a bool"),
        ({"applicable": torch.ones(2, 2, dtype=torch.bool)}, "applicable must be a bool"),
        ({"applicable": torch.ones(3, dtype=torch.bool)}, "applicable must be a bool"),
    ],
)
def test_alignment_rejects_bad_inputs(kwargs, match):
    arguments = {
        "router_weights": torch.full((2, 2), 0.5),
        "operator_scores": torch.zeros(2, 3),
        "operator_to_expert": torch.tensor([0, 0, 1]),
        "applicable": None,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        hypergraph_alignment_loss(**arguments)


# gradcheck


def test_gradcheck_router_z_loss():
    logits = _randn(3, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(router_z_loss, (logits,))


def test_gradcheck_expert_overlap_penalty():
    weights = _simplex(3, 4, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(expert_overlap_penalty, (weights,))


def test_gradcheck_semantic_orthogonality_loss():
    features = _randn(2, 3, 5, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(semantic_orthogonality_loss, (features,))


def test_gradcheck_hypergraph_alignment_loss_wrt_router_weights():
    router_weights = _simplex(3, 2, seed=9).requires_grad_()
    operator_scores = _randn(3, 3, seed=10)
    applicable = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])

    def loss(weights):
        return hypergraph_alignment_loss(weights, operator_scores, OPERATOR_TO_EXPERT, applicable)

    assert torch.autograd.gradcheck(loss, (router_weights,))


@pytest.mark.parametrize(
    ("loss", "make_input"),
    [
        (load_balance_loss, lambda: _simplex(5, 3, seed=11)),
        (expert_diversity_loss, lambda: _randn(2, 3, 4, seed=12)),
        (routing_entropy, lambda: _simplex(4, 3, seed=13)),
        (lambda w: temporal_consistency_loss(w, torch.tensor([[0, 0], [1, 0], [0, 0]])), lambda: _simplex(3, 2, 3)),
    ],
)
def test_gradcheck_remaining_differentiable_losses(loss, make_input):
    assert torch.autograd.gradcheck(loss, (make_input().requires_grad_(),))


# AuxLossWeights


def test_aux_loss_weights_scaled_multiplies_named_coefficients_only():
    weights = AuxLossWeights(load_balance=0.01, alignment=0.05)
    scaled = weights.scaled({"alignment": 0.5, "load_balance": 2})
    assert scaled.alignment == pytest.approx(0.025)
    assert scaled.load_balance == pytest.approx(0.02)
    assert (scaled.router_z, scaled.temporal, scaled.entropy) == (weights.router_z, weights.temporal, weights.entropy)
    assert weights.alignment == 0.05


def test_aux_loss_weights_scaled_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"multipliers must name aux losses.*'balance'"):
        AuxLossWeights().scaled({"balance": 2.0})


def test_aux_loss_weights_reject_non_numbers():
    with pytest.raises(ValueError, match=r"AuxLossWeights\.alignment must be a number"):
        AuxLossWeights(alignment=float("nan"))
    with pytest.raises(ValueError, match=r"AuxLossWeights\.temporal must be a number"):
        AuxLossWeights(temporal="0.1")


# aux_loss


def _only(**coefficients):
    return AuxLossWeights(**{name: coefficients.get(name, 0.0) for name in LOSS_NAMES})


def _policy_outputs(time=3, batch=2, num_experts=3, num_actions=5, num_operators=4, features=6):
    router_logits = _randn(time, batch, num_experts, seed=20, scale=2.0).requires_grad_()
    return {
        "router_logits": router_logits,
        "router_weights": _simplex(time, batch, num_experts, seed=21).requires_grad_(),
        "expert_logits": _randn(time * batch, num_experts, num_actions, seed=22).requires_grad_(),
        "expert_features": _randn(num_experts, features, seed=23).requires_grad_(),
        "operator_scores": _randn(time, batch, num_operators, seed=24),
        "applicable": torch.rand(time, batch, num_operators, generator=torch.Generator().manual_seed(25)) < 0.7,
    }


OPERATOR_TO_EXPERT_4 = torch.tensor([0, 2, 1, 2])
DONES = torch.tensor([[False, False], [True, False], [False, False]])


def _reference_parts(outputs, dones=DONES):
    router_weights = outputs["router_weights"]
    flat = router_weights.reshape(-1, router_weights.shape[-1])
    dense = torch.softmax(outputs["router_logits"], dim=-1).reshape(flat.shape)
    return {
        "load_balance": load_balance_loss(torch.softmax(outputs["router_logits"], dim=-1)),
        "router_z": router_z_loss(outputs["router_logits"]),
        # pairs weighted by the routing weights, flattened like expert_logits (T * B, E, A)
        "diversity": expert_diversity_loss(outputs["expert_logits"], flat),
        "orthogonality": semantic_orthogonality_loss(outputs["expert_features"]),
        # against the dense softmax of the router logits, not the (sparse) router weights
        "alignment": hypergraph_alignment_loss(
            dense,
            outputs["operator_scores"].reshape(flat.shape[0], -1),
            OPERATOR_TO_EXPERT_4,
            outputs["applicable"].reshape(flat.shape[0], -1),
        ),
        "temporal": temporal_consistency_loss(router_weights, dones),
        "overlap": expert_overlap_penalty(flat),
        "entropy": routing_entropy(flat),
    }


def test_aux_loss_total_is_weighted_sum_of_individual_losses():
    outputs = _policy_outputs()
    coefficients = dict(zip(LOSS_NAMES, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, -0.8), strict=True))
    total, parts = aux_loss(
        outputs, AuxLossWeights(**coefficients), operator_to_expert=OPERATOR_TO_EXPERT_4, dones=DONES
    )
    reference = _reference_parts(outputs)
    expected = sum(coefficients[name] * reference[name] for name in LOSS_NAMES)
    assert total.dim() == 0
    torch.testing.assert_close(total.double(), expected, rtol=1e-6, atol=1e-6)
    assert set(parts) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        assert not parts[name].requires_grad, name
        torch.testing.assert_close(parts[name].double(), reference[name].detach(), rtol=1e-6, atol=1e-6)


def test_aux_loss_temporal_term_uses_time_axis_and_other_terms_flatten_it():
    outputs = _policy_outputs()
    weights = _only(temporal=1.0)
    total, parts = aux_loss(outputs, weights, operator_to_expert=OPERATOR_TO_EXPERT_4, dones=DONES)
    reference = _reference_parts(outputs)
    torch.testing.assert_close(total, reference["temporal"])
    # dones[1, 0] drops one of the four pairs
    with_all_pairs = temporal_consistency_loss(outputs["router_weights"], torch.zeros_like(DONES))
    assert not torch.allclose(parts["temporal"], with_all_pairs.detach())
    for name in ("alignment", "overlap", "entropy"):
        torch.testing.assert_close(parts[name], reference[name].detach())


def test_aux_loss_zero_weight_terms_are_reported_but_add_no_value_or_gradient():
    outputs = _policy_outputs()
    weights = _only(alignment=2.0)
    total, parts = aux_loss(outputs, weights, operator_to_expert=OPERATOR_TO_EXPERT_4, dones=DONES)
    reference = _reference_parts(outputs)
    assert set(parts) == set(LOSS_NAMES)
    torch.testing.assert_close(parts["entropy"], reference["entropy"].detach())
    torch.testing.assert_close(total, 2.0 * reference["alignment"])
    total.backward()
    # the alignment term reads softmax(router_logits): the zero-weight terms add nothing to these gradients
    assert outputs["router_weights"].grad is None
    assert outputs["expert_logits"].grad is None
    assert outputs["expert_features"].grad is None
    router_logits = outputs["router_logits"].detach().requires_grad_()
    dense = torch.softmax(router_logits, dim=-1).reshape(-1, 3)
    alignment_only = 2.0 * hypergraph_alignment_loss(
        dense, outputs["operator_scores"].reshape(6, -1), OPERATOR_TO_EXPERT_4, outputs["applicable"].reshape(6, -1)
    )
    alignment_only.backward()
    torch.testing.assert_close(outputs["router_logits"].grad, router_logits.grad)


def test_aux_loss_with_every_weight_zero_returns_zero_total_and_all_parts():
    outputs = _policy_outputs()
    total, parts = aux_loss(outputs, _only(), operator_to_expert=OPERATOR_TO_EXPERT_4, dones=DONES)
    assert total.item() == 0.0
    assert set(parts) == set(LOSS_NAMES)


def test_aux_loss_reads_attributes_and_operator_to_expert_from_outputs():
    outputs = _policy_outputs()
    weights = AuxLossWeights(temporal=0.0)
    from_mapping, mapping_parts = aux_loss(outputs, weights, operator_to_expert=OPERATOR_TO_EXPERT_4)
    as_object = SimpleNamespace(**outputs, operator_to_expert=OPERATOR_TO_EXPERT_4)
    from_object, object_parts = aux_loss(as_object, weights)
    torch.testing.assert_close(from_object, from_mapping)
    assert set(object_parts) == set(mapping_parts) == set(LOSS_NAMES) - {"temporal"}


def test_aux_loss_leaves_out_zero_weight_terms_whose_inputs_are_missing():
    router_weights = _simplex(4, 3, seed=30)
    weights = _only(entropy=1.0)
    total, parts = aux_loss({"router_weights": router_weights}, weights)
    assert set(parts) == {"overlap", "entropy"}
    torch.testing.assert_close(total, routing_entropy(router_weights))


@pytest.mark.parametrize(
    ("present", "weight_name", "match"),
    [
        (("router_weights",), "load_balance", "'load_balance'.*router_logits"),
        (("router_weights",), "router_z", "'router_z'.*router_logits"),
        (("router_logits",), "diversity", "'diversity'.*expert_logits"),
        (("router_logits",), "orthogonality", "'orthogonality'.*expert_features"),
        (("router_weights",), "alignment", "'alignment'.*operator_scores"),
        (("router_logits",), "overlap", "'overlap'.*router_weights"),
        (("router_logits",), "entropy", "'entropy'.*router_weights"),
    ],
)
def test_aux_loss_with_non_zero_weight_and_missing_inputs_raises(present, weight_name, match):
    outputs = {name: value for name, value in _policy_outputs().items() if name in present}
    weights = _only(**{weight_name: 1.0})
    with pytest.raises(ValueError, match=match):
        aux_loss(outputs, weights)


def test_aux_loss_rejects_operator_scores_with_other_batch_dims():
    outputs = {**_policy_outputs(), "operator_scores": _policy_outputs()["operator_scores"][:-1]}
    with pytest.raises(ValueError, match=r"operator_scores must be \(\.\.\., O\) with the leading dims"):
        aux_loss(outputs, _only(alignment=1.0), operator_to_expert=torch.zeros(5, dtype=torch.long))


def test_aux_loss_alignment_without_operator_to_expert_raises():
    outputs = _policy_outputs()
    weights = _only(alignment=1.0)
    with pytest.raises(ValueError, match=r"'alignment'.*operator_to_expert"):
        aux_loss(outputs, weights)


def test_aux_loss_temporal_needs_time_major_weights_and_dones():
    outputs = _policy_outputs()
    weights = _only(temporal=1.0)
    with pytest.raises(ValueError, match="'temporal'"):
        aux_loss(outputs, weights)
    flat_outputs = {"router_weights": outputs["router_weights"].reshape(6, 3)}
    with pytest.raises(ValueError, match=r"\(T, B, E\)"):
        aux_loss(flat_outputs, weights, dones=DONES)


def test_aux_loss_keeps_float64_router_logits_in_float64():
    router_logits = _randn(4, 3, seed=31, scale=3.0).requires_grad_()
    weights = _only(load_balance=0.5, router_z=1.0)
    total, parts = aux_loss({"router_logits": router_logits}, weights)
    assert parts["router_z"].dtype == parts["load_balance"].dtype == torch.float64
    expected = 0.5 * load_balance_loss(torch.softmax(router_logits, dim=-1)) + router_z_loss(router_logits)
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda logits: aux_loss({"router_logits": logits}, weights)[0], (router_logits,))


def test_aux_loss_alignment_reaches_experts_that_sparse_routing_zeroes():
    from crossmoe.functional import entmax

    router_logits = _f64([[3.0, 0.0, -2.0], [-1.0, 2.5, -3.0], [0.5, 4.0, -1.0], [2.0, 1.9, -4.0]]).requires_grad_()
    router_weights = entmax(router_logits, alpha=2.0)  # sparsemax
    assert bool((router_weights[:, 2] == 0).all())  # expert 2 gets no weight anywhere
    operator_to_expert = torch.tensor([0, 1, 2, 2])
    outputs = {
        "router_logits": router_logits,
        "router_weights": router_weights,
        "operator_scores": _randn(4, 4, seed=45),
        "applicable": torch.ones(4, 4, dtype=torch.bool),
    }
    total, _ = aux_loss(outputs, _only(alignment=1.0), operator_to_expert=operator_to_expert)
    expected = hypergraph_alignment_loss(
        torch.softmax(router_logits, dim=-1), outputs["operator_scores"], operator_to_expert
    )
    torch.testing.assert_close(total, expected)
    (grad,) = torch.autograd.grad(total, router_logits)
    assert bool((grad[:, 2] != 0).all())  # the target gives expert 2 mass, and its logit is told so
    # through the sparse weights, as before, the unused expert's logit gets exactly nothing
    (sparse_grad,) = torch.autograd.grad(
        hypergraph_alignment_loss(router_weights, outputs["operator_scores"], operator_to_expert), router_logits
    )
    assert torch.equal(sparse_grad[:, 2], torch.zeros(4, dtype=torch.float64))


def test_aux_loss_weights_diversity_pairs_by_the_routing_weights():
    outputs = _policy_outputs()
    flat = outputs["router_weights"].reshape(-1, 3)
    _, parts = aux_loss(outputs, _only(diversity=1.0))
    torch.testing.assert_close(parts["diversity"], expert_diversity_loss(outputs["expert_logits"], flat).detach())
    assert not torch.allclose(parts["diversity"], expert_diversity_loss(outputs["expert_logits"]).detach())
    _, unweighted = aux_loss(outputs, _only(diversity=1.0), weighted_diversity=False)
    torch.testing.assert_close(unweighted["diversity"], expert_diversity_loss(outputs["expert_logits"]).detach())
    with pytest.raises(ValueError, match="one weight per expert of expert_logits"):
        aux_loss({"expert_logits": outputs["expert_logits"], "router_weights": flat[:4]}, _only(diversity=1.0))


def test_aux_loss_passes_the_alignment_target_and_smoothing_on():
    outputs = _policy_outputs()
    dense = torch.softmax(outputs["router_logits"], dim=-1).reshape(6, 3)
    args = (outputs["operator_scores"].reshape(6, -1), OPERATOR_TO_EXPERT_4, outputs["applicable"].reshape(6, -1))
    for target, smoothing in (("sum", 0.0), ("balanced", 0.3)):
        _, parts = aux_loss(
            outputs,
            _only(alignment=1.0),
            operator_to_expert=OPERATOR_TO_EXPERT_4,
            alignment_target=target,
            alignment_smoothing=smoothing,
        )
        expected = hypergraph_alignment_loss(dense, *args, target=target, smoothing=smoothing)
        torch.testing.assert_close(parts["alignment"], expected.detach())
