"""Train crossmoe policies with Ray RLlib's PPO (new API stack): a module, a learner and a schedule callback.

:func:`nethack_ppo_config` returns a ready :class:`~ray.rllib.algorithms.ppo.PPOConfig`:

.. code-block:: python

    from crossmoe.integrations.rllib import nethack_ppo_config

    config = nethack_ppo_config("NetHackScore-v0", num_env_runners=1)
    algo = config.build_algo()
    result = algo.train()  # result["learners"]["default_policy"]["aux/load_balance"], ...

The pieces, usable on their own:

- :class:`CrossMoERLModule`, a ``TorchRLModule`` with the ``ValueFunctionAPI``
  around a :class:`~crossmoe.CrossAttentionMoEPolicy` built by
  :func:`~crossmoe.integrations.common.build_policy` from the module's
  ``model_config``. Dict observations reach the encoders as they are (RLlib's
  default connectors do not flatten them), and the NetHack atoms are computed
  inside the module.
- :class:`CrossMoEPPOTorchLearner`, RLlib's PPO loss plus the auxiliary MoE
  losses of each minibatch (without the temporal term: RLlib shuffles steps).
- :class:`RoutingScheduleCallback`, which sets the routers' alpha and
  temperature from a :class:`~crossmoe.TemperatureAnnealingScheduler` at the
  lifetime count of sampled env steps, on every env runner and learner.

The routing state (alpha, temperature, the phase's aux-loss multipliers) is
part of the module's state, so RLlib's weight sync, the restart of a failed env
runner and checkpoints all carry it along with the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from crossmoe.diagnostics import moe_diagnostics
from crossmoe.integrations.common import (
    PRESETS,
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
from crossmoe.wrappers import TEACHER_KEY

try:
    import gymnasium as gym
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
    from ray.rllib.callbacks.callbacks import RLlibCallback
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import ValueFunctionAPI
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.core.rl_module.torch import TorchRLModule
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED, NUM_ENV_STEPS_SAMPLED_LIFETIME
    from ray.tune.registry import register_env
except ImportError as error:
    raise ImportError(
        f'crossmoe.integrations.rllib needs Ray RLlib ({error}); install it with pip install "crossmoe[rllib]"'
    ) from error

__all__ = [
    "AUX_OUTPUTS",
    "ENV_ID",
    "LEARNER_CONFIG_KEY",
    "ROUTING_STATE_KEY",
    "CrossMoEPPOTorchLearner",
    "CrossMoERLModule",
    "NetHackRLlibEnv",
    "RoutingScheduleCallback",
    "nethack_ppo_config",
    "nethack_rllib_env",
]

AUX_OUTPUTS = ("router_logits", "router_weights", "expert_logits", "expert_features", "operator_scores", "applicable")
"""The :class:`~crossmoe.PolicyOutput` fields that :meth:`CrossMoERLModule._forward_train` keeps for the aux losses,
under the keys ``crossmoe_<field>``."""

ROUTING_STATE_KEY = "crossmoe_routing"
"""The entry of :meth:`CrossMoERLModule.get_state` that holds the routing state as plain data."""

LEARNER_CONFIG_KEY = "crossmoe"
"""The entry of ``config.learner_config_dict`` that :class:`CrossMoEPPOTorchLearner` reads."""

# Keys RLlib itself merges into every module's model_config (its default model's settings).
_RLLIB_MODEL_KEYS = frozenset(field.name for field in dataclasses.fields(DefaultModelConfig)) | {"vf_share_layers"}
_AUX_OPTIONS = ("alignment_target", "alignment_smoothing", "weighted_diversity")
_TEACHER_OPTIONS = ("teacher_schedule", "teacher_loss")


def _output_key(name: str) -> str:
    return f"crossmoe_{name}"


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class CrossMoERLModule(TorchRLModule, ValueFunctionAPI):
    """An RLlib ``TorchRLModule`` around a :class:`~crossmoe.CrossAttentionMoEPolicy`.

    The policy is ``self.policy``, built in :meth:`setup` by
    :func:`~crossmoe.integrations.common.build_policy` from the module's
    ``model_config``: ``{"preset": "nethack", "action_set": [...], "dim": 128}``
    or ``{"visual_encoder": ..., "logic_encoder": ..., "dim": ...}`` (an
    ``nn.Module``, copied for each module, or a callable that returns one). Keys
    of RLlib's own default model (``fcnet_hiddens``, ``vf_share_layers``, ...),
    which RLlib merges into every ``model_config``, are ignored; every other key
    goes to ``build_policy``.

    Forward passes read ``batch["obs"]``, a dict of ``(B, ...)`` tensors,
    cast back to the observation space's dtypes when a connector changed them.
    The action distribution inputs are the policy's logits (a categorical
    distribution). :meth:`_forward_train` also returns the fused context as
    ``embeddings`` (so PPO's value loss reuses the forward pass) and the
    :data:`AUX_OUTPUTS` as ``crossmoe_<field>`` for the auxiliary losses.

    The routing state set by :meth:`set_routing` is part of :meth:`get_state`
    (as plain data under :data:`ROUTING_STATE_KEY`), so weight syncs and
    checkpoints carry it.

    Raises:
        ValueError: From :meth:`setup`, for an action space that is not
            ``Discrete``, an unknown preset, or neither a preset nor encoders.
    """

    def setup(self) -> None:
        config = self.model_config
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        kwargs = {key: value for key, value in dict(config or {}).items() if key not in _RLLIB_MODEL_KEYS}
        for key in ("visual_encoder", "logic_encoder"):
            encoder = kwargs.get(key)
            if isinstance(encoder, nn.Module):
                kwargs[key] = copy.deepcopy(encoder)  # modules built from one spec must not share weights
            elif callable(encoder):
                kwargs[key] = encoder()
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise ValueError(f"action_space must be gymnasium.spaces.Discrete, got {self.action_space!r}")
        self.policy = build_policy(self.action_space, **kwargs)
        self.routing: RoutingState | None = None

    def set_routing(self, routing: RoutingState) -> None:
        """Set every router's alpha and temperature, and keep ``routing`` (its coefficients weight the aux losses)."""
        routing.apply(self.policy)
        self.routing = routing

    def _observation(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        if not isinstance(obs, Mapping):
            return obs
        return restore_dtypes(obs, self.observation_space)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.policy(self._observation(batch)).logits}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        output = self.policy(self._observation(batch))
        out = {Columns.ACTION_DIST_INPUTS: output.logits, Columns.EMBEDDINGS: output.context}
        for name in AUX_OUTPUTS:
            value = getattr(output, name)
            if value is not None:
                out[_output_key(name)] = value
        return out

    def compute_values(self, batch: dict[str, Any], embeddings: Tensor | None = None) -> Tensor:
        """The critic's values ``(B,)``; ``embeddings`` is the context from :meth:`_forward_train`, if at hand."""
        if embeddings is None:
            return self.policy(self._observation(batch)).value
        return self.policy.critic(embeddings).squeeze(-1)

    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        if self.routing is not None:
            state[ROUTING_STATE_KEY] = {**self.routing._asdict(), "coefficients": dict(self.routing.coefficients)}
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        routing = state.pop(ROUTING_STATE_KEY, None)
        super().set_state(state)
        if routing is not None:
            self.set_routing(RoutingState(**routing))


class CrossMoEPPOTorchLearner(PPOTorchLearner):
    """RLlib's PPO learner plus the auxiliary MoE losses of each minibatch.

    For a :class:`CrossMoERLModule`, :meth:`compute_loss_for_module` adds
    :func:`~crossmoe.integrations.common.minibatch_aux_loss` (every
    :func:`~crossmoe.aux_loss` term but the temporal one) to PPO's loss, with
    the learner's :class:`~crossmoe.AuxLossWeights` scaled by the routing
    phase's coefficients (the module's :attr:`~CrossMoERLModule.routing`). The
    artificial bootstrap step PPO appends to each episode chunk is masked out,
    as in PPO's own terms.

    Settings come from ``config.learner_config_dict["crossmoe"]``:
    ``aux_weights`` (a dict of :class:`~crossmoe.AuxLossWeights` fields; by
    default the dataclass's defaults, without the alignment term when the
    policy has no hypergraph), ``alignment_target``, ``alignment_smoothing`` and
    ``weighted_diversity`` (passed to :func:`~crossmoe.aux_loss`).

    Kickstarting: with ``teacher_schedule`` (a
    :class:`~crossmoe.schedule.DistillationSchedule` state dict) and
    observations that carry a teacher's probabilities (``teacher_probs``,
    :class:`~crossmoe.wrappers.TeacherObservation`), every minibatch also adds
    :func:`~crossmoe.losses.distillation_loss` (``teacher_loss``: its
    ``kind``) weighted by the schedule at the env steps sampled so far (set
    before each update), logged as ``teacher/distill_loss`` and ``teacher_coef``.

    Logged per module (mean over the iteration's minibatches): ``aux/<name>``
    (each unweighted term), ``aux_loss`` (the weighted sum), ``routing_alpha``,
    ``routing_temperature`` and ``routing/<name>`` (routing entropy, dead experts,
    mean weight and top-1 share per expert, from
    :func:`~crossmoe.diagnostics.moe_diagnostics`).
    """

    def build(self) -> None:
        super().build()
        settings = dict(self.config.learner_config_dict.get(LEARNER_CONFIG_KEY, {}))
        weights = settings.pop("aux_weights", None)
        teacher_schedule = settings.pop("teacher_schedule", None)
        self.teacher_loss = settings.pop("teacher_loss", "cross_entropy")
        unknown = set(settings) - set(_AUX_OPTIONS)
        if unknown:
            raise ValueError(
                f"learner_config_dict[{LEARNER_CONFIG_KEY!r}] keys must be among "
                f"{['aux_weights', *_AUX_OPTIONS, *_TEACHER_OPTIONS]}, got unknown {sorted(unknown)}"
            )
        self.teacher_schedule = None if teacher_schedule is None else DistillationSchedule(**teacher_schedule)
        self.teacher_coef = 0.0 if self.teacher_schedule is None else self.teacher_schedule(0)
        self.aux_weights: AuxLossWeights | None = None if weights is None else AuxLossWeights(**weights)
        self.aux_options: dict[str, Any] = settings

    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        if self.teacher_schedule is not None:
            self.teacher_coef = self.teacher_schedule(timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))

    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> Tensor:
        total = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        obs = batch.get(Columns.OBS)
        if self.teacher_schedule is not None and isinstance(obs, Mapping) and TEACHER_KEY in obs:
            logits, teacher = fwd_out[Columns.ACTION_DIST_INPUTS], obs[TEACHER_KEY]
            mask = batch.get(Columns.LOSS_MASK)
            distill = distillation_loss(logits, teacher, None if mask is None else mask.float(), kind=self.teacher_loss)
            total = total + self.teacher_coef * distill
            stats = {"teacher/distill_loss": distill.detach(), "teacher_coef": self.teacher_coef}
            self.metrics.log_dict(stats, key=module_id, reduce="mean")
        module = self.module[module_id].unwrapped()
        if not isinstance(module, CrossMoERLModule):
            return total
        policy = module.policy
        outputs = {name: fwd_out[_output_key(name)] for name in AUX_OUTPUTS if _output_key(name) in fwd_out}
        mask = batch.get(Columns.LOSS_MASK)
        if mask is not None:
            outputs = {name: value[mask] for name, value in outputs.items()}
        operator_to_expert = getattr(policy.logic_encoder, "operator_to_expert", None)
        weights = self.aux_weights
        if weights is None:
            weights = AuxLossWeights() if operator_to_expert is not None else AuxLossWeights(alignment=0.0)
        routing = module.routing
        if routing is not None:
            weights = weights.scaled(routing.coefficients)
        aux_total, parts = minibatch_aux_loss(
            outputs, weights, operator_to_expert=operator_to_expert, **self.aux_options
        )
        stats: dict[str, Any] = {f"aux/{name}": value for name, value in parts.items()}
        stats["aux_loss"] = aux_total.detach()
        stats["routing_alpha"] = policy.router.alpha
        stats["routing_temperature"] = policy.router.temperature
        diagnostics = moe_diagnostics(outputs["router_weights"], names=tuple(policy.experts.names))
        stats.update({f"routing/{name}": value for name, value in diagnostics.items()})
        self.metrics.log_dict(stats, key=module_id, reduce="mean")
        return total + aux_total


