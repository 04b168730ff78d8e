"""Reproducible NLE environments, single and vectorised.

NLE 1.3.0 accepts ``reset(seed=...)`` but only seeds gymnasium's ``np_random``
with it: NetHack's own RNGs stay random, so two resets with the same seed give
different games. :func:`make_env` therefore wraps every environment in
:class:`NetHackSeeding`, which turns the gymnasium seed into NetHack's ``core``
and ``disp`` seeds (with NetHack's anti-automation reseeding off) before each
reset. The same seed then gives the same dungeon and, for the same actions,
the same trajectory.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from nle import nethack
from nle.env.base import NLE

from crossmoe.nethack.glyphs import GLYPH_CLASS, GlyphClass

if TYPE_CHECKING:
    from crossmoe.evaluation import EvalDomain

__all__ = [
    "DEFAULT_OBSERVATION_KEYS",
    "MEMORY_KEYS",
    "EpisodeOutcome",
    "MapMemory",
    "NetHackSeeding",
    "eval_domain",
    "make_env",
    "make_vector_env",
    "split_episode_ends",
]

DEFAULT_OBSERVATION_KEYS: tuple[str, ...] = ("glyphs", "blstats", "message", "inv_oclasses", "inv_letters")
"""What the atoms and encoders read. ``screen_descriptions`` is left out: it halves the step rate."""

MEMORY_KEYS: tuple[str, ...] = ("map_memory", "visited")
"""The keys :class:`MapMemory` adds to each observation."""

_UNSEEN_GLYPH = nethack.GLYPH_CMAP_OFF  # S_stone: what NLE shows for a cell never seen (dark, or solid rock)
_HOW_DONE = {
    int(getattr(nethack, name)): name.lower()
    for name in (
        "DIED",
        "CHOKING",
        "POISONING",
        "STARVING",
        "DROWNING",
        "BURNING",
        "DISSOLVED",
        "CRUSHING",
        "STONING",
        "TURNED_SLIME",
        "GENOCIDED",
        "PANICKED",
        "TRICKED",
        "QUIT",
        "ESCAPED",
        "ASCENDED",
    )
}
# "The jackal bites!", "The newt just misses!", "It hits!": a monster attacking the hero (pets fighting end
# with "."). Matched per sentence: one message line often holds several ("You miss the fox.  The fox bites!").
_ATTACK = re.compile(
    r"^(?:The |An? )?([^.!?]+?) (?:just )?(?:hits|bites|misses|stings|butts|kicks|claws|touches|stabs|thrusts|"
    r"swings|slashes|spits|breathes|zaps|grabs|engulfs|explodes)\b[^.!?]*!$"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LOCKED = b"This door is locked"
_COMPASS_OFFSETS = {
    "N": (-1, 0),
    "E": (0, 1),
    "S": (1, 0),
    "W": (0, -1),
    "NE": (-1, 1),
    "SE": (1, 1),
    "SW": (1, -1),
    "NW": (-1, -1),
}
_MOVES = {
    getattr(kind, name): offset
    for kind in (nethack.CompassDirection, nethack.CompassDirectionLonger)
    for name, offset in _COMPASS_OFFSETS.items()
}


class NetHackSeeding(gym.Wrapper):
    """Make ``reset(seed=...)`` seed NetHack itself.

    A seeded reset starts a NumPy generator from ``seed``; every reset from then
    on, seeded or not (autoresets included), draws NetHack's ``core`` and
    ``disp`` seeds from it and sets them with ``reseed=False``. Consecutive
    episodes therefore differ from each other but the whole sequence is
    reproducible. Until the first seed is given, NetHack seeds itself randomly.

    Args:
        env: an NLE environment (anything whose ``unwrapped`` has NLE's ``seed(core, disp, reseed)``).
        seed: optional seed used when ``reset`` is called without one before any seeded reset.
    """

    def __init__(self, env: gym.Env, seed: int | None = None) -> None:
        super().__init__(env)
        self._seed_rng = None if seed is None else np.random.default_rng(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._seed_rng = np.random.default_rng(seed)
        if self._seed_rng is not None:
            core, disp = (int(value) for value in self._seed_rng.integers(sys.maxsize, size=2))
            self.env.unwrapped.seed(core, disp, False)
        return self.env.reset(seed=seed, options=options)


class MapMemory(gym.Wrapper):
    """Add a map memory to each observation: ``map_memory`` and ``visited``, both ``(21, 79)``.

    NetHack's own display already remembers terrain and objects out of sight,
    but a monster, a pet or the hero hides the cell it stands on. ``map_memory``
    is the last glyph seen at each cell that was not a creature: the staircase
    under the hero, the item under a monster. Cells never seen hold the
    unseen-stone glyph. ``visited`` is 1 on the cells the hero has stood
    on and 2 on a door the hero found locked (by walking into it: "This door
    is locked"), which path finding then avoids. Both restart on a reset and on a change of level (dungeon number or
    level), so they describe the current level only. NLE blanks the
    observation when the game ends; the memory then keeps the last level.

    The atoms that need it (``on_stairs_down``, the ``path_*`` navigation
    atoms of :func:`~crossmoe.nethack.extract_atoms`) read these keys.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        shape = tuple(nethack.DUNGEON_SHAPE)
        self.observation_space = gym.spaces.Dict(
            {
                **env.observation_space.spaces,
                "map_memory": gym.spaces.Box(0, nethack.MAX_GLYPH, shape, dtype=np.int16),
                "visited": gym.spaces.Box(0, 2, shape, dtype=np.uint8),
            }
        )
        self._memory = np.full(shape, _UNSEEN_GLYPH, dtype=np.int16)
        self._visited = np.zeros(shape, dtype=np.uint8)
        self._level: tuple[int, int] | None = None

    def _observe(self, obs: dict[str, Any], new_episode: bool) -> dict[str, Any]:
        blstats = obs["blstats"]
        alive = blstats[nethack.NLE_BL_HPMAX] > 0  # NLE zeroes blstats on the final observation
        level = (int(blstats[nethack.NLE_BL_DNUM]), int(blstats[nethack.NLE_BL_DLEVEL]))
        if new_episode or (alive and level != self._level):
            self._memory.fill(_UNSEEN_GLYPH)
            self._visited.fill(0)
        if alive:
            self._level = level
            glyphs = obs["glyphs"]
            cls = GLYPH_CLASS[glyphs]
            seen = (cls != GlyphClass.MONSTER) & (cls != GlyphClass.PET)
            np.copyto(self._memory, glyphs, where=seen, casting="unsafe")
            self._visited[blstats[nethack.NLE_BL_Y], blstats[nethack.NLE_BL_X]] = 1
        return {**obs, "map_memory": self._memory.copy(), "visited": self._visited.copy()}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._observe(obs, new_episode=True), info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = self._observe(obs, new_episode=False)
        if "message" in obs and _LOCKED in bytes(obs["message"]):
            move = _MOVES.get(self.env.unwrapped.actions[int(action)])
            if move is not None:
                rows, cols = self._visited.shape
                y = int(obs["blstats"][nethack.NLE_BL_Y]) + move[0]
                x = int(obs["blstats"][nethack.NLE_BL_X]) + move[1]
                if 0 <= y < rows and 0 <= x < cols:
                    self._visited[y, x] = 2
                    obs["visited"] = self._visited.copy()
        return obs, reward, terminated, truncated, info


class EpisodeOutcome(gym.Wrapper):
    """Say how each episode ended: ``info["outcome"]`` on its last step, a short string.

    ``"killed by <monster>"`` (the last monster whose attack was announced,
    or ``"died"``), ``"starving"``, ``"drowning"`` and the other NetHack end
    types in lower case, ``"step cap"`` when NLE's step limit quit the game,
    ``"task success"`` for a solved MiniHack task, and ``"truncated"`` for a
    gymnasium time limit. The evaluation harness histograms it.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._attacker: str | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._attacker = None
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        raw = obs.get("message")  # absent when observation_keys leave it out
        message = "" if raw is None else bytes(np.asarray(raw, dtype=np.uint8)).split(b"\0", 1)[0].decode("latin-1")
        for sentence in _SENTENCE_END.split(message.strip()):
            match = _ATTACK.match(sentence)
            if match:  # the last attacker of the line
                self._attacker = match.group(1).lower()
        if terminated or truncated:
            info = dict(info)
            info["outcome"] = self._outcome(info, terminated)
        return obs, reward, terminated, truncated, info

    def _outcome(self, info: Mapping[str, Any], terminated: bool) -> str:
        status = info.get("end_status")
        if status is not None and int(status) == int(NLE.StepStatus.ABORTED):
            return "step cap"
        success = getattr(self.env.unwrapped.StepStatus, "TASK_SUCCESSFUL", None)  # MiniHack's StepStatus
        if status is not None and success is not None and int(status) == int(success):
            return "task success"
        if not terminated:
            return "truncated"
        how = _HOW_DONE.get(int(self.env.unwrapped.nethack.how_done()), "unknown")
        if how == "died":
            return f"killed by {self._attacker}" if self._attacker else "died"
        return how


def _import_environments(env_id: str) -> None:
    """Check ``env_id`` and import the package that registers it with gymnasium."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")
    if env_id.startswith("MiniHack"):
        try:
            with warnings.catch_warnings():  # minihack 1.0.2 imports the deprecated pkg_resources
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
                importlib.import_module("minihack")
        except ImportError as error:
            raise ImportError(
                f'{env_id!r} needs MiniHack, which is not installed; install it with pip install "crossmoe[minihack]"'
            ) from error
    else:
        importlib.import_module("nle")


