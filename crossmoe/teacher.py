"""Teachers for kickstarting: anything that gives action probabilities for a batch of observations.

A student learns from a teacher by adding
:func:`~crossmoe.losses.distillation_loss` between the teacher's
probabilities and its own policy, on the states of its own rollout, to the
RL loss, with a weight from :class:`~crossmoe.schedule.DistillationSchedule`.
The teacher's probabilities are computed once per env step, as the rollout
is collected, and stored with it (:func:`teacher_probs` checks them); no
update epoch recomputes them. :class:`crossmoe.nethack.RuleAgent` (the
knowledge hypergraph played as rules) is a teacher: uniform over the actions
of the operator it chooses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from crossmoe._checks import check_probability

__all__ = ["SoftenedTeacher", "Teacher", "check_teacher", "soften", "teacher_probs"]


@runtime_checkable
class Teacher(Protocol):
    """Anything that maps a batch of observations to the ``(B, A)`` action probabilities it would act with.

    ``action_probs`` takes the observation dict of a vector env (batched
    NumPy arrays; an ``atoms`` entry, when the caller has computed them) and
    returns a NumPy array or a tensor whose rows are probability
    distributions over the env's ``A`` actions. It should be deterministic:
    the distribution, not a sample of it.
    """

    def action_probs(self, obs: Mapping[str, Any]) -> np.ndarray | Tensor: ...


class SoftenedTeacher:
    """A teacher softened: ``(1 - epsilon) * p + epsilon / A``, its probabilities mixed with uniform play.

    A rule agent softened this way plays better than the rules themselves
    on ``NetHackScore-v0`` (its random steps break the loops the rules get
    stuck in; see the results page), so it is a stronger teacher to
    kickstart from; the distillation loss then keeps the student soft too,
    where the hard rules would pin it to their actions.

    Args:
        teacher: Anything with ``action_probs`` (:class:`Teacher`).
        epsilon: The uniform share, in ``[0, 1]``.

    Example:
        >>> soft = SoftenedTeacher(rules, epsilon=0.1)  # doctest: +SKIP
        >>> soft.action_probs(obs).min() >= 0.1 / 23  # doctest: +SKIP
        True
    """

    def __init__(self, teacher: Teacher, epsilon: float) -> None:
        check_teacher(teacher)
        self.teacher = teacher
        self.epsilon = check_probability(epsilon, "epsilon")

    def action_probs(self, obs: Mapping[str, Any]) -> Tensor:
        return soften(teacher_probs(self.teacher, obs), self.epsilon)

    def __repr__(self) -> str:
        return f"SoftenedTeacher({self.teacher!r}, epsilon={self.epsilon})"


def soften(probs: Any, epsilon: float) -> Any:
    """``(1 - epsilon) * probs + epsilon / A``: ``(B, A)`` probabilities (NumPy or torch) mixed with uniform play."""
    return (1.0 - epsilon) * probs + epsilon / probs.shape[-1]


def check_teacher(teacher: Any) -> None:
    """``TypeError`` unless ``teacher`` has an ``action_probs`` method (:class:`Teacher`)."""
    if not isinstance(teacher, Teacher):
        raise TypeError(f"teacher must have an action_probs(obs) method (crossmoe.teacher.Teacher), got {teacher!r}")


def teacher_probs(
    teacher: Teacher, obs: Mapping[str, Any], num_actions: int | None = None, *, tolerance: float = 1e-4
) -> Tensor:
    """``teacher.action_probs(obs)`` as a float32 ``(B, A)`` tensor, checked to be probabilities.

    Args:
        teacher: Anything with ``action_probs`` (:class:`Teacher`).
        obs: The batch of observations, passed on as it is.
        num_actions: The env's action count ``A``; checked when given.
        tolerance: How far a row's sum may be from 1.

    Raises:
        TypeError: ``teacher`` has no ``action_probs``.
        ValueError: The result is not ``(B, A)``, has a negative or non-finite
            entry, or a row that does not sum to 1.
    """
    check_teacher(teacher)
    probs = teacher.action_probs(obs)
    probs = torch.as_tensor(probs).float() if not isinstance(probs, Tensor) else probs.detach().float()
    if probs.dim() != 2 or (num_actions is not None and probs.shape[1] != num_actions):
        expected = f"(B, {num_actions})" if num_actions is not None else "(B, A)"
        raise ValueError(f"{type(teacher).__name__}.action_probs must return {expected}, got {tuple(probs.shape)}")
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise ValueError(f"{type(teacher).__name__}.action_probs must return finite, non-negative probabilities")
    sums = probs.sum(dim=1)
    if bool(((sums - 1).abs() > tolerance).any()):
        raise ValueError(
            f"{type(teacher).__name__}.action_probs rows must sum to 1, got sums in "
            f"[{float(sums.min()):.4g}, {float(sums.max()):.4g}]"
        )
    return probs
