"""PPO for crossmoe agents on any environment: the one loop both training examples run (CleanRL style).

    from crossmoe.minigrid import train_domain
    from crossmoe.ppo import PPOArgs, train

    summary = train(PPOArgs(env_id="MiniGrid-DoorKey-5x5-v0", total_timesteps=200_000), train_domain())

A :class:`TrainDomain` says what is particular to a family of envs (its vector
envs, its policy factories, its teachers, how its episodes end and what its
score is); :func:`train` does the rest. ``examples/ppo_nethack.py`` and
``examples/ppo_minigrid.py`` are a :class:`PPOArgs` with their env's defaults
and a call to :func:`train`. Needs the ``examples`` extra (tqdm, matplotlib,
TensorBoard) and gymnasium.

What :func:`train` does, in order:

- Vector envs in gymnasium's ``NEXT_STEP`` autoreset mode. The step after an
  episode end is a reset step: its action is ignored, so it is masked out of
  every PPO loss. Its observation is still the last one of the old episode,
  and its value is the bootstrap for an episode that was truncated by a time
  limit. A domain's ``episode_ends`` can mark an end as *aborted* (NLE's own
  step cap quits the game and blanks the final observation): such an episode
  bootstraps from the value of its last real observation.
- The rollout buffer is ``(T, N)`` and holds what ``agent.prepare(obs)``
  returns: the observation as tensors plus, for the MoE agent, its atoms, so
  the update reuses them. GAE (:func:`~crossmoe.training.compute_gae`) runs
  backwards in time.
- ``compile="rollout"`` or ``"all"`` runs the agent's forward through
  ``torch.compile`` (:func:`compile_agent`); the numpy conversion and the atoms
  stay eager.
- The routing schedule (softmax warm-up, annealing, sparsemax fine-tune) sets
  the router's alpha and temperature before each rollout, so the rollout and
  the update see the same policy and the first minibatch has ratio 1.
- Minibatches are whole env columns ``(T, N / num_minibatches)``, so the
  temporal-consistency loss sees each trajectory in time order. The MoE
  auxiliary losses enter the loss with :class:`~crossmoe.losses.AuxLossWeights`.
- ``teacher`` kickstarts the agent from one of the domain's teachers: its
  action probabilities are computed once per rollout step (from the atoms the
  agent already has) and stored in the buffer, and
  :func:`~crossmoe.losses.distillation_loss` from them to the policy, weighted
  by :class:`~crossmoe.schedule.DistillationSchedule`, joins the loss. With
  ``imitation_steps`` the teacher first plays for that many env steps while
  the policy and value are fitted to it (a behavioural-cloning warm start).
- :class:`~crossmoe.training.NaNGuard` rolls back non-finite steps,
  ``checkpoints/last.pt`` is written atomically every ``checkpoint_every``
  updates and on SIGINT/SIGTERM, and ``resume`` continues from it.
- ``metrics.jsonl`` gets one row per update; ``summary.json`` and the plots are
  written at the end.

Rewards: ``reward_mode="scale"`` (default) divides rewards by the running
standard deviation of the discounted return and clips at ``reward_clip``;
``"clip"`` only clips; ``"none"`` leaves them. The scaler's statistics are part
of the checkpoint. Logged returns are always the raw env returns.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from crossmoe.diagnostics import moe_diagnostics
from crossmoe.evaluation import EvalDomain
from crossmoe.losses import AuxLossWeights, aux_loss, distillation_loss
from crossmoe.schedule import KEEP_EXPERTS_ALIVE, DistillationSchedule, TemperatureAnnealingScheduler
from crossmoe.teacher import SoftenedTeacher, Teacher, teacher_probs
from crossmoe.training import (
    GracefulExit,
    MetricsLogger,
    NaNGuard,
    RewardScaler,
    compute_gae,
    load_checkpoint,
    masked_mean,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

__all__ = ["PPOArgs", "TrainDomain", "compile_agent", "make_agent", "make_scheduler", "make_teacher", "train"]


@dataclass
class PPOArgs:
    """The settings of one PPO run; a training example subclasses it with its env's defaults (and tyro reads it)."""

    env_id: str = ""
    """Environment id."""
    total_timesteps: int = 1_000_000
    """Env steps to train for (all ``N`` envs together, reset steps included)."""
    max_episode_steps: int | None = None
    """Cut episodes after this many steps (a truncation, bootstrapped); ``None`` keeps the env's own limit."""
    num_envs: int = 16
    """Parallel environments ``N``."""
    num_steps: int = 128
    """Steps per env per rollout ``T``."""
    seed: int = 1
    """Seed of torch, NumPy, Python and the environments."""
    run_dir: str | None = None
    """Where metrics, checkpoints, plots and the summary go (default ``runs/<env>__<policy>__<seed>__<time>``)."""
    resume: bool = False
    """Continue the run in ``--run-dir`` from ``checkpoints/last.pt``, with the arguments it started with
    (only the total timesteps, device, threads, compile, logging, plotting and NaN-injection flags may change)."""
    policy: Literal["moe", "mlp", "flat"] = "moe"
    """``moe``: the crossmoe agent; ``mlp``: a plain actor-critic on the same visual encoder; ``flat``: the
    flat-features control, the mlp with the atoms as input and the knowledge prior
    (``make_baseline_policy(knowledge=True)``)."""
    fusion: Literal["cross_attention", "concat"] = "cross_attention"
    """Fusion of the logic and visual streams (``concat`` is the ablation); ``moe`` only."""
    knowledge: bool = True
    """The knowledge pathway: a learned prior over the applicable operators' actions (``moe`` only;
    ``--no-knowledge`` is the ablation)."""
    applicable_queries: bool = True
    """Only the applicable operators query the map (``--no-applicable-queries``: all of them, the earlier design;
    ``moe`` with ``cross_attention`` only)."""
    core: Literal["none", "lstm"] = "none"
    """A recurrent core between the agent's context and its heads (``lstm``: :class:`~crossmoe.recurrent.LSTMCore`,
    memory across an episode's steps; every policy): the rollout carries its state, and the update replays each
    env column's ``num_steps`` from the state the rollout started with (backpropagation through the rollout)."""
    device: str = "cpu"
    """Torch device."""
    torch_threads: int = 0
    """Intra-op threads for torch; 0 keeps torch's default."""
    compile: Literal["off", "rollout", "all"] = "rollout"
    """``torch.compile`` the agent's forward: ``rollout`` (the fastest on 2 CPU cores, see docs/benchmarks.md)
    compiles the gradient-free rollout forward only, ``all`` the update's forward and backward too, ``off``
    neither. The first compile takes 10-60 s; without a C++ compiler the run goes on eagerly, with a warning."""

    learning_rate: float = 3e-4
    """Adam learning rate."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 4
    """Minibatches per epoch; each holds ``num_envs / num_minibatches`` whole env columns."""
    update_epochs: int = 4
    """Epochs over each rollout."""
    clip_coef: float = 0.2
    """PPO surrogate clipping."""
    clip_vloss: bool = True
    """Clip the value loss as in PPO2."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Gradient clipping norm."""
    target_kl: float | None = None
    """Stop the epochs of an update early when approx-KL exceeds it."""
    reward_mode: Literal["scale", "clip", "none"] = "scale"
    """Reward handling: ``scale`` by the running std of the discounted return and clip, ``clip`` only, ``none``."""
    reward_clip: float = 10.0
    """Bound of the clipped (or scaled) reward."""

    dim: int = 128
    """Token and context width."""
    aux: AuxLossWeights = field(default_factory=AuxLossWeights)
    """Coefficients of the MoE auxiliary losses (``moe`` only)."""
    alignment_target: Literal["balanced", "sum"] = "balanced"
    """Expert target of the alignment loss (``sum`` is the old, collapse-prone one); see hypergraph_alignment_loss."""
    alignment_smoothing: float = 0.1
    """Uniform mixture in the alignment target."""
    weighted_diversity: bool = True
    """Weight the diversity loss's expert pairs by their routing weights (``--no-weighted-diversity``: all pairs)."""
    uniform_router_init: bool = True
    """Start the router at uniform weights (``--no-uniform-router-init``: PyTorch's random init)."""
    schedule_unit: Literal["env_steps", "episodes", "updates"] = "env_steps"
    """What the routing schedule counts."""
    schedule_warmup: float | None = None
    """End of the softmax warm-up, in ``schedule_unit``; default 20% of the run (1000 for episodes)."""
    schedule_transition: float | None = None
    """End of the annealing to sparsemax; default 60% of the run (3000 for episodes)."""
    schedule_total: float | None = None
    """Planned schedule length; default the run's length (5000 for episodes)."""
    schedule_coefficients: str = json.dumps(KEEP_EXPERTS_ALIVE)
    """Per-phase multipliers of the aux-loss weights, as JSON, e.g. ``'{"finetune": {"load_balance": 2}}'``.
    The default, ``crossmoe.schedule.KEEP_EXPERTS_ALIVE``, multiplies the load-balance weight by 10 from the
    annealing on, which keeps all the experts in use in the sparsemax fine-tune; ``""`` multiplies nothing."""

    teacher: str = "none"
    """Kickstart from one of the domain's teachers (Schmitt et al., 2018), e.g. ``rules``, the knowledge
    hypergraph played as rules: the distillation loss from its action distribution to the policy's, on the
    rollout's states, joins the PPO loss. ``none``: plain PPO."""
    teacher_coef: float = 3.0
    """Weight of the distillation loss (before any annealing)."""
    teacher_epsilon: float = 0.0
    """Soften the teacher (:class:`~crossmoe.teacher.SoftenedTeacher`): mix this share of uniform play into its
    probabilities, for the distillation target and for the actions it plays in ``--imitation-steps``."""
    teacher_anneal_start: int | None = None
    """Env step at which the teacher's weight starts to fall linearly to ``--teacher-final-coef`` (with
    ``--teacher-anneal-end``); unset: a constant weight."""
    teacher_anneal_end: int | None = None
    """Env step at which the teacher's weight reaches ``--teacher-final-coef``."""
    teacher_final_coef: float = 0.0
    """The teacher's weight from ``--teacher-anneal-end`` on: 0 hands the student over to PPO alone; a small
    weight keeps it anchored to the teacher."""
    teacher_loss: Literal["cross_entropy", "kl", "top_set"] = "cross_entropy"
    """What the distillation loss measures: ``cross_entropy`` and ``kl`` (the same gradient; ``kl`` is 0 where the
    policy agrees) hold the policy to the teacher's distribution; ``top_set`` only to the teacher's mass on its top
    actions (a rule agent's chosen operator), and leaves the choice among them to PPO."""
    imitation_steps: int = 0
    """A behavioural-cloning warm start: for the updates that start before this env step the teacher plays (its
    actions, sampled from its distribution, drive the envs) and the update fits the policy to the teacher's
    distribution and the value to the teacher's returns, without the PPO and entropy terms (the data is not the
    policy's). Kickstarted PPO follows. Needs ``--teacher``; the steps count in ``--total-timesteps``."""

    checkpoint_every: int = 10
    """Write ``checkpoints/last.pt`` every this many updates."""
    snapshot_at: tuple[int, ...] = ()
    """Also keep ``checkpoints/step_<N>.pt`` at the first update at or past each of these env steps
    (e.g. ``1000000`` to evaluate a 2M-step run at 1M)."""
    best_window: int = 100
    """``best.pt`` tracks the best mean return over this many recent episodes."""
    nan_lr_factor: float = 0.5
    """Learning-rate factor applied on each non-finite step."""
    nan_max_consecutive: int = 5
    """Give up after this many non-finite steps in a row."""
    inject_nan_at_update: int | None = None
    """Make the first minibatch loss of this update NaN (exercises the NaN guard)."""

    track_tensorboard: bool = False
    """Also write TensorBoard logs to ``run_dir/tensorboard``."""
    progress: bool = True
    """Show a tqdm progress bar."""
    plots: bool = True
    """Write the learning-curve and routing plots at the end."""


