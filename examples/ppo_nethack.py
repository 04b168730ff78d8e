"""PPO for the crossmoe NetHack agent, in one file (CleanRL style).

    python examples/ppo_nethack.py --total-timesteps 100000
    python examples/ppo_nethack.py --env-id MiniHack-Room-5x5-v0 --total-timesteps 500000
    python examples/ppo_nethack.py --policy mlp                 # the no-MoE baseline
    python examples/ppo_nethack.py --policy flat                # the atoms and the prior, no MoE
    python examples/ppo_nethack.py --fusion concat              # the fusion ablation
    python examples/ppo_nethack.py --run-dir runs/x --resume    # continue a killed run
    python examples/ppo_nethack.py --teacher rules              # kickstarted from the rule agent

What it does, in order:

- Vector envs from :func:`crossmoe.nethack.make_vector_env` in gymnasium's
  ``NEXT_STEP`` autoreset mode. The step after an episode end is a reset step:
  its action is ignored, so it is masked out of every PPO loss. Its observation
  is still the last one of the old episode, and its value is the bootstrap for
  an episode that was truncated by a time limit.
- NLE (and MiniHack) end an episode at their own step cap by quitting the
  game: ``terminated`` is True, ``truncated`` False and ``info["end_status"]``
  is ``ABORTED``, and the final observation is blanked by the quit. Such an
  episode is not terminal; it bootstraps from the value of its last real
  observation (:func:`crossmoe.nethack.split_episode_ends`).
- The rollout buffer is ``(T, N)`` and holds what ``agent.prepare(obs)``
  returns: the observation as tensors plus, for the MoE agent, its atoms, so
  the update reuses them. GAE runs backwards in time below.
- ``--compile rollout`` or ``all`` runs the agent's forward through
  ``torch.compile`` (``agent.compile()``): the numpy conversion and the atoms
  stay eager.
- The routing schedule (softmax warm-up, annealing, sparsemax fine-tune) sets
  the router's alpha and temperature before each rollout, so the rollout and
  the update see the same policy and the first minibatch has ratio 1.
- Minibatches are whole env columns ``(T, N / num_minibatches)``, so the
  temporal-consistency loss sees each trajectory in time order.
- The auxiliary MoE losses enter the loss with ``AuxLossWeights`` (``--aux.*``).
- ``--teacher rules`` kickstarts the agent from :class:`crossmoe.nethack.RuleAgent`:
  the rule agent's action probabilities are computed once per rollout step
  (from the atoms the agent already has) and stored in the buffer, and
  :func:`crossmoe.losses.distillation_loss` from them to the policy, weighted
  by :class:`crossmoe.schedule.DistillationSchedule` (``--teacher-coef``,
  constant unless ``--teacher-anneal-start/-end`` are given), joins the loss.
- :class:`crossmoe.training.NaNGuard` rolls back non-finite steps,
  ``checkpoints/last.pt`` is written atomically every ``--checkpoint-every``
  updates and on SIGINT/SIGTERM, and ``--resume`` continues from it.
- ``metrics.jsonl`` gets one row per update; ``summary.json`` and the plots are
  written at the end.

Rewards: ``--reward-mode scale`` (default) divides rewards by the running
standard deviation of the discounted return and clips at ``--reward-clip``;
``clip`` only clips; ``none`` leaves them. The scaler's statistics are part
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from nle import nethack
from tqdm import tqdm

from crossmoe import AuxLossWeights, TemperatureAnnealingScheduler, aux_loss
from crossmoe.diagnostics import moe_diagnostics
from crossmoe.integrations.common import TEACHERS as RULE_TEACHERS
from crossmoe.integrations.common import make_teacher as make_rule_teacher
from crossmoe.losses import distillation_loss
from crossmoe.nethack import make_baseline_policy, make_policy, make_vector_env, split_episode_ends
from crossmoe.plots import plot_run
from crossmoe.schedule import KEEP_EXPERTS_ALIVE, DistillationSchedule
from crossmoe.teacher import Teacher, teacher_probs
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


@dataclass
class Args:
    env_id: str = "NetHackScore-v0"
    """NLE or MiniHack environment id (MiniHack needs the ``minihack`` extra)."""
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
    knowledge_pathway: Literal["prior", "attention"] = "prior"
    """``prior``: each applicable operator votes for its actions (``ApplicabilityPrior``); ``attention``: operators
    that move in several directions vote for the directions their cross-attention reads
    (``AttentionDirectionPrior``, ``--fusion cross_attention`` only)."""
    applicable_queries: bool = True
    """Only the applicable operators query the map (``--no-applicable-queries``: all of them, the earlier design;
    ``moe`` with ``cross_attention`` only)."""
    device: str = "cpu"
    """Torch device."""
    vectorization: Literal["sync", "async"] = "sync"
    """``sync`` steps the envs in this process; ``async`` in one subprocess each (slower on 2 cores)."""
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
    """Reward handling; see the module docstring."""
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
    annealing on, which keeps all four experts in use in the sparsemax fine-tune; ``""`` multiplies nothing."""

    teacher: Literal["none", "rules", "rules_no_eating"] = "none"
    """Kickstart from a teacher (Schmitt et al., 2018): ``rules`` is the knowledge hypergraph played as rules
    (``crossmoe.nethack.RuleAgent``), ``rules_no_eating`` the same rules before they learned to eat; the
    distillation loss from its action distribution to the policy's, on the rollout's states, joins the PPO
    loss. ``none``: plain PPO."""
    teacher_coef: float = 3.0
    """Weight of the distillation loss (before any annealing)."""
    teacher_anneal_start: int | None = None
    """Env step at which the teacher's weight starts to fall linearly to 0 (with ``--teacher-anneal-end``);
    unset: a constant weight."""
    teacher_anneal_end: int | None = None
    """Env step at which the teacher's weight reaches 0."""
    teacher_loss: Literal["cross_entropy", "kl"] = "cross_entropy"
    """What the distillation loss measures (the same gradient; ``kl`` is 0 where the policy agrees)."""

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


