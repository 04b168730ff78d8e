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

__all__ = ["ANY_COLOR", "MissionCode", "Task", "encode_mission", "make_env", "make_vector_env"]

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


def make_env(env_id: str, seed: int | None = None, max_episode_steps: int | None = None, **kwargs: Any) -> gym.Env:
    """A MiniGrid or BabyAI env with :class:`MissionCode`; ``seed`` seeds its first reset."""
    import minigrid  # noqa: F401  (registers the MiniGrid and BabyAI ids)

    env = MissionCode(gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs))
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
