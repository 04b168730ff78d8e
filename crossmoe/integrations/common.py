"""What the SB3 and RLlib integrations share: building the policy, observation dtypes, minibatch aux losses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crossmoe._checks import check_probability
from crossmoe.losses import DISTILLATION_KINDS, AuxLossWeights, aux_loss
from crossmoe.policy import CrossAttentionMoEPolicy
from crossmoe.schedule import KEEP_EXPERTS_ALIVE, DistillationSchedule, TemperatureAnnealingScheduler
from crossmoe.teacher import SoftenedTeacher

__all__ = [
    "PRESETS",
    "TEACHERS",
    "build_policy",
    "default_schedule",
    "make_teacher",
    "minibatch_aux_loss",
    "observation_atoms",
    "restore_dtypes",
    "teacher_settings",
]

TEACHERS = ("rules", "rules_no_eating")
"""The teachers the integrations build by name: :class:`crossmoe.nethack.RuleAgent` on the env's actions, with
the priority :data:`crossmoe.nethack.rules.RULES` gives the name (``"rules"``: with eating)."""


def teacher_settings(
    teacher: str | None,
    teacher_schedule: DistillationSchedule | None,
    teacher_loss: str,
    teacher_epsilon: float = 0.0,
) -> dict[str, Any] | None:
    """The checked kickstarting settings as plain data, or None without a teacher.

    Returns:
        ``{"teacher": name, "teacher_schedule": schedule state dict (a constant 3.0 by default),
        "teacher_loss": kind, "teacher_epsilon": uniform share}``.
    """
    teacher_epsilon = check_probability(teacher_epsilon, "teacher_epsilon")
    if teacher is not None and teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS} or None, got {teacher!r}")
    if teacher_schedule is not None and not isinstance(teacher_schedule, DistillationSchedule):
        raise ValueError(f"teacher_schedule must be a DistillationSchedule or None, got {teacher_schedule!r}")
    if teacher_loss not in DISTILLATION_KINDS:
        raise ValueError(f"teacher_loss must be one of {DISTILLATION_KINDS}, got {teacher_loss!r}")
    if teacher is None:
        return None
    schedule = teacher_schedule or DistillationSchedule(3.0)
    return {
        "teacher": teacher,
        "teacher_schedule": schedule.state_dict(),
        "teacher_loss": teacher_loss,
        "teacher_epsilon": teacher_epsilon,
    }


def make_teacher(name: str, env: Any, epsilon: float = 0.0) -> Any:
    """The teacher called ``name`` for ``env`` (a vector env whose NLE actions it reads).

    With ``epsilon > 0`` it is softened (:class:`crossmoe.teacher.SoftenedTeacher`):
    its probabilities mixed with uniform play, the stronger teacher on
    ``NetHackScore-v0`` (see the results page).
    """
    epsilon = check_probability(epsilon, "teacher_epsilon")
    if name not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {name!r}")
    from crossmoe.nethack import RuleAgent, env_actions
    from crossmoe.nethack.rules import RULES

    actions = env_actions(env)
    if actions is None:
        raise ValueError(f"teacher={name!r} needs an env that lists its NLE actions, got {type(env).__name__}")
    rules = RuleAgent(actions, priority=RULES[name])
    return SoftenedTeacher(rules, epsilon) if epsilon > 0 else rules


PRESETS = ("nethack",)
"""Names accepted by :func:`build_policy`'s ``preset``."""


def build_policy(
    action_space: Any,
    *,
    preset: str | None = None,
    visual_encoder: nn.Module | None = None,
    logic_encoder: nn.Module | None = None,
    action_set: Sequence[Any] | None = None,
    **policy_kwargs: Any,
) -> CrossAttentionMoEPolicy:
    """A :class:`~crossmoe.CrossAttentionMoEPolicy` for a ``Discrete`` action space: a preset or your encoders.

    Args:
        action_space: The env's (single) action space; it must be ``Discrete``.
        preset: ``"nethack"`` builds :func:`crossmoe.nethack.make_policy`
            (atoms, hypergraph, NetHack visual tokens and, unless
            ``knowledge=False``, the knowledge pathway over ``action_set``).
        visual_encoder, logic_encoder: Your own encoders (the
            :class:`~crossmoe.encoders.VisualEncoder` and
            :class:`~crossmoe.encoders.LogicEncoder` protocols), used when
            ``preset`` is None.
        action_set: The env's NLE actions, for the NetHack knowledge pathway
            (default: ``NetHackScore-v0``'s).
        **policy_kwargs: Passed to :func:`~crossmoe.nethack.make_policy` or
            :class:`~crossmoe.CrossAttentionMoEPolicy` (``dim``, ``fusion``, ...).
    """
    n = getattr(action_space, "n", None)
    if n is None or getattr(action_space, "shape", None) not in ((), None):
        raise ValueError(f"action_space must be Discrete, got {action_space!r}")
    action_dim = int(n)
    if policy_kwargs.get("core") is not None:
        raise ValueError(
            f"core={policy_kwargs['core']!r}: the SB3 and RLlib integrations act one step at a time without a "
            "recurrent state; train a recurrent core with crossmoe's PPO (--core lstm)"
        )
    if preset is not None:
        if visual_encoder is not None or logic_encoder is not None:
            raise ValueError("pass either preset or visual_encoder and logic_encoder, not both")
        if preset != "nethack":
            raise ValueError(f"preset must be one of {PRESETS} or None, got {preset!r}")
        from crossmoe.nethack import make_policy

        return make_policy(action_dim, action_set=action_set, **policy_kwargs)
    if visual_encoder is None or logic_encoder is None:
        raise ValueError(
            f"give preset (one of {PRESETS}) or both visual_encoder and logic_encoder, "
            f"got visual_encoder={type(visual_encoder).__name__}, logic_encoder={type(logic_encoder).__name__}"
        )
    return CrossAttentionMoEPolicy(visual_encoder, logic_encoder, action_dim, **policy_kwargs)