@dataclass(frozen=True)
class TrainDomain:
    """What :func:`train` needs to know about a family of environments.

    Args:
        env: The envs, their score and how their episodes end, as for
            evaluation (:class:`~crossmoe.evaluation.EvalDomain`):
            ``env.make_vector_env(num_envs, seed, env_id, **env_kwargs)``,
            ``env.score`` (``None``: the return is the score) and
            ``env.episode_ends``.
        make_policy: The MoE agent's factory: called with ``env=`` the vector
            env and ``dim``, ``fusion``, ``knowledge``, ``uniform_router_init``
            and ``applicable_queries`` from the args.
        make_baseline_policy: The baseline's factory: called with ``env=``,
            ``dim`` and ``knowledge`` (``True`` for the flat-features control).
        teachers: Teacher factories by name, each ``vector env -> Teacher``.
        env_options: Names of fields of the args (of a :class:`PPOArgs`
            subclass) passed on to ``make_vector_env`` as they are.
        policy_options: Names of fields passed on to ``make_policy``. Both
            are optional: args without such a field (a plain
            :class:`PPOArgs`) leave the factory's default.
        success: ``(reward, terminal) -> (N,) bool``: whether an episode that
            ends on this step succeeded; metrics then log ``success_rate``.
    """

    env: EvalDomain
    make_policy: Callable[..., nn.Module]
    make_baseline_policy: Callable[..., nn.Module]
    teachers: Mapping[str, Callable[[Any], Teacher]] = field(default_factory=dict)
    env_options: tuple[str, ...] = ()
    policy_options: tuple[str, ...] = ()
    success: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


