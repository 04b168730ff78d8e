"""The recurrent core: its LSTM against torch's, acting step by step = replaying a rollout, resets, PPO, evaluation."""

import itertools

import pytest
import torch
from torch import nn

from crossmoe.encoders import BoxEncoder, LearnedQueries
from crossmoe.policy import ActorCritic, CrossAttentionMoEPolicy
from crossmoe.recurrent import LSTMCore, make_core

OBS_DIM, DIM, ACTIONS = 6, 16, 5


def _reference(core, x, state, starts):
    """torch.nn.LSTM with the core's weights, run on each episode segment of each sequence separately."""
    lstm = nn.LSTM(core.dim, core.dim)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(lstm, f"{name}_l0").data.copy_(getattr(core.cell, name))
    batch = state.shape[0]
    xs, starts = x.view(-1, batch, core.dim), starts.view(-1, batch)
    out = torch.empty_like(xs)
    for b in range(batch):
        h, c = state[b : b + 1, : core.dim], state[b : b + 1, core.dim :]
        cuts = [0, *(t for t in range(1, len(xs)) if starts[t, b]), len(xs)]
        for begin, end in itertools.pairwise(cuts):
            if starts[begin, b]:
                h, c = torch.zeros_like(h), torch.zeros_like(c)
            y, (h, c) = lstm(xs[begin:end, b : b + 1], (h.unsqueeze(0), c.unsqueeze(0)))
            out[begin:end, b] = y[:, 0]
            h, c = h[0], c[0]
    return x + out.view_as(x)


def test_the_core_is_torchs_lstm_restarted_at_each_episode_start():
    torch.manual_seed(0)
    core = LSTMCore(8)
    steps, batch = 7, 3
    x = torch.randn(steps * batch, 8)
    state = torch.randn(batch, core.state_size)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[0, 1] = starts[3, 0] = starts[4, 0] = starts[5, 2] = True
    out, last = core(x, state, starts.flatten())
    torch.testing.assert_close(out, _reference(core, x, state, starts.flatten()), atol=1e-5, rtol=1e-5)
    # the state after the last step continues the sequences: two more calls give what one long call gives
    more = torch.randn(2 * batch, 8)
    both, _ = core(torch.cat([x, more]), state, torch.cat([starts.flatten(), torch.zeros(2 * batch, dtype=bool)]))
    torch.testing.assert_close(core(more, last)[0], both[-2 * batch :], atol=1e-6, rtol=1e-5)


