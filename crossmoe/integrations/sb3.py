"""Stable-Baselines3 integration: a crossmoe actor-critic policy, and a PPO with the aux losses and the schedule.

.. code-block:: python

    from crossmoe.integrations.sb3 import CrossMoEPolicy, MoEPPO
    from crossmoe.nethack import make_env

    model = MoEPPO(CrossMoEPolicy, make_env("NetHackScore-v0"), policy_kwargs={"preset": "nethack"})
    model.learn(100_000)  # aux losses logged as train/aux/<name>, alpha as train/routing_alpha
    model.save("agent.zip")
    model = MoEPPO.load("agent.zip", env=make_env("NetHackScore-v0"))

:class:`CrossMoEPolicy` is an SB3 ``ActorCriticPolicy`` whose network is a
:class:`~crossmoe.CrossAttentionMoEPolicy`: the NetHack agent
(``preset="nethack"``) or one built from your encoders. :class:`MoEPPO` is
SB3's ``PPO`` plus what makes crossmoe train well: it sets the router's alpha
and temperature from the routing schedule before every rollout, and adds the
weighted auxiliary losses to PPO's loss, logging each one.

SB3 shuffles single steps into minibatches, so the temporal consistency term,
which needs consecutive steps of an episode, is left out
(:func:`~crossmoe.integrations.common.minibatch_aux_loss`).

The policy's atoms are computed once per env step: :class:`MoEPPO` wraps its
env in :class:`AtomsVecEnv`, which adds them to the observation for all envs
in one batched call, so the rollout buffer stores them and no minibatch of
any epoch computes them again.

Kickstarting: ``MoEPPO(..., teacher="rules")`` adds the rule agent's action
probabilities (softened by ``teacher_epsilon``) to the observation in the same way (:class:`TeacherVecEnv`,
once per env step), and every minibatch adds
:func:`~crossmoe.losses.distillation_loss` from them to the policy, weighted
by ``teacher_schedule`` (:class:`~crossmoe.schedule.DistillationSchedule`) at
the rollout's ``num_timesteps``, to PPO's loss.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from stable_baselines3 import PPO
    from stable_baselines3.common.distributions import CategoricalDistribution
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.save_util import load_from_zip_file
    from stable_baselines3.common.utils import is_vectorized_observation
    from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError('crossmoe.integrations.sb3 needs Stable-Baselines3: pip install "crossmoe[sb3]"') from error

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from crossmoe.diagnostics import moe_diagnostics
from crossmoe.hypergraph import action_name
from crossmoe.integrations.common import (
    build_policy,
    default_schedule,
    make_teacher,
    minibatch_aux_loss,
    observation_atoms,
    restore_dtypes,
    teacher_settings,
)
from crossmoe.losses import AuxLossWeights, distillation_loss
from crossmoe.schedule import DistillationSchedule, RoutingState, TemperatureAnnealingScheduler
from crossmoe.teacher import Teacher, check_teacher
from crossmoe.wrappers import TEACHER_KEY, add_atoms, add_teacher_probs, atoms_space, check_atoms, teacher_space

__all__ = ["AtomsVecEnv", "CrossMoEPolicy", "MoEPPO", "TeacherVecEnv"]


class AtomsVecEnv(VecEnvWrapper):
    """Adds ``obs[key] = atoms(obs)``, ``(num_envs, C)`` float32, to an SB3 ``VecEnv``'s dict observations.

    The atoms of all envs are computed in one batched call per step (and for
    the terminal observations SB3 keeps in ``infos``, which it bootstraps
    truncated episodes from). :class:`MoEPPO` applies it itself.

    Args:
        venv: An SB3 ``VecEnv`` with ``Dict`` observations.
        atoms, num_conditions, key: As in :class:`crossmoe.wrappers.AtomsObservation`.
    """

    def __init__(self, venv: VecEnv, atoms: Any, num_conditions: int, key: str = "atoms") -> None:
        check_atoms(atoms)
        super().__init__(venv, observation_space=atoms_space(venv.observation_space, num_conditions, key))
        self.atoms, self.num_conditions, self.key = atoms, int(num_conditions), key

    def _with_atoms(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return add_atoms(obs, self.atoms, self.num_conditions, self.key)

    def reset(self) -> dict[str, np.ndarray]:
        return self._with_atoms(self.venv.reset())

    def step_wait(self) -> tuple[Any, ...]:
        obs, rewards, dones, infos = self.venv.step_wait()
        ended = [i for i, info in enumerate(infos) if "terminal_observation" in info]
        if ended:
            final = {key: np.stack([infos[i]["terminal_observation"][key] for i in ended]) for key in obs}
            final = self._with_atoms(final)
            for row, i in enumerate(ended):
                infos[i]["terminal_observation"] = {key: value[row] for key, value in final.items()}
        return self._with_atoms(obs), rewards, dones, infos


class TeacherVecEnv(VecEnvWrapper):
    """Adds ``obs[key] = teacher.action_probs(obs)``, ``(num_envs, A)`` float32, to an SB3 ``VecEnv``'s observations.

    The probabilities of all envs are computed in one call per step and
    checked (:func:`~crossmoe.teacher.teacher_probs`), so SB3's rollout buffer
    stores them with the observation and no epoch computes them again.
    Terminal observations (only used for value bootstraps) do not get them.
    Wrap it around :class:`AtomsVecEnv` to let the teacher read the stored
    atoms. :class:`MoEPPO` applies it itself when given a ``teacher``.

    Args:
        venv: An SB3 ``VecEnv`` with ``Dict`` observations and a ``Discrete`` action space.
        teacher: A :class:`~crossmoe.teacher.Teacher`.
        key: The observation key.
    """

    def __init__(self, venv: VecEnv, teacher: Teacher, key: str = TEACHER_KEY) -> None:
        check_teacher(teacher)
        space, self.num_actions = teacher_space(venv.observation_space, venv.action_space, key)
        super().__init__(venv, observation_space=space)
        self.teacher, self.key = teacher, key

    def _with_probs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return add_teacher_probs(obs, self.teacher, self.num_actions, self.key)

    def reset(self) -> dict[str, np.ndarray]:
        return self._with_probs(self.venv.reset())

    def step_wait(self) -> tuple[Any, ...]:
        obs, rewards, dones, infos = self.venv.step_wait()
        return self._with_probs(obs), rewards, dones, infos


def _with_teacher(env: Any, teacher: str | None, epsilon: float = 0.0) -> Any:
    """``env`` in :class:`TeacherVecEnv` with the named teacher, unless there is none or it is there already."""
    if teacher is None or not isinstance(env, VecEnv) or TEACHER_KEY in getattr(env.observation_space, "spaces", {}):
        return env
    return TeacherVecEnv(env, make_teacher(teacher, env, epsilon))


def _with_policy_atoms(env: Any, policy_kwargs: Mapping[str, Any] | None) -> Any:
    """``env`` in :class:`AtomsVecEnv` when the policy computes atoms and the observations lack them."""
    source = observation_atoms(**dict(policy_kwargs or {}))
    space = getattr(env, "observation_space", None)
    if source is None or not isinstance(env, VecEnv) or not isinstance(space, spaces.Dict) or source[2] in space.spaces:
        return env
    return AtomsVecEnv(env, *source)


class _AddToLoss(torch.autograd.Function):
    """``carrier`` unchanged, with ``extra`` (a scalar) added to any loss that ``carrier``'s gradient reaches.

    SB3's ``PPO.train`` builds its loss from what ``evaluate_actions`` returns.
    Passing the log-probabilities through this function adds the auxiliary
    loss to that loss without rewriting ``train``: in the backward pass,
    ``extra`` receives gradient 1, exactly as if it had been added to the
    total, once per backward (autograd sums the carrier's uses first).
    """

    @staticmethod
    def forward(ctx: Any, carrier: Tensor, extra: Tensor) -> Tensor:
        return carrier.view_as(carrier)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, torch.ones((), dtype=grad.dtype, device=grad.device)


class CrossMoEPolicy(ActorCriticPolicy):
    """An SB3 actor-critic policy whose network is a :class:`~crossmoe.CrossAttentionMoEPolicy`.

    Use it with :class:`MoEPPO` (plain ``PPO`` trains it too, without the
    auxiliary losses or the routing schedule). Dict observations reach the
    crossmoe encoders untouched: SB3's rollout buffer stores them as
    float32, and the policy casts them back to the observation space's
    dtypes (:func:`~crossmoe.integrations.common.restore_dtypes`).

    Args:
        observation_space, action_space, lr_schedule: Given by SB3.
        preset: ``"nethack"`` for the NetHack agent
            (:func:`crossmoe.nethack.make_policy`); ``None`` to build from
            ``visual_encoder`` and ``logic_encoder``.
        visual_encoder, logic_encoder: Your encoders when ``preset`` is None.
        action_set: The env's NLE actions, for the NetHack knowledge pathway.
            :class:`MoEPPO` reads them from the env when not given.
        use_sde: Must be False (the action space is ``Discrete``).
        optimizer_class, optimizer_kwargs: As in SB3 (Adam with ``eps=1e-5`` by default).
        **model_kwargs: Passed to :func:`crossmoe.nethack.make_policy` or
            :class:`~crossmoe.CrossAttentionMoEPolicy` (``dim``, ``fusion``,
            ``knowledge``, ...).

    Attributes:
        model: The :class:`~crossmoe.CrossAttentionMoEPolicy`.
        aux_weights: The auxiliary-loss weights of the current update (set by
            :class:`MoEPPO`); ``None`` adds no auxiliary loss.
        teacher_coef: The weight of the distillation loss from the
            observations' ``teacher_probs`` (set by :class:`MoEPPO`); 0 adds none.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Any,
        preset: str | None = None,
        visual_encoder: nn.Module | None = None,
        logic_encoder: nn.Module | None = None,
        action_set: Sequence[Any] | None = None,
        use_sde: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"action_space must be gymnasium.spaces.Discrete, got {action_space!r}")
        if use_sde:
            raise ValueError("use_sde must be False: gSDE is for continuous actions, the action space is Discrete")
        self._model_args = {
            "preset": preset,
            "visual_encoder": visual_encoder,
            "logic_encoder": logic_encoder,
            "action_set": None if action_set is None else [action_name(a) for a in action_set],
            **model_kwargs,
        }
        self.aux_weights: AuxLossWeights | None = None
        self.aux_options: dict[str, Any] = {}
        self.teacher_coef: float = 0.0
        self.teacher_loss: str = "cross_entropy"
        self.aux_log: defaultdict[str, list[float]] = defaultdict(list)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            ortho_init=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    def _build(self, lr_schedule: Any) -> None:
        self.model = build_policy(self.action_space, **self._model_args)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("net_arch", "activation_fn", "ortho_init", "log_std_init", "full_std", "use_expln"):
            data.pop(key, None)
        for key in ("squash_output", "features_extractor_class", "features_extractor_kwargs", "normalize_images"):
            data.pop(key, None)
        return {**data, **self._model_args}

    def obs_to_tensor(self, observation: Any) -> tuple[Any, bool]:
        """SB3's ``obs_to_tensor``; an observation without the atoms that the space holds gets them computed.

        So ``model.predict(obs)`` takes the env's own observations, as from
        an env that :class:`AtomsVecEnv` does not wrap.
        """
        encoder = self.model.logic_encoder
        key, atoms = getattr(encoder, "key", None), getattr(encoder, "atoms", None)
        obs_spaces = getattr(self.observation_space, "spaces", {})
        if isinstance(observation, dict) and key in obs_spaces and key not in observation and atoms is not None:
            other = next(name for name in observation if name in obs_spaces)
            vectorized = is_vectorized_observation(np.asarray(observation[other]), obs_spaces[other])
            batch = observation if vectorized else {name: np.asarray(v)[None] for name, v in observation.items()}
            values = add_atoms(batch, atoms, obs_spaces[key].shape[0], key)[key]
            observation = {**observation, key: values if vectorized else values[0]}
        return super().obs_to_tensor(observation)

    def _outputs(self, obs: Any) -> Any:
        if isinstance(obs, dict):
            obs = restore_dtypes(obs, self.observation_space)
        return self.model(obs)

    def _distribution(self, logits: Tensor) -> CategoricalDistribution:
        return self.action_dist.proba_distribution(action_logits=logits)

    def forward(self, obs: Any, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Actions, values ``(B, 1)`` and log-probabilities, as SB3's rollout expects."""
        output = self._outputs(obs)
        distribution = self._distribution(output.logits)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, output.value.unsqueeze(-1), distribution.log_prob(actions)

    def evaluate_actions(self, obs: Any, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Values, log-probabilities and entropy of ``actions``, carrying the auxiliary loss when training."""
        output = self._outputs(obs)
        distribution = self._distribution(output.logits)
        log_prob = distribution.log_prob(actions)
        if self.teacher_coef and torch.is_grad_enabled() and isinstance(obs, dict) and TEACHER_KEY in obs:
            distill = distillation_loss(output.logits, obs[TEACHER_KEY], kind=self.teacher_loss)
            log_prob = _AddToLoss.apply(log_prob, self.teacher_coef * distill)
            self.aux_log["teacher/distill_loss"].append(float(distill.detach()))
        if self.aux_weights is not None and torch.is_grad_enabled():
            total, parts = minibatch_aux_loss(output, self.aux_weights, **self.aux_options)
            log_prob = _AddToLoss.apply(log_prob, total)
            for name, value in parts.items():
                self.aux_log[f"aux/{name}"].append(float(value))
            attention = None if output.attention is None else output.attention.detach()
            for name, value in moe_diagnostics(
                output.router_weights.detach(), attention, output.context.detach(), names=self.model.experts.names
            ).items():
                self.aux_log[f"routing/{name}"].append(float(value))
        return output.value.unsqueeze(-1), log_prob, distribution.entropy()

    def get_distribution(self, obs: Any) -> CategoricalDistribution:
        return self._distribution(self._outputs(obs).logits)

    def predict_values(self, obs: Any) -> Tensor:
        return self._outputs(obs).value.unsqueeze(-1)

    def _predict(self, observation: Any, deterministic: bool = False) -> Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)


class MoEPPO(PPO):
    """SB3's ``PPO`` with crossmoe's auxiliary losses and routing schedule, for :class:`CrossMoEPolicy`.

    - Before every rollout it sets the router's alpha and temperature from
      ``schedule`` at ``num_timesteps`` (env steps), and the auxiliary-loss
      weights to ``aux_weights`` scaled by the phase's coefficients.
    - Every minibatch adds the weighted auxiliary losses (all but the
      temporal term, see :func:`~crossmoe.integrations.common.minibatch_aux_loss`)
      to PPO's loss, and logs each unweighted term as ``train/aux/<name>``,
      the routing diagnostics as ``train/routing/<name>``, and the schedule as
      ``train/routing_alpha``, ``train/routing_temperature`` and ``train/routing_phase``.
    - ``save``/``load`` keep the schedule and the weights as plain data.

    Args:
        policy: :class:`CrossMoEPolicy` (or a subclass).
        env: A gymnasium env or an SB3 ``VecEnv`` (NetHack or MiniHack, e.g.
            from :func:`crossmoe.nethack.make_env`).
        aux_weights: Auxiliary-loss weights. By default :class:`~crossmoe.AuxLossWeights`,
            without the alignment term when the logic encoder has no
            hypergraph (no ``operator_to_expert``) to align with.
        schedule: The routing schedule in env steps; by default the recipe's
            (:func:`~crossmoe.integrations.common.default_schedule`) over the
            first ``learn`` call's ``total_timesteps``.
        alignment_target, alignment_smoothing, weighted_diversity: As in
            :func:`crossmoe.aux_loss`.
        teacher: Kickstart from a teacher: ``"rules"`` (the NetHack rule
            agent, :class:`crossmoe.nethack.RuleAgent`), or None. A name, so
            that ``save`` keeps it as plain data.
        teacher_schedule: The teacher's weight over env steps; by default a
            constant 3.0 (``examples/ppo_nethack.py``'s default).
        teacher_loss: ``"cross_entropy"``, ``"kl"`` or ``"top_set"`` (:func:`~crossmoe.losses.distillation_loss`).
        teacher_epsilon: Soften the teacher: mix its probabilities with
            uniform play by this share (:class:`~crossmoe.teacher.SoftenedTeacher`;
            0.1 kickstarted the strongest agent of the results page).
        **kwargs: SB3 ``PPO`` arguments (``n_steps``, ``batch_size``, ``learning_rate``, ...).
    """

    def __init__(
        self,
        policy: type[CrossMoEPolicy] | str,
        env: Any,
        *,
        aux_weights: AuxLossWeights | None = None,
        schedule: TemperatureAnnealingScheduler | None = None,
        alignment_target: str = "balanced",
        alignment_smoothing: float = 0.1,
        weighted_diversity: bool = True,
        teacher: str | None = None,
        teacher_schedule: DistillationSchedule | None = None,
        teacher_loss: str = "cross_entropy",
        teacher_epsilon: float = 0.0,
        **kwargs: Any,
    ) -> None:
        settings = teacher_settings(teacher, teacher_schedule, teacher_loss, teacher_epsilon)
        self.teacher_name, self.teacher_loss = teacher, teacher_loss
        self.teacher_epsilon = 0.0 if settings is None else settings["teacher_epsilon"]
        self.teacher_schedule_state = None if settings is None else settings["teacher_schedule"]
        if isinstance(policy, str) or not issubclass(policy, CrossMoEPolicy):
            raise ValueError(f"policy must be CrossMoEPolicy or a subclass of it, got {policy!r}")
        if aux_weights is not None and not isinstance(aux_weights, AuxLossWeights):
            raise ValueError(f"aux_weights must be an AuxLossWeights, got {type(aux_weights).__name__}")
        if schedule is not None and not isinstance(schedule, TemperatureAnnealingScheduler):
            raise ValueError(f"schedule must be a TemperatureAnnealingScheduler, got {type(schedule).__name__}")
        # Plain data, so that SB3's save writes them as JSON (an object would be pickled).
        self.aux_weights_state = None if aux_weights is None else dataclasses.asdict(aux_weights)
        self.schedule_state = None if schedule is None else schedule.state_dict()
        self.aux_options = {
            "alignment_target": alignment_target,
            "alignment_smoothing": float(alignment_smoothing),
            "weighted_diversity": bool(weighted_diversity),
        }
        super().__init__(policy, env, **kwargs)

    @property
    def schedule(self) -> TemperatureAnnealingScheduler | None:
        """The routing schedule (rebuilt from its plain-data state)."""
        return None if self.schedule_state is None else TemperatureAnnealingScheduler(**self.schedule_state)

    @property
    def aux_weights(self) -> AuxLossWeights:
        """The auxiliary-loss weights before the phase's coefficients."""
        return AuxLossWeights(**self.aux_weights_state)

    def _setup_model(self) -> None:
        kwargs = self.policy_kwargs
        if kwargs.get("preset") == "nethack" and kwargs.get("action_set") is None and self.env is not None:
            from crossmoe.nethack import env_actions  # reads a VecEnv's first env, or its workers

            names = env_actions(self.env)
            if names is not None:
                self.policy_kwargs = {**kwargs, "action_set": names}
        if self.env is not None:  # the atoms (and the teacher) once per env step, stored with the observation
            self.env = _with_teacher(
                _with_policy_atoms(self.env, self.policy_kwargs), self.teacher_name, self.teacher_epsilon
            )
            self.observation_space = self.env.observation_space
        super()._setup_model()
        if self.schedule_state is not None:  # a loaded model predicts at the routing of its step
            self.routing_state().apply(self.policy.model)
        if self.aux_weights_state is None:
            graph = getattr(self.policy.model.logic_encoder, "operator_to_expert", None) is not None
            self.aux_weights_state = dataclasses.asdict(AuxLossWeights() if graph else AuxLossWeights(alignment=0.0))

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        """SB3's ``set_env``, with the env wrapped in :class:`AtomsVecEnv` as at construction."""
        env = _with_policy_atoms(self._wrap_env(env, self.verbose), self.policy_kwargs)
        super().set_env(_with_teacher(env, self.teacher_name, self.teacher_epsilon), force_reset=force_reset)

    @classmethod
    def load(cls, path: Any, env: Any = None, *args: Any, **kwargs: Any) -> MoEPPO:
        """SB3's ``load``; ``env`` (unwrapped, as at construction) is wrapped in :class:`AtomsVecEnv` as needed."""
        if env is not None:
            data, _, _ = load_from_zip_file(path, device="cpu", load_data=True, print_system_info=False)
            env = _with_policy_atoms(cls._wrap_env(env, 0), (data or {}).get("policy_kwargs"))
            data = data or {}
            env = _with_teacher(env, data.get("teacher_name"), data.get("teacher_epsilon", 0.0))
        return super().load(path, env, *args, **kwargs)

    def _setup_learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> Any:
        total, callback = super()._setup_learn(total_timesteps, *args, **kwargs)
        if self.schedule_state is None:
            self.schedule_state = default_schedule(total).state_dict()
        return total, callback

    def routing_state(self) -> RoutingState:
        """The routing state (phase, alpha, temperature, coefficients) at ``num_timesteps``."""
        schedule = self.schedule
        if schedule is None:
            raise ValueError("schedule is not set: pass schedule= or call learn() first")
        return schedule(self.num_timesteps)

    def teacher_coef(self) -> float:
        """The teacher's weight at ``num_timesteps`` (0 without a teacher)."""
        if self.teacher_schedule_state is None:
            return 0.0
        return DistillationSchedule(**self.teacher_schedule_state)(self.num_timesteps)

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        state = self.routing_state()
        state.apply(self.policy.model)
        self.policy.aux_weights = self.aux_weights.scaled(state.coefficients)
        self.policy.aux_options = dict(self.aux_options)
        self.policy.teacher_coef = self.teacher_coef()
        self.policy.teacher_loss = self.teacher_loss
        self._routing = state
        return super().collect_rollouts(*args, **kwargs)

    def train(self) -> None:
        self.policy.aux_log.clear()
        super().train()
        for name, values in self.policy.aux_log.items():
            self.logger.record(f"train/{name}", sum(values) / len(values))
        self.policy.aux_log.clear()
        state = getattr(self, "_routing", None) or self.routing_state()
        self.logger.record("train/routing_alpha", state.alpha)
        self.logger.record("train/routing_temperature", state.temperature)
        self.logger.record("train/routing_phase", state.phase, exclude="tensorboard")
        if self.teacher_name is not None:
            self.logger.record("train/teacher_coef", self.policy.teacher_coef)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_routing"]