SCHEDULE_COUNTER = {"env_steps": "global_step", "updates": "update", "episodes": "episodes"}
RESUMABLE = (
    "total_timesteps",
    "snapshot_at",
    "device",
    "progress",
    "plots",
    "track_tensorboard",
    "inject_nan_at_update",
    "run_dir",
    "compile",
    "torch_threads",
)
"""The arguments a resumed run takes from the command line; every other one comes from the checkpoint."""
_MOE_OUTPUTS = ("router_logits", "router_weights", "expert_logits", "expert_features", "operator_scores", "applicable")


def make_scheduler(args: PPOArgs, num_iterations: int) -> TemperatureAnnealingScheduler:
    """The routing schedule in ``args.schedule_unit``: the recipe for episodes, scaled to the run otherwise."""
    length = {"env_steps": num_iterations * args.num_envs * args.num_steps, "updates": num_iterations}
    total = args.schedule_total or length.get(args.schedule_unit, 5000)
    recipe = args.schedule_unit == "episodes"
    warmup = args.schedule_warmup if args.schedule_warmup is not None else (1000 if recipe else 0.2 * total)
    transition = args.schedule_transition if args.schedule_transition is not None else (3000 if recipe else 0.6 * total)
    coefficients = json.loads(args.schedule_coefficients) if args.schedule_coefficients else None
    return TemperatureAnnealingScheduler(
        round(warmup), round(transition), round(total), args.schedule_unit, coefficients=coefficients
    )


