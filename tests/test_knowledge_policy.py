"""knowledge_policy: the knowledge-guided MoE agent for an env of one's own, from the public API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric")

from crossmoe.encoders import BoxEncoder
from crossmoe.hypergraph import Hypergraph, OperatorSpec
from crossmoe.knowledge import ApplicabilityPrior
from crossmoe.policy import CrossAttentionMoEPolicy, knowledge_policy

ACTIONS = ["Act.turn", "Act.forward", "Act.pick_up"]
GRAPH = Hypergraph(
    ["key_here", "way_free"],
    [
        OperatorSpec("pick_up_key", ("key_here",), ("key_held",), "hands", ("Act.pick_up",)),
        OperatorSpec("walk", ("way_free",), ("moved",), "feet", ("Act.forward",)),
        OperatorSpec("turn", (), ("moved",), "feet", ("Act.turn",)),
    ],
    effects=["key_held", "moved"],
    experts=["hands", "feet"],
)


def atoms(obs):
    return np.asarray(obs["obs"])[:, :2] > 0.5


def test_the_policy_has_the_graphs_experts_and_its_prior_votes_for_applicable_operators():
    torch.manual_seed(0)
    policy = knowledge_policy(BoxEncoder(4, 16), GRAPH, atoms, len(ACTIONS), action_set=ACTIONS, dim=16).eval()
    assert isinstance(policy, CrossAttentionMoEPolicy) and isinstance(policy.knowledge, ApplicabilityPrior)
    assert policy.experts.names == ("hands", "feet")
    obs = np.array([[1, 0, 0.3, 0.1], [0, 1, 0.2, 0.9], [0, 0, 0.5, 0.5]], dtype=np.float32)
    out = policy(obs)
    assert out.logits.shape == (3, 3)
    # Row 0: the key is here, so pick_up gets a vote; row 2: only turn applies.
    assert out.prior[0, 2] > 0 and out.prior[1, 1] > 0 and out.prior[2, 0] > 0
    assert out.prior[2, 1] == 0 and out.prior[2, 2] == 0


def test_without_knowledge_there_is_no_prior_and_with_it_an_action_set_is_needed():
    assert knowledge_policy(BoxEncoder(4, 16), GRAPH, atoms, 3, dim=16, knowledge=False).knowledge is None
    with pytest.raises(ValueError, match="action_set must list the env's actions"):
        knowledge_policy(BoxEncoder(4, 16), GRAPH, atoms, 3, dim=16)
