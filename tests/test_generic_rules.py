"""crossmoe.rules.RuleAgent: a hypergraph played as rules, for any environment, from the public API alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossmoe.hypergraph import Hypergraph, OperatorSpec, env_actions
from crossmoe.rules import RuleAgent

# A toy domain: a door ahead or a key here, and four actions.
ACTIONS = ["Act.turn", "Act.forward", "Act.pick_up", "Act.open"]
GRAPH = Hypergraph(
    ["door_ahead", "key_here", "has_key"],
    [
        OperatorSpec("open_door", requires=("door_ahead", "has_key"), actions=("Act.open",)),
        OperatorSpec("pick_up_key", requires=("key_here",), actions=("Act.pick_up",)),
        OperatorSpec("wander", actions=("Act.turn", "Act.forward")),
    ],
)


def atoms(obs):
    return obs["flags"]


def test_first_applicable_operator_in_priority_order_with_the_observations_own_atoms():
    agent = RuleAgent(GRAPH, atoms, action_set=ACTIONS, priority=("open_door", "pick_up_key"), seed=0)
    flags = np.array([[1, 1, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    operators, actions = agent.select({"flags": flags})
    assert [GRAPH.operators[o] for o in operators] == ["open_door", "pick_up_key", "wander", "wander"]
    assert actions[:2].tolist() == [3, 2] and set(actions[2:]) <= {0, 1}
    # An "atoms" entry is used instead of the function, as a tensor too.
    operators, _ = agent.select({"atoms": torch.as_tensor(flags[::-1].copy())})
    assert [GRAPH.operators[o] for o in operators] == ["wander", "wander", "pick_up_key", "open_door"]
    np.testing.assert_allclose(
        agent.action_probs({"flags": flags}), [[0, 0, 0, 1], [0, 0, 1, 0], [0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]]
    )


def test_operators_without_an_action_in_the_env_are_never_chosen():
    agent = RuleAgent(GRAPH, atoms, action_set=ACTIONS[:3], priority=("open_door",))  # this env cannot open
    assert "open_door" not in agent.priority
    operators, _ = agent.select({"flags": np.ones((1, 3), dtype=np.float32)})
    assert GRAPH.operators[operators[0]] == "pick_up_key"
    # An env in which no operator has an action: no operator plays, and every action is equally likely.
    lost = RuleAgent(GRAPH, atoms, action_set=["Act.jump", "Act.swim"])
    assert lost.priority == ()
    operators, actions = lost.select({"flags": np.ones((3, 3), dtype=np.float32)})
    assert operators.tolist() == [-1, -1, -1] and set(actions) <= {0, 1}
    np.testing.assert_allclose(lost.action_probs({"flags": np.zeros((2, 3), dtype=np.float32)}), np.full((2, 2), 0.5))


def test_epsilon_softens_the_rules_and_samples_what_action_probs_says():
    """With ``epsilon`` the agent plays any action with that probability: its distribution is the rules' mixed
    with ``epsilon / A`` of every action, the sampled frequencies match it, and epsilon 0 keeps the rules'
    own random stream."""
    flags = np.array([[1, 1, 1], [0, 0, 0]], dtype=np.float32)  # open_door; wander (turn or forward)
    soft = RuleAgent(GRAPH, atoms, action_set=ACTIONS, priority=("open_door",), seed=0, epsilon=0.2)
    np.testing.assert_allclose(
        soft.action_probs({"flags": flags}), [[0.05, 0.05, 0.05, 0.85], [0.45, 0.45, 0.05, 0.05]], rtol=1e-6
    )
    batch = {"flags": np.tile(flags, (20_000, 1))}  # the two states alternate
    operators, actions = soft.select(batch)
    counts = np.stack([np.bincount(actions[i::2], minlength=4) for i in range(2)]) / 20_000
    np.testing.assert_allclose(counts, soft.action_probs({"flags": flags}), atol=0.015)
    assert 0.17 < (operators == -1).mean() < 0.23  # a random step is no operator's
    plain = RuleAgent(GRAPH, atoms, action_set=ACTIONS, seed=3)
    zero = RuleAgent(GRAPH, atoms, action_set=ACTIONS, seed=3, epsilon=0.0)
    np.testing.assert_array_equal(plain.act(batch), zero.act(batch))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(hypergraph="graph.json"), TypeError, "hypergraph must be a crossmoe Hypergraph"),
        (dict(atoms=np.zeros(3)), TypeError, "atoms must be a function"),
        (dict(action_set=[]), ValueError, "action_set must list at least one action"),
        (dict(priority="open_door"), TypeError, "priority must be a sequence of operator names"),
        (dict(priority=("fly",)), ValueError, r"unknown names \['fly'\]"),
        (dict(epsilon=1.5), ValueError, r"epsilon must be a probability in \[0, 1\], got 1.5"),
        (dict(epsilon=True), ValueError, "epsilon must be a probability"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    arguments = dict(hypergraph=GRAPH, atoms=atoms, action_set=ACTIONS) | kwargs
    with pytest.raises(error, match=match):
        RuleAgent(**arguments)


def test_env_actions_reads_the_actions_an_env_lists_in_index_order():
    import enum

    class Actions(enum.IntEnum):
        left = 0
        right = 1

    class Inner:
        actions = Actions

    class Wrapped:
        unwrapped = Inner()

    assert env_actions(Wrapped()) == ["Actions.left", "Actions.right"]
    assert env_actions(object()) is None
