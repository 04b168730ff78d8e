"""Train the crossmoe NetHack agent with RLlib's PPO, on one machine or a Ray cluster.

    python examples/rllib_nethack.py --iterations 20
    python examples/rllib_nethack.py --num-env-runners 2 --checkpoint-dir runs/rllib
    python examples/rllib_nethack.py --checkpoint-dir runs/rllib --resume --iterations 40
    RAY_ADDRESS=head:6379 python examples/rllib_nethack.py --num-env-runners 8 --num-learners 2

The config is :func:`crossmoe.integrations.rllib.nethack_ppo_config`: env
runners step NLE envs and sample with the MoE policy, the learner (in this
process, or ``--num-learners`` data-parallel actors) runs PPO with the
auxiliary MoE losses, and a callback moves the routing schedule along the
env steps sampled. Failed env runners are restarted. Each iteration prints
the env steps so far, the mean episode return, the routing alpha, the
auxiliary losses and the env steps per second of the iteration.

Without ``--address`` (or ``RAY_ADDRESS``) it starts a local Ray with as
many CPUs as the machine has, or as many as the env runners and learners
need if that is more. ``--checkpoint-dir`` gets a checkpoint every
``--checkpoint-every`` iterations and at the end; ``--resume`` continues from
it (the env steps counter, and so the routing schedule, included).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
import tyro

from crossmoe.integrations.rllib import nethack_ppo_config


@dataclass
class Args:
    env_id: str = "NetHackScore-v0"
    """NLE or MiniHack environment id (MiniHack needs the ``minihack`` extra)."""
    num_env_runners: int = 1
    """Env runner actors (0 samples in this process)."""
    num_envs_per_env_runner: int = 8
    """Environments each env runner steps together."""
    num_learners: int = 0
    """Learner actors; 0 trains in this process, 2 or more data-parallel (torch DDP)."""
    iterations: int = 10
    """Training iterations (each samples ``--train-batch-size`` env steps per learner)."""
    train_batch_size: int = 1024
    """Env steps per learner per iteration."""
    minibatch_size: int = 256
    """PPO minibatch size."""
    num_epochs: int = 4
    """PPO epochs over each batch."""
    schedule_total: int = 1_000_000
    """Env steps of the routing schedule (20% softmax warm-up, annealing to 60%, then sparsemax)."""
    dim: int = 128
    """Token and context width of the agent."""
    knowledge: bool = True
    """The knowledge pathway (``--no-knowledge`` is the ablation)."""
    checkpoint_dir: str | None = None
    """Where checkpoints go (``algo.save_to_path``); none are written without it."""
    checkpoint_every: int = 5
    """Write a checkpoint every this many iterations (and after the last)."""
    resume: bool = False
    """Continue from ``--checkpoint-dir``."""
    torch_threads: int = 0
    """Intra-op threads of torch in this process (the local learner); 0 keeps torch's default.
    Ray gives each env runner actor as many threads as it has CPUs (one)."""
    seed: int = 1
    """Seed of RLlib: torch, NumPy, Python and each env's reset."""
    address: str | None = None
    """Ray cluster to join (``host:6379``); default ``$RAY_ADDRESS``, else a local Ray."""


def _save(algo, path: Path) -> None:
    """Write the checkpoint to a sibling folder first, so a crash mid-save leaves the previous one whole."""
    fresh, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(fresh, ignore_errors=True)
    algo.save_to_path(str(fresh))
    if path.exists():
        path.rename(old)
    fresh.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _mean(value) -> float:
    return float("nan") if value is None else float(value)


def main(args: Args) -> list[dict]:
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir")
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, args.num_env_runners + args.num_learners), include_dashboard=False)
    algo = None
    rows = []
    try:
        config = nethack_ppo_config(
            args.env_id,
            num_env_runners=args.num_env_runners,
            num_envs_per_env_runner=args.num_envs_per_env_runner,
            num_learners=args.num_learners,
            schedule_total=args.schedule_total,
            model_config={"dim": args.dim, "knowledge": args.knowledge},
            seed=args.seed,
        ).training(
            train_batch_size_per_learner=args.train_batch_size,
            minibatch_size=args.minibatch_size,
            num_epochs=args.num_epochs,
        )
        algo = config.build_algo()
        checkpoint = Path(args.checkpoint_dir).resolve() if args.checkpoint_dir else None
        if args.resume:
            algo.restore_from_path(str(checkpoint))
            print(f"resumed from {checkpoint} at iteration {algo.iteration}")
        for _ in range(args.iterations):
            start = time.perf_counter()
            result = algo.train()
            seconds = time.perf_counter() - start
            runners = result["env_runners"]
            learner = result["learners"]["default_policy"]
            steps = _mean(runners.get("num_env_steps_sampled"))
            row = {
                "iteration": result["training_iteration"],
                "env_steps": int(_mean(runners.get("num_env_steps_sampled_lifetime"))),
                "return_mean": _mean(runners.get("episode_return_mean")),
                "routing_alpha": result["routing_alpha"],
                "routing_phase": result["routing_phase"],
                "env_steps_per_s": steps / seconds if math.isfinite(steps) else float("nan"),
                **{key: float(learner[key]) for key in sorted(learner) if key.startswith("aux/")},
            }
            rows.append(row)
            aux = " ".join(f"{key[4:]}={value:.3g}" for key, value in row.items() if key.startswith("aux/"))
            print(
                f"iter {row['iteration']:4d}  env steps {row['env_steps']:9d}  return {row['return_mean']:8.2f}  "
                f"alpha {row['routing_alpha']:.3f} ({row['routing_phase']})  {row['env_steps_per_s']:6.0f} steps/s  "
                f"{aux}",
                flush=True,
            )
            if checkpoint is not None and row["iteration"] % args.checkpoint_every == 0:
                _save(algo, checkpoint)
        if checkpoint is not None and rows and rows[-1]["iteration"] % args.checkpoint_every != 0:
            _save(algo, checkpoint)
    finally:
        if algo is not None:
            algo.stop()
        ray.shutdown()
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
