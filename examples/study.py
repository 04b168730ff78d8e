"""The seeded learning study: train every agent of a config on every seed, evaluate, summarise. Resumable.

    python examples/study.py run --config docs/results/study.json                 # everything, in order
    python examples/study.py run --config docs/results/study.json --shard 0/2 --torch-threads 1 &
    python examples/study.py run --config docs/results/study.json --shard 1/2 --torch-threads 1 &
    python examples/study.py report --config docs/results/study.json               # tables and plots
    python examples/study.py run --config docs/results/study.json --commit          # commit each run as it lands
    python examples/study.py run --config docs/results/study.json --within-minutes 150   # only runs that can finish

The config (JSON) names the env, the budget, the seeds, the evaluation and
the agents; each agent is a set of ``examples/ppo_nethack.py`` arguments, or
one of the built-in floors ``random``, ``rules`` and ``rules_no_eating``
(evaluated, never trained; :data:`crossmoe.nethack.rules.RULES`). Optional
keys: ``domain`` (``"nethack"``, the default, or ``"minigrid"``: the agents
are ``examples/ppo_minigrid.py`` arguments, the floors ``random`` and
``rules``, and the report adds each agent's success rate); an agent's own ``env_id`` and ``{"floor": "random"}``
(a ladder of tasks in one study, see ``docs/results/minihack-ladder.json``), and a rules floor's ``epsilon``
(``{"floor": "rules", "epsilon": 0.1}``: the rules softened, :class:`crossmoe.rules.RuleAgent`'s ``epsilon``);
``snapshot_evals`` (``[{"step": 1000000, "episodes": 50}]``: also evaluate
each run at that env step, if its agent trains past it); ``return_thresholds`` (``{env_id: return}``: the
report's steps-to-threshold table); ``curve_metric`` (``"score"`` or
``"episodic_return"``); ``paired`` (``[["default", "concat"]]``: the report's per-seed differences with their
CI); ``teacher_floor`` (``{"agent": "rules", "after": 200000}``: how kickstarted runs' training score stood
after that step against their own teacher's floor, e.g. ``rules_soft`` for ``teacher_epsilon`` 0.1, else that
agent); ``ratio_to`` (``"rules"``, or a list such as ``["rules", "rules_soft"]``: each trained agent's score
as a multiple of that agent's, per seed and with its CI, at the end and at each snapshot). A run is an (agent,
seed) pair, trained in ``runs/<study>/`` by the domain's example in a subprocess, then evaluated on fresh-seed episodes
with :mod:`crossmoe.evaluation`.

What is committed lives in ``docs/results/<study>/<agent>__s<seed>/``: the run's metrics (the columns the
report reads), its ``summary.json`` and its ``eval.json``. A run whose ``eval.json`` exists is finished and
skipped, so a stopped study picks up where it left off, on this machine or another one (training resumes from
``runs/<study>/.../checkpoints/last.pt`` when that is there, and starts over otherwise). Processes side by
side never work on one run together: each locks the run it is on (``runs/<study>/<run>.lock``) and skips a run
another holds. Evaluation seeds are disjoint from training seeds (``eval_seed`` is far from them) and nothing
is tuned on them.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

FLOORS = ("random", "rules", "rules_no_eating")
DOMAIN_FLOORS = {"nethack": FLOORS, "minigrid": ("random", "rules")}
# The metrics columns the results keep (the rest of metrics.jsonl stays in runs/).
KEPT = (
    "global_step",
    "update",
    "episodes",
    "score",
    "episodic_return",
    "episodic_length",
    "success_rate",
    "sps",
    "phase",
    "alpha",
)
KEPT_PREFIXES = (
    "weight/",
    "usage/",
    "aux/",
    "routing_entropy",
    "dead_experts",
    "attention_sparsity",
    "context_norm",
    "teacher",
)


@dataclass
class Args:
    command: tyro.conf.Positional[Literal["run", "report", "plan"]]
    """``run`` trains and evaluates what is missing; ``report`` writes the tables and plots; ``plan`` lists runs."""
    config: str = "docs/results/study.json"
    """The study config."""
    shard: str = "0/1"
    """``i/n``: this process does every n-th run, starting at the i-th (run n processes side by side)."""
    torch_threads: int = 1
    """Torch threads per training run and for this process's evaluations (1 when running shards side by side on
    2 cores)."""
    runs_root: str = "runs"
    """Where training runs (checkpoints, full metrics) go; not committed."""
    results_root: str = "docs/results"
    """Where the committed summaries go."""
    only: str | None = None
    """Comma-separated agent names to restrict to."""
    train_only: bool = False
    """Train what is missing but leave the evaluation (and the floors) for a later ``run``."""
    eval_compile: bool = True
    """Evaluate trained agents with their forward compiled (``PolicyAgent(compile=True)``): several times faster
    at the evaluation's batch of 8; ``--no-eval-compile`` evaluates eagerly."""
    within_minutes: float | None = None
    """Start no training run that is not expected to finish within this many minutes of the start of this
    command (a session with a hard end): the estimate is the run's remaining env steps at the training speed
    of this agent's finished runs (else of any finished run of the study), plus a sixth for its evaluations.
    A run that would not fit is skipped, and a shorter one after it may still start; unset: no limit."""
    commit: bool = False
    """``git commit`` each run's result files (its folder under ``--results-root``, and nothing else) the moment
    the run is evaluated, so a study cut off midway keeps every run that finished."""


