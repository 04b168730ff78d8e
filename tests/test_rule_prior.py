"""RulePrior: the rule agent as a learned bias, checked against crossmoe.rules.RuleAgent itself."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmoe.graph import Hypergraph, OperatorSpec
from crossmoe.knowledge import RulePrior
from crossmoe.rules import RuleAgent


def _graph_and_rules(mask: np.ndarray, priority_seed: int) -> tuple[Hypergraph, RuleAgent]:
    """A graph in which operator ``o`` needs condition ``o`` alone, so the atoms are the applicable operators."""
    operators, actions = mask.shape
    specs = [
        OperatorSpec(f"op{o}", requires=(f"c{o}",), actions=tuple(int(a) for a in np.flatnonzero(mask[o])))
        for o in range(operators)
    ]
    graph = Hypergraph([f"c{o}" for o in range(operators)], specs)
    named = np.random.default_rng(priority_seed).permutation(operators)[: max(1, operators // 2)]
    rules = RuleAgent(graph, lambda obs: obs["atoms"], list(range(actions)), priority=[f"op{o}" for o in named])
    return graph, rules


@settings(deadline=None, max_examples=60)
@given(
    operators=st.integers(1, 7),
    actions=st.integers(1, 6),
    batch=st.integers(1, 12),
    init=st.floats(0.5, 8.0),
    seed=st.integers(0, 2**16),
)
def test_the_prior_votes_for_exactly_the_actions_the_rule_agent_plays(operators, actions, batch, init, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((operators, actions)) < 0.5
    graph, rules = _graph_and_rules(mask, seed)
    prior = RulePrior.from_rules(rules, init=init)
    atoms = (rng.random((batch, operators)) < 0.4).astype(np.float32)
    bias = prior(graph.applicable(torch.from_numpy(atoms))).detach().numpy()
    operator, _ = rules.select({"atoms": atoms})  # the operator the rules play, -1 where none applies
    expected = np.where(operator[:, None] >= 0, init * mask[operator], 0.0)
    np.testing.assert_allclose(bias, expected, rtol=1e-6)
    # where an operator plays, the bias is positive exactly where the rules' own distribution is
    playing = operator >= 0
    np.testing.assert_array_equal(bias[playing] > 0, rules.action_probs({"atoms": atoms})[playing] > 0)


def test_a_fresh_policy_with_the_prior_follows_the_rules_greedily():
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    graph, rules = _graph_and_rules(mask, 0)  # priority: one named operator, then graph order
    prior = RulePrior.from_rules(rules, init=5.0)
    atoms = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=np.float32)
    logits = 0.01 * torch.randn(4, 3) + prior(graph.applicable(torch.from_numpy(atoms)))
    np.testing.assert_array_equal(logits.argmax(1).numpy(), rules.act({"atoms": atoms}))
    # one action of three at init 5: e^5 / (e^5 + 2) of the mass
    torch.testing.assert_close(
        logits.softmax(1).max(1).values, torch.full((4,), np.exp(5) / (np.exp(5) + 2)), atol=0.01, rtol=0
    )


def test_the_votes_are_learned_and_only_the_playing_operator_gets_gradient():
    mask = torch.tensor([[True, True, False], [False, True, True]])
    prior = RulePrior(mask, order=[1, 0], init=2.0)
    applicable = torch.tensor([[True, True], [True, False], [False, False]])
    torch.testing.assert_close(prior(applicable), torch.tensor([[0.0, 2.0, 2.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    prior(applicable[:1]).sum().backward()  # operator 1 comes first in the order and plays
    torch.testing.assert_close(prior.weight.grad, torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    with torch.no_grad():
        prior.weight.fill_(7.0)  # entries off the mask never reach the output
    torch.testing.assert_close(prior(applicable[1:2]), torch.tensor([[7.0, 7.0, 0.0]]))


def test_an_operator_left_out_of_the_order_never_votes():
    prior = RulePrior(torch.ones(3, 2, dtype=torch.bool), order=[2, 0], init=1.0)
    torch.testing.assert_close(prior(torch.tensor([[False, True, False]])), torch.zeros(1, 2))
    torch.testing.assert_close(prior(torch.tensor([[True, True, True]])), torch.ones(1, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"action_mask": torch.ones(3, dtype=torch.bool)}, r"action_mask must be a non-empty \(O, A\) bool tensor"),
        ({"order": [0, 3]}, r"order must list operator indices in \[0, 2\), got \[0, 3\]"),
        ({"order": [1, 1]}, r"order must name each operator once, got \[1, 1\]"),
        ({"init": float("nan")}, "init must be a number, got nan"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    arguments = {"action_mask": torch.ones(2, 2, dtype=torch.bool), "order": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        RulePrior(**arguments)
    with pytest.raises(ValueError, match=r"applicable must be \(B, O\) with O=2, got shape \(4, 3\)"):
        RulePrior(torch.ones(2, 2, dtype=torch.bool), order=[0, 1])(torch.ones(4, 3, dtype=torch.bool))


def test_it_compiles_to_the_eager_result():
    prior = RulePrior(torch.tensor([[True, False], [True, True], [False, True]]), order=[2, 0, 1], init=3.0)
    applicable = torch.rand(16, 3) < 0.5
    torch.testing.assert_close(torch.compile(prior, backend="eager")(applicable), prior(applicable))
