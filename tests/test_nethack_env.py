from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from nethack_facts import VI_KEY_MOVES

pytest.importorskip("nle")

from gymnasium.vector import AutoresetMode
from nle import nethack

from crossmoe.nethack.env import (
    DEFAULT_OBSERVATION_KEYS,
    MEMORY_KEYS,
    EpisodeOutcome,
    MapMemory,
    NetHackSeeding,
    make_env,
    make_vector_env,
    split_episode_ends,
)

UNSEEN = nethack.GLYPH_CMAP_OFF  # S_stone
MONSTER_NAMES = {nethack.permonst(index).mname for index in range(nethack.NUMMONS)}


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
    assert (
        isinstance(env, MapMemory) and isinstance(env.env, EpisodeOutcome) and isinstance(env.env.env, NetHackSeeding)
    )
    assert MEMORY_KEYS == ("map_memory", "visited")
    assert set(obs) == {*DEFAULT_OBSERVATION_KEYS, *MEMORY_KEYS} and "screen_descriptions" not in obs
    assert env.action_space.n == 23
    env.close()
    env = make_env("NetHackScore-v0", observation_keys=("glyphs", "blstats"))
    assert set(env.reset(seed=1)[0]) == {"glyphs", "blstats", *MEMORY_KEYS}
    for action in range(1, 9):  # the wrappers step without a message
        obs, *_ = env.step(action)
    assert set(obs) == {"glyphs", "blstats", *MEMORY_KEYS}
    env.close()
    env = make_env(seed=0, memory=False)  # the plain NLE observation, no outcome either
    assert isinstance(env, NetHackSeeding)
    assert set(env.reset()[0]) == set(DEFAULT_OBSERVATION_KEYS)
    env.close()


def test_make_vector_env_shapes():
    envs = make_vector_env(3, seed=0, autoreset_mode=AutoresetMode.SAME_STEP)
    obs, _ = envs.reset(seed=0)
    assert set(obs) == {*DEFAULT_OBSERVATION_KEYS, *MEMORY_KEYS}
    assert obs["glyphs"].shape == (3, 21, 79) and obs["blstats"].shape == (3, 27)
    assert obs["map_memory"].shape == obs["visited"].shape == (3, 21, 79)
    assert obs["map_memory"].dtype == np.int16 and obs["visited"].dtype == np.uint8
    assert envs.single_observation_space["map_memory"].shape == (21, 79)
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
        # the knowledge prior needs to know which 8 actions (MiniHack's compass moves, say)
        compass = {"action_set": list(nethack.CompassDirection)} if factory is make_policy else {}
        assert factory(8, dim=32, **compass).action_dim == 8
        with pytest.raises(ValueError, match="action_dim must match the env's 23 actions, got 8"):
            factory(8, env=env, dim=32)
    env.close()


# MapMemory


def _is_creature(glyphs: np.ndarray) -> np.ndarray:
    """Monsters, pets (glyph_is_monster includes them), the hero and remembered invisible monsters."""
    return nethack.glyph_is_monster(glyphs) | nethack.glyph_is_invisible(glyphs)


def _level(obs) -> tuple[int, int]:
    return int(obs["blstats"][nethack.NLE_BL_DNUM]), int(obs["blstats"][nethack.NLE_BL_DLEVEL])


def test_map_memory_observation_space():
    env = make_env(seed=0)
    space = env.observation_space
    assert space["map_memory"].shape == space["visited"].shape == tuple(nethack.DUNGEON_SHAPE)
    assert space["map_memory"].dtype == np.int16 and space["visited"].dtype == np.uint8
    obs, _ = env.reset()
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    assert set(obs) == set(space.spaces)
    for key in MEMORY_KEYS:
        assert space[key].contains(obs[key]), key
    env.close()


def test_map_memory_follows_its_definition_over_a_random_game():
    """Against a reference: the last non-creature glyph of every cell, the cells the hero stood on (1) and
    the doors it found locked by walking into them (2)."""
    env = make_env(seed=5)
    moves = {
        index: VI_KEY_MOVES[chr(action.value).lower()]
        for index, action in enumerate(env.unwrapped.actions)
        if isinstance(action, (nethack.CompassDirection, nethack.CompassDirectionLonger))
    }
    rng = np.random.default_rng(5)
    under_player_checks = 0
    for episode in range(2):
        obs, _ = env.reset(seed=5 + episode)
        memory = np.where(_is_creature(obs["glyphs"]), UNSEEN, obs["glyphs"])
        visited = np.zeros(nethack.DUNGEON_SHAPE, dtype=np.uint8)
        visited[obs["blstats"][nethack.NLE_BL_Y], obs["blstats"][nethack.NLE_BL_X]] = 1
        level = _level(obs)
        for _ in range(150):
            np.testing.assert_array_equal(obs["map_memory"], memory)
            np.testing.assert_array_equal(obs["visited"], visited)
            previous = obs["glyphs"].copy()
            action = int(rng.integers(env.action_space.n))
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
            if _level(obs) != level:
                memory = np.full(nethack.DUNGEON_SHAPE, UNSEEN)
                visited[:] = 0
                level = _level(obs)
            memory = np.where(_is_creature(obs["glyphs"]), memory, obs["glyphs"])
            y, x = obs["blstats"][nethack.NLE_BL_Y], obs["blstats"][nethack.NLE_BL_X]
            visited[y, x] = 1
            if b"This door is locked" in bytes(obs["message"]) and action in moves:
                visited[y + moves[action][0], x + moves[action][1]] = 2
            # the hero hides the cell it stands on; the memory shows what was there before it stepped on it
            if not _is_creature(previous[y, x]) and previous[y, x] != UNSEEN:
                assert obs["map_memory"][y, x] == previous[y, x]
                assert _is_creature(obs["glyphs"][y, x])
                under_player_checks += 1
    env.close()
    assert under_player_checks > 50