def load_config(path: str | Path) -> dict:
    config = json.loads(Path(path).read_text())
    for key in ("name", "env_id", "total_timesteps", "seeds", "agents", "eval"):
        if key not in config:
            raise ValueError(f"config {str(path)!r} must have the key {key!r}")
    if config.get("curve_metric", "score") not in ("score", "episodic_return"):
        raise ValueError(f"config curve_metric must be 'score' or 'episodic_return', got {config['curve_metric']!r}")
    domain = config.setdefault("domain", "nethack")
    if domain not in DOMAIN_FLOORS:
        raise ValueError(f"config domain must be one of {tuple(DOMAIN_FLOORS)}, got {domain!r}")
    floors = DOMAIN_FLOORS[domain]
    for agent, spec in config["agents"].items():
        floor = spec.get("floor") or (agent if agent in FLOORS else None)
        if floor is not None and floor not in floors:
            raise ValueError(f"config agent {agent!r}: floor must be one of {floors} for {domain}, got {floor!r}")
        if "epsilon" in spec and (floor is None or floor == "random"):
            raise ValueError(
                f"config agent {agent!r}: epsilon softens a rules floor, got it on {floor or 'a trained agent'}"
            )
        budget = spec.get("total_timesteps", config["total_timesteps"])
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ValueError(f"config agent {agent!r}: total_timesteps must be a positive int, got {budget!r}")
    return config


def floor_of(config: dict, agent: str) -> str | None:
    """The built-in floor an agent is (its ``floor`` key, else its name when that is a floor's), else None."""
    return config["agents"][agent].get("floor") or (agent if agent in FLOORS else None)


def env_of(config: dict, agent: str) -> str:
    """The agent's env: its own ``env_id`` (e.g. one rung of a MiniHack ladder) or the study's."""
    return config["agents"][agent].get("env_id", config["env_id"])


def budget_of(config: dict, agent: str) -> int:
    """The agent's env steps of training: its own ``total_timesteps`` (e.g. one task's budget) or the study's."""
    return config["agents"][agent].get("total_timesteps", config["total_timesteps"])


def snapshots_of(config: dict, agent: str) -> list[dict]:
    """The study's ``snapshot_evals`` that fall inside the agent's budget (a short run has no 1M snapshot)."""
    return [snapshot for snapshot in config.get("snapshot_evals", []) if snapshot["step"] < budget_of(config, agent)]


def plan(config: dict, only: set[str] | None = None) -> list[tuple[str, int | None]]:
    """The runs in the config's order (``runs``), or every floor and then every agent at every seed."""
    if "runs" in config:
        runs = [(agent, seed) for agent, seed in config["runs"]]
        unknown = sorted({agent for agent, _ in runs} - set(config["agents"]))
        if unknown:
            raise ValueError(f"config runs name agents missing from config['agents']: {unknown}")
    else:
        floors = [agent for agent in config["agents"] if floor_of(config, agent)]
        runs = [(agent, None) for agent in floors]
        runs += [(agent, seed) for seed in config["seeds"] for agent in config["agents"] if agent not in floors]
    return [(agent, seed) for agent, seed in runs if only is None or agent in only]


def result_dir(config: dict, agent: str, seed: int | None, root: Path) -> Path:
    return root / config["name"] / (agent if seed is None else f"{agent}__s{seed}")


def keep_metrics(source: Path, target: Path) -> None:
    """Copy the columns the report reads from a run's metrics.jsonl."""
    rows = []
    for line in source.read_text().splitlines():
        row = json.loads(line)
        rows.append({k: v for k, v in row.items() if k in KEPT or k.startswith(KEPT_PREFIXES)})
    target.write_text("".join(json.dumps(row) + "\n" for row in rows))