def make_scheduler(args: Args, num_iterations: int) -> TemperatureAnnealingScheduler:
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


TEACHERS = ("none", *RULE_TEACHERS)


def make_teacher(args: Args, envs: gym.vector.VectorEnv) -> tuple[Teacher | None, DistillationSchedule | None]:
    """The teacher of ``--teacher`` and the schedule of its weight, or ``(None, None)`` for ``none``."""
    if args.teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {args.teacher!r}")
    if args.teacher == "none":
        return None, None
    try:
        schedule = DistillationSchedule(args.teacher_coef, args.teacher_anneal_start, args.teacher_anneal_end)
    except (TypeError, ValueError) as error:  # name the example's arguments, not the schedule's
        raise type(error)(f"teacher_coef, teacher_anneal_start, teacher_anneal_end: {error}") from error
    return make_rule_teacher(args.teacher, envs), schedule


def make_agent(args: Args, envs: gym.vector.VectorEnv) -> nn.Module:
    """The MoE agent (``--policy moe``), the no-MoE baseline (``mlp``) or the flat-features control (``flat``)."""
    if args.policy == "moe":
        return make_policy(
            env=envs,
            dim=args.dim,
            fusion=args.fusion,
            knowledge=args.knowledge,
            knowledge_pathway=args.knowledge_pathway,
            uniform_router_init=args.uniform_router_init,
            applicable_queries=args.applicable_queries,
        )
    return make_baseline_policy(env=envs, dim=args.dim, knowledge=args.policy == "flat")


