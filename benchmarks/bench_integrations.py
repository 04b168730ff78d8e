"""Env steps per second of the three ways to train the NetHack agent, at equal settings.

The paths: ``examples/ppo_nethack.py`` (our PPO), Stable-Baselines3
(:class:`~crossmoe.integrations.sb3.MoEPPO`) and RLlib
(:func:`~crossmoe.integrations.rllib.nethack_ppo_config`, one env runner).
Each trains the same agent (:func:`crossmoe.nethack.make_policy`) on
``NetHackScore-v0`` with 16 envs x 128 steps per update (2,048 env steps), 4
epochs of 512-step minibatches, in a fresh subprocess. ``sps`` is the median
over updates, the first (warm-up) excluded, of env steps per second with the
rollout and the update together. The paths run alternately, ``--rounds``
times each; the JSON line gives the medians and each path's ratio to ours.

RLlib runs its env runner in a separate actor process, so it samples while
nothing else runs in the driver; with ``num_cpus=2`` it has the same two
cores as the others.

Usage: ``python benchmarks/bench_integrations.py [--rounds 3] [--updates 6] [--paths ppo,sb3,rllib]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _timing import emit_result, run_worker

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "NetHackScore-v0"
NUM_ENVS, NUM_STEPS, EPOCHS, MINIBATCH = 16, 128, 4, 512
BATCH = NUM_ENVS * NUM_STEPS


def _median_sps(seconds: list[float]) -> float:
    return BATCH / statistics.median(seconds[1:])


def worker_ppo(updates: int) -> dict:
    sys.path.insert(0, str(ROOT / "examples"))
    import ppo_nethack

    from crossmoe.training import read_metrics

    with tempfile.TemporaryDirectory() as run_dir:
        args = ppo_nethack.Args(
            env_id=ENV_ID,
            num_envs=NUM_ENVS,
            num_steps=NUM_STEPS,
            num_minibatches=BATCH // MINIBATCH,  # whole env columns: 4 x (128 steps x 4 envs) = 512
            update_epochs=EPOCHS,
            total_timesteps=updates * BATCH,
            run_dir=run_dir,
            progress=False,
            plots=False,
            checkpoint_every=10**9,
        )
        ppo_nethack.main(args)
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    return {"sps": _median_sps([row["rollout_time"] + row["update_time"] for row in rows])}


def worker_sb3(updates: int) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from crossmoe.integrations.sb3 import CrossMoEPolicy, MoEPPO
    from crossmoe.nethack import make_env

    class RolloutClock(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.starts: list[float] = []

        def _on_rollout_start(self) -> None:
            self.starts.append(time.perf_counter())

        def _on_step(self) -> bool:
            return True

    env = make_vec_env(lambda: make_env(ENV_ID), n_envs=NUM_ENVS, seed=1)
    model = MoEPPO(
        CrossMoEPolicy,
        env,
        policy_kwargs={"preset": "nethack"},
        n_steps=NUM_STEPS,
        batch_size=MINIBATCH,
        n_epochs=EPOCHS,
        ent_coef=0.01,
        seed=1,
    )
    clock = RolloutClock()
    model.learn((updates + 1) * BATCH, callback=clock)  # the last rollout start closes the last full update
    env.close()
    seconds = [b - a for a, b in zip(clock.starts, clock.starts[1:], strict=False)]
    return {"sps": _median_sps(seconds)}


def worker_rllib(updates: int) -> dict:
    import ray

    from crossmoe.integrations.rllib import nethack_ppo_config

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = (
            nethack_ppo_config(ENV_ID, num_env_runners=1, seed=1)
            .env_runners(num_envs_per_env_runner=NUM_ENVS)
            .training(train_batch_size_per_learner=BATCH, minibatch_size=MINIBATCH, num_epochs=EPOCHS)
        )
        algo = config.build_algo()
        seconds = []
        for _ in range(updates):
            start = time.perf_counter()
            algo.train()
            seconds.append(time.perf_counter() - start)
        algo.stop()
    finally:
        ray.shutdown()
    return {"sps": _median_sps(seconds)}


WORKERS = {"ppo": worker_ppo, "sb3": worker_sb3, "rllib": worker_rllib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--paths", default="ppo,sb3,rllib")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        emit_result({**WORKERS[args.worker](args.updates), "threads": torch.get_num_threads()})
        return
    paths = args.paths.split(",")
    unknown = set(paths) - set(WORKERS)
    if unknown:
        raise ValueError(f"--paths must name paths from {sorted(WORKERS)}, got {sorted(unknown)}")
    results: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(args.rounds):
        for path in paths:
            command = [sys.executable, __file__, "--worker", path, "--updates", str(args.updates)]
            results[path].append(run_worker([*command, "--threads", str(args.threads)])["sps"])
    record = {
        "bench": "integrations",
        "env_id": ENV_ID,
        "num_envs": NUM_ENVS,
        "num_steps": NUM_STEPS,
        "epochs": EPOCHS,
        "minibatch": MINIBATCH,
        "updates": args.updates,
        "rounds": args.rounds,
        "threads": args.threads,
    }
    medians = {path: statistics.median(values) for path, values in results.items()}
    record.update({f"{path}_sps": round(value, 1) for path, value in medians.items()})
    if "ppo" in medians:
        record.update({f"{path}_over_ppo": round(value / medians["ppo"], 3) for path, value in medians.items()})
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