def train(config: dict, agent: str, seed: int, run_dir: Path, torch_threads: int) -> None:
    """Train one run with the domain's example (``ppo_<domain>.py``) in a subprocess, resuming from a checkpoint."""
    command = [sys.executable, str(Path(__file__).with_name(f"ppo_{config.get('domain', 'nethack')}.py"))]
    if (run_dir / "checkpoints" / "last.pt").is_file():
        command += ["--resume", "--run-dir", str(run_dir), "--total-timesteps", str(budget_of(config, agent))]
    else:
        command += [
            "--env-id",
            env_of(config, agent),
            "--total-timesteps",
            str(budget_of(config, agent)),
            "--seed",
            str(seed),
            "--run-dir",
            str(run_dir),
        ]
        own = ("env_id", "total_timesteps")  # passed above
        spec = {key: value for key, value in config["agents"][agent].items() if key not in own}
        for key, value in {**config.get("train_args", {}), **spec}.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                command.append(flag if value else "--no-" + key.replace("_", "-"))
            elif isinstance(value, dict):
                command += [flag, json.dumps(value)]  # e.g. --schedule-coefficients
            else:
                command += [flag, str(value)]
    snapshots = [str(snapshot["step"]) for snapshot in snapshots_of(config, agent)]
    if snapshots:
        command += ["--snapshot-at", *snapshots]
    command += ["--torch-threads", str(torch_threads), "--no-progress"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def evaluate_run(
    config: dict,
    agent: str,
    seed: int | None,
    run_dir: Path | None,
    checkpoint: str = "last.pt",
    episodes: int | None = None,
    compile: bool = False,
) -> dict:
    """Evaluate a trained run (its ``checkpoint``) or a built-in floor on the study's fresh-seed episodes."""
    from crossmoe.evaluation import PolicyAgent, RandomAgent, evaluate

    if config.get("domain", "nethack") == "minigrid":
        from crossmoe.minigrid import MINIGRID_ACTIONS, eval_domain, load_agent

        domain, actions = eval_domain(), MINIGRID_ACTIONS
    else:
        from crossmoe.nethack import eval_domain, load_agent, make_env

        domain = eval_domain()
    spec = config["eval"]
    env_id = env_of(config, agent)
    floor = floor_of(config, agent)
    if floor is not None:
        if domain.score is not None:  # NetHack: the env's own action list
            env = make_env(env_id)
            actions = env.unwrapped.actions
            env.close()
        if floor == "random":
            player = RandomAgent(len(actions), seed=spec["seed"])
        else:
            player = _rules(config, floor, actions, spec["seed"], config["agents"][agent].get("epsilon", 0.0))
    else:
        player = PolicyAgent(load_agent(run_dir / "checkpoints" / checkpoint), compile=compile)
    result = evaluate(
        player,
        env_id,
        episodes=spec["episodes"] if episodes is None else episodes,
        num_envs=spec.get("num_envs", 8),
        seed=spec["seed"],
        max_episode_steps=spec.get("max_episode_steps"),
        metadata={"agent": agent, "seed": seed},
        domain=domain,
    )
    return result.to_dict()


def _rules(config: dict, floor: str, actions: list, seed: int, epsilon: float = 0.0) -> object:
    """The domain's rule agent called ``floor`` on ``actions``, softened by ``epsilon``."""
    if config.get("domain", "nethack") == "minigrid":
        from crossmoe.minigrid import RuleAgent

        return RuleAgent(actions, seed=seed, epsilon=epsilon)
    from crossmoe.nethack.rules import RULES, RuleAgent

    return RuleAgent(actions, priority=RULES[floor], seed=seed, epsilon=epsilon)


def run(args: Args, config: dict) -> None:
    import torch

    # The evaluations run in this process: two shards side by side with torch's default threads would thrash.
    torch.set_num_threads(args.torch_threads)
    # Import what the evaluations use now: a study runs for hours, and a library edited meanwhile must not
    # reach it half-imported (an evaluation with an old policy class but a new factory fails).
    domain_package = "crossmoe.minigrid" if config.get("domain", "nethack") == "minigrid" else "crossmoe.nethack"
    for name in ("crossmoe.evaluation", domain_package):  # the domain's agents, envs and rules
        importlib.import_module(name)
    index, count = (int(part) for part in args.shard.split("/"))
    only = None if args.only is None else set(args.only.split(","))
    results = Path(args.results_root)
    repository = _repository(results) if args.commit else None
    deadline = None if args.within_minutes is None else time.time() + 60 * args.within_minutes
    for position, (agent, seed) in enumerate(plan(config, only)):
        if position % count != index:
            continue
        out = result_dir(config, agent, seed, results)
        place = result_dir(config, agent, seed, Path(args.runs_root))  # its run directory, and its lock's name
        if (out / "eval.json").is_file():
            print(f"done already: {out}", flush=True)
            continue
        if args.train_only and seed is None:
            continue
        if deadline is not None and seed is not None:
            expected = expected_seconds(config, agent, place, results)
            if expected is not None and time.time() + expected > deadline:
                left = max(0.0, deadline - time.time()) / 60
                print(f"skipped: {out} needs about {expected / 60:.0f} min, {left:.0f} min left", flush=True)
                continue
        with _claim(place) as claimed:
            if not claimed:
                print(f"busy: another study process has {out}; skipped", flush=True)
                continue
            if (out / "eval.json").is_file():  # another process finished it meanwhile
                print(f"done already: {out}", flush=True)
                continue
            out.mkdir(parents=True, exist_ok=True)
            run_dir = None if seed is None else place  # a floor trains nothing
            start = time.time()
            if seed is not None:
                summary = run_dir / "summary.json"
                if not summary.is_file() or json.loads(summary.read_text())["interrupted"]:
                    train(config, agent, seed, run_dir, args.torch_threads)
                    if json.loads(summary.read_text())["interrupted"]:  # stopped (SIGTERM): the study stops too
                        print(f"stopped before the end: {run_dir}; rerun to resume it", flush=True)
                        return
                keep_metrics(run_dir / "metrics.jsonl", out / "metrics.jsonl")
                shutil.copy(run_dir / "summary.json", out / "summary.json")
            if args.train_only:
                continue
            if seed is not None:
                for snapshot in snapshots_of(config, agent):  # e.g. a 2M-step run looked at at 1M
                    target = out / f"eval_step_{snapshot['step']}.json"
                    if not target.is_file():
                        evaluation = evaluate_run(
                            config,
                            agent,
                            seed,
                            run_dir,
                            f"step_{snapshot['step']}.pt",
                            snapshot.get("episodes"),
                            compile=args.eval_compile,
                        )
                        target.write_text(json.dumps(evaluation, indent=2))
            evaluation = evaluate_run(config, agent, seed, run_dir, compile=args.eval_compile)
            evaluation["wall_seconds_eval_and_train"] = time.time() - start
            (out / "eval.json").write_text(json.dumps(evaluation, indent=2))
            print(f"finished: {out}", flush=True)
            if repository is not None:
                _commit(
                    repository, out, f"study {config['name']}: {agent}" + ("" if seed is None else f", seed {seed}")
                )


@contextmanager
def _claim(run_dir: Path) -> Iterator[bool]:
    """Hold ``run_dir``'s lock (``<run_dir>.lock`` beside it) for the block: True if this process got it, False if
    another study process holds it. Two processes on one run would write one run directory at once; the lock
    is the kernel's (``flock``), so it goes with its process, even a killed one, and never goes stale."""
    import fcntl

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.with_name(run_dir.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


EVAL_SHARE = 1 / 6  # evaluations (100 episodes, snapshots) add about this share to a NetHack run's training time


def expected_seconds(config: dict, agent: str, run_dir: Path, results: Path) -> float | None:
    """How long training (or finishing) one run of ``agent`` and evaluating it should take, or None if no
    finished run of the study says how fast it trains: the env steps left (the run's budget less what its
    ``metrics.jsonl`` under ``run_dir`` already logged) at the training speed of ``agent``'s finished runs under
    ``results``, else of all the study's finished runs, plus :data:`EVAL_SHARE` of the whole run's time."""
    from crossmoe.training import read_metrics

    speeds: dict[str, list[float]] = {}
    for other in config["agents"]:
        if floor_of(config, other) is not None:
            continue
        for seed in config["seeds"]:
            metrics = result_dir(config, other, seed, results) / "metrics.jsonl"
            if metrics.is_file() and (metrics.parent / "eval.json").is_file():
                sps = _training_sps(read_metrics(metrics))
                if sps:
                    speeds.setdefault(other, []).append(sps)
    pool = speeds.get(agent) or [sps for values in speeds.values() for sps in values]
    if not pool:
        return None
    sps = sum(pool) / len(pool)
    budget = budget_of(config, agent)
    done = 0
    if (run_dir / "metrics.jsonl").is_file():
        done = max((row["global_step"] for row in read_metrics(run_dir / "metrics.jsonl")), default=0)
    return (max(0, budget - done) + EVAL_SHARE * budget) / sps


def _repository(results: Path) -> Path:
    """The root of the git repository that holds ``results`` (``--commit`` needs one)."""
    results.mkdir(parents=True, exist_ok=True)
    found = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=results, capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        raise ValueError(f"--commit needs --results-root inside a git repository, got {str(results)!r}")
    return Path(found.stdout.strip())


def _commit(repository: Path, folder: Path, message: str) -> None:
    """Commit ``folder``'s files alone: whatever else is staged or changed stays as it was.

    Shards running side by side take turns (a lock in the git directory), so
    their commits never meet on git's index lock.
    """
    import fcntl

    path = str(folder.resolve().relative_to(repository.resolve()))
    git_dir = subprocess.run(
        ["git", "rev-parse", "--absolute-git-dir"], cwd=repository, capture_output=True, text=True, check=True
    ).stdout.strip()
    with open(Path(git_dir) / "crossmoe-study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["git", "add", "--", path], cwd=repository, check=True)
        if subprocess.run(["git", "diff", "--cached", "--quiet", "--", path], cwd=repository).returncode == 0:
            return  # nothing new under this run's folder
        subprocess.run(["git", "commit", "--quiet", "-m", message, "--", path], cwd=repository, check=True)
    print(f"committed: {path}", flush=True)


def _budgets(config: dict) -> str:
    """The training budget as the report's header says it: one number, or each agent's own when they differ."""
    trained = [agent for agent in config["agents"] if floor_of(config, agent) is None]
    budgets = sorted({budget_of(config, agent) for agent in trained} or {config["total_timesteps"]})
    if len(budgets) == 1:
        return f"{budgets[0]:,}"
    return " or ".join(f"{budget:,}" for budget in budgets) + " (each agent's `total_timesteps`)"


def _fmt(mean: float, low: float, high: float, digits: int = 1) -> str:
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _success(returns: list[float]) -> str:
    """The share of episodes with a positive return, with its bootstrap CI, as a table cell."""
    from crossmoe.stats import bootstrap_ci

    return _fmt(*bootstrap_ci([float(r > 0) for r in returns]), digits=2) + " | "


SMOOTHING = 10  # updates in the rolling mean of the training score before the curves are averaged over seeds


def _rolling(rows: list[dict], key: str, window: int) -> list[dict]:
    """The rows that have ``key``, with ``key`` replaced by its rolling mean over the last ``window`` of them."""
    kept = [row for row in rows if row.get(key) is not None]
    out = []
    for i, row in enumerate(kept):
        recent = kept[max(0, i - window + 1) : i + 1]
        out.append({**row, key: sum(r[key] for r in recent) / len(recent)})
    return out


def _read_eval(path: Path):
    """An ``eval.json`` as an :class:`~crossmoe.evaluation.EvalResult` (without the study's timing field)."""
    from crossmoe.evaluation import EvalResult

    data = json.loads(path.read_text())
    data.pop("wall_seconds_eval_and_train", None)
    return EvalResult.from_dict(data)


def _seed_scores(results: list, random_score: float | None, digits: int = 1) -> tuple[list[float], str, str]:
    """Each seed's mean score, their mean with its bootstrap CI over seeds, and that mean over random play's."""
    from crossmoe.stats import bootstrap_ci

    per_seed = [float(r.metric("score").mean()) for r in results]
    seeds_ci = _fmt(*bootstrap_ci(per_seed), digits) if len(per_seed) > 1 else f"{per_seed[0]:.{digits}f}"
    ratio = "-" if not random_score else f"{sum(per_seed) / len(per_seed) / random_score:.2f}"
    return per_seed, seeds_ci, ratio


def _paired_section(config: dict, evals: dict, seeds: dict) -> list[str]:
    """The paired comparisons of ``config["paired"]`` (``[[a, b], ...]``): on each seed both finished, a's mean
    score minus b's (the same evaluation episodes), and the mean difference with its bootstrap CI over seeds."""
    from crossmoe.stats import bootstrap_ci

    rows = []
    for first, second in config.get("paired", []):
        means = [  # trained agents only: a floor has no seeds
            {s: float(r.metric("score").mean()) for s, r in zip(seeds[a], evals[a], strict=True)} if a in seeds else {}
            for a in (first, second)
        ]
        common = sorted(set(means[0]) & set(means[1]))
        if not common:
            continue
        diffs = [means[0][seed] - means[1][seed] for seed in common]
        digits = 3 if config.get("domain") == "minigrid" else 1  # MiniGrid's returns lie in [0, 1]
        ci = _fmt(*bootstrap_ci(diffs), digits) if len(diffs) > 1 else f"{diffs[0]:.{digits}f}"
        per_seed = ", ".join(f"s{seed}: {diff:+.{digits}f}" for seed, diff in zip(common, diffs, strict=True))
        wins = sum(diff > 0 for diff in diffs)
        rows.append(f"| {first} − {second} | {len(common)} | {per_seed} | {ci} | {wins} of {len(common)} |")
    if not rows:
        return []
    return [
        "",
        "## Paired differences (same seeds, same evaluation episodes)",
        "",
        "| difference | seeds | per seed | mean [95% CI over seeds] | first ahead |",
        "|---|---:|---|---:|---:|",
        *rows,
    ]


def _ratio_section(config: dict, evals: dict, root: Path, name: str) -> list[str]:
    """For an agent of ``config["ratio_to"]`` (e.g. ``"rules"``): each trained agent's score as a multiple of
    that agent's mean on the same env and episodes (:meth:`EvalResult.metric`'s ``episodes`` at a snapshot,
    which plays fewer), per seed and as the mean of seeds with its bootstrap CI, at the end of training and
    at each snapshot, with the mean max depth."""
    from crossmoe.stats import bootstrap_ci

    if name not in evals:
        return []
    floor = evals[name][0]
    reference = float(floor.metric("score").mean())

    def ratio(result) -> float:  # against the floor's mean on the same episodes (a snapshot plays fewer)
        episodes = min(result.num_episodes, floor.num_episodes)
        return float(result.metric("score").mean()) / float(floor.metric("score", episodes).mean())

    steps = [
        (None, "eval.json"),
        *((s["step"], f"eval_step_{s['step']}.json") for s in config.get("snapshot_evals", [])),
    ]
    rows = []
    for agent in evals:
        if floor_of(config, agent) is not None or env_of(config, agent) != env_of(config, name):
            continue
        for step, file in steps:
            results = [
                _read_eval(path)
                for seed in config["seeds"]
                if (path := result_dir(config, agent, seed, root) / file).is_file()
            ]
            if not results:
                continue
            ratios = [ratio(r) for r in results]
            depth = sum(float(r.metric("depth").mean()) for r in results) / len(results)
            mean = _fmt(*bootstrap_ci(ratios), digits=2) if len(ratios) > 1 else f"{ratios[0]:.2f}"
            at = f"{budget_of(config, agent):,} (end)" if step is None else f"{step:,}"
            per_seed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
            rows.append(f"| {agent} | {at} | {len(results)} | {per_seed} | {mean} | {depth:.2f} |")
    if not rows:
        return []
    return [
        "",
        f"## Against {name}: score as a multiple of its mean on the same episodes ({reference:.1f} on all "
        f"{floor.num_episodes}; a snapshot's fewer episodes are each env's first ones)",
        "",
        f"| agent | env steps | seeds | × {name}, per seed | × {name}, mean of seeds [CI] | max depth, mean of seeds |",
        "|---|---:|---:|---|---:|---:|",
        *rows,
    ]


def _teacher_of(config: dict, agent: str, evals: dict) -> str | None:
    """The evaluated floor that plays as ``agent``'s teacher: the rules its ``teacher`` names, softened by its
    ``teacher_epsilon`` as a floor's ``epsilon`` softens them (``{"floor": "rules", "epsilon": 0.1}``); None if
    the config has no such floor."""
    spec = config["agents"][agent]
    epsilon = float(spec.get("teacher_epsilon", 0.0))
    for name, floor in config["agents"].items():
        if "policy" in floor or name not in evals:
            continue
        if floor.get("floor", name) == spec["teacher"] and float(floor.get("epsilon", 0.0)) == epsilon:
            return name
    return None


def _teacher_floor_section(config: dict, evals: dict, metrics: dict, seeds: dict) -> list[str]:
    """For ``config["teacher_floor"]`` (``{"agent": "rules", "after": 200000}``): how each kickstarted run's
    training score (mean of the last updates) stood after that step against its own teacher's evaluation mean
    (the rules softened for a softened teacher, when the config has that floor), else that agent's."""
    spec = config.get("teacher_floor")
    if not spec or spec["agent"] not in evals:
        return []
    rows = []
    for agent, runs in metrics.items():
        if config["agents"][agent].get("teacher", "none") == "none":
            continue
        teacher = _teacher_of(config, agent, evals) or spec["agent"]
        reference = float(evals[teacher][0].metric("score").mean())
        for seed, run_rows in zip(seeds[agent], runs, strict=True):
            later = [r["score"] for r in _rolling(run_rows, "score", SMOOTHING) if r["global_step"] > spec["after"]]
            if later:
                share = sum(value >= reference for value in later) / len(later)
                mean = sum(later) / len(later)
                rows.append(
                    f"| {agent} | {seed} | {teacher}, {reference:.1f} | {mean:.1f} | {min(later):.1f} | {share:.0%} |"
                )
    if not rows:
        return []
    return [
        "",
        f"## Against the teacher: training score after {spec['after']:,} env steps "
        f"(mean of {SMOOTHING} updates) against the evaluation mean of the run's teacher",
        "",
        "| agent | seed | teacher, its mean | mean | lowest | share of updates at or above it |",
        "|---|---:|---|---:|---:|---:|",
        *rows,
    ]


def _steps_to(rows: list[dict], threshold: float, window: int = SMOOTHING) -> int | None:
    """The first ``global_step`` at which the training return, averaged over the last ``window`` updates
    that finished episodes, reaches ``threshold``, or None. Averages over fewer updates (the first ones)
    do not count: one lucky early episode is not learning."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"threshold_window must be a positive int (updates), got {window!r}")
    smoothed = _rolling(rows, "episodic_return", window)[window - 1 :]
    return next((row["global_step"] for row in smoothed if row["episodic_return"] >= threshold), None)


def _training_sps(rows: list[dict]) -> float | None:
    """A run's env steps per second of training: its steps over the time its updates took.

    Each row's ``sps`` covers one update (rollout and PPO step), so a run resumed from its checkpoint, or
    run with different thread counts in parts, is timed over all of its updates and never over the gap
    (``summary.json``'s ``sps`` covers only the last process)."""
    steps, seconds, previous = 0, 0.0, 0
    for row in rows:
        if row.get("sps"):
            steps += row["global_step"] - previous
            seconds += (row["global_step"] - previous) / row["sps"]
        previous = row["global_step"]
    return steps / seconds if seconds > 0 else None


def _finetune_mean(rows: list[dict], key: str, fraction: float = 0.1) -> float | None:
    """Mean of ``key`` over the last ``fraction`` of a run's fine-tune rows (None when absent)."""
    tail = [row[key] for row in rows if row.get("phase") == "finetune" and row.get(key) is not None]
    if not tail:
        return None
    tail = tail[-max(1, int(len(tail) * fraction)) :]
    return sum(tail) / len(tail)


def report(config: dict, root: Path) -> Path:
    """Write ``docs/results/<study>/report.md`` and its plots from what is finished."""
    from crossmoe.evaluation import EvalResult
    from crossmoe.stats import bootstrap_ci, learning_curves_with_ci, plot_curves_with_ci
    from crossmoe.training import read_metrics

    out = root / config["name"]
    evals: dict[str, list[EvalResult]] = {}
    metrics: dict[str, list[list[dict]]] = {}
    seeds: dict[str, list[int]] = {}  # the finished seeds of each agent, in the order of metrics[agent]
    for agent, seed in plan(config):
        folder = result_dir(config, agent, seed, root)
        if not (folder / "eval.json").is_file():
            continue
        evals.setdefault(agent, []).append(_read_eval(folder / "eval.json"))
        if seed is not None:
            metrics.setdefault(agent, []).append(read_metrics(folder / "metrics.jsonl"))
            seeds.setdefault(agent, []).append(seed)
    if not evals:
        raise ValueError(f"no finished run of study {config['name']!r} under {str(out)!r}")
    random_floors = {  # the random floor's evaluation on each env that has one
        env_of(config, agent): results[0] for agent, results in evals.items() if floor_of(config, agent) == "random"
    }

    def random_on(env: str, episodes: int | None = None) -> float | None:
        """Random play's mean score on ``env``, on the episodes an ``episodes``-episode evaluation plays."""
        floor = random_floors.get(env)
        if floor is None:
            return None
        return float(floor.metric("score", None if episodes is None else min(episodes, floor.num_episodes)).mean())

    random_score = random_on(config["env_id"])
    study_envs = sorted({env_of(config, agent) for agent in evals})
    # MiniGrid rewards only success: an episode with a positive return succeeded.
    success_header = "success [CI] | " if config.get("domain") == "minigrid" else ""
    digits = 3 if config.get("domain") == "minigrid" else 1  # MiniGrid's returns lie in [0, 1]

    lines = [
        f"# Study `{config['name']}`",
        "",
        config.get("description", ""),
        "",
        f"{'Env' if len(study_envs) == 1 else 'Envs'} {', '.join(f'`{e}`' for e in study_envs)}, "
        f"{_budgets(config)} env steps per training run, "
        f"{config['eval']['episodes']} fresh-seed evaluation episodes per run (seed {config['eval']['seed']}, "
        "disjoint from the training seeds). Means with 95% percentile-bootstrap CIs: over seeds (each "
        "seed's mean over its episodes) and, pooled, over all episodes of all seeds. Generated by "
        "`python examples/study.py report`.",
        "",
        "## Evaluation",
        "",
        "| agent | seeds | score, mean of seeds [CI] | score, all episodes [CI] | × random | return [CI] | "
        f"{success_header}max depth | length | env steps/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if success_header else ""),
    ]
    for agent, results in evals.items():
        pooled = {m: [v for r in results for v in r.metric(m)] for m in ("score", "return", "depth", "length")}
        _, seeds_ci, ratio = _seed_scores(results, random_on(env_of(config, agent)), digits)
        sps = [_training_sps(rows) for rows in metrics.get(agent, [])]
        sps_text = "-" if not sps or None in sps else f"{sum(sps) / len(sps):.0f}"
        success = _success(pooled["return"]) if success_header else ""
        length = f"{sum(pooled['length']) / len(pooled['length']):.0f}"
        if all(r.turns for r in results):  # NetHack's clock: one step can take many turns
            turns = [v for r in results for v in r.metric("turn")]
            length += f" ({sum(turns) / len(turns):.0f} turns)"
        lines.append(
            f"| {agent} | {len(results) if floor_of(config, agent) is None else '-'} | {seeds_ci} | "
            f"{_fmt(*bootstrap_ci(pooled['score']), digits)} | {ratio} | "
            f"{_fmt(*bootstrap_ci(pooled['return']), digits)} | {success}"
            f"{sum(pooled['depth']) / len(pooled['depth']):.2f} | {length} | {sps_text} |"
        )
    for snapshot in config.get("snapshot_evals", []):
        step = snapshot["step"]
        rows = []
        for agent in evals:
            results = [
                _read_eval(path)
                for seed in config["seeds"]
                if (path := result_dir(config, agent, seed, root) / f"eval_step_{step}.json").is_file()
            ]
            if not results:
                continue
            episodes = min(r.num_episodes for r in results)  # against random play's same (first) episodes
            per_seed, seeds_ci, ratio = _seed_scores(results, random_on(env_of(config, agent), episodes), digits)
            returns = [v for r in results for v in r.metric("return")]
            rows.append(
                f"| {agent} | {len(results)} | {seeds_ci} | {', '.join(f'{v:.{digits}f}' for v in per_seed)} "
                f"| {ratio} | {_fmt(*bootstrap_ci(returns), digits)} |"
            )
        if rows:
            lines += [
                "",
                f"## At {step:,} env steps ({snapshot.get('episodes', config['eval']['episodes'])} episodes per seed)",
                "",
                "| agent | seeds | score, mean of seeds [CI] | per seed | × random | return [CI] |",
                "|---|---:|---:|---|---:|---:|",
                *rows,
            ]
    lines += ["", "## How episodes ended", "", "| agent | outcomes (episodes) |", "|---|---|"]
    for agent, results in evals.items():
        counts: dict[str, int] = {}
        for result in results:
            for outcome, count in result.outcome_counts().items():
                counts[outcome] = counts.get(outcome, 0) + count
        top = sorted(counts.items(), key=lambda item: -item[1])[:6]
        lines.append(f"| {agent} | " + ", ".join(f"{name}: {count}" for name, count in top) + " |")

    lines += ["", "## Routing and attention at the end of training (fine-tune, last 10% of updates)", ""]
    names = ["routing_entropy", "dead_experts", "attention_sparsity", "context_norm"]
    experts = sorted({k[len("weight/") :] for runs in metrics.values() for k in runs[0][-1] if k.startswith("weight/")})
    header = ["agent", "seed", *names, *(f"weight/{e}" for e in experts), "experts ≥ 0.10"]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for agent, runs in metrics.items():
        if not any(k.startswith("weight/") for k in runs[0][-1]):
            continue
        for seed, rows in zip(seeds[agent], runs, strict=True):
            values = [_finetune_mean(rows, key) for key in (*names, *(f"weight/{e}" for e in experts))]
            alive = sum(1 for v in values[len(names) :] if v is not None and v >= 0.10)
            cells = ["-" if v is None else f"{v:.3f}" for v in values]
            lines.append(f"| {agent} | {seed} | " + " | ".join(cells) + f" | {alive} |")

    for agent, results in evals.items():
        if results[0].expert_names:
            pooled = EvalResult.from_dict(results[0].to_dict())
            for other in results[1:]:
                pooled.usage_weight = [
                    [a + b for a, b in zip(x, y, strict=True)]
                    for x, y in zip(pooled.usage_weight, other.usage_weight, strict=True)
                ]
                pooled.usage_steps = [a + b for a, b in zip(pooled.usage_steps, other.usage_steps, strict=True)]
            lines += ["", f"### Mean routing weight by situation: {agent} (evaluation, all seeds)", ""]
            lines.append(pooled.usage_table())

    lines += _paired_section(config, evals, seeds)
    ratio_to = config.get("ratio_to") or []
    for name in [ratio_to] if isinstance(ratio_to, str) else ratio_to:
        lines += _ratio_section(config, evals, root, name)
    lines += _teacher_floor_section(config, evals, metrics, seeds)

    thresholds = config.get("return_thresholds", {})
    window = config.get("threshold_window", SMOOTHING)
    rows = []
    for agent, runs in metrics.items():
        threshold = thresholds.get(env_of(config, agent))
        if threshold is None:
            continue
        reached = [_steps_to(run_rows, threshold, window) for run_rows in runs]
        cells = ", ".join("not reached" if step is None else f"{step / 1e3:.0f}k" for step in reached)
        # A run that never reached it counts at its budget: the mean is then a lower bound, marked "≥".
        budget = budget_of(config, agent)
        steps = [budget if step is None else step for step in reached]
        mean, low, high = (value / 1e3 for value in bootstrap_ci(steps)) if len(steps) > 1 else (steps[0] / 1e3,) * 3
        bound = "≥ " if None in reached else ""
        steps_ci = f"{bound}{mean:.0f}k [{low:.0f}k, {high:.0f}k]" if len(steps) > 1 else f"{bound}{mean:.0f}k"
        returns = [float(result.metric("return").mean()) for result in evals[agent]]
        seeds_ci = _fmt(*bootstrap_ci(returns), digits=2) if len(returns) > 1 else f"{returns[0]:.2f}"
        rows.append(
            f"| {agent} | {env_of(config, agent)} | {threshold} | {cells} | {steps_ci} | {budget / 1e3:.0f}k "
            f"| {seeds_ci} |"
        )
    if rows:
        lines += [
            "",
            f"## Steps to threshold (training return, mean of {SMOOTHING} updates) and final return",
            "",
            "A run that never reached the threshold counts at its budget in the mean, which is then a lower bound (≥).",
            "",
            "| agent | env | return threshold | env steps to it, per seed | mean of seeds [CI] | budget "
            "| evaluation return, mean of seeds [CI] |",
            "|---|---|---:|---|---:|---:|---:|",
            *rows,
        ]

    metric = config.get("curve_metric", "score")
    label = {"score": "in-game score", "episodic_return": "return"}[metric]
    envs = sorted({env_of(config, agent) for agent in metrics})
    for env_id in envs:
        trained = {
            agent: runs
            for agent, runs in metrics.items()
            if env_of(config, agent) == env_id and all(any(row.get(metric) is not None for row in r) for r in runs)
        }
        if not trained:
            continue
        smoothed = {agent: [_rolling(rows, metric, SMOOTHING) for rows in runs] for agent, runs in trained.items()}
        curves = learning_curves_with_ci(smoothed, key=metric)
        references = {}
        for agent, results in evals.items():
            if floor_of(config, agent) is not None and env_of(config, agent) == env_id:
                references[f"{agent} (evaluation)"] = float(results[0].metric(metric.removeprefix("episodic_")).mean())
        name = f"{metric.removeprefix('episodic_')}_curves.png" if len(envs) == 1 else f"curves_{env_id}.png"
        path = plot_curves_with_ci(
            curves,
            out / name,
            ylabel=f"{label} (training episodes, mean of {SMOOTHING} updates)",
            title=f"{config['name']}{'' if len(envs) == 1 else ': ' + env_id}: mean over seeds, 95% bootstrap band",
            references=references,
        )
        heading = "## Learning curves" + ("" if len(envs) == 1 else f": {env_id}")
        lines += ["", heading, "", f"![{label} curves]({path.name})", ""]
    if random_score is not None and len(study_envs) == 1:  # a ladder's floors are in the tables, one per env
        lines.append(f"Uniform random play scores {random_score:.1f} on the evaluation episodes.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def main(args: Args) -> None:
    config = load_config(args.config)
    if args.command == "plan":
        for agent, seed in plan(config):
            done = (result_dir(config, agent, seed, Path(args.results_root)) / "eval.json").is_file()
            print(f"{'done' if done else 'todo'}  {agent}  seed={seed}")
    elif args.command == "run":
        run(args, config)
    else:
        print(report(config, Path(args.results_root)))


if __name__ == "__main__":
    main(tyro.cli(Args))