def compile_agent(agent: nn.Module, args: Args, envs: gym.vector.VectorEnv) -> nn.Module:
    """``agent.compile()`` for ``--compile``, compiled now on real observations; the eager agent if that fails.

    One graph per batch size (``dynamic=False``): the rollout's ``num_envs``
    and, with ``--compile all``, the update's minibatch (forward and
    backward). Both are built here, before training, from the first
    observation (tiled to the minibatch size), so a failure cannot stop the
    run midway: without a working C++ compiler inductor cannot build its
    kernels, and the run goes on eagerly, with a warning. ``agent.prepare``
    (numpy, atoms) stays eager.
    """
    agent.compile(dynamic=False, inference_only=args.compile == "rollout")
    obs, _ = envs.reset(seed=args.seed)  # the loop resets again with its own seed
    try:
        with torch.inference_mode():
            agent(obs)
        if args.compile == "all":
            minibatch = args.num_steps * (args.num_envs // args.num_minibatches)
            tiled = {key: np.resize(value, (minibatch, *value.shape[1:])) for key, value in obs.items()}
            out = agent(tiled)
            (out.logits.sum() + out.value.sum()).backward()
            agent.zero_grad(set_to_none=True)
    except torch._dynamo.exc.BackendCompilerFailed as error:
        warnings.warn(f"--compile {args.compile} failed, training eagerly: {error}", RuntimeWarning, stacklevel=2)
        eager = make_agent(args, envs).to(agent.device)
        eager.load_state_dict(agent.state_dict())
        return eager
    return agent


def main(args: Args) -> dict:
    if args.run_dir is None:
        args.run_dir = f"runs/{args.env_id}__{args.policy}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.run_dir)
    checkpoint = None
    if args.resume:
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            raise ValueError(f"--resume needs the --run-dir of a run with checkpoints/last.pt, got {str(run_dir)!r}")
        checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        saved = checkpoint["args"]
        saved.update({name: getattr(args, name) for name in RESUMABLE})
        saved.setdefault("applicable_queries", False)  # a run from before the option: every operator queried
        saved["aux"] = AuxLossWeights(**saved["aux"])
        args = Args(**saved)
    if any(step <= 0 for step in args.snapshot_at):
        raise ValueError(f"snapshot_at must be positive env-step counts, got {args.snapshot_at}")
    if args.num_envs % args.num_minibatches:
        raise ValueError(
            f"num_minibatches must divide num_envs={args.num_envs} (minibatches are env columns), "
            f"got {args.num_minibatches}"
        )
    batch_size = args.num_envs * args.num_steps
    num_iterations = args.total_timesteps // batch_size
    if num_iterations < 1:
        raise ValueError(f"total_timesteps must be >= num_envs * num_steps = {batch_size}, got {args.total_timesteps}")
    envs_per_minibatch = args.num_envs // args.num_minibatches
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    env_kwargs = {} if args.max_episode_steps is None else {"max_episode_steps": args.max_episode_steps}
    envs = make_vector_env(args.num_envs, args.seed, args.env_id, vectorization=args.vectorization, **env_kwargs)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    moe = args.policy == "moe"
    teacher, teacher_schedule = make_teacher(args, envs)
    agent = make_agent(args, envs).to(device)
    if args.compile != "off":
        agent = compile_agent(agent, args, envs)
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
                "policy_config": agent.config,  # plain data: crossmoe.nethack.load_agent rebuilds the agent from it
                "routing": {**routing_now._asdict(), "coefficients": dict(routing_now.coefficients)},
                **({} if teacher_schedule is None else {"teacher_schedule": teacher_schedule.state_dict()}),
            },
        )

    # Each (re)start begins fresh episodes from a seed no earlier start used.
    next_obs, _ = envs.reset(seed=args.seed + counters["update"] * args.num_envs)
    # Rollout storage, (T, N, ...) per key of what agent.prepare returns: the observation as tensors and, for
    # the MoE agent, its atoms, which are computed once per step and reused by the update.
    obs_buf = {
        key: torch.zeros((args.num_steps, *value.shape), dtype=value.dtype)
        for key, value in agent.prepare(next_obs).items()
        if isinstance(value, torch.Tensor)
    }
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long)
    logprobs = torch.zeros((args.num_steps, args.num_envs))
    rewards = torch.zeros((args.num_steps, args.num_envs))
    terminal = torch.zeros((args.num_steps, args.num_envs))
    ends = torch.zeros((args.num_steps, args.num_envs))
    aborted = torch.zeros((args.num_steps, args.num_envs), dtype=torch.bool)
    valid = torch.zeros((args.num_steps, args.num_envs))
    values = torch.zeros((args.num_steps, args.num_envs))
    if teacher is not None:  # the teacher's action probabilities, once per step: no epoch recomputes them
        teacher_buf = torch.zeros((args.num_steps, args.num_envs, envs.single_action_space.n))

    next_valid = np.ones(args.num_envs, dtype=bool)
    episode_score = np.zeros(args.num_envs)
    score_index = nethack.NLE_BL_SCORE

    start_time = time.time()
    start_step = counters["global_step"]
    bar = tqdm(
        total=num_iterations * batch_size,
        initial=counters["global_step"],
        unit="step",
        disable=not args.progress,
        dynamic_ncols=True,
    )
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
            finished = {"return": [], "length": [], "score": []}

            # ---- rollout --------------------------------------------------------------------------------
            for step in range(args.num_steps):
                step_obs = agent.prepare(next_obs)
                for key, buffer in obs_buf.items():
                    buffer[step] = step_obs[key]
                valid[step] = torch.from_numpy(next_valid)
                if teacher is not None:  # the MoE agent's atoms, when it has them; the rules compute them otherwise
                    teacher_obs = next_obs if "atoms" not in step_obs else {**next_obs, "atoms": step_obs["atoms"]}
                    teacher_buf[step] = teacher_probs(teacher, teacher_obs, envs.single_action_space.n)
                with torch.inference_mode():  # same network mode as the update; no autograd bookkeeping
                    action, logprob, _, value = agent.get_action_and_value(step_obs)
                actions[step], logprobs[step], values[step] = action.cpu(), logprob.cpu(), value.cpu()

                next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
                is_terminal, done, is_aborted = split_episode_ends(terminated, truncated, info)
                rewards[step] = torch.from_numpy(reward_scaler(reward, done))
                terminal[step] = torch.from_numpy(is_terminal)
                ends[step] = torch.from_numpy(done)
                aborted[step] = torch.from_numpy(is_aborted)
                episode_score = np.where(next_valid, np.maximum(episode_score, next_obs["blstats"][:, score_index]), 0)
                next_valid = ~done
                counters["global_step"] += args.num_envs
                if "_episode" in info:
                    for index in np.flatnonzero(info["_episode"]):
                        finished["return"].append(float(info["episode"]["r"][index]))
                        finished["length"].append(int(info["episode"]["l"][index]))
                        finished["score"].append(float(episode_score[index]))
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
                next_value = agent.get_value(next_obs).cpu()
            next_values = torch.cat([values[1:], next_value.unsqueeze(0)])
            next_values[aborted] = values[aborted]  # the quit blanked the final observation: use the last real one
            advantages, returns = compute_gae(rewards, values, next_values, terminal, ends, args.gamma, args.gae_lambda)
            # Pair (t-1, t) of a trajectory crosses an episode boundary when t-1 ended one or was a reset step.
            boundary = torch.zeros_like(ends, dtype=torch.bool)
            boundary[1:] = (ends[:-1] > 0) | (valid[:-1] == 0)

            # ---- update -----------------------------------------------------------------------------------
            stats: defaultdict[str, list[float]] = defaultdict(list)
            env_ids = np.arange(args.num_envs)
            first_ratio_error = None
            for epoch in range(args.update_epochs):
                np.random.shuffle(env_ids)
                for start in range(0, args.num_envs, envs_per_minibatch):
                    cols = torch.from_numpy(env_ids[start : start + envs_per_minibatch])
                    mb_obs = {key: buffer[:, cols].flatten(0, 1).to(device) for key, buffer in obs_buf.items()}
                    mask = valid[:, cols].flatten().to(device)
                    _, new_logprob, entropy, new_value, output = agent.get_action_and_value(
                        mb_obs, actions[:, cols].flatten().to(device), return_output=True
                    )
                    log_ratio = new_logprob - logprobs[:, cols].flatten().to(device)
                    ratio = log_ratio.exp()
                    with torch.no_grad():
                        if first_ratio_error is None:
                            first_ratio_error = float(((ratio - 1).abs() * mask).max())
                        stats["approx_kl"].append(masked_mean((ratio - 1) - log_ratio, mask))
                        stats["clipfrac"].append(masked_mean(((ratio - 1).abs() > args.clip_coef).float(), mask))

                    mb_adv = advantages[:, cols].flatten().to(device)
                    adv_mean = masked_mean(mb_adv, mask)
                    adv_std = masked_mean((mb_adv - adv_mean) ** 2, mask).sqrt()
                    mb_adv = (mb_adv - adv_mean) / (adv_std + 1e-8)
                    pg_loss = masked_mean(
                        torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)),
                        mask,
                    )
                    mb_returns = returns[:, cols].flatten().to(device)
                    mb_values = values[:, cols].flatten().to(device)
                    if args.clip_vloss:
                        clipped = mb_values + (new_value - mb_values).clamp(-args.clip_coef, args.clip_coef)
                        v_loss = 0.5 * masked_mean(
                            torch.max((new_value - mb_returns) ** 2, (clipped - mb_returns) ** 2), mask
                        )
                    else:
                        v_loss = 0.5 * masked_mean((new_value - mb_returns) ** 2, mask)
                    entropy_loss = masked_mean(entropy, mask)
                    loss = pg_loss - args.ent_coef * entropy_loss + args.vf_coef * v_loss
                    if teacher is not None:
                        mb_teacher = teacher_buf[:, cols].flatten(0, 1).to(device)
                        distill = distillation_loss(output.logits, mb_teacher, mask, kind=args.teacher_loss)
                        loss = loss + teacher_coef * distill
                        stats["teacher/distill_loss"].append(distill.detach())
                        with torch.no_grad():  # how much of the policy's mass lies on the teacher's actions
                            on_teacher = (output.logits.softmax(-1) * (mb_teacher > 0)).sum(-1)
                            stats["teacher/policy_mass"].append(masked_mean(on_teacher, mask))

                    if moe:
                        # The aux losses see the minibatch as (T, n, ...) so the temporal term runs along T.
                        shaped = {
                            name: getattr(output, name).unflatten(0, (args.num_steps, envs_per_minibatch))
                            for name in (
                                "router_logits",
                                "router_weights",
                                "expert_logits",
                                "expert_features",
                                "operator_scores",
                                "applicable",
                            )
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
                valid_mask = valid > 0
                y_pred, y_true = values[valid_mask], returns[valid_mask]
                explained = float(1 - (y_true - y_pred).var() / y_true.var()) if y_true.var() > 0 else float("nan")
            now = time.time()
            row = {
                "global_step": counters["global_step"],
                "update": counters["update"],
                "episodes": counters["episodes"],
                "sps": (counters["global_step"] - update_step) / max(now - update_start, 1e-9),
                "rollout_time": rollout_time,
                "update_time": now - update_start - rollout_time,
                "sps_run": (counters["global_step"] - start_step) / max(now - start_time, 1e-9),
                "episodic_return": float(np.mean(finished["return"])) if finished["return"] else None,
                "episodic_length": float(np.mean(finished["length"])) if finished["length"] else None,
                "score": float(np.mean(finished["score"])) if finished["score"] else None,
                "episodes_finished": len(finished["return"]),
                "reset_steps": int((valid == 0).sum()),
                "rolling_return": float(np.mean(recent_returns)) if recent_returns else None,
                "phase": routing.phase,
                "alpha": routing.alpha,
                "temperature": routing.temperature,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "explained_variance": explained,
                "first_minibatch_ratio_error": first_ratio_error,
                "nan_rollbacks": guard.total_faults,
                "teacher_coef": teacher_coef,
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
            bar.update(counters["global_step"] - bar.n)
            bar.set_postfix(
                sps=f"{row['sps']:.0f}",
                ret="-" if row["rolling_return"] is None else f"{row['rolling_return']:.2f}",
                phase=routing.phase,
                alpha=f"{routing.alpha:.2f}",
                H="-" if "routing_entropy" not in row else f"{row['routing_entropy']:.2f}",
            )
        save("last.pt")  # the end of the run, or a SIGINT/SIGTERM
    bar.close()
    envs.close()
    logger.close()

    interrupted = stopper.requested is not None
    summary = {
        "env_id": args.env_id,
        "policy": args.policy,
        "fusion": args.fusion if moe else None,
        "knowledge": args.knowledge if moe else None,
        "knowledge_pathway": args.knowledge_pathway if moe and args.knowledge else None,
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


if __name__ == "__main__":
    main(tyro.cli(Args))
