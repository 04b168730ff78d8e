"""Shared timing helper for the benchmark scripts: interleaved rounds, medians."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer


def time_interleaved(cases: dict[str, Callable[[], object]], rounds: int = 7, number: int = 3) -> dict[str, float]:
    """Median seconds per call of each case.

    The cases run in alternating rounds, so a burst of load on a noisy
    machine hits all of them alike and their ratios stay meaningful.
    """
    threads = torch.get_num_threads()  # Timer would otherwise measure on 1 thread
    for fn in cases.values():  # warm-up: allocator, thread pool, lazy init
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            samples[name].append(Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).timeit(number).mean)
    return {name: statistics.median(values) for name, values in samples.items()}


def emit(record: dict) -> None:
    """Print one JSON line with the machine context attached."""
    record = {**record, "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}
    print(json.dumps(record), flush=True)


def run_worker(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a benchmark's worker subprocess and return the record it printed with :func:`emit_result`."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker {command[2:]} failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def emit_result(record: dict) -> None:
    """Print a worker's record for :func:`run_worker`."""
    print("RESULT " + json.dumps(record), flush=True)