def make_teacher(args: PPOArgs, envs: Any, domain: TrainDomain) -> tuple[Teacher | None, DistillationSchedule | None]:
    """The teacher of ``args.teacher`` and the schedule of its weight, or ``(None, None)`` for ``"none"``."""
    names = ("none", *domain.teachers)
    if args.teacher not in names:
        raise ValueError(f"teacher must be one of {names}, got {args.teacher!r}")
    if args.teacher == "none":
        return None, None
    try:
        schedule = DistillationSchedule(
            args.teacher_coef, args.teacher_anneal_start, args.teacher_anneal_end, args.teacher_final_coef
        )
    except (TypeError, ValueError) as error:  # name the run's arguments, not the schedule's
        raise type(error)(
            f"teacher_coef, teacher_anneal_start, teacher_anneal_end, teacher_final_coef: {error}"
        ) from error
    teacher = domain.teachers[args.teacher](envs)
    if args.teacher_epsilon:
        try:
            teacher = SoftenedTeacher(teacher, args.teacher_epsilon)
        except ValueError as error:
            raise ValueError(f"teacher_epsilon: {error}") from error
    return teacher, schedule


def _options(args: PPOArgs, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields of ``args`` among ``names`` (a domain's env or policy options) that ``args`` has."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def make_agent(args: PPOArgs, envs: Any, domain: TrainDomain) -> nn.Module:
    """The MoE agent (``policy="moe"``), the no-MoE baseline (``"mlp"``) or the flat-features control (``"flat"``)."""
    core = {} if args.core == "none" else {"core": args.core}  # a domain's factories need not know the argument
    if args.policy == "moe":
        return domain.make_policy(
            env=envs,
            dim=args.dim,
            fusion=args.fusion,
            knowledge=args.knowledge,
            uniform_router_init=args.uniform_router_init,
            applicable_queries=args.applicable_queries,
            **_options(args, domain.policy_options),
            **core,
        )
    if args.policy not in ("mlp", "flat"):
        raise ValueError(f"policy must be one of ('moe', 'mlp', 'flat'), got {args.policy!r}")
    return domain.make_baseline_policy(env=envs, dim=args.dim, knowledge=args.policy == "flat", **core)


def compile_agent(agent: nn.Module, args: PPOArgs, envs: Any, domain: TrainDomain) -> nn.Module:
    """``agent.compile()`` for ``args.compile``, compiled now on real observations; the eager agent if that fails.

    One graph per batch size (``dynamic=False``): the rollout's ``num_envs``
    and, with ``compile="all"``, the update's minibatch (forward and
    backward). Both are built here, before training, from the first
    observation (tiled to the minibatch size), so a failure cannot stop the
    run midway: without a working C++ compiler inductor cannot build its
    kernels, and the run goes on eagerly, with a warning. ``agent.prepare``
    (numpy, atoms) stays eager.
    """
    agent.compile(dynamic=False, inference_only=args.compile == "rollout")
    obs, _ = envs.reset(seed=args.seed)  # the loop resets again with its own seed

    def memory(envs: int, steps: int = 1) -> tuple[Tensor, Tensor] | tuple[()]:
        # a recurrent agent is compiled as the loop calls it: with a state and the episode starts
        return (agent.initial_state(envs), torch.ones(steps * envs, dtype=torch.bool)) if agent.recurrent else ()

    try:
        with torch.inference_mode():
            agent(obs, *memory(args.num_envs))
        if args.compile == "all":
            envs_per_minibatch = args.num_envs // args.num_minibatches
            minibatch = args.num_steps * envs_per_minibatch
            tiled = {key: np.resize(value, (minibatch, *value.shape[1:])) for key, value in obs.items()}
            out = agent(tiled, *memory(envs_per_minibatch, args.num_steps))
            (out.logits.sum() + out.value.sum()).backward()
            agent.zero_grad(set_to_none=True)
    except torch._dynamo.exc.BackendCompilerFailed as error:
        warnings.warn(f"--compile {args.compile} failed, training eagerly: {error}", RuntimeWarning, stacklevel=2)
        eager = make_agent(args, envs, domain).to(agent.device)
        eager.load_state_dict(agent.state_dict())
        return eager
    return agent


def _resumed(args: PPOArgs, run_dir: Path) -> tuple[PPOArgs, dict[str, Any]]:
    """The args a run started with (``RESUMABLE`` ones from ``args``) and its ``last.pt``."""
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise ValueError(f"--resume needs the --run-dir of a run with checkpoints/last.pt, got {str(run_dir)!r}")
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    saved = checkpoint["args"]
    saved.update({name: getattr(args, name) for name in RESUMABLE})
    saved.setdefault("applicable_queries", False)  # a run from before the option: every operator queried
    saved["aux"] = AuxLossWeights(**saved["aux"])
    return type(args)(**saved), checkpoint


def _check(args: PPOArgs) -> None:
    if not isinstance(args.env_id, str) or not args.env_id:
        raise ValueError(f"env_id must name a registered environment, got {args.env_id!r}")
    if any(step <= 0 for step in args.snapshot_at):
        raise ValueError(f"snapshot_at must be positive env-step counts, got {args.snapshot_at}")
    if args.num_envs % args.num_minibatches:
        raise ValueError(
            f"num_minibatches must divide num_envs={args.num_envs} (minibatches are env columns), "
            f"got {args.num_minibatches}"
        )
    if not isinstance(args.imitation_steps, int) or args.imitation_steps < 0:
        raise ValueError(f"imitation_steps must be an int >= 0, got {args.imitation_steps!r}")
    if args.imitation_steps and args.teacher == "none":
        raise ValueError(f"imitation_steps={args.imitation_steps} needs a teacher to imitate: pass --teacher")
    if args.core not in ("none", "lstm"):
        raise ValueError(f"core must be 'none' or 'lstm', got {args.core!r}")
    if args.teacher_epsilon and args.teacher == "none":
        raise ValueError(f"teacher_epsilon={args.teacher_epsilon} softens a teacher: pass --teacher")
    batch_size = args.num_envs * args.num_steps
    if args.total_timesteps < batch_size:
        raise ValueError(f"total_timesteps must be >= num_envs * num_steps = {batch_size}, got {args.total_timesteps}")


class _Rollout:
    """The ``(T, N, ...)`` storage of one rollout, one tensor per quantity."""

    def __init__(self, first: Mapping[str, Any], num_steps: int, num_envs: int, num_actions: int | None) -> None:
        # what agent.prepare returns: the observation as tensors and, for the MoE agent, its atoms (computed once
        # per step, reused by the update)
        self.obs = {
            key: torch.zeros((num_steps, *value.shape), dtype=value.dtype)
            for key, value in first.items()
            if isinstance(value, Tensor)
        }
        shape = (num_steps, num_envs)
        self.actions = torch.zeros(shape, dtype=torch.long)
        self.logprobs, self.rewards, self.values = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
        self.terminal, self.ends, self.valid = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
        self.aborted = torch.zeros(shape, dtype=torch.bool)
        # a recurrent core's episode starts (its state is zeroed there) and its state before the rollout
        self.starts = torch.zeros(shape, dtype=torch.bool)
        self.initial_state: Tensor | None = None
        # the teacher's action probabilities, once per step: no epoch recomputes them
        self.teacher = None if num_actions is None else torch.zeros((*shape, num_actions))


def train(args: PPOArgs, domain: TrainDomain) -> dict[str, Any]:
    """Train (or, with ``args.resume``, continue) one PPO run of a crossmoe agent; returns its summary.

    Writes ``metrics.jsonl``, ``args.json``, ``checkpoints/{last,best}.pt``,
    ``summary.json`` and (with ``args.plots``) the plots into ``args.run_dir``.

    Raises:
        ValueError: An argument out of its range (named), or ``resume`` without a checkpoint.
    """
    if not isinstance(args, PPOArgs):
        raise TypeError(f"args must be a crossmoe.ppo.PPOArgs (or a subclass), got {type(args).__name__}")
    if not isinstance(domain, TrainDomain):
        raise TypeError(f"domain must be a crossmoe.ppo.TrainDomain, got {type(domain).__name__}")
    if args.run_dir is None:
        args.run_dir = f"runs/{args.env_id}__{args.policy}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.run_dir)
    checkpoint = None
    if args.resume:
        args, checkpoint = _resumed(args, run_dir)
    _check(args)
    batch_size = args.num_envs * args.num_steps
    num_iterations = args.total_timesteps // batch_size
    envs_per_minibatch = args.num_envs // args.num_minibatches
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    import gymnasium as gym

    env_kwargs = _options(args, domain.env_options)
    if args.max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = args.max_episode_steps
    envs = domain.env.make_vector_env(args.num_envs, args.seed, args.env_id, **env_kwargs)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    moe = args.policy == "moe"
    teacher, teacher_schedule = make_teacher(args, envs, domain)
    agent = make_agent(args, envs, domain).to(device)
    if args.compile != "off":
        agent = compile_agent(agent, args, envs, domain)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    scheduler = make_scheduler(args, num_iterations)
    reward_scaler = RewardScaler(args.num_envs, args.reward_mode, args.gamma, args.reward_clip)
    counters = {"global_step": 0, "update": 0, "episodes": 0}
    recent_returns: deque[float] = deque(maxlen=args.best_window)
    best_return = -math.inf
    guard = NaNGuard(agent, optimizer, args.nan_lr_factor, args.nan_max_consecutive)
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        reward_scaler.load_state_dict(checkpoint["reward_scaler"])
        reward_scaler.returns[:] = 0.0  # the environments start fresh episodes
        guard.load_state_dict(checkpoint["nan_guard"])
        if teacher_schedule is not None and "teacher_schedule" in checkpoint:
            teacher_schedule.load_state_dict(checkpoint["teacher_schedule"])
        counters.update(checkpoint["counters"])
        recent_returns.extend(checkpoint["recent_returns"])
        best_return = checkpoint["best_return"]
        set_rng_state(checkpoint["rng"])
    logger = MetricsLogger(
        run_dir, args.track_tensorboard, resume_after=counters["global_step"] if checkpoint is not None else None
    )
    (run_dir / "args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))

    def save(name: str) -> None:
        routing_now = scheduler(counters[SCHEDULE_COUNTER[args.schedule_unit]])  # what the next update would use
        save_checkpoint(
            run_dir / "checkpoints" / name,
            {
                "model": agent.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "reward_scaler": reward_scaler.state_dict(),
                "nan_guard": guard.state_dict(),
                "counters": dict(counters),
                "recent_returns": list(recent_returns),
                "best_return": best_return,
                "rng": rng_state(),
                "args": dataclasses.asdict(args),
                "policy_config": agent.config,  # plain data: the domain's load_agent rebuilds the agent from it
                "routing": {**routing_now._asdict(), "coefficients": dict(routing_now.coefficients)},
                **({} if teacher_schedule is None else {"teacher_schedule": teacher_schedule.state_dict()}),
            },
        )

    # Each (re)start begins fresh episodes from a seed no earlier start used.
    next_obs, _ = envs.reset(seed=args.seed + counters["update"] * args.num_envs)
    num_actions = envs.single_action_space.n
    buf = _Rollout(agent.prepare(next_obs), args.num_steps, args.num_envs, None if teacher is None else num_actions)
    next_valid = np.ones(args.num_envs, dtype=bool)
    state = agent.initial_state(args.num_envs)  # a recurrent core's memory; None without one
    next_start = np.ones(args.num_envs, dtype=bool)  # the first observation of an episode
    episode_score = np.zeros(args.num_envs)
    episode_success = np.zeros(args.num_envs, dtype=bool)
    scored = domain.env.score is not None  # else an episode's score is its return

    start_time = time.time()
    start_step = counters["global_step"]
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(total=num_iterations * batch_size, initial=counters["global_step"], unit="step", dynamic_ncols=True)
    with GracefulExit() as stopper:  # SIGINT/SIGTERM: stop at the next step, save last.pt
        while counters["update"] < num_iterations and stopper.requested is None:
            update_start, update_step = time.time(), counters["global_step"]
            # What a stop in the middle of the rollout must put back: the partial rollout is dropped.
            counters_at_start, scaler_at_start = dict(counters), reward_scaler.state_dict()
            lr_frac = 1.0 - counters["update"] / num_iterations if args.anneal_lr else 1.0
            for group in optimizer.param_groups:
                group["lr"] = lr_frac * args.learning_rate * guard.lr_scale
            routing = scheduler(counters[SCHEDULE_COUNTER[args.schedule_unit]])
            routing.apply(agent)
            aux_weights = args.aux.scaled(routing.coefficients)
            teacher_coef = None if teacher_schedule is None else teacher_schedule(counters["global_step"])
            imitate = teacher is not None and counters["global_step"] < args.imitation_steps  # the teacher plays
            finished: dict[str, list[float]] = {"return": [], "length": [], "score": [], "success": []}
            if state is not None:
                buf.initial_state = state.clone()  # a normal tensor (the rollout's are inference tensors)

            # ---- rollout --------------------------------------------------------------------------------
            for step in range(args.num_steps):
                step_obs = agent.prepare(next_obs)
                for key, buffer in buf.obs.items():
                    buffer[step] = step_obs[key]
                buf.valid[step] = torch.from_numpy(next_valid)
                buf.starts[step] = torch.from_numpy(next_start)
                if teacher is not None:  # the MoE agent's atoms, when it has them; the teacher computes them otherwise
                    teacher_obs = next_obs if "atoms" not in step_obs else {**next_obs, "atoms": step_obs["atoms"]}
                    buf.teacher[step] = teacher_probs(teacher, teacher_obs, num_actions)
                with torch.inference_mode():  # same network mode as the update; no autograd bookkeeping
                    played = torch.multinomial(buf.teacher[step], 1).squeeze(1) if imitate else None
                    memory = {} if state is None else {"state": state, "starts": buf.starts[step]}
                    action, logprob, _, value, output = agent.get_action_and_value(
                        step_obs, played, return_output=True, **memory
                    )
                    state = output.state  # None without a recurrent core
                buf.actions[step], buf.logprobs[step], buf.values[step] = action.cpu(), logprob.cpu(), value.cpu()

                next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
                is_terminal, done, is_aborted = domain.env.episode_ends(terminated, truncated, info)
                buf.rewards[step] = torch.from_numpy(reward_scaler(reward, done))
                buf.terminal[step] = torch.from_numpy(is_terminal)
                buf.ends[step] = torch.from_numpy(done)
                buf.aborted[step] = torch.from_numpy(is_aborted)
                if scored:  # an episode's score is the largest the game showed
                    episode_score = np.where(next_valid, np.maximum(episode_score, domain.env.score(next_obs)), 0)
                if domain.success is not None:
                    episode_success = next_valid & np.asarray(domain.success(reward, is_terminal), dtype=bool)
                # The next observation starts an episode after an autoreset step; zeroing the state at the
                # episode's end too keeps the ignored reset step's observation out of the memory.
                next_start = done | ~next_valid
                next_valid = ~done
                counters["global_step"] += args.num_envs
                if "_episode" in info:
                    for index in np.flatnonzero(info["_episode"]):
                        finished["return"].append(float(info["episode"]["r"][index]))
                        finished["length"].append(int(info["episode"]["l"][index]))
                        finished["score"].append(float(episode_score[index] if scored else info["episode"]["r"][index]))
                        finished["success"].append(float(episode_success[index]))
                    counters["episodes"] += int(info["_episode"].sum())
                if stopper.requested is not None:
                    break
            if stopper.requested is not None:
                counters.update(counters_at_start)
                reward_scaler.load_state_dict(scaler_at_start)
                break
            recent_returns.extend(finished["return"])
            rollout_time = time.time() - update_start

            # ---- advantages -------------------------------------------------------------------------------
            with torch.inference_mode():
                memory = () if state is None else (state, torch.from_numpy(next_start))
                next_value = agent.get_value(next_obs, *memory).cpu()
            next_values = torch.cat([buf.values[1:], next_value.unsqueeze(0)])
            next_values[buf.aborted] = buf.values[buf.aborted]  # a blanked final observation: use the last real one
            advantages, returns = compute_gae(
                buf.rewards, buf.values, next_values, buf.terminal, buf.ends, args.gamma, args.gae_lambda
            )
            # Pair (t-1, t) of a trajectory crosses an episode boundary when t-1 ended one or was a reset step.
            boundary = torch.zeros_like(buf.ends, dtype=torch.bool)
            boundary[1:] = (buf.ends[:-1] > 0) | (buf.valid[:-1] == 0)

            # ---- update -----------------------------------------------------------------------------------
            stats: defaultdict[str, list[Any]] = defaultdict(list)
            env_ids = np.arange(args.num_envs)
            first_ratio_error = None
            for epoch in range(args.update_epochs):
                np.random.shuffle(env_ids)
                for start in range(0, args.num_envs, envs_per_minibatch):
                    cols = torch.from_numpy(env_ids[start : start + envs_per_minibatch])

                    def column(x: Tensor, cols: Tensor = cols) -> Tensor:
                        return x[:, cols].flatten(0, 1).to(device)

                    mb_obs = {key: column(buffer) for key, buffer in buf.obs.items()}
                    mask = column(buf.valid)
                    # a recurrent core replays the columns' rollouts from the state they started with
                    memory = {} if state is None else {"state": buf.initial_state[cols], "starts": column(buf.starts)}
                    _, new_logprob, entropy, new_value, output = agent.get_action_and_value(
                        mb_obs, column(buf.actions), return_output=True, **memory
                    )
                    log_ratio = new_logprob - column(buf.logprobs)
                    ratio = log_ratio.exp()
                    with torch.no_grad():
                        if first_ratio_error is None:
                            first_ratio_error = float(((ratio - 1).abs() * mask).max())
                        stats["approx_kl"].append(masked_mean((ratio - 1) - log_ratio, mask))
                        stats["clipfrac"].append(masked_mean(((ratio - 1).abs() > args.clip_coef).float(), mask))

                    mb_adv = column(advantages)
                    adv_mean = masked_mean(mb_adv, mask)
                    adv_std = masked_mean((mb_adv - adv_mean) ** 2, mask).sqrt()
                    mb_adv = (mb_adv - adv_mean) / (adv_std + 1e-8)
                    clipped_ratio = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                    pg_loss = masked_mean(torch.max(-mb_adv * ratio, -mb_adv * clipped_ratio), mask)
                    mb_returns, mb_values = column(returns), column(buf.values)
                    v_error = (new_value - mb_returns) ** 2
                    if args.clip_vloss:
                        clipped = mb_values + (new_value - mb_values).clamp(-args.clip_coef, args.clip_coef)
                        v_error = torch.max(v_error, (clipped - mb_returns) ** 2)
                    v_loss = 0.5 * masked_mean(v_error, mask)
                    entropy_loss = masked_mean(entropy, mask)
                    # Imitation fits the value to the teacher's returns; its actions are not the policy's to reinforce.
                    loss = args.vf_coef * v_loss + (0 if imitate else pg_loss - args.ent_coef * entropy_loss)
                    if teacher is not None:
                        mb_teacher = column(buf.teacher)
                        distill = distillation_loss(output.logits, mb_teacher, mask, kind=args.teacher_loss)
                        loss = loss + teacher_coef * distill
                        stats["teacher/distill_loss"].append(distill.detach())
                        with torch.no_grad():  # how much of the policy's mass lies on the teacher's actions
                            # (those above its floor: a softened teacher gives every action epsilon / A)
                            least = mb_teacher.amin(-1, keepdim=True)
                            chosen = (mb_teacher > least) | (mb_teacher.amax(-1, keepdim=True) == least)
                            on_teacher = (output.logits.softmax(-1) * chosen).sum(-1)
                            stats["teacher/policy_mass"].append(masked_mean(on_teacher, mask))

                    if moe:
                        # The aux losses see the minibatch as (T, n, ...) so the temporal term runs along T.
                        shaped = {
                            name: getattr(output, name).unflatten(0, (args.num_steps, envs_per_minibatch))
                            for name in _MOE_OUTPUTS
                            if getattr(output, name) is not None
                        }
                        shaped["operator_to_expert"] = output.operator_to_expert
                        total_aux, parts = aux_loss(
                            shaped,
                            aux_weights,
                            dones=boundary[:, cols].to(device),
                            alignment_target=args.alignment_target,
                            alignment_smoothing=args.alignment_smoothing,
                            weighted_diversity=args.weighted_diversity,
                        )
                        loss = loss + total_aux
                        for name, value in parts.items():
                            stats[f"aux/{name}"].append(value)
                        if epoch == 0:
                            for name, value in moe_diagnostics(
                                output.router_weights, output.attention, output.context, names=agent.experts.names
                            ).items():
                                stats[name].append(value)
                    if args.inject_nan_at_update == counters["update"] and epoch == 0 and start == 0:
                        loss = loss * float("nan")

                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    if guard.check(loss, grad_norm):
                        optimizer.step()
                        stats["grad_norm"].append(grad_norm)
                    stats["pg_loss"].append(pg_loss.detach())
                    stats["v_loss"].append(v_loss.detach())
                    stats["entropy"].append(entropy_loss.detach())
                if args.target_kl is not None and float(stats["approx_kl"][-1]) > args.target_kl:
                    break
            guard.snapshot()
            counters["update"] += 1

            # ---- log -------------------------------------------------------------------------------------
            with torch.no_grad():
                valid_mask = buf.valid > 0
                y_pred, y_true = buf.values[valid_mask], returns[valid_mask]
                explained = float(1 - (y_true - y_pred).var() / y_true.var()) if y_true.var() > 0 else float("nan")
            now = time.time()

            def mean(values: list[float]) -> float | None:
                return float(np.mean(values)) if values else None

            row = {
                "global_step": counters["global_step"],
                "update": counters["update"],
                "episodes": counters["episodes"],
                "sps": (counters["global_step"] - update_step) / max(now - update_start, 1e-9),
                "rollout_time": rollout_time,
                "update_time": now - update_start - rollout_time,
                "sps_run": (counters["global_step"] - start_step) / max(now - start_time, 1e-9),
                "episodic_return": mean(finished["return"]),
                "episodic_length": mean(finished["length"]),
                "score": mean(finished["score"]),
                **({} if domain.success is None else {"success_rate": mean(finished["success"])}),
                "episodes_finished": len(finished["return"]),
                "reset_steps": int((buf.valid == 0).sum()),
                "rolling_return": mean(list(recent_returns)),
                "phase": routing.phase,
                "alpha": routing.alpha,
                "temperature": routing.temperature,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "explained_variance": explained,
                "first_minibatch_ratio_error": first_ratio_error,
                "nan_rollbacks": guard.total_faults,
                "teacher_coef": teacher_coef,
                **({"imitation": imitate} if args.imitation_steps else {}),
                **{name: float(np.mean([float(value) for value in series])) for name, series in stats.items()},
            }
            logger.log(row)
            if len(recent_returns) >= min(args.best_window, 10) and np.mean(recent_returns) > best_return:
                best_return = float(np.mean(recent_returns))
                save("best.pt")
            if counters["update"] % args.checkpoint_every == 0:
                save("last.pt")
            for step in args.snapshot_at:
                if counters["global_step"] - batch_size < step <= counters["global_step"]:
                    save(f"step_{step}.pt")
            if bar is not None:
                bar.update(counters["global_step"] - bar.n)
                bar.set_postfix(
                    sps=f"{row['sps']:.0f}",
                    ret="-" if row["rolling_return"] is None else f"{row['rolling_return']:.2f}",
                    phase=routing.phase,
                    alpha=f"{routing.alpha:.2f}",
                    H="-" if "routing_entropy" not in row else f"{row['routing_entropy']:.2f}",
                )
        save("last.pt")  # the end of the run, or a SIGINT/SIGTERM
    if bar is not None:
        bar.close()
    envs.close()
    logger.close()

    interrupted = stopper.requested is not None
    summary = {
        "env_id": args.env_id,
        "policy": args.policy,
        "fusion": args.fusion if moe else None,
        "knowledge": args.knowledge if moe else None,
        "core": args.core,
        **{
            name: value if moe and args.knowledge else None
            for name, value in _options(args, domain.policy_options).items()
        },
        "teacher": args.teacher,
        "seed": args.seed,
        "global_step": counters["global_step"],
        "updates": counters["update"],
        "episodes": counters["episodes"],
        "rolling_return": float(np.mean(recent_returns)) if recent_returns else None,
        "best_rolling_return": None if best_return == -math.inf else best_return,
        "sps": (counters["global_step"] - start_step) / max(time.time() - start_time, 1e-9),
        "nan_rollbacks": guard.total_faults,
        "interrupted": interrupted,
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.plots and not interrupted:
        from crossmoe.plots import plot_run

        plot_run(run_dir)
    print(
        f"{'stopped by signal' if interrupted else 'finished'}: {counters['global_step']} env steps, "
        f"{counters['episodes']} episodes, rolling return {summary['rolling_return']}, "
        f"{summary['sps']:.0f} steps/s"
    )
    print(
        f"run dir: {run_dir}  (metrics.jsonl, summary.json, checkpoints/, *.png"
        f"{', tensorboard/' if args.track_tensorboard else ''})"
    )
    return summary