def observation_atoms(
    *, preset: str | None = None, logic_encoder: nn.Module | None = None, **policy_kwargs: Any
) -> tuple[Any, int, str] | None:
    """``(atoms function, number of conditions, observation key)`` of the policy that :func:`build_policy` builds.

    What an env wrapper needs to compute the policy's atoms once per env step
    and put them in the observation (:class:`~crossmoe.wrappers.AtomsObservation`,
    :class:`~crossmoe.integrations.sb3.AtomsVecEnv`); ``None`` when the policy
    computes no atoms (a logic encoder without an ``atoms`` function). Takes
    the arguments of :func:`build_policy` (the action space aside).
    """
    if preset == "nethack":
        from crossmoe.nethack import graph_atoms, load_hypergraph

        graph = policy_kwargs.get("hypergraph") or load_hypergraph()
        return graph_atoms(graph), graph.num_conditions, "atoms"
    atoms = getattr(logic_encoder, "atoms", None)
    graph = getattr(logic_encoder, "hypergraph", None)
    if atoms is None or graph is None:
        return None
    return atoms, graph.num_conditions, getattr(logic_encoder, "key", "atoms")


def restore_dtypes(obs: Mapping[str, Any], observation_space: Any) -> dict[str, Any]:
    """Cast each entry of a dict observation back to its space's dtype (buffers store float32).

    SB3's rollout buffers keep every observation as float32, which holds the
    NLE arrays (integers below 2**24) exactly; the encoders need them as
    integers again (glyph ids, message bytes). Keys the space does not name
    pass through.
    """
    spaces = getattr(observation_space, "spaces", None)
    if spaces is None:
        return dict(obs)
    restored = dict(obs)
    for key, value in obs.items():
        space = spaces.get(key)
        dtype = getattr(space, "dtype", None)
        if dtype is None or not isinstance(value, (Tensor, np.ndarray)):
            continue
        if isinstance(value, Tensor):
            target = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
            if value.dtype != target:
                restored[key] = value.to(target)
        elif value.dtype != dtype:
            restored[key] = value.astype(dtype)
    return restored


def minibatch_aux_loss(output: Any, weights: AuxLossWeights, **kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`crossmoe.aux_loss` on a shuffled ``(B, ...)`` minibatch: every term but the temporal one.

    The temporal term compares each step's routing with the previous step of
    the same episode, so it needs the rollout in time order. SB3 and RLlib
    shuffle steps into minibatches, so the integrations leave it out (its
    weight is set to 0); :func:`crossmoe.ppo.train` keeps it by cutting
    minibatches along envs. ``kwargs`` go to :func:`crossmoe.aux_loss`.
    """
    if weights.temporal != 0.0:
        weights = dataclasses.replace(weights, temporal=0.0)
    return aux_loss(output, weights, **kwargs)


def default_schedule(total_env_steps: int, **kwargs: Any) -> TemperatureAnnealingScheduler:
    """The recipe's routing schedule (20% softmax warm-up, annealing to 60%, sparsemax fine-tune) in env steps.

    The coefficients default to :data:`~crossmoe.schedule.KEEP_EXPERTS_ALIVE`, as in
    ``examples/ppo_nethack.py``; ``kwargs`` go to
    :meth:`TemperatureAnnealingScheduler.from_fractions <crossmoe.TemperatureAnnealingScheduler.from_fractions>`.
    """
    if int(total_env_steps) < 1:
        raise ValueError(f"total_env_steps must be a positive integer, got {total_env_steps!r}")
    kwargs.setdefault("coefficients", KEEP_EXPERTS_ALIVE)
    return TemperatureAnnealingScheduler.from_fractions(int(total_env_steps), unit="env_steps", **kwargs)