def make_env(
    env_id: str = "NetHackScore-v0",
    *,
    observation_keys: Sequence[str] = DEFAULT_OBSERVATION_KEYS,
    seed: int | None = None,
    memory: bool = True,
    **kwargs: Any,
) -> gym.Env:
    """Create one NLE-family environment (``NetHack*`` or ``MiniHack*``) with reproducible seeding.

    Args:
        env_id: a registered NLE or MiniHack id. MiniHack is an optional dependency.
        observation_keys: NLE observation keys to return.
        seed: default seed for the first ``reset()`` when it is called without one;
            ``reset(seed=s)`` always takes precedence. Also seeds ``action_space``.
        memory: Add the :class:`MapMemory` keys (``map_memory``, ``visited``) and
            :class:`EpisodeOutcome`'s ``info["outcome"]``.
        **kwargs: passed to ``gym.make``. ``fix_moon_phase`` defaults to ``True`` so that
            the moon phase and other clock effects come from the seed instead of today's date.

    Returns:
        The environment, wrapped in :class:`NetHackSeeding` (except ``NetHackChallenge``,
        which forbids seeding NetHack), then in :class:`EpisodeOutcome` and :class:`MapMemory`
        when ``memory`` is True.

    Raises:
        ValueError: if ``env_id`` is not a non-empty string.
        ImportError: if ``env_id`` is a MiniHack id and MiniHack is not installed.
    """
    _import_environments(env_id)
    kwargs.setdefault("fix_moon_phase", True)
    env = gym.make(env_id, observation_keys=tuple(observation_keys), **kwargs)
    if seed is not None:
        env.action_space.seed(seed)
    from nle.env.tasks import NetHackChallenge

    if not isinstance(env.unwrapped, NetHackChallenge):
        # The challenge forbids changing NetHack's seeds; reset(seed=...) only seeds np_random there.
        env = NetHackSeeding(env, seed=seed)
    if memory:
        env = MapMemory(EpisodeOutcome(env))
    return env


