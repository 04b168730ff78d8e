from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

pytest.importorskip("nle")

from gymnasium.vector import AutoresetMode

from crossmoe.nethack.env import (
    DEFAULT_OBSERVATION_KEYS,
    NetHackSeeding,
    make_env,
    make_vector_env,
    split_episode_ends,
)


def rollout(seed: int, steps: int = 200, num_envs: int = 2, reset_seed: int | None = None) -> np.ndarray:
    envs = make_vector_env(num_envs, seed=seed)
    obs, _ = envs.reset(seed=reset_seed)
    actions = np.random.default_rng(0).integers(envs.single_action_space.n, size=(steps, num_envs))
    glyphs = [obs["glyphs"].copy()]
    for action in actions:
        obs, *_ = envs.step(action)
        glyphs.append(obs["glyphs"].copy())
    envs.close()
    return np.stack(glyphs)


def test_make_env_returns_the_requested_keys():
    env = make_env(seed=0)
    obs, _ = env.reset()
    assert isinstance(env, NetHackSeeding)
    assert set(obs) == set(DEFAULT_OBSERVATION_KEYS) and "screen_descriptions" not in obs
    assert env.action_space.n == 23
    env.close()
    env = make_env("NetHackScore-v0", observation_keys=("glyphs", "blstats"))
    assert set(env.reset(seed=1)[0]) == {"glyphs", "blstats"}
    env.close()


def test_make_vector_env_shapes():
    envs = make_vector_env(3, seed=0, autoreset_mode=AutoresetMode.SAME_STEP)
    obs, _ = envs.reset(seed=0)
    assert set(obs) == set(DEFAULT_OBSERVATION_KEYS)
    assert obs["glyphs"].shape == (3, 21, 79) and obs["blstats"].shape == (3, 27)
    assert envs.single_action_space.n == 23 and envs.num_envs == 3
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    envs.close()


def test_same_seed_reproduces_trajectories():
    first = rollout(seed=7, reset_seed=7)
    np.testing.assert_array_equal(first, rollout(seed=7, reset_seed=7))
    # Environment i is seeded with seed + i whether or not reset gets the seed again.
    np.testing.assert_array_equal(first, rollout(seed=7, reset_seed=None))
    assert not np.array_equal(first, rollout(seed=8, reset_seed=8))
    # The environments of one vector env play different games.
    assert not np.array_equal(first[0, 0], first[0, 1])


def test_single_env_reset_seed_reproduces_the_game():
    env = make_env()
    first = env.reset(seed=3)[0]["glyphs"].copy()
    other = env.reset(seed=4)[0]["glyphs"].copy()
    again = env.reset(seed=3)[0]["glyphs"].copy()
    env.close()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("num_envs", [0, -1, 1.5, True])
def test_bad_num_envs(num_envs):
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env(num_envs)


def test_bad_vectorization_and_env_id():
    with pytest.raises(ValueError, match="vectorization"):
        make_vector_env(1, vectorization="threads")
    with pytest.raises(ValueError, match="env_id"):
        make_env("")


def test_minihack_without_minihack_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "minihack", None)  # makes `import minihack` fail, installed or not
    with pytest.raises(ImportError, match=r"crossmoe\[minihack\]"):
        make_env("MiniHack-Room-5x5-v0")
    with pytest.raises(ImportError, match=r"crossmoe\[minihack\]"):
        make_vector_env(1, env_id="MiniHack-Room-5x5-v0")


@pytest.mark.skipif(importlib.util.find_spec("minihack") is None, reason="needs the minihack extra")
def test_minihack_env_has_the_nle_observations_and_its_own_actions():
    envs = make_vector_env(2, seed=1, env_id="MiniHack-Room-5x5-v0")
    obs, _ = envs.reset(seed=1)
    assert envs.single_action_space.n == 8  # compass moves
    assert obs["glyphs"].shape == (2, 21, 79) and obs["blstats"].shape == (2, 27)
    envs.close()


def test_nle_step_cap_is_an_abort_not_a_terminal_state():
    """NLE quits the game at its own step cap: terminated=True, end_status ABORTED, blank final observation."""

    envs = make_vector_env(2, seed=0, max_episode_steps=50)  # a gymnasium TimeLimit, beyond NLE's cap below
    for env in envs.envs:
        env.unwrapped._max_episode_steps = 3  # NLE's own cap (5000 by default)
    envs.reset(seed=0)
    for _ in range(2):
        _, _, terminated, truncated, info = envs.step(np.array([1, 1]))
        terminal, ends, aborted = split_episode_ends(terminated, truncated, info)
        assert not (terminal | ends | aborted).any()
    obs, _, terminated, truncated, info = envs.step(np.array([1, 1]))
    assert terminated.all() and not truncated.any()
    assert not obs["blstats"].any()  # why the bootstrap uses the last real observation instead
    terminal, ends, aborted = split_episode_ends(terminated, truncated, info)
    assert aborted.all() and ends.all() and not terminal.any()
    envs.close()


def test_split_episode_ends_without_end_status():
    terminated, truncated = np.array([True, False, True]), np.array([False, True, True])
    terminal, ends, aborted = split_episode_ends(terminated, truncated, {})
    np.testing.assert_array_equal(terminal, [True, False, True])  # a death on the time-limit step is terminal
    np.testing.assert_array_equal(ends, [True, True, True])
    assert not aborted.any()


def test_split_episode_ends_rejects_mismatched_flags():
    with pytest.raises(ValueError, match=r"terminated and truncated must be \(N,\) arrays of one shape, got \(2,\)"):
        split_episode_ends(np.array([True, False]), np.array([False]), {})


def test_make_policy_defaults_to_the_nethack_score_action_set():
    """With no action count, the agent is NetHackScore-v0's: as many logits as the real env has actions."""
    from crossmoe.nethack import NETHACK_SCORE_ACTIONS, make_baseline_policy, make_policy

    env = make_env("NetHackScore-v0", seed=0)
    obs, _ = env.reset(seed=0)
    batch = {key: value[None] for key, value in obs.items()}
    assert env.action_space.n == NETHACK_SCORE_ACTIONS == 23
    for factory in (make_policy, make_baseline_policy):
        agent = factory(dim=32)
        assert agent.action_dim == 23 and agent(batch).logits.shape == (1, 23)
        assert factory(env=env, dim=32).action_dim == 23
        assert factory(8, dim=32).action_dim == 8
        with pytest.raises(ValueError, match="action_dim must match the env's 23 actions, got 8"):
            factory(8, env=env, dim=32)
    env.close()