class RoutingScheduleCallback(RLlibCallback):
    """Drive the routers' alpha and temperature from a routing schedule, in env steps sampled.

    At algorithm init (and after a checkpoint is loaded), and after each
    training iteration, the callback computes
    ``schedule(num_env_steps_sampled_lifetime)`` and sets it on the
    :class:`CrossMoERLModule` of every env runner (the local one included)
    and every learner. So one iteration samples and updates under the same
    routing (PPO's first minibatch has ratio 1), and the next iteration moves
    on. The schedule depends only on RLlib's lifetime step counter, which
    checkpoints keep, and the routing state also travels in the modules' state
    (weight syncs, restarted env runners, checkpoints).

    Each result gets ``routing_alpha``, ``routing_temperature`` and
    ``routing_phase``: the routing that the iteration ran with.

    Args:
        schedule: A :class:`~crossmoe.TemperatureAnnealingScheduler`, or its
            :meth:`~crossmoe.TemperatureAnnealingScheduler.state_dict`; the
            default is :func:`~crossmoe.integrations.common.default_schedule`
            over one million env steps. Its ``unit`` must be ``"env_steps"``.

    RLlib builds callbacks from a class with no arguments; pass a schedule with
    ``config.callbacks(functools.partial(RoutingScheduleCallback, schedule=...))``.
    """

    def __init__(self, schedule: TemperatureAnnealingScheduler | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if schedule is None:
            schedule = default_schedule(1_000_000)
        elif isinstance(schedule, Mapping):
            schedule = TemperatureAnnealingScheduler(**schedule)
        if not isinstance(schedule, TemperatureAnnealingScheduler):
            raise ValueError(
                f"schedule must be a TemperatureAnnealingScheduler or its state_dict, got {type(schedule).__name__}"
            )
        if schedule.unit != "env_steps":
            raise ValueError(f"schedule.unit must be 'env_steps' (RLlib counts env steps), got {schedule.unit!r}")
        self.schedule = schedule

    @staticmethod
    def env_steps(algorithm: Any) -> int:
        """The algorithm's lifetime count of sampled env steps."""
        return _count(algorithm.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))

    def apply(self, algorithm: Any, env_runner_ids: list[int] | None = None) -> RoutingState:
        """Set ``schedule(env_steps)`` on the env runners (only ``env_runner_ids`` if given) and the learners."""
        routing = self.schedule(self.env_steps(algorithm))
        apply = functools.partial(_apply_routing, routing=routing)
        group = algorithm.env_runner_group
        if group is not None:
            if env_runner_ids is None:
                group.foreach_env_runner(lambda runner: apply(getattr(runner, "module", None)), local_env_runner=True)
            else:
                group.foreach_env_runner(
                    lambda runner: apply(getattr(runner, "module", None)),
                    remote_worker_ids=env_runner_ids,
                    local_env_runner=False,
                )
        if env_runner_ids is None and algorithm.learner_group is not None:
            algorithm.learner_group.foreach_learner(lambda learner: apply(learner.module))
        return routing

    def on_algorithm_init(self, *, algorithm: Any, **kwargs: Any) -> None:
        self.apply(algorithm)

    def on_checkpoint_loaded(self, *, algorithm: Any, **kwargs: Any) -> None:
        self.apply(algorithm)

    def on_env_runners_recreated(
        self,
        *,
        algorithm: Any,
        env_runner_group: Any,
        env_runner_indices: list[int],
        is_evaluation: bool,
        **kwargs: Any,
    ) -> None:
        if not is_evaluation:
            self.apply(algorithm, env_runner_ids=list(env_runner_indices))

    def on_train_result(self, *, algorithm: Any, result: dict[str, Any], **kwargs: Any) -> None:
        runners = result.get(ENV_RUNNER_RESULTS, {})
        started = self.env_steps(algorithm) - _count(runners.get(NUM_ENV_STEPS_SAMPLED, 0))
        used = self.schedule(max(started, 0))
        result.update(routing_alpha=used.alpha, routing_temperature=used.temperature, routing_phase=used.phase)
        self.apply(algorithm)


