"""MiniGrid and BabyAI environments with the mission as numbers, one at a time or vectorised.

A MiniGrid observation is a symbolic 7x7 egocentric grid (``image``: object,
colour and state per cell), the agent's ``direction`` and a ``mission``
string. Strings do not batch, so :class:`MissionCode` replaces the mission by
three numbers, parsed once per step inside the env: what to do
(:class:`Task`), the object (MiniGrid's ``OBJECT_TO_IDX``) and its colour
(``COLOR_TO_IDX``, or :data:`ANY_COLOR`). The atoms and encoders read those.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

import gymnasium as gym
import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

from crossmoe._checks import check_int

__all__ = ["ANY_COLOR", "MissionCode", "Task", "encode_mission", "fast_view", "make_env", "make_vector_env"]

ANY_COLOR = 255
"""The colour code of a mission that names no colour ("pick up a ball", "get to the goal")."""


class Task(IntEnum):
    """What a mission asks for, by its last verb ("use the key to open the door and then get to the goal": GO_TO)."""

    OTHER = 0
    GO_TO = 1
    PICK_UP = 2
    OPEN = 3


_VERBS = {"go to": Task.GO_TO, "get to": Task.GO_TO, "pick up": Task.PICK_UP, "open": Task.OPEN}
_VERB = re.compile(r"\b(" + "|".join(_VERBS) + r")\b")
_WORD = re.compile(r"[a-z]+")


@functools.lru_cache(maxsize=4096)  # BabyAI has a few hundred distinct missions
def encode_mission(mission: str) -> tuple[int, int, int]:
    """``(task, object, colour)`` of a mission string: its last verb, then the first object and colour after it.

    An object or colour the mission does not name is 0 (``unseen``) or
    :data:`ANY_COLOR`.

    Example:
        >>> encode_mission("pick up the purple box")
        (2, 7, 3)
        >>> encode_mission("use the key to open the door and then get to the goal")
        (1, 8, 255)
    """
    if not isinstance(mission, str):
        raise TypeError(f"mission must be a string, got {type(mission).__name__}")
    verbs = list(_VERB.finditer(mission.lower()))
    if not verbs:
        return int(Task.OTHER), 0, ANY_COLOR
    last = verbs[-1]
    words = _WORD.findall(mission.lower()[last.end() :])
    thing = next((OBJECT_TO_IDX[w] for w in words if w in OBJECT_TO_IDX), 0)
    color = next((COLOR_TO_IDX[w] for w in words if w in COLOR_TO_IDX), ANY_COLOR)
    return int(_VERBS[last.group(1)]), thing, color


class MissionCode(gym.ObservationWrapper):
    """Replace the ``mission`` string by ``(task, object, colour)`` as a ``uint8`` array (:func:`encode_mission`)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        spaces = dict(env.observation_space.spaces)
        spaces["mission"] = gym.spaces.Box(0, 255, (3,), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        return {**observation, "mission": np.array(encode_mission(observation["mission"]), dtype=np.uint8)}


_WALL = (OBJECT_TO_IDX["wall"], COLOR_TO_IDX["grey"], 0)  # what lies outside the grid
_EMPTY = (OBJECT_TO_IDX["empty"], 0, 0)
_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # MiniGrid's agent_dir 0-3: right, down, left, up


def _clear(cell: Any) -> bool:
    """Whether light passes a view cell: empty, or an object the agent can see behind (walls off the grid cannot)."""
    return cell is None or (cell is not _WALL and cell.see_behind())


def fast_view(env: Any) -> np.ndarray:
    """The agent's egocentric view of a MiniGrid env, as ``env.gen_obs()["image"]`` encodes it, computed directly.

    MiniGrid builds the view by slicing the grid into a new ``Grid``,
    rotating it ``agent_dir + 1`` times (a new ``Grid`` each) and encoding
    it, about 500 Python calls per step. Here each view cell reads its world
    cell once: view cell ``(i, j)`` (the agent at ``(size // 2, size - 1)``,
    facing ``j = 0``) is the world cell ``size - 1 - j`` steps ahead of the
    agent and ``i - size // 2`` to its right; cells off the grid are walls.
    Visibility follows MiniGrid's rule: from the agent's cell, row by row
    away from it, light spreads sideways and one row ahead past every cell
    that can be seen behind (``see_behind``), unless ``see_through_walls``.
    The agent's own cell shows what it carries.
    """
    size = env.agent_view_size
    half = size // 2
    ax, ay = env.agent_pos
    dx, dy = _DIRECTIONS[env.agent_dir]
    rx, ry = -dy, dx  # the agent's right
    width, height, cells = env.grid.width, env.grid.height, env.grid.grid
    view: list[list[Any]] = [[None] * size for _ in range(size)]  # view[i][j]
    for j in range(size):
        ahead = size - 1 - j
        for i in range(size):
            side = i - half
            x, y = ax + dx * ahead + rx * side, ay + dy * ahead + ry * side
            view[i][j] = cells[y * width + x] if 0 <= x < width and 0 <= y < height else _WALL
    image = np.zeros((size, size, 3), dtype=np.uint8)  # unseen: 0
    if env.see_through_walls:
        visible = [[True] * size for _ in range(size)]
    else:
        visible = [[False] * size for _ in range(size)]
        visible[half][size - 1] = True

        for j in range(size - 1, -1, -1):
            for i in range(size - 1):  # light spreads to the right...
                if visible[i][j] and _clear(view[i][j]):
                    visible[i + 1][j] = True
                    if j > 0:
                        visible[i + 1][j - 1] = visible[i][j - 1] = True
            for i in range(size - 1, 0, -1):  # ...and to the left
                if visible[i][j] and _clear(view[i][j]):
                    visible[i - 1][j] = True
                    if j > 0:
                        visible[i - 1][j - 1] = visible[i][j - 1] = True
    view[half][size - 1] = env.carrying
    for i in range(size):
        for j in range(size):
            if visible[i][j]:
                cell = view[i][j]
                image[i, j] = _EMPTY if cell is None else cell if cell is _WALL else cell.encode()
    return image


def _fast_gen_obs(env: Any) -> dict[str, Any]:
    return {"image": fast_view(env), "direction": env.agent_dir, "mission": env.mission}


def make_env(
    env_id: str, seed: int | None = None, max_episode_steps: int | None = None, fast: bool = True, **kwargs: Any
) -> gym.Env:
    """A MiniGrid or BabyAI env with :class:`MissionCode`; ``seed`` seeds its first reset.

    With ``fast`` (the default) an env that uses MiniGrid's own
    ``gen_obs`` computes its observations with :func:`fast_view` instead:
    the same observations, about twice as fast a step.
    """
    import minigrid  # noqa: F401  (registers the MiniGrid and BabyAI ids)
    from minigrid.minigrid_env import MiniGridEnv

    env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    base = env.unwrapped
    stock = getattr(type(base), "gen_obs", None) is MiniGridEnv.gen_obs
    if fast and stock and type(base).gen_obs_grid is MiniGridEnv.gen_obs_grid:
        base.gen_obs = functools.partial(_fast_gen_obs, base)
    env = MissionCode(env)
    if seed is not None:
        env.reset(seed=seed)
    return env


def make_vector_env(
    num_envs: int, seed: int = 0, env_id: str = "MiniGrid-Empty-8x8-v0", **kwargs: Any
) -> gym.vector.SyncVectorEnv:
    """``num_envs`` envs of :func:`make_env` (env ``i`` seeded with ``seed + i``) in a synchronous vector env."""
    num_envs = check_int(num_envs, "num_envs")
    thunks = [functools.partial(make_env, env_id, seed + i, **kwargs) for i in range(num_envs)]
    return gym.vector.SyncVectorEnv(thunks)
