"""evaluate on an env family of one's own: an EvalDomain and a rule agent from the public API, no NetHack."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from crossmoe.evaluation import ALL_STEPS, AgentStep, EvalDomain, evaluate
from crossmoe.hypergraph import Hypergraph, OperatorSpec
from crossmoe.rules import RuleAgent

LENGTH = 5  # cells 0..4; the goal is the last one


class Corridor(gym.Env):
    """Walk right to the goal (reward 1, terminated); the start cell depends on the seed."""

    observation_space = gym.spaces.Dict({"cell": gym.spaces.Box(0, LENGTH - 1, (1,), np.int64)})
    action_space = gym.spaces.Discrete(2)  # 0: left, 1: right

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell = int(self.np_random.integers(0, 3))
        return {"cell": np.array([self.cell])}, {}

    def step(self, action):
        self.cell = min(max(self.cell + (1 if action == 1 else -1), 0), LENGTH - 1)
        done = self.cell == LENGTH - 1
        return {"cell": np.array([self.cell])}, float(done), done, False, {}


def make_corridors(num_envs, seed, env_id, max_episode_steps=None):
    assert env_id == "Corridor"

    def make(index):
        def thunk():
            env = Corridor()
            if max_episode_steps is not None:
                env = gym.wrappers.TimeLimit(env, max_episode_steps)
            env.reset(seed=seed + index)
            return env

        return thunk

    return gym.vector.SyncVectorEnv([make(i) for i in range(num_envs)])


def corridor_atoms(obs):
    cell = np.asarray(obs["cell"])[:, 0]
    return np.stack([cell < LENGTH - 2, cell == LENGTH - 2], axis=1).astype(np.float32)


DOMAIN = EvalDomain(
    make_vector_env=make_corridors,
    depth=lambda obs: np.asarray(obs["cell"])[:, 0],
    atoms=corridor_atoms,
    atom_names=("far_from_goal", "next_to_goal"),
    situations={"next to the goal": ("next_to_goal",)},
)
GRAPH = Hypergraph(
    ["far_from_goal", "next_to_goal"],
    [
        OperatorSpec("walk_on", requires=("far_from_goal",), actions=("Move.right",), expert="walk"),
        OperatorSpec("step_to_goal", requires=("next_to_goal",), actions=("Move.right",), expert="arrive"),
    ],
    experts=["walk", "arrive"],
)


def test_a_rule_agent_solves_its_own_domain_and_the_score_is_the_return():
    agent = RuleAgent(GRAPH, corridor_atoms, ["Move.left", "Move.right"])
    result = evaluate(agent, "Corridor", episodes=7, num_envs=3, seed=11, domain=DOMAIN)
    assert result.num_episodes == 7 and result.scores == result.returns == [1.0] * 7
    assert result.depths == [LENGTH - 1] * 7 and result.outcomes == ["terminated"] * 7
    assert all(1 <= length <= LENGTH - 1 for length in result.lengths)
    assert result.usage_steps == []  # the rule agent has no router
    assert result.turns == [] and "turn_mean" not in result.summary()  # a domain without a clock


def test_a_time_limit_is_a_step_cap_and_the_deepest_cell_counts():
    result = evaluate(_Left(), "Corridor", episodes=4, num_envs=2, seed=0, max_episode_steps=3, domain=DOMAIN)
    assert result.outcomes == ["step cap"] * 4 and result.lengths == [3] * 4 and result.scores == [0.0] * 4
    starts = [Corridor().reset(seed=seed)[0]["cell"][0] for seed in (0, 1)]
    assert result.depths[0] == starts[0]  # walking left never gets deeper than the start


class _Left:
    def act(self, obs):
        return np.zeros(len(obs["cell"]), dtype=np.int64)


class _Routed:
    """All weight on "arrive" next to the goal, else on "walk"; it reads the atoms evaluate hands it."""

    expert_names = ("walk", "arrive")
    condition_names = ("next_to_goal",)  # only this column, in this order

    def act(self, obs):
        near = obs["atoms"][:, 0]
        return AgentStep(np.ones(len(near), dtype=np.int64), np.stack([1 - near, near], axis=1))


def test_usage_by_situation_comes_from_the_domains_atoms():
    result = evaluate(_Routed(), "Corridor", episodes=4, num_envs=2, seed=3, domain=DOMAIN)
    steps = dict(zip(result.situations, result.usage_steps, strict=True))
    weight = dict(zip(result.situations, np.asarray(result.usage_weight), strict=True))
    assert steps[ALL_STEPS] == sum(result.lengths) and steps["next to the goal"] == 4  # one step per episode
    np.testing.assert_allclose(weight["next to the goal"], [0.0, 4.0])


def test_domain_must_be_an_eval_domain():
    with pytest.raises(TypeError, match="domain must be an EvalDomain"):
        evaluate(_Left(), "Corridor", episodes=1, domain={"make_vector_env": make_corridors})


def test_a_longer_evaluation_holds_the_episodes_of_a_shorter_one():
    agent = RuleAgent(GRAPH, corridor_atoms, ["Move.left", "Move.right"])
    long = evaluate(agent, "Corridor", episodes=10, num_envs=3, seed=11, domain=DOMAIN)
    assert len(set(long.lengths)) > 1  # the start cell, hence the length, differs from episode to episode
    for episodes in (1, 2, 4, 7, 10):
        short = evaluate(agent, "Corridor", episodes=episodes, num_envs=3, seed=11, domain=DOMAIN)
        np.testing.assert_array_equal(long.metric("length", episodes), short.metric("length"))
    with pytest.raises(ValueError, match="episodes must be at most the 10 evaluated, got 11"):
        long.metric("length", 11)
    with pytest.raises(ValueError, match="episodes must be an integer >= 1, got 0"):
        long.metric("score", 0)