def test_the_core_checks_its_inputs():
    core = LSTMCore(4)
    with pytest.raises(ValueError, match=r"state must have shape \(B, 8\), got \(2, 4\)"):
        core(torch.zeros(4, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(T \* B, 4\) with B=3 the state's batch, got \(4, 4\)"):
        core(torch.zeros(4, 4), core.initial_state(3))
    with pytest.raises(ValueError, match=r"starts must have shape \(T \* B,\)=\(4,\), got \(2,\)"):
        core(torch.zeros(4, 4), core.initial_state(2), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="core must be one of \\('lstm',\\), a module or None, got 'gru'"):
        make_core("gru", 4)
    with pytest.raises(TypeError, match="core must have an initial_state"):
        make_core(nn.Linear(4, 4), 4)


def _policies():
    torch.manual_seed(0)
    moe = CrossAttentionMoEPolicy(
        BoxEncoder(OBS_DIM, DIM), LearnedQueries(3, DIM), ACTIONS, dim=DIM, num_heads=2, core="lstm"
    )
    flat = ActorCritic(BoxEncoder(OBS_DIM, DIM), ACTIONS, num_tokens=OBS_DIM, hidden_dim=DIM, core="lstm")
    return {"moe": moe, "flat": flat}


@pytest.mark.parametrize("kind", ["moe", "flat"])
def test_acting_step_by_step_is_replaying_the_rollout(kind):
    """What PPO relies on: the update, replaying T steps from the rollout's first state, sees the acting policy."""
    policy = _policies()[kind]
    steps, batch = 6, 3
    obs = torch.randn(steps, batch, OBS_DIM, generator=torch.Generator().manual_seed(1))
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[0] = True
    starts[3, 1] = starts[4, 1] = True  # an episode end and its autoreset step, as the PPO loop marks them
    state, logits, values = policy.initial_state(batch), [], []
    for t in range(steps):
        out = policy(obs[t], state, starts[t])
        state, logits, values = out.state, [*logits, out.logits], [*values, out.value]
    replay = policy(obs.flatten(0, 1), policy.initial_state(batch), starts.flatten())
    torch.testing.assert_close(replay.logits, torch.cat(logits), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replay.value, torch.cat(values), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replay.state, state, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["moe", "flat"])
def test_the_state_is_memory_and_a_start_forgets_it(kind):
    policy = _policies()[kind]
    obs = torch.randn(3, OBS_DIM, generator=torch.Generator().manual_seed(2))
    fresh = policy(obs)  # no state: every sample is the first step of its episode
    assert fresh.state.shape == (3, 2 * DIM)
    state = policy(torch.randn(3, OBS_DIM), policy.initial_state(3)).state  # one step of the past
    remembered = policy(obs, state)
    assert (remembered.context - fresh.context).abs().amin(-1).gt(1e-4).all()  # the past changes the present
    restarted = policy(obs, state, torch.tensor([True, False, True]))
    for name in ("context", "logits", "value"):
        torch.testing.assert_close(getattr(restarted, name)[[0, 2]], getattr(fresh, name)[[0, 2]])
        torch.testing.assert_close(getattr(restarted, name)[1], getattr(remembered, name)[1])


def test_state_is_refused_without_a_core_and_starts_without_a_state():
    policy = ActorCritic(BoxEncoder(OBS_DIM, DIM), ACTIONS, num_tokens=OBS_DIM, hidden_dim=DIM)
    assert not policy.recurrent and policy.initial_state(2) is None and policy(torch.zeros(2, OBS_DIM)).state is None
    with pytest.raises(ValueError, match="state and starts are for a policy with a recurrent core"):
        policy(torch.zeros(2, OBS_DIM), torch.zeros(2, 2 * DIM))
    recurrent = _policies()["flat"]
    with pytest.raises(ValueError, match="starts needs the state it resets"):
        recurrent(torch.zeros(2, OBS_DIM), starts=torch.ones(2, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"state must be a tensor \(n, S\), from initial_state\(n\) or output.state"):
        recurrent(torch.zeros(2, OBS_DIM), [[0.0] * 2 * DIM] * 2)


def test_the_integrations_refuse_a_recurrent_core():
    from gymnasium import spaces

    from crossmoe.integrations.common import build_policy

    with pytest.raises(ValueError, match="core='lstm': the SB3 and RLlib integrations act one step at a time"):
        build_policy(spaces.Discrete(4), preset="nethack", core="lstm")


# --- training and evaluation on NetHack ----------------------------------------------------------------


def _train(tmp_path, policy, compile="off"):
    """128 env steps of a recurrent agent (2 envs x 32 steps per update), episodes cut at 10 steps."""
    pytest.importorskip("nle")
    from example_scripts import load_example

    from crossmoe.training import read_metrics

    ppo = load_example("ppo_nethack")
    args = ppo.Args(
        num_envs=2,
        num_steps=32,
        num_minibatches=2,
        update_epochs=2,
        dim=32,
        progress=False,
        compile=compile,
        plots=False,
        run_dir=str(tmp_path / "run"),
        total_timesteps=128,
        max_episode_steps=10,
        policy=policy,
        core="lstm",
    )
    return ppo.main(args), read_metrics(tmp_path / "run" / "metrics.jsonl")


@pytest.mark.parametrize("policy", ["moe", "flat"])
def test_ppo_replays_the_recurrent_rollout_exactly_across_episode_ends(tmp_path, policy, monkeypatch):
    """Episodes cut at 10 steps end inside every 32-step rollout; the first minibatch still has ratio 1."""
    pytest.importorskip("nle")
    from crossmoe.nethack import load_agent
    from crossmoe.policy import ActorCriticBase

    rollout_starts = []  # what the rollout's steps (batches of the 2 envs) pass as episode starts
    original = ActorCriticBase.get_action_and_value

    def spy(self, obs, *args, state=None, starts=None, **kwargs):
        if starts is not None and len(starts) == 2:
            rollout_starts.append(starts.tolist())
        return original(self, obs, *args, state=state, starts=starts, **kwargs)

    monkeypatch.setattr(ActorCriticBase, "get_action_and_value", spy)
    summary, rows = _train(tmp_path, policy)
    assert summary["core"] == "lstm" and sum(row["reset_steps"] for row in rows) > 0
    # 10 steps of an episode, then its autoreset step: the state is zeroed for that step and for the next
    # episode's first observation (steps 0, 10, 11, 21, 22, ...), never elsewhere
    expected = [t == 0 or t % 11 in (10, 0) for t in range(64)]
    assert rollout_starts == [[start, start] for start in expected]
    assert all(row["first_minibatch_ratio_error"] < 1e-5 for row in rows)
    agent = load_agent(tmp_path / "run" / "checkpoints" / "last.pt")  # the config rebuilds the core
    assert agent.recurrent and isinstance(agent.core, LSTMCore)


def test_evaluation_carries_the_state_and_forgets_it_between_episodes(monkeypatch):
    pytest.importorskip("nle")
    from crossmoe.evaluation import PolicyAgent, evaluate
    from crossmoe.nethack import make_baseline_policy

    policy = make_baseline_policy(dim=16, hidden_dim=32, core="lstm").eval()
    seen = []
    original = policy.get_action_and_value

    def spy(obs, *args, state=None, starts=None, **kwargs):
        seen.append((state.clone(), starts.clone()))
        return original(obs, *args, state=state, starts=starts, **kwargs)

    monkeypatch.setattr(policy, "get_action_and_value", spy)
    result = evaluate(PolicyAgent(policy), episodes=2, num_envs=1, max_episode_steps=4)
    assert result.lengths == [4, 4]
    # steps 0-3: episode 1; step 4: the autoreset step; steps 5-8: episode 2
    assert [bool(starts[0]) for _, starts in seen] == [True, False, False, False, True, True, False, False, False]
    assert not seen[0][0].any() and seen[1][0].any()  # the state after a step is carried to the next


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "mode"), [("moe", "rollout"), ("flat", "all")])
def test_a_compiled_recurrent_agent_trains_and_matches_its_rollout(tmp_path, policy, mode):
    pytest.importorskip("nle")

    torch._dynamo.reset()
    summary, rows = _train(tmp_path, policy, compile=mode)
    assert summary["global_step"] == 128
    assert all(row["first_minibatch_ratio_error"] < 1e-4 for row in rows)