def _count(value: Any) -> int:
    """A step count from RLlib's metrics, which are floats, and NaN for an iteration without samples."""
    value = float(value)
    return int(value) if math.isfinite(value) else 0


def _apply_routing(module: Any, routing: RoutingState) -> int:
    """Set ``routing`` on every :class:`CrossMoERLModule` in an RLlib (multi-)module; return how many."""
    if module is None:
        return 0
    if isinstance(module, CrossMoERLModule):
        module.set_routing(routing)
        return 1
    if hasattr(module, "foreach_module"):
        return sum(module.foreach_module(lambda _, sub: _apply_routing(sub, routing)))
    return 0


class NetHackRLlibEnv(gym.Wrapper):
    """RLlib's env class: :func:`crossmoe.nethack.make_env` of ``env_config["env_id"]``.

    ``env_config["make_env_kwargs"]`` (optional) goes to ``make_env``. RLlib
    seeds each sub-environment through ``reset(seed=...)`` when the config has
    a seed, which :func:`~crossmoe.nethack.make_env`'s env passes on to NetHack.
    A reset with ``options={}`` is passed on as ``options=None``: NLE 1.3.0
    reads ``options["wizkit_items"]`` from any dict it is given.

    Args:
        env_config: RLlib's ``EnvContext`` (a dict) with ``env_id``.
    """

    def __init__(self, env_config: Mapping[str, Any]) -> None:
        from crossmoe.nethack import make_env

        env_id = env_config.get("env_id") if isinstance(env_config, Mapping) else None
        if not isinstance(env_id, str) or not env_id:
            raise ValueError(f"env_config['env_id'] must be a non-empty string, got {env_id!r}")
        super().__init__(make_env(env_id, **dict(env_config.get("make_env_kwargs") or {})))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        return self.env.reset(seed=seed, options=options or None)