def test_map_memory_restarts_on_reset_and_marks_the_start_cell():
    env = make_env(seed=0)
    obs, _ = env.reset()
    for action in (1, 2, 3, 4, 2, 2):  # compass moves
        obs, *_ = env.step(action)
    assert obs["visited"].sum() > 1
    obs, _ = env.reset(seed=0)
    y, x = obs["blstats"][nethack.NLE_BL_Y], obs["blstats"][nethack.NLE_BL_X]
    assert obs["visited"].sum() == 1 and obs["visited"][y, x] == 1
    np.testing.assert_array_equal(obs["map_memory"], np.where(_is_creature(obs["glyphs"]), UNSEEN, obs["glyphs"]))
    # the hero's starting cell was never seen without the hero on it
    assert obs["map_memory"][y, x] == UNSEEN
    # the arrays are copies: stepping does not change an observation already returned
    kept = obs["visited"].copy()
    env.step(2)
    np.testing.assert_array_equal(obs["visited"], kept)
    env.close()


def test_map_memory_in_a_vector_env_restarts_with_each_episode():
    envs = make_vector_env(2, seed=0)
    for env in envs.envs:
        env.unwrapped._max_episode_steps = 20  # NLE's own cap, so both episodes end soon
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    ended = np.zeros(2, dtype=bool)
    restarts = 0
    for _ in range(45):
        explored = obs["visited"].reshape(2, -1).sum(1)
        obs, _, terminated, truncated, _ = envs.step(rng.integers(1, 9, size=2))  # compass moves
        for i in range(2):
            y, x = obs["blstats"][i, nethack.NLE_BL_Y], obs["blstats"][i, nethack.NLE_BL_X]
            if ended[i]:  # NEXT_STEP autoreset: this is the first observation of the next episode
                assert explored[i] > 1
                assert obs["visited"][i].sum() == 1 and obs["visited"][i, y, x] == 1
                restarts += 1
            elif not (terminated[i] or truncated[i]):
                assert obs["visited"][i, y, x] == 1
        ended = terminated | truncated
    assert restarts >= 2
    envs.close()


# EpisodeOutcome


@pytest.mark.parametrize("seed", [0, 1])
def test_a_death_by_a_monster_names_the_monster(seed):
    # a tourist is frail: random play dies within a few hundred steps on these seeds
    env = make_env(seed=seed, character="tou-hum-neu-fem")
    env.reset()
    rng = np.random.default_rng(seed)
    infos = []
    for _ in range(500):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        infos.append(info)
        if terminated or truncated:
            break
    env.close()
    assert terminated and not truncated
    assert all("outcome" not in info for info in infos[:-1])  # only the last step says how it ended
    outcome = infos[-1]["outcome"]
    assert outcome.startswith("killed by ")
    assert outcome.removeprefix("killed by ") in MONSTER_NAMES, outcome


def test_nle_step_cap_outcome_is_step_cap_and_a_time_limit_is_truncated():
    env = make_env(seed=0)
    env.unwrapped._max_episode_steps = 5
    env.reset()
    for _ in range(5):
        _, _, terminated, truncated, info = env.step(19)  # wait
    assert terminated and info["outcome"] == "step cap"
    env.close()
    env = make_env(seed=0, max_episode_steps=4)  # gymnasium's TimeLimit
    env.reset()
    for _ in range(4):
        _, _, terminated, truncated, info = env.step(19)
    assert truncated and not terminated and info["outcome"] == "truncated"
    env.close()


def test_outcome_reaches_vector_env_infos():
    envs = make_vector_env(2, seed=0)
    for env in envs.envs:
        env.unwrapped._max_episode_steps = 3
    envs.reset(seed=0)
    for _ in range(3):
        _, _, terminated, _, info = envs.step(np.array([19, 19]))
    assert terminated.all()
    assert list(info["outcome"]) == ["step cap", "step cap"]
    envs.close()
