"""Schedules over training: the three-phase routing schedule, and the weight of a distillation (kickstarting) loss."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import nn

from crossmoe._checks import check_real
from crossmoe.functional import check_temperature
from crossmoe.losses import AuxLossWeights

__all__ = [
    "KEEP_EXPERTS_ALIVE",
    "PHASES",
    "UNITS",
    "DistillationSchedule",
    "RoutingState",
    "TemperatureAnnealingScheduler",
]

PHASES = ("warmup", "transition", "finetune")
UNITS = ("episodes", "updates", "env_steps")

KEEP_EXPERTS_ALIVE: dict[str, dict[str, float]] = {
    "transition": {"load_balance": 10.0},
    "finetune": {"load_balance": 10.0},
}
"""Phase coefficients that keep every expert in use under sparsemax: the load-balance weight x10 from the annealing on.

With the plain weights, sparsemax routes one or two of four experts to zero
in the fine-tune of the NetHack agent; with these, all four keep a mean
routing weight of at least 0.10, at no cost in score (``docs/results.md``).
The NetHack training paths use them by default (``examples/ppo_nethack.py``,
:func:`crossmoe.integrations.common.default_schedule`)."""


class RoutingState(NamedTuple):
    """The routing configuration at one step of :class:`TemperatureAnnealingScheduler`.

    Attributes:
        phase: ``"warmup"``, ``"transition"`` or ``"finetune"``.
        alpha: Entmax alpha for the router, in ``[1, 2]``.
        temperature: Router temperature, ``> 0``.
        coefficients: Multipliers for the aux-loss weights in this phase
            (names as in :class:`~crossmoe.AuxLossWeights`; absent means 1).
    """

    phase: str
    alpha: float
    temperature: float
    coefficients: Mapping[str, float]

    def apply(self, module: nn.Module) -> int:
        """Set ``alpha`` and ``temperature`` on every :class:`~crossmoe.SparsemaxRouter` in ``module``.

        Returns:
            How many routers were updated.
        """
        from crossmoe.routing import SparsemaxRouter

        count = 0
        for child in module.modules():
            if isinstance(child, SparsemaxRouter):
                child.alpha, child.temperature = self.alpha, self.temperature
                count += 1
        return count


def _smoothstep(u: float) -> float:
    return u * u * (3.0 - 2.0 * u)


class TemperatureAnnealingScheduler:
    r"""Pure schedule of the router's alpha and temperature over training.

    The phases are half-open intervals of the step counter (in ``unit``\ s):

    * warm-up ``[0, warmup)``: softmax routing (``alpha = 1``) at
      ``start_temperature``, so every expert gets gradient;
    * transition ``[warmup, transition)``: with :math:`u` the fraction of the
      phase elapsed and :math:`s(u) = 3u^2 - 2u^3`,
      :math:`\alpha = 1 + s(u)` and
      :math:`T = T_\text{start} + (T_\text{end} - T_\text{start})\, s(u)`;
      both are continuous and have zero slope at the phase ends;
    * fine-tune ``[transition, inf)``: sparsemax (``alpha = 2``) at
      ``end_temperature``, optionally decaying linearly to
      ``final_temperature`` at ``total``.

    The defaults are the recipe in episodes: 0-1000 warm-up, 1000-3000
    transition, 3000-5000 fine-tune. :meth:`from_fractions` scales the same
    proportions to any budget. The schedule is a pure function of the step,
    so the training loop owns the counter and a checkpoint only needs
    :meth:`state_dict` (the configuration).

    Args:
        warmup: Step at which warm-up ends.
        transition: Step at which the transition ends (``>= warmup``).
        total: Planned length (``>= transition``), used by :meth:`progress` and
            the optional fine-tune decay.
        unit: What a step counts: ``"episodes"``, ``"updates"`` or ``"env_steps"``.
        start_temperature: Temperature during warm-up.
        end_temperature: Temperature at the end of the transition.
        final_temperature: If set, the fine-tune temperature decays linearly to
            it at ``total``.
        coefficients: Optional per-phase multipliers for the aux-loss weights,
            e.g. ``{"warmup": {"load_balance": 2.0}, "finetune": {"alignment": 0.5}}``.
    """

    def __init__(
        self,
        warmup: int = 1000,
        transition: int = 3000,
        total: int = 5000,
        unit: str = "episodes",
        start_temperature: float = 1.0,
        end_temperature: float = 0.5,
        final_temperature: float | None = None,
        coefficients: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        for name, value in (("warmup", warmup), ("transition", transition), ("total", total)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite step count, got {value!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        if transition < warmup:
            raise ValueError(f"transition must be >= warmup={warmup} (phases in order), got {transition!r}")
        if total < transition:
            raise ValueError(f"total must be >= transition={transition} (phases in order), got {total!r}")
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        self.warmup, self.transition, self.total, self.unit = warmup, transition, total, unit
        self.start_temperature = check_temperature(start_temperature, "start_temperature")
        self.end_temperature = check_temperature(end_temperature, "end_temperature")
        self.final_temperature = (
            None if final_temperature is None else check_temperature(final_temperature, "final_temperature")
        )
        self.coefficients = self._check_coefficients(coefficients or {})

    @classmethod
    def from_fractions(
        cls, total: int, warmup: float = 0.2, transition: float = 0.6, unit: str = "env_steps", **kwargs: Any
    ) -> TemperatureAnnealingScheduler:
        """The recipe's proportions (20% warm-up, transition until 60%) scaled to ``total`` steps."""
        if not (0.0 <= warmup <= transition <= 1.0):
            raise ValueError(f"fractions must satisfy 0 <= warmup <= transition <= 1, got {warmup!r}, {transition!r}")
        return cls(round(warmup * total), round(transition * total), total, unit, **kwargs)

    @staticmethod
    def _check_coefficients(coefficients: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
        loss_names = {field.name for field in dataclasses.fields(AuxLossWeights)}
        checked: dict[str, dict[str, float]] = {}
        for phase, multipliers in coefficients.items():
            if phase not in PHASES:
                raise ValueError(f"coefficients keys must be phases {PHASES}, got {phase!r}")
            unknown = set(multipliers) - loss_names
            if unknown:
                raise ValueError(
                    f"coefficients[{phase!r}] must name aux losses {sorted(loss_names)}, got {sorted(unknown)}"
                )
            checked[phase] = {name: float(value) for name, value in multipliers.items()}
            not_finite = {name: value for name, value in checked[phase].items() if not math.isfinite(value)}
            if not_finite:
                raise ValueError(f"coefficients[{phase!r}] multipliers must be finite, got {not_finite}")
        return checked

    def phase(self, step: float) -> str:
        """The phase that ``step`` falls in."""
        step = float(step)
        if not (step >= 0):
            raise ValueError(f"step must be >= 0, got {step!r}")
        if step < self.warmup:
            return "warmup"
        return "transition" if step < self.transition else "finetune"

    def progress(self, step: float) -> float:
        """Fraction of ``total`` elapsed, clipped to ``[0, 1]``."""
        return 1.0 if self.total == 0 else min(max(float(step) / self.total, 0.0), 1.0)

    def __call__(self, step: float) -> RoutingState:
        step = float(step)  # also accepts a 0-d tensor or numpy scalar; the state holds plain floats
        phase = self.phase(step)
        if phase == "warmup":
            alpha, temperature = 1.0, self.start_temperature
        elif phase == "transition":
            s = _smoothstep((step - self.warmup) / (self.transition - self.warmup))
            alpha = 1.0 + s
            temperature = self.start_temperature + (self.end_temperature - self.start_temperature) * s
        else:
            alpha, temperature = 2.0, self._finetune_temperature(step)
        return RoutingState(phase, alpha, temperature, dict(self.coefficients.get(phase, {})))

    def _finetune_temperature(self, step: float) -> float:
        if self.final_temperature is None or self.total <= self.transition:
            return self.end_temperature
        u = min((step - self.transition) / (self.total - self.transition), 1.0)
        return self.end_temperature + (self.final_temperature - self.end_temperature) * u

    def state_dict(self) -> dict[str, Any]:
        """The configuration; a pure schedule has no other state."""
        return {
            "warmup": self.warmup,
            "transition": self.transition,
            "total": self.total,
            "unit": self.unit,
            "start_temperature": self.start_temperature,
            "end_temperature": self.end_temperature,
            "final_temperature": self.final_temperature,
            "coefficients": {phase: dict(m) for phase, m in self.coefficients.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a configuration saved by :meth:`state_dict` (validated as in ``__init__``)."""
        vars(self).update(vars(type(self)(**state_dict)))

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.state_dict().items())
        return f"{type(self).__name__}({args})"


class DistillationSchedule:
    r"""Pure schedule of the weight of a distillation (kickstarting) loss over training.

    The weight is ``coef`` until ``anneal_start``, falls linearly to
    ``final_coef`` (0 by default) at ``anneal_end`` and stays there; without
    ``anneal_start`` and ``anneal_end`` it is ``coef`` throughout. Kickstarting
    (`Schmitt et al., 2018 <https://arxiv.org/abs/1803.03835>`_) found that
    the teacher's weight should fall to 0 over training, so that the student
    can outgrow the teacher (they adapted it by population-based training;
    a linear fall is the fixed-schedule version). The step is whatever the
    training loop counts (env steps in ``examples/ppo_nethack.py``), and
    the schedule is a pure function of it, so a checkpoint needs only
    :meth:`state_dict` and the loop's counter.

    Args:
        coef: The weight before the annealing, ``>= 0``.
        anneal_start: Step at which the weight starts to fall, ``>= 0``, or
            None for a constant weight.
        anneal_end: Step at which it reaches ``final_coef``, ``>= anneal_start``;
            given exactly when ``anneal_start`` is.
        final_coef: The weight from ``anneal_end`` on, in ``[0, coef]``: 0 hands the
            student over to its own objective; a small weight keeps it
            anchored to the teacher. Needs the annealing steps unless 0.

    Example:
        >>> schedule = DistillationSchedule(3.0, anneal_start=250_000, anneal_end=500_000)
        >>> schedule(0), schedule(375_000), schedule(600_000)
        (3.0, 1.5, 0.0)
        >>> DistillationSchedule(3.0, 250_000, 500_000, final_coef=0.5)(600_000)
        0.5
    """

    def __init__(
        self,
        coef: float,
        anneal_start: float | None = None,
        anneal_end: float | None = None,
        final_coef: float = 0.0,
    ) -> None:
        self.coef = _finite(coef, "coef", minimum=0.0)
        self.final_coef = _finite(final_coef, "final_coef", minimum=0.0)
        if self.final_coef > self.coef:
            raise ValueError(f"final_coef must be <= coef={self.coef:g} (the weight falls to it), got {final_coef!r}")
        if self.final_coef and anneal_start is None:
            raise ValueError(
                f"final_coef needs anneal_start and anneal_end (the steps over which the weight falls to it), "
                f"got final_coef={self.final_coef:g} with a constant weight"
            )
        if (anneal_start is None) != (anneal_end is None):
            raise ValueError(
                f"anneal_start and anneal_end must be given together (or neither, for a constant weight), "
                f"got anneal_start={anneal_start!r}, anneal_end={anneal_end!r}"
            )
        if anneal_start is not None:
            anneal_start = _finite(anneal_start, "anneal_start", minimum=0.0)
            anneal_end = _finite(anneal_end, "anneal_end", minimum=0.0)
            if anneal_end < anneal_start:
                raise ValueError(
                    f"anneal_end must be >= anneal_start={anneal_start:g} (the annealing cannot end before it "
                    f"starts), got {anneal_end:g}"
                )
        self.anneal_start, self.anneal_end = anneal_start, anneal_end

    def __call__(self, step: float) -> float:
        step = float(step)
        if not (step >= 0):
            raise ValueError(f"step must be >= 0, got {step!r}")
        if self.anneal_start is None or step < self.anneal_start:
            return self.coef
        if step >= self.anneal_end:
            return self.final_coef
        left = (self.anneal_end - step) / (self.anneal_end - self.anneal_start)
        return self.final_coef + (self.coef - self.final_coef) * left

    def state_dict(self) -> dict[str, Any]:
        """The configuration; a pure schedule has no other state."""
        return {
            "coef": self.coef,
            "anneal_start": self.anneal_start,
            "anneal_end": self.anneal_end,
            "final_coef": self.final_coef,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a configuration saved by :meth:`state_dict` (validated as in ``__init__``)."""
        vars(self).update(vars(type(self)(**state_dict)))

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.state_dict().items())
        return f"{type(self).__name__}({args})"


def _finite(value: Any, name: str, minimum: float) -> float:
    value = check_real(value, name)
    if not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)