ENV_ID = "crossmoe-nethack"
"""The name :func:`nethack_ppo_config` registers :func:`nethack_rllib_env` under (``ray.tune.register_env``)."""


def nethack_rllib_env(env_config: Mapping[str, Any]) -> gym.Env | gym.vector.VectorEnv:
    """RLlib's env creator: :class:`NetHackRLlibEnv`, or, when RLlib asks for ``num_envs``, a vector env of them.

    The vector env (``gym_env_vectorize_mode="vector_entry_point"``, as
    :func:`nethack_ppo_config` sets) steps ``num_envs`` envs in one process
    and, with ``env_config["atoms"]``, adds the agent's atoms to the
    observations in one batched call per step
    (:class:`~crossmoe.wrappers.AtomsObservation`), so that the episodes carry
    them to the learner and no learner minibatch computes them again. With
    ``env_config["teacher"] = "rules"`` it adds the rule agent's action
    probabilities the same way (:class:`~crossmoe.wrappers.TeacherObservation`),
    softened by ``env_config["teacher_epsilon"]`` (default 0).
    """
    if not isinstance(env_config, Mapping) or "num_envs" not in env_config:
        return NetHackRLlibEnv(env_config)
    from crossmoe.wrappers import AtomsObservation

    config = dict(env_config)
    num_envs, atoms = int(config.pop("num_envs")), config.pop("atoms", False)
    teacher, epsilon = config.pop("teacher", None), config.pop("teacher_epsilon", 0.0)
    envs = gym.vector.SyncVectorEnv([functools.partial(NetHackRLlibEnv, config) for _ in range(num_envs)])
    if atoms:
        envs = AtomsObservation(envs, *observation_atoms(preset="nethack"))
    if teacher is not None:
        from crossmoe.wrappers import TeacherObservation

        envs = TeacherObservation(envs, make_teacher(teacher, envs, epsilon))
    return envs


