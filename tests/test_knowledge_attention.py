"""Design (b) of the knowledge pathway: AttentionDirectionPrior, the tokens' directions, and the NetHack agent."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmoe.encoders import BoxEncoder, LearnedQueries
from crossmoe.knowledge import AttentionDirectionPrior
from crossmoe.policy import CrossAttentionMoEPolicy

# 3 directions (K) over 5 actions (A): actions 0-2 move in directions 0-2; actions 3 (run in direction 0) too;
# action 4 is no move.
DIRECTIONS = torch.tensor(
    [
        [True, False, False, True, False],
        [False, True, False, False, False],
        [False, False, True, False, False],
    ]
)
# op 0 moves two ways and also uses action 4 (steers); op 1 moves one way (fixed vote); op 2 never moves;
# op 3 uses every move (steers).
MASK = torch.tensor(
    [
        [True, True, False, False, True],
        [False, True, False, False, False],
        [False, False, False, False, True],
        [True, True, True, True, False],
    ]
)


def reference(mask, direction_actions, applicable, attention, directions, init, direction_init):
    """The pathway written out operator by operator and action by action."""
    batch, num_ops, num_actions = applicable.shape[0], mask.shape[0], mask.shape[1]
    out = torch.zeros(batch, num_actions, dtype=torch.float64)
    for b in range(batch):
        for o in range(num_ops):
            if not applicable[b, o]:
                continue
            used = {
                k
                for k in range(direction_actions.shape[0])
                for a in range(num_actions)
                if mask[o, a] and direction_actions[k, a]
            }
            steers = len(used) >= 2
            share = init / max(int(mask[o].sum()), 1)
            looks = attention[b, :, o].double().mean(0)  # (N,)
            dirs = directions[b] if directions.dim() == 3 else directions
            for a in range(num_actions):
                if not mask[o, a]:
                    continue
                if steers and bool(direction_actions[:, a].any()):
                    mass = sum(
                        float(looks[n] * dirs[n, k])
                        for n in range(looks.shape[0])
                        for k in range(dirs.shape[1])
                        if direction_actions[k, a]
                    )
                    out[b, a] += direction_init * mass
                else:
                    out[b, a] += share
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.floats(-2, 2), st.floats(-2, 2))
def test_matches_a_per_operator_reference(seed, per_sample_directions, init, direction_init):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, tokens = 3, 2, 6
    applicable = torch.rand(batch, 4, generator=generator) > 0.4
    attention = torch.softmax(torch.randn(batch, heads, 4, tokens, generator=generator), -1)
    shape = (batch, tokens, 3) if per_sample_directions else (tokens, 3)
    directions = (torch.rand(*shape, generator=generator) > 0.6).float()
    prior = AttentionDirectionPrior(MASK, DIRECTIONS, init=init, direction_init=direction_init).double()
    expected = reference(MASK, DIRECTIONS, applicable, attention, directions, init, direction_init)
    torch.testing.assert_close(prior(applicable, attention.double(), directions.double()), expected)


def test_a_steering_operator_votes_where_it_looks_and_a_fixed_one_does_not():
    prior = AttentionDirectionPrior(MASK, DIRECTIONS, init=1.0, direction_init=2.0)
    directions = torch.eye(3)  # token k lies in direction k
    attention = torch.zeros(1, 1, 4, 3)
    attention[0, 0, :, 1] = 1.0  # every operator reads the token in direction 1
    only = lambda o: torch.tensor([[i == o for i in range(4)]])  # noqa: E731
    # op 0 steers: direction 1 (action 1) gets the gain, direction 0 (action 0) nothing; action 4 keeps 1/3.
    torch.testing.assert_close(prior(only(0), attention, directions), torch.tensor([[0.0, 2.0, 0.0, 0.0, 1 / 3]]))
    # op 1 has one direction: its fixed vote, whatever it reads.
    attention[0, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(prior(only(1), attention, directions), torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]]))
    # op 3 reads direction 0: both of its direction-0 actions (step and run) get the gain.
    attention[0, 0, 3] = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(prior(only(3), attention, directions), torch.tensor([[2.0, 0.0, 0.0, 2.0, 0.0]]))
    assert "steering=2" in repr(prior)


def test_gradients_reach_the_attention_the_gains_and_the_kept_votes_only():
    prior = AttentionDirectionPrior(MASK, DIRECTIONS)
    applicable = torch.tensor([[True, True, False, False]])
    attention = torch.softmax(torch.randn(1, 2, 4, 3), -1).requires_grad_()
    bias = prior(applicable, attention, torch.eye(3))
    (bias * torch.arange(1.0, 6.0)).sum().backward()
    assert attention.grad[0, :, 0].abs().sum() > 0  # the applicable steering operator learns where to look
    assert bool((attention.grad[0, :, 1:] == 0).all())  # fixed, not applicable or never moving: no attention grad
    assert prior.gain.grad[0] != 0 and bool((prior.gain.grad[1:] == 0).all())
    assert bool((prior.weight.grad[~prior.keep_mask.bool()] == 0).all())
    assert prior.weight.grad[0, 4] != 0 and prior.weight.grad[1, 1] != 0


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"direction_actions must be \(K, A\) with A=5"):
        AttentionDirectionPrior(MASK, DIRECTIONS[:, :4])
    with pytest.raises(ValueError, match="direction_init must be a number"):
        AttentionDirectionPrior(MASK, DIRECTIONS, direction_init=float("nan"))
    prior = AttentionDirectionPrior(MASK, DIRECTIONS)
    applicable = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"attention must be \(B, H, O, N\) with B=2, O=4"):
        prior(applicable, torch.rand(2, 4, 3), torch.eye(3))
    with pytest.raises(ValueError, match=r"directions must be \(B, N, K\) or \(N, K\) with N=6, K=3"):
        prior(applicable, torch.rand(2, 1, 4, 6), torch.eye(3))


def test_the_policy_needs_an_encoder_that_knows_directions_and_a_fusion_with_attention():
    prior = AttentionDirectionPrior(MASK, DIRECTIONS)
    with pytest.raises(ValueError, match="needs a visual encoder with token_directions"):
        CrossAttentionMoEPolicy(BoxEncoder(4, 16), LearnedQueries(4, 16), action_dim=5, dim=16, knowledge=prior)


def _best_sector(dy: float, dx: float) -> int:
    """Independent reference: the compass unit vector closest in angle to the offset."""
    vectors = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]  # N NE E SE S SW W NW
    cosines = [(dy * vy + dx * vx) / math.hypot(vy, vx) for vy, vx in vectors]
    return int(np.argmax(cosines))


def test_compass_direction_picks_the_nearest_of_the_eight_directions():
    from crossmoe.nethack import compass_direction

    offsets = [(dy, dx) for dy in range(-6, 7) for dx in range(-6, 7)]
    sectors = compass_direction(torch.tensor([o[0] for o in offsets]), torch.tensor([o[1] for o in offsets]))
    for (dy, dx), sector in zip(offsets, sectors.tolist(), strict=True):
        if (dy, dx) == (0, 0):
            assert sector == -1
        elif abs(abs(math.degrees(math.atan2(-dy, dx))) % 45 - 22.5) > 1e-6:  # not on a sector boundary
            assert sector == _best_sector(dy, dx), (dy, dx)


def test_token_directions_follow_the_player(nethack_play):
    pytest.importorskip("nle")
    from nle import nethack

    from crossmoe.nethack import COMPASS, NetHackVisualEncoder

    encoder = NetHackVisualEncoder(16, crop_size=9, crop_patch=3)
    obs = nethack_play[0][0]
    blstats = np.stack([obs["blstats"], obs["blstats"]])
    blstats[1, nethack.NLE_BL_X], blstats[1, nethack.NLE_BL_Y] = 2, 19  # the bottom-left corner
    directions = encoder.token_directions({"blstats": blstats})
    assert directions.shape == (2, encoder.num_tokens, 8)
    # The 3x3 crop blocks, row by row: NW N NE / W - E / SW S SE.
    names = [COMPASS[int(row.argmax())] if row.any() else "-" for row in directions[0, :9]]
    assert names == ["NW", "N", "NE", "W", "-", "E", "SW", "S", "SE"]
    assert bool((directions[:, -2:] == 0).all())  # blstats and message tokens lie nowhere
    for b in range(2):
        x, y = int(blstats[b, nethack.NLE_BL_X]), int(blstats[b, nethack.NLE_BL_Y])
        coarse = directions[b, 9:-2]
        for p in range(encoder.num_patches):
            rows, cols = (encoder.patch_id == p).nonzero(as_tuple=True)
            if bool(((rows == y) & (cols == x)).any()):
                assert not coarse[p].any()  # the player's own patch
            else:
                dy, dx = rows.float().mean() - y, cols.float().mean() - x
                assert coarse[p].sum() == 1
                if abs(abs(math.degrees(math.atan2(-dy, dx))) % 45 - 22.5) > 1e-3:
                    assert int(coarse[p].argmax()) == _best_sector(float(dy), float(dx))
    # From the bottom-left corner every other patch lies north, north-east or east.
    assert {COMPASS[int(row.argmax())] for row in directions[1, 9:-2] if row.any()} <= {"N", "NE", "E"}


def test_the_nethack_agent_with_the_attention_pathway(nethack_play):
    from crossmoe.nethack import build_agent, make_policy
    from crossmoe.policy import combine_experts

    rows, _, actions = nethack_play
    obs = {key: np.stack([row[key] for row in rows[:4]]) for key in rows[0]}
    torch.manual_seed(0)
    policy = make_policy(action_set=actions, knowledge_pathway="attention")
    assert isinstance(policy.knowledge, AttentionDirectionPrior)
    out = policy(obs)
    assert out.prior.shape == (4, len(actions)) and bool(torch.isfinite(out.prior).all())
    # The prior is added to the experts' mixture, so the learned policy can override it.
    torch.testing.assert_close(out.logits - out.prior, combine_experts(out.router_weights, out.expert_logits))
    out.prior.sum().backward()
    query = policy.fusion.attention.to_q.weight.grad
    assert query is not None and query.abs().sum() > 0  # PPO's gradient through the prior reaches the queries

    rebuilt = build_agent(policy.config)
    rebuilt.load_state_dict(policy.state_dict())
    torch.testing.assert_close(rebuilt(obs).logits, policy(obs).logits)
    assert policy.config["knowledge_pathway"] == "attention"

    with pytest.raises(ValueError, match="fusion must be 'cross_attention', got 'concat'"):
        make_policy(action_set=actions, fusion="concat", knowledge_pathway="attention")
    with pytest.raises(ValueError, match="knowledge_pathway must be 'prior', 'attention' or 'rules', got 'both'"):
        make_policy(action_set=actions, knowledge_pathway="both")


def test_the_nethack_agent_with_the_rules_pathway_starts_as_the_rules(nethack_play):
    from crossmoe.knowledge import RulePrior
    from crossmoe.nethack import RuleAgent, build_agent, make_policy

    rows, _, actions = nethack_play
    obs = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    torch.manual_seed(0)
    policy = make_policy(action_set=actions, knowledge_pathway="rules")
    assert isinstance(policy.knowledge, RulePrior) and policy.config["prior_init"] == 5.0
    out = policy(obs)
    allowed = RuleAgent(actions).action_probs(obs) > 0  # the actions the rules (with eating) may play
    np.testing.assert_array_equal(out.prior.detach().numpy() > 0, allowed)  # something applies in every state
    torch.testing.assert_close(out.prior.max(1).values, torch.full((len(rows),), 5.0))
    mass = (out.logits.softmax(1) * torch.from_numpy(allowed)).sum(1)
    assert bool((mass > 0.85).all()), mass  # at least e^5 / (e^5 + 22) on the rules' actions, before training

    rebuilt = build_agent(policy.config)
    rebuilt.load_state_dict(policy.state_dict())
    torch.testing.assert_close(rebuilt(obs).logits, out.logits)
    weak = make_policy(action_set=actions, knowledge_pathway="rules", prior_init=1.0)
    torch.testing.assert_close(weak(obs).prior, out.prior / 5.0)
