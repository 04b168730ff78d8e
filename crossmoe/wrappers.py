"""Env wrappers that compute a policy's condition atoms once per env step, batched over the envs.

A :class:`~crossmoe.encoders.HypergraphLogicEncoder` reads the activations
from ``obs["atoms"]`` when the observation carries them, and computes them
with its ``atoms`` function otherwise. A training loop that stores
observations and replays them in several epochs (SB3, RLlib) would compute
them again for every minibatch of every epoch; with the atoms in the
observation they are computed once, when the env steps, for all its envs in
one batched call. :class:`AtomsObservation` does this for a gymnasium
``VectorEnv`` (RLlib's env runners step one); ``crossmoe.integrations.sb3``
has the same for SB3's ``VecEnv``.

:class:`TeacherObservation` does the same for a kickstarting teacher's action
probabilities (:mod:`crossmoe.teacher`), so that the learner's distillation
loss reads them from the stored observation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space

from crossmoe._checks import check_int

__all__ = [
    "TEACHER_KEY",
    "AtomsObservation",
    "TeacherObservation",
    "add_atoms",
    "add_teacher_probs",
    "atoms_space",
    "teacher_space",
]

TEACHER_KEY = "teacher_probs"
"""The observation key the teacher wrappers store the ``(num_envs, A)`` probabilities under."""


def atoms_space(observation_space: gym.Space, num_conditions: int, key: str = "atoms") -> gym.spaces.Dict:
    """``observation_space`` (a ``Dict``) with ``key``: a ``Box(0, 1, (num_conditions,), float32)`` of activations."""
    num_conditions = check_int(num_conditions, "num_conditions")
    if not isinstance(observation_space, gym.spaces.Dict):
        raise TypeError(f"observation_space must be a gymnasium Dict space, got {type(observation_space).__name__}")
    if key in observation_space.spaces:
        raise ValueError(f"key {key!r} is already in the observation space; wrap the env once")
    box = gym.spaces.Box(0.0, 1.0, (num_conditions,), np.float32)
    return gym.spaces.Dict({**observation_space.spaces, key: box})


def add_atoms(
    observations: Mapping[str, Any], atoms: Callable[[Mapping[str, Any]], Any], num_conditions: int, key: str = "atoms"
) -> dict[str, Any]:
    """``observations`` (a batch) with ``observations[key] = atoms(observations)`` as ``(B, C)`` float32.

    What the atoms wrappers add at every step; ``ValueError`` when ``atoms`` does not return ``(B, num_conditions)``.
    """
    values = np.asarray(atoms(observations), dtype=np.float32)
    expected = (len(next(iter(observations.values()))), num_conditions)
    if values.shape != expected:
        raise ValueError(f"atoms must return (num_envs, C)={expected}, got {values.shape}")
    return {**observations, key: values}


def check_atoms(atoms: Any) -> None:
    """``TypeError`` unless ``atoms`` is callable (a function of the observation dict)."""
    if not callable(atoms):
        raise TypeError(f"atoms must be a function of the observation dict, got {type(atoms).__name__}")


class AtomsObservation(gym.vector.VectorObservationWrapper):
    """Adds ``obs[key] = atoms(obs)``, ``(num_envs, C)`` float32, to a vector env's dict observations.

    Args:
        env: A gymnasium ``VectorEnv`` with ``Dict`` observations (autoreset
            ``NEXT_STEP``, gymnasium's default, or disabled).
        atoms: The batched atoms function (``crossmoe.nethack.extract_atoms``
            for NetHack), from the observation dict to ``(num_envs, C)``.
        num_conditions: ``C``.
        key: The observation key (the logic encoder's ``key``).

    Example:
        >>> envs = AtomsObservation(make_vector_env(16), NetHackAtoms(), len(ATOMS))  # doctest: +SKIP
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        atoms: Callable[[Mapping[str, Any]], Any],
        num_conditions: int,
        key: str = "atoms",
    ) -> None:
        check_atoms(atoms)
        super().__init__(env)
        self.atoms, self.key = atoms, key
        self.num_conditions = check_int(num_conditions, "num_conditions")
        self.single_observation_space = atoms_space(env.single_observation_space, num_conditions, key)
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)

    def observations(self, observations: Mapping[str, Any]) -> dict[str, Any]:
        return add_atoms(observations, self.atoms, self.num_conditions, self.key)


def teacher_space(
    observation_space: gym.Space, action_space: gym.Space, key: str = TEACHER_KEY
) -> tuple[gym.spaces.Dict, int]:
    """``observation_space`` (a ``Dict``) with ``key``, a ``Box(0, 1, (A,), float32)``, and ``A``, the actions."""
    if not isinstance(observation_space, gym.spaces.Dict):
        raise TypeError(f"the env must have Dict observations, got {type(observation_space).__name__}")
    if key in observation_space.spaces:
        raise ValueError(f"key {key!r} is already in the observation space; wrap the env once")
    if not isinstance(action_space, gym.spaces.Discrete):
        raise TypeError(f"the env must have a Discrete action space, got {action_space!r}")
    num_actions = int(action_space.n)
    box = gym.spaces.Box(0.0, 1.0, (num_actions,), np.float32)
    return gym.spaces.Dict({**observation_space.spaces, key: box}), num_actions


def add_teacher_probs(
    observations: Mapping[str, Any], teacher: Any, num_actions: int, key: str = TEACHER_KEY
) -> dict[str, Any]:
    """``observations`` (a batch) with ``observations[key]``: the teacher's checked ``(B, A)`` float32 probabilities."""
    from crossmoe.teacher import teacher_probs

    return {**observations, key: teacher_probs(teacher, observations, num_actions).numpy()}


class TeacherObservation(gym.vector.VectorObservationWrapper):
    """Adds ``obs[key] = teacher.action_probs(obs)``, ``(num_envs, A)`` float32, to a vector env's dict observations.

    Computed for all envs in one call per step and checked
    (:func:`~crossmoe.teacher.teacher_probs`). Wrap it around
    :class:`AtomsObservation` to let the teacher read the atoms stored there.

    Args:
        env: A gymnasium ``VectorEnv`` with ``Dict`` observations and a ``Discrete`` single action space.
        teacher: A :class:`~crossmoe.teacher.Teacher`.
        key: The observation key.
    """

    def __init__(self, env: gym.vector.VectorEnv, teacher: Any, key: str = TEACHER_KEY) -> None:
        from crossmoe.teacher import check_teacher

        check_teacher(teacher)
        space, self.num_actions = teacher_space(env.single_observation_space, env.single_action_space, key)
        super().__init__(env)
        self.teacher, self.key = teacher, key
        self.single_observation_space = space
        self.observation_space = batch_space(space, env.num_envs)

    def observations(self, observations: Mapping[str, Any]) -> dict[str, Any]:
        return add_teacher_probs(observations, self.teacher, self.num_actions, self.key)
