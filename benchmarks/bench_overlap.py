"""Does stepping the envs in worker processes, while the main process runs the policy, win on 2 cores?

The rollout step of ``examples/ppo_nethack.py`` is sequential: the envs step
(NLE, map memory) and the atoms are computed (numpy, one core), then the
policy picks the actions (torch). This measures the two ways to run 16
``NetHackScore-v0`` envs for ``--steps`` steps with the default agent's
compiled inference forward, on real observations and random actions:

* ``sequential``: what the example does, one process;
* ``overlap``: two worker processes each step 8 envs and compute their atoms,
  ping-pong style, so that while one half steps, the main process runs the
  policy on the other half (observations and actions go through pipes).

The policy's outputs are not used to pick actions (random actions keep both
ways on the same games), but each step's forward runs on that step's
observations, as in a rollout. Prints one JSON line: env steps/s of each way
and their ratio.

Usage: ``python benchmarks/bench_overlap.py [--steps 300] [--threads 2]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
import torch
from _timing import emit

from crossmoe.nethack import NetHackAtoms, make_policy, make_vector_env

NUM_ENVS = 16


def worker(connection, seed: int, num_envs: int) -> None:
    """Step ``num_envs`` envs on the actions received; send back the observations with their atoms."""
    envs = make_vector_env(num_envs, seed=seed)
    atoms = NetHackAtoms()
    obs, _ = envs.reset(seed=seed)
    connection.send({**obs, "atoms": atoms(obs)})
    while (actions := connection.recv()) is not None:
        obs, *_ = envs.step(actions)
        connection.send({**obs, "atoms": atoms(obs)})
    envs.close()


def sequential(policy, steps: int, rng: np.random.Generator) -> float:
    envs = make_vector_env(NUM_ENVS, seed=0)
    obs, _ = envs.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        prepared = policy.prepare(obs)
        with torch.inference_mode():
            policy.get_action_and_value(prepared)
        obs, *_ = envs.step(rng.integers(0, 23, NUM_ENVS))
    elapsed = time.perf_counter() - start
    envs.close()
    return steps * NUM_ENVS / elapsed


def overlap(policy, steps: int, rng: np.random.Generator) -> float:
    half = NUM_ENVS // 2
    context = mp.get_context("fork")
    pipes, workers = [], []
    for index in range(2):
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(child, index * half, half), daemon=True)
        process.start()
        pipes.append(parent)
        workers.append(process)
    obs = [pipe.recv() for pipe in pipes]
    start = time.perf_counter()
    for _ in range(steps):
        for index, pipe in enumerate(pipes):
            if obs[index] is None:
                obs[index] = pipe.recv()
            prepared = policy.prepare(obs[index])
            with torch.inference_mode():
                policy.get_action_and_value(prepared)
            pipe.send(rng.integers(0, 23, half))  # this half steps while the policy runs on the other one
            obs[index] = None
    for index, pipe in enumerate(pipes):
        if obs[index] is None:
            pipe.recv()
    elapsed = time.perf_counter() - start
    for pipe, process in zip(pipes, workers, strict=True):
        pipe.send(None)
        process.join()
    return steps * NUM_ENVS / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    torch.manual_seed(0)
    policy = make_policy()
    policy.compile(dynamic=False, inference_only=True)
    results: dict[str, list[float]] = {"sequential": [], "overlap": []}
    for round_ in range(cli.rounds + 1):  # round 0 compiles both batch sizes
        for name, run in (("sequential", sequential), ("overlap", overlap)):
            sps = run(policy, cli.steps if round_ else 10, np.random.default_rng(round_))
            if round_:
                results[name].append(sps)
    medians = {name: float(np.median(values)) for name, values in results.items()}
    emit(
        {
            "bench": "rollout_overlap",
            "num_envs": NUM_ENVS,
            "steps": cli.steps,
            "rounds": cli.rounds,
            "sequential_sps": round(medians["sequential"], 1),
            "overlap_sps": round(medians["overlap"], 1),
            "overlap_over_sequential": round(medians["overlap"] / medians["sequential"], 3),
        }
    )


if __name__ == "__main__":
    main()