def _env_actions(env_id: str, make_env_kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    from crossmoe.nethack import make_env

    env = make_env(env_id, **dict(make_env_kwargs))
    try:
        return tuple(env.unwrapped.actions)
    finally:
        env.close()


def nethack_ppo_config(
    env_id: str = "NetHackScore-v0",
    *,
    num_env_runners: int = 1,
    num_envs_per_env_runner: int = 8,
    num_learners: int = 0,
    schedule_total: int = 1_000_000,
    schedule: TemperatureAnnealingScheduler | None = None,
    aux_weights: AuxLossWeights | None = None,
    model_config: Mapping[str, Any] | None = None,
    make_env_kwargs: Mapping[str, Any] | None = None,
    seed: int | None = None,
    teacher: str | None = None,
    teacher_schedule: DistillationSchedule | None = None,
    teacher_loss: str = "cross_entropy",
    teacher_epsilon: float = 0.0,
) -> PPOConfig:
    """An RLlib PPO config (new API stack) that trains the crossmoe agent on an NLE or MiniHack env.

    It sets :func:`nethack_rllib_env` as the env (registered as :data:`ENV_ID`: vector envs of
    :class:`NetHackRLlibEnv` that carry the atoms in the observation), a :class:`CrossMoERLModule`
    (``model_config`` defaults to ``{"preset": "nethack", "dim": 128}`` with the
    env's NLE actions as ``action_set``), :class:`CrossMoEPPOTorchLearner`,
    :class:`RoutingScheduleCallback`, restarts of failed env runners, and the
    PPO settings of ``examples/ppo_nethack.py`` sized for a small machine:
    1,024 env steps per learner per iteration, 4 epochs of 256-step
    minibatches, lr 3e-4, gamma 0.99, GAE lambda 0.95, clip 0.2, entropy 0.01,
    value coefficient 0.5, global gradient norm 0.5. The value loss is not
    clipped (RLlib's default of 10 on the squared error stops the critic from
    learning NetHack's score-sized returns). Change anything on the returned
    config (``config.training(...)``, ``config.env_runners(...)``).

    Args:
        env_id: A ``NetHack*`` or ``MiniHack*`` environment id.
        num_env_runners: Remote env runner actors (0 samples in the driver).
        num_envs_per_env_runner: Environments each env runner steps together.
        num_learners: Remote learners (0: one learner in the driver; 2 or more
            train data-parallel with torch DDP).
        schedule_total: Length in env steps of the default routing schedule
            (:func:`~crossmoe.integrations.common.default_schedule`).
        schedule: A routing schedule in env steps instead of the default.
        aux_weights: Coefficients of the auxiliary losses (default
            :class:`~crossmoe.AuxLossWeights`'s).
        model_config: Settings of :class:`CrossMoERLModule` (``preset``,
            ``dim``, ``fusion``, ``knowledge``, ... or your encoders); merged
            over the defaults.
        make_env_kwargs: Passed to :func:`crossmoe.nethack.make_env`.
        seed: Seed of RLlib (torch, NumPy, Python, and each env's reset).
        teacher: Kickstart from ``"rules"`` (:class:`crossmoe.nethack.RuleAgent`):
            the env runners add its probabilities to the observations, and
            the learner adds the distillation loss; None for plain PPO.
        teacher_schedule: The teacher's weight over env steps (default: a constant 3.0).
        teacher_loss: ``"cross_entropy"``, ``"kl"`` or ``"top_set"`` (:func:`~crossmoe.losses.distillation_loss`).
        teacher_epsilon: Soften the teacher: mix its probabilities with
            uniform play by this share (:class:`~crossmoe.teacher.SoftenedTeacher`).

    Returns:
        The :class:`~ray.rllib.algorithms.ppo.PPOConfig`; ``config.build_algo()`` builds the algorithm.

    Raises:
        ValueError: For an empty ``env_id``, negative counts, a bad schedule,
            aux weights or model config.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")
    num_env_runners = _check_count("num_env_runners", num_env_runners, 0)
    num_envs_per_env_runner = _check_count("num_envs_per_env_runner", num_envs_per_env_runner, 1)
    num_learners = _check_count("num_learners", num_learners, 0)
    if schedule is None:
        schedule = default_schedule(_check_count("schedule_total", schedule_total, 1))
    elif not isinstance(schedule, TemperatureAnnealingScheduler) or schedule.unit != "env_steps":
        raise ValueError(f"schedule must be a TemperatureAnnealingScheduler in env_steps, got {schedule!r}")
    if aux_weights is not None and not isinstance(aux_weights, AuxLossWeights):
        raise ValueError(f"aux_weights must be an AuxLossWeights or None, got {type(aux_weights).__name__}")
    if model_config is not None and not isinstance(model_config, Mapping):
        raise ValueError(f"model_config must be a mapping or None, got {type(model_config).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    kickstart = teacher_settings(teacher, teacher_schedule, teacher_loss, teacher_epsilon)
    make_env_kwargs = dict(make_env_kwargs or {})
    module_config: dict[str, Any] = {"dim": 128}
    user_config = dict(model_config or {})
    if "visual_encoder" not in user_config and "logic_encoder" not in user_config:
        module_config["preset"] = "nethack"
    module_config.update(user_config)
    if module_config.get("preset") is not None and module_config["preset"] not in PRESETS:
        raise ValueError(f"model_config['preset'] must be one of {PRESETS} or None, got {module_config['preset']!r}")
    if module_config.get("preset") == "nethack" and "action_set" not in module_config:
        module_config["action_set"] = _env_actions(env_id, make_env_kwargs)
    register_env(ENV_ID, nethack_rllib_env)
    # The NetHack agent's atoms, computed with the env step and carried to the learner in the observation.
    atoms = module_config.get("preset") == "nethack" and module_config.get("logic_encoder") is None
    env_config = {"env_id": env_id, "make_env_kwargs": make_env_kwargs, "atoms": atoms, "teacher": teacher}
    if kickstart is not None and kickstart["teacher_epsilon"]:
        env_config["teacher_epsilon"] = kickstart["teacher_epsilon"]
    learner_settings: dict[str, Any] = {}
    if aux_weights is not None:
        learner_settings["aux_weights"] = dataclasses.asdict(aux_weights)
    if kickstart is not None:
        learner_settings.update(teacher_schedule=kickstart["teacher_schedule"], teacher_loss=teacher_loss)
    config = (
        PPOConfig()
        .framework("torch")
        .environment(ENV_ID, env_config=env_config)
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            gym_env_vectorize_mode="vector_entry_point",
        )
        .learners(
            num_learners=num_learners,
            learner_class=CrossMoEPPOTorchLearner,
            learner_config_dict={LEARNER_CONFIG_KEY: learner_settings},
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=CrossMoERLModule, model_config=module_config))
        .training(
            train_batch_size_per_learner=1024,
            minibatch_size=256,
            num_epochs=4,
            lr=3e-4,
            gamma=0.99,
            lambda_=0.95,
            clip_param=0.2,
            entropy_coeff=0.01,
            vf_loss_coeff=0.5,
            vf_clip_param=math.inf,
            use_kl_loss=False,
            grad_clip=0.5,
            grad_clip_by="global_norm",
        )
        .callbacks(functools.partial(RoutingScheduleCallback, schedule=schedule))
        .fault_tolerance(restart_failed_env_runners=True)
        .debugging(seed=seed)
    )
    return config