def make_vector_env(
    num_envs: int,
    seed: int = 0,
    env_id: str = "NetHackScore-v0",
    *,
    vectorization: str = "sync",
    autoreset_mode: AutoresetMode | None = None,
    observation_keys: Sequence[str] = DEFAULT_OBSERVATION_KEYS,
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """Create ``num_envs`` seeded copies of an NLE-family environment.

    Environment ``i`` is built with seed ``seed + i``, which is also what gymnasium
    hands it on ``envs.reset(seed=seed)``. So ``envs.reset()`` and
    ``envs.reset(seed=seed)`` start the same games, and every later episode
    (autoresets included) is reproducible too; see :class:`NetHackSeeding`.

    The autoreset mode decides what a PPO rollout has to do at episode ends:

    - ``AutoresetMode.NEXT_STEP`` (gymnasium's default): the step after a done
      is a reset step. Its action is ignored, its reward is 0 and its
      observation is the first of the new episode. Mask these steps out of the
      PPO data (losses and advantages).
    - ``AutoresetMode.SAME_STEP``: the step that ends an episode already returns
      the new episode's first observation, and ``infos["final_obs"]`` holds the
      terminal one. NLE reuses its observation arrays, so ``final_obs`` can
      already show the reset observation: copy observations before stepping, or
      do not bootstrap from ``final_obs``.

    Args:
        num_envs: number of environments, at least 1.
        seed: base seed; environment ``i`` gets ``seed + i``.
        env_id: a registered NLE or MiniHack id.
        vectorization: ``"sync"`` (one process) or ``"async"`` (one subprocess per environment).
        autoreset_mode: a :class:`gymnasium.vector.AutoresetMode`; ``None`` means ``NEXT_STEP``.
        observation_keys: NLE observation keys to return.
        **env_kwargs: passed to :func:`make_env` and on to ``gym.make``.

    Raises:
        ValueError: if ``num_envs`` < 1 or ``vectorization`` is unknown.
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    if autoreset_mode is None:
        autoreset_mode = AutoresetMode.NEXT_STEP
    # Fail early, in this process, when the environment package is missing.
    _import_environments(env_id)
    env_fns = [
        functools.partial(make_env, env_id, observation_keys=tuple(observation_keys), seed=seed + index, **env_kwargs)
        for index in range(int(num_envs))
    ]
    vector_cls = gym.vector.SyncVectorEnv if vectorization == "sync" else gym.vector.AsyncVectorEnv
    envs = vector_cls(env_fns, autoreset_mode=autoreset_mode)
    envs.action_space.seed(seed)
    return envs


def split_episode_ends(
    terminated: np.ndarray, truncated: np.ndarray, info: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(terminal, ends, aborted)`` of one vector-env step, all ``(N,)`` bool.

    NLE (and MiniHack) end an episode at their own step cap by quitting the
    game: the step reports ``terminated=True, truncated=False`` and
    ``info["end_status"]`` is ``ABORTED``, and the quit blanks the final
    observation. Such an episode is cut off, not terminal: bootstrap it from
    the value of its last real observation. ``aborted`` marks those episodes;
    ``terminal`` is a true terminal state (a death, including one on the last
    step of a gymnasium time limit); ``ends`` is any episode end.

    Args:
        terminated, truncated: The ``(N,)`` flags of the vector step.
        info: The vector step's info dict (gymnasium's ``"end_status"`` and
            ``"_end_status"`` entries are read when present).
    """
    terminated, truncated = np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool)
    if terminated.shape != truncated.shape or terminated.ndim != 1:
        raise ValueError(
            f"terminated and truncated must be (N,) arrays of one shape, got {terminated.shape} and {truncated.shape}"
        )
    aborted = np.zeros_like(terminated)
    if "end_status" in info:
        status = np.asarray(info["end_status"]).astype(np.int64)
        reported = np.asarray(info.get("_end_status", np.ones_like(terminated)), dtype=bool)
        aborted = (status == int(NLE.StepStatus.ABORTED)) & reported
    return terminated & ~aborted, terminated | truncated, aborted


