"""crossmoe.stats (bootstrap statistics, curves across seeds) and crossmoe.evaluation (agents, the episode loop)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from crossmoe.evaluation import ALL_STEPS, DEFAULT_SITUATIONS, AgentStep, EvalResult, RandomAgent
from crossmoe.stats import bootstrap_ci, compare_runs, learning_curves_with_ci, plot_curves_with_ci

# --- bootstrap_ci ------------------------------------------------------------------------------------------


def test_bootstrap_ci_of_constant_values_is_that_value():
    mean, low, high = bootstrap_ci([3.7] * 25)
    assert mean == pytest.approx(3.7) and low == pytest.approx(3.7) and high == pytest.approx(3.7)
    assert low <= mean <= high


def test_bootstrap_ci_of_a_normal_sample_matches_the_normal_theory_interval():
    mu, sigma, n = 5.0, 2.0, 2000
    values = np.random.default_rng(1).normal(mu, sigma, size=n)
    mean, low, high = bootstrap_ci(values, num_resamples=4000)
    assert mean == pytest.approx(values.mean())
    assert low < mu < high
    assert high - low == pytest.approx(2 * 1.96 * sigma / math.sqrt(n), rel=0.1)
    assert (low + high) / 2 == pytest.approx(mean, abs=0.02)


def test_bootstrap_ci_of_two_values_spans_them():
    # Resampled means of [0, 1] are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4:
    # the 2.5% and 97.5% quantiles are 0 and 1.
    assert bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
    # At 40% coverage the 30% and 70% quantiles both fall on the mean.
    assert bootstrap_ci([0.0, 1.0], confidence=0.4) == (0.5, 0.5, 0.5)


def test_bootstrap_ci_is_deterministic_for_a_seed():
    values = np.random.default_rng(0).exponential(size=50)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"values": []}, "values"),
        ({"values": [1.0, float("nan")]}, "values"),
        ({"values": [1.0], "confidence": 1.0}, "confidence"),
        ({"values": [1.0], "num_resamples": 0}, "num_resamples"),
    ],
)
def test_bootstrap_ci_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**kwargs)


def test_compare_runs_tabulates_mean_and_ci_per_run():
    table = compare_runs({"moe": [1.0, 2.0, 3.0], "mlp": [5.0, 5.0, 5.0]}, num_resamples=2000)
    lines = table.splitlines()
    assert lines[0] == "| run | seeds | mean | 95% CI |"
    _, low, high = bootstrap_ci([1.0, 2.0, 3.0], num_resamples=2000)
    assert lines[2] == f"| moe | 3 | 2.00 | [{low:.2f}, {high:.2f}] |"
    assert lines[3] == "| mlp | 3 | 5.00 | [5.00, 5.00] |"
    assert len(lines) == 4


# --- learning curves across seeds ------------------------------------------------------------------------


def test_learning_curves_interpolate_seeds_onto_their_common_range():
    seed_a = [{"global_step": 0, "score": 0.0}, {"global_step": 10, "score": 10.0}, {"global_step": 20, "score": 20.0}]
    seed_b = [
        {"global_step": 20, "score": 40.0},  # rows need not be sorted
        {"global_step": 0, "score": 0.0},
        {"global_step": 5, "score": None},  # skipped: no score in that update
        {"global_step": 25, "other": 1.0},  # skipped: no score at all
    ]
    curve = learning_curves_with_ci({"run": [seed_a, seed_b]}, bins=3)["run"]
    np.testing.assert_allclose(curve.x, [0, 10, 20])
    np.testing.assert_allclose(curve.seeds, [[0, 10, 20], [0, 20, 40]])
    np.testing.assert_allclose(curve.mean, [0, 15, 30])
    # Two seeds: resampling picks seed a twice with probability 1/4, so the band runs from seed a to seed b.
    np.testing.assert_allclose(curve.low, [0, 10, 20])
    np.testing.assert_allclose(curve.high, [0, 20, 40])

    seed_c = [{"global_step": 5, "score": 1.0}, {"global_step": 15, "score": 1.0}]
    curve = learning_curves_with_ci({"run": [seed_a, seed_b, seed_c]}, bins=3)["run"]
    np.testing.assert_allclose(curve.x, [5, 10, 15])  # no seed is extrapolated


def test_learning_curves_reject_runs_without_the_metric():
    with pytest.raises(ValueError, match="score"):
        learning_curves_with_ci({"run": [[{"global_step": 0, "return": 1.0}]]})


def test_plot_curves_with_ci_writes_an_image(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [[{"global_step": step, "score": step * seed} for step in range(0, 50, 10)] for seed in (1, 2, 3)]
    curves = learning_curves_with_ci({"moe": rows, "mlp": rows[:2]}, bins=5)
    path = plot_curves_with_ci(curves, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_running_episode_statistics_survive_the_blank_death_observation_and_restart_on_reset():
    from crossmoe.evaluation import _RunningEpisodes

    running = _RunningEpisodes(score=np.array([0, 0]), depth=np.array([1, 1]), turns=np.array([1, 1]))
    running.update(
        np.array([True, True]), np.array([1.0, 2.0]), score=np.array([5, 3]), depth=np.array([1, 2]), turns=[4, 2]
    )
    # Env 0 dies: NLE zeroes the bottom line of the final observation.
    running.update(
        np.array([True, True]), np.array([-1.0, 0.5]), score=np.array([0, 3]), depth=np.array([0, 2]), turns=[0, 3]
    )
    np.testing.assert_allclose(running.episode_return, [0.0, 2.5])
    assert running.length.tolist() == [2, 2] and running.score.tolist() == [5, 3] and running.depth.tolist() == [1, 2]
    assert running.turns.tolist() == [4, 3]
    # Env 0's autoreset step: its observation is the first of the next episode.
    running.update(
        np.array([False, True]), np.array([0.0, 1.0]), score=np.array([0, 4]), depth=np.array([1, 1]), turns=[1, 9]
    )
    np.testing.assert_allclose(running.episode_return, [0.0, 3.5])
    assert running.length.tolist() == [0, 3] and running.score.tolist() == [0, 4] and running.depth.tolist() == [1, 2]
    assert running.turns.tolist() == [1, 9]


# --- agents -----------------------------------------------------------------------------------------------


def test_random_agent_is_uniform_seeded_and_resettable():
    obs = {"blstats": np.zeros((4000, 27))}
    agent = RandomAgent(23, seed=5)
    actions = agent.act(obs)
    assert actions.shape == (4000,)
    assert set(np.unique(actions)) == set(range(23))
    assert np.array_equal(RandomAgent(23, seed=5).act(obs), actions)
    agent.reset(seed=5)
    assert np.array_equal(agent.act(obs), actions)
    with pytest.raises(ValueError, match="num_actions"):
        RandomAgent(0)


# --- evaluate on NetHack ----------------------------------------------------------------------------------

nle = pytest.importorskip("nle")

from crossmoe.evaluation import PolicyAgent, evaluate  # noqa: E402
from crossmoe.nethack import extract_atoms, make_policy  # noqa: E402


def test_evaluate_plays_exactly_the_requested_episodes_reproducibly():
    result = evaluate(RandomAgent(23), episodes=4, num_envs=3, max_episode_steps=50, seed=7)
    assert result.num_episodes == 4 and result.num_envs == 3
    assert all(0 < length <= 50 for length in result.lengths)
    for outcome, length in zip(result.outcomes, result.lengths, strict=True):
        assert outcome == "step cap" if length == 50 else outcome.startswith("killed by") or outcome == "died"
    assert all(depth >= 1 for depth in result.depths) and all(score >= 0 for score in result.scores)
    assert result.expert_names == [] and result.usage_table() == ""

    again = evaluate(RandomAgent(23, seed=99), episodes=4, num_envs=3, max_episode_steps=50, seed=7)
    assert again.to_dict() == result.to_dict()  # evaluate reseeds the agent
    other = evaluate(RandomAgent(23), episodes=4, num_envs=3, max_episode_steps=50, seed=8)
    assert other.returns != result.returns

    # Each environment contributes its first episodes, listed env by env: env 0 plays 2 here, env 1 and 2 one each.
    first_only = evaluate(RandomAgent(23), episodes=3, num_envs=3, max_episode_steps=50, seed=7)
    assert first_only.returns == [result.returns[0], result.returns[2], result.returns[3]]

    data = json.loads(json.dumps(result.to_dict()))
    assert EvalResult.from_dict(data) == result
    summary = json.loads(json.dumps(result.summary()))
    assert summary["episodes"] == 4 and summary["length_mean"] == pytest.approx(np.mean(result.lengths))
    assert summary["score_ci_low"] <= summary["score_mean"] <= summary["score_ci_high"]
    assert summary["outcomes"] == result.outcome_counts() and sum(summary["outcomes"].values()) == 4


class _Explorer:
    """Follows the path atoms (else steps by the turn counter): a deterministic function of each observation."""

    def act(self, obs):
        from crossmoe.nethack.atoms import atom_index

        first = atom_index("path_n")  # path_n ... path_nw, in the order of actions 1-8 (the compass moves)
        paths = extract_atoms(obs)[:, first : first + 8]
        fallback = obs["blstats"][:, nle.nethack.NLE_BL_TIME] % 8
        return 1 + np.where(paths.any(axis=1), paths.argmax(axis=1), fallback)


def test_evaluate_matches_an_episode_by_episode_replay_of_each_env():
    from nle.nethack import NLE_BL_DEPTH, NLE_BL_SCORE, NLE_BL_TIME

    from crossmoe.nethack import make_env

    result = evaluate(_Explorer(), episodes=4, num_envs=2, max_episode_steps=100, seed=11)
    expected = []
    for index in range(2):  # env i of make_vector_env is make_env with seed + i
        env = make_env(seed=11 + index, max_episode_steps=100)
        obs, _ = env.reset(seed=11 + index)
        for _ in range(2):
            total, length, done = 0.0, 0, False
            score, depth, turns = (obs["blstats"][i] for i in (NLE_BL_SCORE, NLE_BL_DEPTH, NLE_BL_TIME))
            while not done:
                action = int(_Explorer().act({key: value[None] for key, value in obs.items()})[0])
                obs, reward, terminated, truncated, _ = env.step(action)
                total, length, done = total + reward, length + 1, terminated or truncated
                score, depth = max(score, obs["blstats"][NLE_BL_SCORE]), max(depth, obs["blstats"][NLE_BL_DEPTH])
                turns = max(turns, obs["blstats"][NLE_BL_TIME])
            expected.append((float(score), total, int(depth), length, int(turns)))
            obs, _ = env.reset()
        env.close()
    columns = [result.scores, result.returns, result.depths, result.lengths, result.turns]
    np.testing.assert_allclose(np.stack(columns, 1), expected)
    assert result.summary()["turn_mean"] == np.mean(result.turns) > 0
    assert len(set(result.returns)) > 1  # the episodes differ, so a mix-up would show


class _RoutesOnMonsters:
    """A fake routed agent: all weight on expert "fight" when a monster is adjacent, else on "roam"."""

    expert_names = ("fight", "roam")

    def __init__(self) -> None:
        from crossmoe.nethack.atoms import atom_index

        self.column = atom_index("monster_adjacent")

    def act(self, obs):
        adjacent = obs["atoms"][:, self.column]  # evaluate hands the atoms to agents with experts
        return AgentStep(np.full(len(adjacent), 19), np.stack([adjacent, 1.0 - adjacent], axis=1))  # 19: WAIT


def test_evaluate_accumulates_router_weights_by_situation():
    result = evaluate(_RoutesOnMonsters(), episodes=2, num_envs=2, max_episode_steps=40, seed=3)
    assert result.situations == [ALL_STEPS, *DEFAULT_SITUATIONS]
    steps = dict(zip(result.situations, result.usage_steps, strict=True))
    weight = dict(zip(result.situations, np.asarray(result.usage_weight), strict=True))
    assert steps[ALL_STEPS] == sum(result.lengths) and steps["monster adjacent"] > 0
    adjacent = steps["monster adjacent"]
    np.testing.assert_allclose(weight["monster adjacent"], [adjacent, 0.0])
    np.testing.assert_allclose(weight["no monster visible"], [0.0, steps["no monster visible"]])
    np.testing.assert_allclose(weight[ALL_STEPS], [adjacent, steps[ALL_STEPS] - adjacent])
    assert f"| monster adjacent | {adjacent} | 1.00 | 0.00 |" in result.usage_table().splitlines()
    with pytest.raises(ValueError, match="situations"):
        evaluate(_RoutesOnMonsters(), episodes=1, situations={"lost": ("no_such_atom",)})


def test_evaluate_a_tiny_moe_policy_reports_usage_by_situation():
    policy = make_policy(dim=32).eval()
    result = evaluate(PolicyAgent(policy), episodes=2, num_envs=2, max_episode_steps=30)
    assert result.lengths == [30, 30] and result.outcomes == ["step cap", "step cap"]
    assert result.expert_names == ["survival", "combat", "exploration", "general"]
    table = result.usage_table().splitlines()
    assert table[0] == "| situation | steps | survival | combat | exploration | general |"
    assert table[2].startswith(f"| {ALL_STEPS} | 60 |")
    means = np.asarray(result.usage_weight[0]) / result.usage_steps[0]
    assert means.sum() == pytest.approx(1.0)  # router weights are a distribution
    summary = result.summary()
    assert sum(summary["expert_usage"].values()) == pytest.approx(1.0)
    json.dumps(result.to_dict())


def test_evaluate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="episodes"):
        evaluate(RandomAgent(23), episodes=0)
    with pytest.raises(ValueError, match="agent"):
        evaluate(object(), episodes=1)


@pytest.mark.slow
def test_a_compiled_policy_agent_plays_as_the_eager_one():
    """PolicyAgent(compile=True): the same evaluation as eager, greedy actions (compile takes a minute)."""
    torch.manual_seed(0)
    policy = make_policy(dim=32).eval()
    greedy = PolicyAgent(copy.deepcopy(policy), deterministic=True)
    eager = evaluate(greedy, episodes=2, num_envs=2, max_episode_steps=25)
    compiled = PolicyAgent(policy, deterministic=True, compile=True)
    assert policy._compiled_forward is not None
    result = evaluate(compiled, episodes=2, num_envs=2, max_episode_steps=25)
    assert (result.scores, result.lengths, result.outcomes) == (eager.scores, eager.lengths, eager.outcomes)
    np.testing.assert_allclose(result.usage_weight, eager.usage_weight, rtol=1e-4, atol=1e-4)


def test_a_failing_compiler_backend_falls_back_to_eager(broken_compiler):
    """A machine without a working C++ compiler still evaluates: a warning, then the eager forward."""
    policy = make_policy(dim=32).eval()
    with pytest.warns(RuntimeWarning, match="evaluating eagerly"):
        result = evaluate(PolicyAgent(policy, compile=True), episodes=1, num_envs=1, max_episode_steps=5)
    assert result.lengths == [5] and policy._compiled_forward is None


class _NotCompilable:
    def get_action_and_value(self, obs, **kwargs):
        raise AssertionError("never called")


def test_compile_needs_a_crossmoe_policy():
    with pytest.raises(ValueError, match="compile=True needs a crossmoe policy"):
        PolicyAgent(_NotCompilable(), compile=True)


def test_an_agent_whose_graph_predates_new_atoms_plays_on_its_own_columns():
    """A checkpoint's graph may name fewer atoms than ATOMS has today: evaluate hands it exactly those."""
    from crossmoe.hypergraph import Hypergraph
    from crossmoe.nethack import ATOMS, load_hypergraph

    data = load_hypergraph().to_dict()
    kept = [c for c in data["conditions"] if not c["name"].startswith(("food_key", "msg_eat"))]
    data["conditions"] = kept[::-1]  # another order, too
    names = {c["name"] for c in kept}
    data["operators"] = [o for o in data["operators"] if set(o["requires"]) <= names]
    torch.manual_seed(0)
    policy = make_policy(dim=32, hypergraph=Hypergraph.from_dict(data)).eval()
    agent = PolicyAgent(policy)
    assert agent.condition_names == tuple(c["name"] for c in kept[::-1]) and len(kept) < len(ATOMS)
    seen = []
    original = agent.act
    agent.act = lambda obs: seen.append(obs["atoms"]) or original(obs)
    result = evaluate(agent, episodes=1, num_envs=1, max_episode_steps=10)
    assert result.lengths == [10] and seen[0].shape == (1, len(kept))
