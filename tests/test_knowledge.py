"""The knowledge pathway: ApplicabilityPrior, alone and inside CrossAttentionMoEPolicy."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crossmoe.encoders import BoxEncoder, HypergraphLogicEncoder, LearnedQueries
from crossmoe.graph import Hypergraph, OperatorSpec
from crossmoe.knowledge import ApplicabilityPrior
from crossmoe.policy import CrossAttentionMoEPolicy

# operator 0 uses action 0; operator 1 actions 1 and 2; operator 2 all four; operator 3 none
MASK = torch.tensor(
    [
        [True, False, False, False],
        [False, True, True, False],
        [True, True, True, True],
        [False, False, False, False],
    ]
)


def test_prior_matches_a_hand_computation():
    prior = ApplicabilityPrior(MASK)
    applicable = torch.tensor(
        [
            [True, False, False, False],
            [False, True, True, False],
            [True, True, True, True],
            [False, False, False, True],
            [False, False, False, False],
        ]
    )
    # each operator's vote of 1 is split over its actions: 1; 1/2 each; 1/4 each; nothing
    expected = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.25, 0.75, 0.75, 0.25],
            [1.25, 0.75, 0.75, 0.25],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(prior(applicable), expected)
    torch.testing.assert_close(ApplicabilityPrior(MASK, init=-2.0)(applicable), -2.0 * expected)
    assert bool((ApplicabilityPrior(MASK, init=0)(applicable) == 0).all())
    # a float 0/1 applicability gives the same bias
    torch.testing.assert_close(prior(applicable.float()), expected)


@given(
    operators=st.integers(1, 6),
    actions=st.integers(1, 6),
    batch=st.integers(0, 5),
    init=st.floats(-3.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_prior_matches_a_loop_reference(operators, actions, batch, init, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(operators, actions, generator=generator) < 0.5
    applicable = torch.rand(batch, operators, generator=generator) < 0.5
    expected = torch.zeros(batch, actions, dtype=torch.float64)
    for b in range(batch):
        for o in range(operators):
            used = [a for a in range(actions) if mask[o, a]]
            if applicable[b, o]:
                for a in used:
                    expected[b, a] += init / len(used)
    prior = ApplicabilityPrior(mask, init=init).double()
    torch.testing.assert_close(prior(applicable), expected)


def test_gradient_reaches_the_weight_only_at_masked_entries():
    prior = ApplicabilityPrior(MASK)
    applicable = torch.tensor([[True, True, False, True], [True, False, False, False]])
    upstream = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    (prior(applicable) * upstream).sum().backward()
    # d/dW[o, a] = sum_b applicable[b, o] * upstream[b, a] on the mask, 0 elsewhere
    expected = (applicable.float().T @ upstream) * MASK.float()
    torch.testing.assert_close(prior.weight.grad, expected)
    assert bool((prior.weight.grad[~MASK] == 0).all())
    assert bool((prior.weight.grad[2] == 0).all())  # operator 2 applied nowhere


def test_entries_off_the_mask_never_reach_the_output():
    prior = ApplicabilityPrior(MASK)
    applicable = torch.ones(3, 4, dtype=torch.bool)
    before = prior(applicable)
    with torch.no_grad():
        prior.weight[~MASK] = 100.0  # say, weight decay's or a bad checkpoint's doing
    torch.testing.assert_close(prior(applicable), before)
    assert bool((ApplicabilityPrior(MASK).weight[~MASK] == 0).all())


def test_applicable_of_the_wrong_shape_is_rejected():
    prior = ApplicabilityPrior(MASK)
    with pytest.raises(ValueError, match=r"applicable must be \(B, O\) with O=4, got shape \(2, 5\)"):
        prior(torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"applicable must be \(B, O\) with O=4, got shape \(4,\)"):
        prior(torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"action_mask": torch.ones(4, dtype=torch.bool)}, r"non-empty \(O, A\) bool tensor, got shape \(4,\)"),
        ({"action_mask": torch.ones(0, 3, dtype=torch.bool)}, r"non-empty \(O, A\) bool tensor, got shape \(0, 3\)"),
        ({"action_mask": MASK, "init": float("nan")}, "init must be a number, got nan"),
        ({"action_mask": MASK, "init": "1"}, "init must be a number, got '1'"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ApplicabilityPrior(**kwargs)


def test_state_dict_holds_the_weight_and_the_mask():
    prior = ApplicabilityPrior(MASK, init=0.5)
    assert set(prior.state_dict()) == {"weight", "action_mask"}
    assert [name for name, _ in prior.named_parameters()] == ["weight"]
    restored = ApplicabilityPrior(MASK, init=3.0)
    restored.load_state_dict(prior.state_dict())
    applicable = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(restored(applicable), prior(applicable))
    assert "num_operators=4, num_actions=4" in repr(prior)


# --- inside the policy ---------------------------------------------------------------------------------

OBS_DIM, DIM, ACTIONS = 6, 16, 5
CONDITIONS = ("hungry", "has_food", "monster_adjacent")


def _hypergraph():
    """Actions as indices; ``rest`` (always applicable) votes for action 0, which no other operator uses."""
    return Hypergraph(
        list(CONDITIONS),
        [
            OperatorSpec("eat", requires=("hungry", "has_food"), produces=("fed",), expert="survival", actions=(1,)),
            OperatorSpec("fight", requires=("monster_adjacent",), produces=("xp",), expert="combat", actions=(2, 3)),
            OperatorSpec("explore", requires=("has_food",), produces=("xp",), expert="exploration", actions=(1, 2)),
            OperatorSpec("rest", produces=("fed",), expert="general", actions=(0,)),
        ],
        ["fed", "xp"],
    )


def _atoms(obs):
    return torch.as_tensor(obs["obs"])[:, : len(CONDITIONS)] > 0


def _policy(knowledge=True, logic="graph", init=1.0, seed=0):
    torch.manual_seed(seed)
    graph = _hypergraph()
    logic_encoder = HypergraphLogicEncoder(graph, DIM, atoms=_atoms) if logic == "graph" else LearnedQueries(3, DIM)
    prior = ApplicabilityPrior(graph.action_mask(range(ACTIONS)), init=init) if knowledge else None
    return CrossAttentionMoEPolicy(
        BoxEncoder(OBS_DIM, DIM),
        logic_encoder,
        ACTIONS,
        dim=DIM,
        router_hidden_dim=16,
        expert_hidden_dim=16,
        critic_hidden_dim=16,
        knowledge=prior,
    )


def _obs(batch=16, seed=0):
    return torch.randn(batch, OBS_DIM, generator=torch.Generator().manual_seed(seed))


def test_the_prior_is_added_to_the_expert_mixture():
    policy = _policy()
    obs = _obs()
    out = policy(obs)
    mixture = torch.einsum("be,bea->ba", out.router_weights, out.expert_logits)
    torch.testing.assert_close(out.logits - out.prior, mixture)
    # by hand: rest always votes 1 for action 0; eat 1 for action 1; fight 1/2 each for 2, 3; explore 1/2 for 1, 2
    atoms = _atoms({"obs": obs}).float()
    hungry, food, monster = atoms.unbind(-1)
    expected = torch.stack(
        [
            torch.ones(len(obs)),
            hungry * food + 0.5 * food,
            0.5 * monster + 0.5 * food,
            0.5 * monster,
            torch.zeros(len(obs)),
        ],
        dim=-1,
    )
    torch.testing.assert_close(out.prior, expected)
    # the same network without a prior: same seed, same weights, logits without the bias
    plain = _policy(knowledge=False)(obs)
    assert plain.prior is None
    torch.testing.assert_close(out.logits - out.prior, plain.logits)


def test_ppo_loss_trains_the_prior_of_the_applicable_operators():
    policy = _policy()
    obs = _obs(32, seed=1)
    obs[:, 2] = -1.0  # no monster anywhere: fight never applies
    with torch.no_grad():
        old = policy(obs)
        actions = torch.distributions.Categorical(logits=old.logits).sample()
        old_log_prob = torch.distributions.Categorical(logits=old.logits).log_prob(actions)
    advantages = torch.randn(32, generator=torch.Generator().manual_seed(2))
    out = policy(obs)
    dist = torch.distributions.Categorical(logits=out.logits)
    ratio = (dist.log_prob(actions) - old_log_prob).exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)
    loss = -surrogate.mean() - 0.01 * dist.entropy().mean() + 0.5 * (out.value - advantages).square().mean()
    loss.backward()
    grad = policy.knowledge.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    mask = policy.knowledge.action_mask.bool()
    assert bool((grad[mask.logical_not()] == 0).all())
    assert bool((grad[1] == 0).all())  # fight: never applicable here
    assert bool(grad[3, 0] != 0)  # rest applies everywhere
    assert bool((grad[2][mask[2]] != 0).all())  # explore applies where there is food


def test_the_learned_policy_can_override_the_prior():
    policy = _policy(init=3.0)
    obs = _obs(64, seed=3)
    with torch.no_grad():
        out = policy(obs)
    # rest gives action 0 a vote of 3 in every state, action 4 has none, and the near-uniform experts follow
    assert bool((out.prior[:, 0] >= 3.0).all()) and bool((out.prior[:, 4] == 0).all())
    assert bool((out.logits[:, 4] < out.logits[:, 0] - 2.9).all()) and not bool((out.logits.argmax(-1) == 4).any())
    target = torch.full((64,), 4)  # an action no operator uses
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(policy(obs).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert bool((policy(obs).logits.argmax(-1) == 4).all())


def test_the_prior_can_be_learned_away_by_itself():
    """With the rest of the network frozen, gradient steps on the prior alone also move the argmax."""
    policy = _policy(init=3.0)
    obs = _obs(32, seed=4)
    optimizer = torch.optim.SGD([policy.knowledge.weight], lr=1.0)
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(policy(obs).logits, torch.full((32,), 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = policy(obs)
    # eat and explore vote for action 1 where there is food; rest's vote for action 0 is learned down
    food = _atoms({"obs": obs})[:, 1]
    assert food.any() and bool((out.logits[food].argmax(-1) == 1).all())
    assert policy.knowledge.weight[3, 0] < 3.0
    assert bool((policy.knowledge.weight[policy.knowledge.action_mask == 0] == 0).all())


def test_a_knowledge_pathway_needs_applicable_operators():
    policy = _policy(logic="queries")
    with pytest.raises(ValueError, match="a knowledge pathway needs a logic encoder that returns applicable operators"):
        policy(_obs(4))