def _bottom_line(index: int):
    def read(obs: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(obs["blstats"])[:, index]

    return read


def eval_domain() -> EvalDomain:
    """NetHack as an :class:`~crossmoe.evaluation.EvalDomain`: what :func:`~crossmoe.evaluation.evaluate` plays.

    The envs of :func:`make_vector_env`; the bottom line's score, depth and turn counter;
    the atoms of :func:`~crossmoe.nethack.extract_atoms`
    (:data:`~crossmoe.nethack.ATOMS`) and the usage table's
    :data:`~crossmoe.evaluation.DEFAULT_SITUATIONS`; episode ends as
    :func:`split_episode_ends` tells them (NLE's own step cap is a cut-off).
    """
    from crossmoe.evaluation import DEFAULT_SITUATIONS, EvalDomain
    from crossmoe.nethack.atoms import ATOMS, extract_atoms

    return EvalDomain(
        make_vector_env=make_vector_env,
        score=_bottom_line(nethack.NLE_BL_SCORE),
        depth=_bottom_line(nethack.NLE_BL_DEPTH),
        turns=_bottom_line(nethack.NLE_BL_TIME),
        atoms=extract_atoms,
        atom_names=ATOMS,
        situations=DEFAULT_SITUATIONS,
        episode_ends=split_episode_ends,
    )
