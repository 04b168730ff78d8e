"""End-to-end PPO throughput and memory of ``examples/ppo_nethack.py`` (or ``ppo_minigrid.py``) at their defaults.

Each run is a fresh subprocess (so its peak RSS is its own) that trains for a
few updates on ``NetHackScore-v0`` (``--domain minigrid``:
``MiniGrid-DoorKey-5x5-v0``) with 16 envs x 128 steps, and reports:

* ``sps``: the median over updates (the first, warm-up update excluded) of
  env steps per second, rollout and PPO update together;
* ``peak_rss_mb``: the peak resident memory of the process.

The MoE agent and the ``--policy mlp`` baseline run alternately, ``--rounds``
times each, and the JSON line gives the medians and the median of the
per-round ratio. Targets on 2 cores: NetHack MoE >= 1,200 steps/s, MoE/mlp >= 0.7,
peak RSS <= 4 GB; MiniGrid MoE >= 2,000 steps/s. With ``--teacher rules`` a third agent, the MoE agent
kickstarted from the rule agent (``--teacher rules``), runs in each round too,
and the line adds ``teacher_sps`` and ``teacher_over_moe`` (target >= 0.9). With ``--core lstm`` the MoE
agent with a recurrent core (``--core lstm``) runs in each round too, and the line adds ``lstm_sps`` and
``lstm_over_moe``.

Usage: ``python benchmarks/bench_training.py [--domain nethack|minigrid] [--rounds 3] [--updates 6]
[--compile rollout] [--teacher rules] [--core lstm] [--env-id ID]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from _timing import emit_result, run_worker

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "nethack": {"moe_sps_min": 1200, "moe_over_mlp_min": 0.7, "peak_rss_mb_max": 4096},
    "minigrid": {"moe_sps_min": 2000, "peak_rss_mb_max": 4096},
}
ENV_IDS = {"nethack": "NetHackScore-v0", "minigrid": "MiniGrid-DoorKey-5x5-v0"}


def worker(domain: str, agent: str, env_id: str, updates: int, run_dir: str, compile: str) -> None:
    import importlib

    sys.path.insert(0, str(ROOT / "examples"))
    import torch

    from crossmoe.training import read_metrics

    example = importlib.import_module(f"ppo_{domain}")
    args = example.Args(
        env_id=env_id,
        policy="mlp" if agent == "mlp" else "moe",
        teacher="rules" if agent == "teacher" else "none",
        core="lstm" if agent == "lstm" else "none",
        total_timesteps=updates * 16 * 128,
        run_dir=run_dir,
        progress=False,
        plots=False,
        checkpoint_every=10**9,
        compile=compile,
    )
    example.main(args)
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    record = {
        "sps": statistics.median(row["sps"] for row in rows[1:]),
        "rollout_s": statistics.median(row["rollout_time"] for row in rows[1:]),
        "update_s": statistics.median(row["update_time"] for row in rows[1:]),
        "first_update_s": rows[0]["rollout_time"] + rows[0]["update_time"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }
    emit_result(record)


def run(domain: str, policy: str, env_id: str, updates: int, compile: str) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, __file__, "--domain", domain, "--worker", policy, "--env-id", env_id]
        command += ["--updates", str(updates), "--compile", compile]
        return run_worker([*command, "--run-dir", run_dir])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=6, help="updates of 16 x 128 env steps per run")
    parser.add_argument("--domain", choices=tuple(ENV_IDS), default="nethack", help="which example trains")
    parser.add_argument("--env-id", help="default: NetHackScore-v0, or MiniGrid-DoorKey-5x5-v0 for minigrid")
    parser.add_argument(
        "--compile", choices=("off", "rollout", "all"), default="rollout", help="the example's --compile"
    )
    parser.add_argument("--teacher", choices=("none", "rules"), default="none", help="also time a kickstarted run")
    parser.add_argument("--core", choices=("none", "lstm"), default="none", help="also time a recurrent agent")
    parser.add_argument("--worker", choices=("moe", "mlp", "teacher", "lstm"), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.env_id = args.env_id or ENV_IDS[args.domain]
    if args.worker:
        worker(args.domain, args.worker, args.env_id, args.updates, args.run_dir, args.compile)
        return

    extras = [name for name, on in (("teacher", args.teacher == "rules"), ("lstm", args.core == "lstm")) if on]
    results: dict[str, list[dict]] = {name: [] for name in ("moe", "mlp", *extras)}
    for _ in range(args.rounds):
        for policy in results:
            results[policy].append(run(args.domain, policy, args.env_id, args.updates, args.compile))
    keys = ("sps", "rollout_s", "update_s", "first_update_s", "peak_rss_mb")
    median = {name: {key: statistics.median(r[key] for r in rs) for key in keys} for name, rs in results.items()}
    ratio = statistics.median(m["sps"] / b["sps"] for m, b in zip(results["moe"], results["mlp"], strict=True))
    record = {
        "bench": "training",
        "domain": args.domain,
        "env_id": args.env_id,
        "compile": args.compile,
        "num_envs": 16,
        "num_steps": 128,
        "updates": args.updates,
        "rounds": args.rounds,
        "moe_sps": round(median["moe"]["sps"], 1),
        "mlp_sps": round(median["mlp"]["sps"], 1),
        "moe_over_mlp": round(ratio, 3),
        "moe_rollout_s": round(median["moe"]["rollout_s"], 3),
        "moe_update_s": round(median["moe"]["update_s"], 3),
        "mlp_rollout_s": round(median["mlp"]["rollout_s"], 3),
        "mlp_update_s": round(median["mlp"]["update_s"], 3),
        "moe_first_update_s": round(median["moe"]["first_update_s"], 1),
        "mlp_first_update_s": round(median["mlp"]["first_update_s"], 1),
        "moe_peak_rss_mb": round(median["moe"]["peak_rss_mb"]),
        "mlp_peak_rss_mb": round(median["mlp"]["peak_rss_mb"]),
        "threads": results["moe"][0]["threads"],
        **TARGETS[args.domain],
    }
    for extra in extras:  # each against the MoE agent of its own round
        extra_ratio = statistics.median(
            e["sps"] / m["sps"] for e, m in zip(results[extra], results["moe"], strict=True)
        )
        record.update({f"{extra}_sps": round(median[extra]["sps"], 1), f"{extra}_over_moe": round(extra_ratio, 3)})
    if "teacher" in results:
        record["teacher_over_moe_min"] = 0.9
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
