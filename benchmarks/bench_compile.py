"""``torch.compile`` of the NetHack agents: compile time, cold and with a warm inductor cache, and speed.

For each agent (the MoE policy and the mlp baseline), a fresh subprocess with
an empty ``TORCHINDUCTOR_CACHE_DIR`` compiles ``policy.forward_tensors``
(``policy.compile(dynamic=False)``) and times its first calls: the rollout
forward (batch 16, inference mode) and the update's forward+backward (batch
512). A second subprocess repeats this with the same cache directory, which
is what a second training run on the same machine sees. Each subprocess then
times eager and compiled steady-state calls, interleaved, and reports
medians. One JSON line per agent.

Usage: ``python benchmarks/bench_compile.py [--threads 2] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from _timing import emit_result, run_worker, time_interleaved

ROLLOUT_BATCH, UPDATE_BATCH = 16, 512


def worker(agent: str, rounds: int, threads: int) -> None:
    import torch
    from bench_policy import real_observations

    from crossmoe.nethack import make_baseline_policy, make_policy

    torch.set_num_threads(threads)
    obs = real_observations(UPDATE_BATCH)
    torch.manual_seed(0)
    factory = make_policy if agent == "moe" else make_baseline_policy
    eager, compiled = factory(), factory()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(dynamic=False)
    small = {key: value[:ROLLOUT_BATCH] for key, value in obs.items()}
    prepared_small, prepared = compiled.prepare(small), compiled.prepare(obs)

    def rollout(policy):
        def run():
            with torch.inference_mode():
                policy.get_action_and_value(prepared_small)

        return run

    def update(policy):
        def run():
            policy.zero_grad(set_to_none=True)
            out = policy(prepared)
            (out.logits.logsumexp(-1).mean() + out.value.square().mean()).backward()

        return run

    start = time.perf_counter()
    rollout(compiled)()
    first_rollout = time.perf_counter() - start
    start = time.perf_counter()
    update(compiled)()
    first_update = time.perf_counter() - start
    times = time_interleaved(
        {
            "rollout_eager": rollout(eager),
            "rollout_compiled": rollout(compiled),
            "update_eager": update(eager),
            "update_compiled": update(compiled),
        },
        rounds=rounds,
    )
    record = {
        "first_rollout_call_s": round(first_rollout, 1),
        "first_update_call_s": round(first_update, 1),
        **{f"{name}_ms": round(value * 1e3, 2) for name, value in times.items()},
    }
    emit_result(record)


def run(agent: str, cache_dir: str, rounds: int, threads: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    command = [sys.executable, __file__, "--worker", agent, "--rounds", str(rounds), "--threads", str(threads)]
    return run_worker(command, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--worker", choices=("moe", "mlp"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rounds, args.threads)
        return
    import torch

    for agent in ("moe", "mlp"):
        with tempfile.TemporaryDirectory() as cache_dir:
            cold = run(agent, cache_dir, args.rounds, args.threads)
            warm = run(agent, cache_dir, args.rounds, args.threads)
        record = {
            "bench": "compile",
            "agent": agent,
            "rollout_batch": ROLLOUT_BATCH,
            "update_batch": UPDATE_BATCH,
            "cold_first_rollout_s": cold["first_rollout_call_s"],
            "cold_first_update_s": cold["first_update_call_s"],
            "warm_cache_first_rollout_s": warm["first_rollout_call_s"],
            "warm_cache_first_update_s": warm["first_update_call_s"],
            **{key: warm[key] for key in warm if key.endswith("_ms")},
            "torch": torch.__version__,
            "threads": args.threads,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
