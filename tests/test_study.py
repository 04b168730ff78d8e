"""examples/study.py on a tiny config: trains, evaluates, writes the committed summaries, skips what is done."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "study.py"

pytest.importorskip("nle")

TINY = {
    "name": "tiny",
    "env_id": "NetHackScore-v0",
    "total_timesteps": 256,
    "seeds": [1],
    "eval": {"episodes": 2, "seed": 10_000_000, "num_envs": 2, "max_episode_steps": 40},
    "train_args": {"num_envs": 2, "num_steps": 64, "num_minibatches": 2, "compile": "off", "dim": 32, "plots": False},
    "agents": {
        "random": {},
        "rules": {},
        "moe": {"policy": "moe"},
        "mlp": {"policy": "mlp"},
    },
}


def study(tmp_path: Path, *args: str) -> str:
    command = [sys.executable, str(STUDY), *args, "--config", str(tmp_path / "study.json")]
    command += ["--runs-root", str(tmp_path / "runs"), "--results-root", str(tmp_path / "results")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=None, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_study_runs_skips_what_is_finished_and_reports(tmp_path):
    (tmp_path / "study.json").write_text(json.dumps(TINY))
    assert study(tmp_path, "plan").count("todo") == 4

    study(tmp_path, "run", "--torch-threads", "1")
    results = tmp_path / "results" / "tiny"
    for name in ("moe__s1", "mlp__s1"):
        assert (results / name / "metrics.jsonl").is_file()
        assert json.loads((results / name / "summary.json").read_text())["global_step"] == 256
        evaluation = json.loads((results / name / "eval.json").read_text())
        assert len(evaluation["scores"]) == 2
    for floor in ("random", "rules"):
        floor_eval = json.loads((results / floor / "eval.json").read_text())
        assert len(floor_eval["scores"]) == 2 and floor_eval["expert_names"] == []
    moe_eval = json.loads((results / "moe__s1" / "eval.json").read_text())
    assert moe_eval["expert_names"] == ["survival", "combat", "exploration", "general"]
    # The committed metrics keep the columns the report reads, and not the rest.
    row = json.loads((results / "moe__s1" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "weight/combat" in row and "global_step" in row and "learning_rate" not in row

    assert study(tmp_path, "plan").count("done") == 4
    checkpoint = tmp_path / "runs" / "tiny" / "moe__s1" / "checkpoints" / "last.pt"
    before = checkpoint.stat().st_mtime_ns
    output = study(tmp_path, "run", "--torch-threads", "1")
    assert output.count("done already") == 4
    assert checkpoint.stat().st_mtime_ns == before  # nothing was trained again

    report = Path(study(tmp_path, "report").strip().splitlines()[-1])
    text = report.read_text()
    for agent in ("random", "rules", "moe", "mlp"):
        assert f"| {agent} |" in text
    assert "Mean routing weight by situation: moe" in text

    # With seeds 1 and 3 finished and 2 not, the per-seed rows name seeds 1 and 3.
    (tmp_path / "study.json").write_text(json.dumps({**TINY, "seeds": [1, 2, 3]}))
    shutil.copytree(results / "moe__s1", results / "moe__s3")
    text = Path(study(tmp_path, "report").strip().splitlines()[-1]).read_text()
    routing_rows = re.findall(r"^\| moe \| (\d) \| (?:-|\d+\.\d{3}) \| (?:-|\d+\.\d{3}) \|", text, flags=re.MULTILINE)
    assert routing_rows == ["1", "3"]


def test_an_interrupted_run_is_finished_on_the_next_call(tmp_path):
    config = {**TINY, "agents": {"mlp": {"policy": "mlp"}}}
    (tmp_path / "study.json").write_text(json.dumps(config))
    # A run stopped midway leaves its checkpoint and a summary marked interrupted, and no eval.json.
    run_dir = tmp_path / "runs" / "tiny" / "mlp__s1"
    arguments = ["--env-id", "NetHackScore-v0", "--total-timesteps", "128", "--seed", "1", "--run-dir", str(run_dir)]
    arguments += ["--policy", "mlp", "--num-envs", "2", "--num-steps", "64", "--num-minibatches", "2"]
    arguments += ["--compile", "off", "--dim", "32", "--no-plots", "--no-progress", "--torch-threads", "1"]
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ppo_nethack.py"), *arguments],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        timeout=600,
    )
    summary = run_dir / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "interrupted": True}))
    output = study(tmp_path, "run", "--torch-threads", "1")
    assert "--resume" in output
    assert json.loads(summary.read_text())["global_step"] == 256
    assert (tmp_path / "results" / "tiny" / "mlp__s1" / "eval.json").is_file()


def test_snapshot_evals_look_at_a_run_midway(tmp_path):
    from crossmoe.training import load_checkpoint

    short = {"policy": "mlp", "total_timesteps": 128}  # trains only up to the snapshot: it has none
    config = {
        **TINY,
        "agents": {"mlp": {"policy": "mlp"}, "short": short},
        "snapshot_evals": [{"step": 128, "episodes": 3}],
    }
    (tmp_path / "study.json").write_text(json.dumps(config))
    study(tmp_path, "run", "--torch-threads", "1")
    short_run = tmp_path / "results" / "tiny" / "short__s1"
    assert (short_run / "eval.json").is_file() and not (short_run / "eval_step_128.json").exists()
    snapshot = tmp_path / "runs" / "tiny" / "mlp__s1" / "checkpoints" / "step_128.pt"
    assert load_checkpoint(snapshot)["counters"]["global_step"] == 128  # not the end of the 256-step run
    evaluation = json.loads((tmp_path / "results" / "tiny" / "mlp__s1" / "eval_step_128.json").read_text())
    assert len(evaluation["scores"]) == 3  # the snapshot's own episode count, not the final eval's 2
    text = Path(study(tmp_path, "report").strip().splitlines()[-1]).read_text()
    assert "## At 128 env steps (3 episodes per seed)" in text
    assert re.search(r"^\| mlp \| 1 \| \d+\.\d \|", text, flags=re.MULTILINE)


def test_a_ladder_gives_each_agent_its_env_a_floor_per_env_and_steps_to_threshold(tmp_path):
    room = "MiniHack-Room-5x5-v0"
    config = {
        **TINY,
        "agents": {
            "room__random": {"env_id": room, "floor": "random"},
            "room__mlp": {"env_id": room, "policy": "mlp"},
            "score__mlp": {"policy": "mlp"},
        },
        "return_thresholds": {room: -100.0},  # reached at the first logged episode
        "threshold_window": 1,  # a tiny run has too few updates for the default window of 10
        "curve_metric": "episodic_return",
    }
    (tmp_path / "study.json").write_text(json.dumps(config))
    assert study(tmp_path, "plan").splitlines()[0] == "todo  room__random  seed=None"  # floors first
    study(tmp_path, "run", "--torch-threads", "1")
    results = tmp_path / "results" / "tiny"
    assert json.loads((results / "room__random" / "eval.json").read_text())["env_id"] == room
    assert json.loads((results / "room__mlp__s1" / "eval.json").read_text())["env_id"] == room
    assert json.loads((tmp_path / "runs" / "tiny" / "room__mlp__s1" / "args.json").read_text())["env_id"] == room
    assert json.loads((results / "score__mlp__s1" / "eval.json").read_text())["env_id"] == "NetHackScore-v0"

    text = Path(study(tmp_path, "report").strip().splitlines()[-1]).read_text()
    first_episode = next(
        json.loads(line)["global_step"]
        for line in (results / "room__mlp__s1" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line).get("episodic_return") is not None
    )
    assert f"| room__mlp | {room} | -100.0 | {first_episode / 1e3:.0f}k |" in text
    assert "| score__mlp |" in text and "| score__mlp | NetHackScore-v0 |" not in text  # no threshold there
    assert (results / f"curves_{room}.png").is_file()  # one figure per env (NetHack had no finished episode)
    assert "| room__random | - |" in text  # a floor, not a trained agent
    assert f"Envs `{room}`, `NetHackScore-v0`," in text  # the header names every env of a ladder
    assert "Uniform random play scores" not in text  # one env's floor would mislabel the others


def test_a_floor_must_be_a_built_in_one(tmp_path):
    (tmp_path / "study.json").write_text(json.dumps({**TINY, "agents": {"x": {"floor": "oracle"}}}))
    command = [sys.executable, str(STUDY), "plan", "--config", str(tmp_path / "study.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "floor must be one of" in done.stderr


@pytest.fixture
def module(monkeypatch):
    """examples/study.py imported, to call its functions without a subprocess."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_module", STUDY)
    loaded = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "study_module", loaded)  # dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture
def stopped_training(module, monkeypatch):
    """The study's training replaced by a run that stops at once, as one sent SIGTERM does (its summary marked
    interrupted); the list of the (agent, seed) pairs it was asked to train."""
    trained = []

    def stopped(config, agent, seed, run_dir, torch_threads):
        trained.append((agent, seed))
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"interrupted": True, "global_step": 64}))

    monkeypatch.setattr(module, "train", stopped)
    return trained


def test_a_run_stopped_by_sigterm_is_not_evaluated_and_stops_the_study(tmp_path, module, stopped_training):
    # ppo_nethack.py exits cleanly on SIGTERM with a summary marked interrupted; evaluating that
    # half-trained checkpoint would write an eval.json and so mark the run finished for good.
    trained = stopped_training
    config = {**TINY, "seeds": [1, 2], "agents": {"mlp": {"policy": "mlp"}}}
    args = module.Args(
        command="run", runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"), torch_threads=1
    )
    module.run(args, config)
    assert trained == [("mlp", 1)]  # seed 2 is left for the rerun that resumes seed 1
    assert not list((tmp_path / "results").rglob("eval*.json"))
    assert not list((tmp_path / "results").rglob("summary.json"))


def test_a_run_another_study_process_holds_is_skipped_until_that_process_dies(
    tmp_path, module, stopped_training, capsys
):
    # Two processes on one run would write one run directory at once; the second must leave it alone, and the
    # lock must not outlive a killed holder. The holder is util-linux's flock(1), not this module's code.
    import os
    import signal
    import time

    if shutil.which("flock") is None:
        pytest.skip("needs util-linux's flock(1)")
    trained = stopped_training
    config = {**TINY, "seeds": [1, 2], "agents": {"mlp": {"policy": "mlp"}}, "runs": [["mlp", 1], ["mlp", 2]]}
    lock = tmp_path / "runs" / "tiny" / "mlp__s1.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(["flock", "--exclusive", str(lock), "sleep", "60"], start_new_session=True)
    try:
        for _ in range(100):  # until flock(1) holds it
            if subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode != 0:
                break
            time.sleep(0.05)
        args = module.Args(
            command="run", runs_root=str(tmp_path / "runs"), results_root=str(tmp_path / "results"), torch_threads=1
        )
        module.run(args, config)  # seed 1 is busy: seed 2 trains (and stops the study, as a SIGTERM'd run does)
        assert trained == [("mlp", 2)]
        assert "busy: another study process has" in capsys.readouterr().out
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    module.run(args, config)  # the killed holder's lock went with it
    assert trained[-1] == ("mlp", 1)


def test_steps_to_threshold_needs_a_full_window_of_updates(module):
    # One lucky episode at the first update, then failures, then learning from update 13 on.
    returns = [0.9] + [-1.0] * 11 + [1.0] * 20
    rows = [{"global_step": 100 * (i + 1), "episodic_return": r} for i, r in enumerate(returns)]
    rows.insert(3, {"global_step": 350, "episodic_return": None})  # an update without a finished episode
    # Mean of the last 10 finished-episode updates first reaches 0.5 with 8 of them at +1: update 20.
    assert module._steps_to(rows, 0.5, window=10) == 2000
    assert module._steps_to(rows, 0.5, window=1) == 100  # no smoothing: the lucky first update counts
    assert module._steps_to(rows, 2.0, window=10) is None
    with pytest.raises(ValueError, match="threshold_window must be a positive int"):
        module._steps_to(rows, 0.5, window=0)


def test_training_speed_is_timed_over_every_update_of_a_resumed_run(module):
    # 4 updates of 1,000 steps: two at 500 steps/s (2 s each), then a resume on fewer threads at
    # 250 steps/s (4 s each). summary.json's sps, from the last process, would say 250.
    rows = [{"global_step": 1000 * (i + 1), "sps": sps} for i, sps in enumerate([500, 500, 250, 250])]
    assert module._training_sps(rows) == pytest.approx(4000 / 12)
    # A row without a speed (an older metrics file) counts neither its steps nor any time.
    rows[1] = {"global_step": 2000}
    assert module._training_sps(rows) == pytest.approx(3000 / 10)
    assert module._training_sps([]) is None


def test_a_floor_key_names_the_rules_an_agent_plays(tmp_path, module):
    config = {**TINY, "agents": {"rules": {"floor": "rules_no_eating"}, "random": {}, "eating": {"floor": "rules"}}}
    assert [module.floor_of(config, agent) for agent in config["agents"]] == ["rules_no_eating", "random", "rules"]
    config["agents"]["bad"] = {"floor": "rules_with_cake"}
    (tmp_path / "study.json").write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, str(STUDY), "plan", "--config", str(tmp_path / "study.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode != 0 and "floor must be one of ('random', 'rules', 'rules_no_eating')" in done.stderr


def test_a_minigrid_study_trains_with_ppo_minigrid_and_reports_success(tmp_path):
    pytest.importorskip("minigrid")
    config = {
        **TINY,
        "name": "grid",
        "domain": "minigrid",
        "env_id": "MiniGrid-Empty-5x5-v0",
        "eval": {"episodes": 4, "seed": 10_000_000, "num_envs": 2},
        "agents": {"random": {}, "rules": {}, "moe": {"policy": "moe"}, "mlp": {"policy": "mlp"}},
    }
    (tmp_path / "study.json").write_text(json.dumps(config))
    study(tmp_path, "run", "--torch-threads", "1")
    results = tmp_path / "results" / "grid"
    summary = json.loads((results / "moe__s1" / "summary.json").read_text())
    assert summary["env_id"] == "MiniGrid-Empty-5x5-v0" and summary["global_step"] == 256
    assert "success_rate" in json.loads((results / "moe__s1" / "metrics.jsonl").read_text().splitlines()[-1])
    rules = json.loads((results / "rules" / "eval.json").read_text())
    assert all(r > 0 for r in rules["returns"])  # the graph's rules solve the empty room
    printed = study(tmp_path, "report")
    report = (results / "report.md").read_text()
    assert "| return [CI] | success [CI] | max depth |" in report and "| rules | - | " in report
    assert re.search(r"\| rules \| - \|[^\n]*\| 1\.00 \[1\.00, 1\.00\] \|", report), report
    assert str(results / "report.md") in printed


def test_a_minigrid_study_has_no_rules_without_eating(tmp_path):
    config = {**TINY, "domain": "minigrid", "agents": {"rules_no_eating": {}}}
    (tmp_path / "study.json").write_text(json.dumps(config))
    command = [sys.executable, str(STUDY), "plan", "--config", str(tmp_path / "study.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "floor must be one of ('random', 'rules') for minigrid" in done.stderr


def test_commit_lands_each_finished_run_and_nothing_else(tmp_path):
    """run --commit: one commit per evaluated run, holding that run's result files only."""
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.email", "study@example.com")
    git("config", "user.name", "study")
    (repo / "notes.txt").write_text("first")
    git("add", "notes.txt")
    git("commit", "-qm", "start")
    (repo / "notes.txt").write_text("staged, not for the study's commits")
    git("add", "notes.txt")
    (repo / "study.json").write_text(json.dumps({**TINY, "agents": {"random": {}, "mlp": {"policy": "mlp"}}}))
    command = [sys.executable, str(STUDY), "run", "--config", "study.json", "--commit", "--torch-threads", "1"]
    command += ["--runs-root", "runs", "--results-root", "results"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    subjects = git("log", "--format=%s").splitlines()
    assert subjects == ["study tiny: mlp, seed 1", "study tiny: random", "start"]
    for revision, folder in (("HEAD", "results/tiny/mlp__s1"), ("HEAD~1", "results/tiny/random")):
        files = git("show", "--name-only", "--format=", revision).split()
        assert files and all(name.startswith(folder + "/") for name in files), files
    assert set(git("show", "--name-only", "--format=", "HEAD").split()) == {
        "results/tiny/mlp__s1/eval.json",
        "results/tiny/mlp__s1/metrics.jsonl",
        "results/tiny/mlp__s1/summary.json",
    }
    assert git("diff", "--cached", "--name-only").split() == ["notes.txt"]  # still staged, not committed
    assert "runs/" in git("status", "--porcelain", "--untracked-files=normal")  # training runs stay out

    # A second call finds everything done and commits nothing more.
    again = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and len(git("log", "--format=%s").splitlines()) == 3


def test_commit_needs_a_git_repository(tmp_path):
    (tmp_path / "study.json").write_text(json.dumps(TINY))
    command = [sys.executable, str(STUDY), "run", "--config", str(tmp_path / "study.json"), "--commit"]
    command += ["--runs-root", str(tmp_path / "runs"), "--results-root", str(tmp_path / "results")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode != 0 and "--commit needs --results-root inside a git repository" in done.stderr


def test_the_report_gives_paired_differences_and_the_teacher_floor(tmp_path, module):
    """Per-seed differences on the same episodes with their CI, and kickstarted runs' training score against the
    rules, from result folders written here (no training)."""
    from crossmoe.evaluation import EvalResult

    def write(folder, scores, rows=None, turns=()):
        folder.mkdir(parents=True)
        result = EvalResult("NetHackScore-v0", 10_000_000, 8, None, scores=scores, returns=scores, turns=list(turns))
        result.depths, result.lengths, result.outcomes = [1] * len(scores), [10] * len(scores), ["starving"] * 4
        (folder / "eval.json").write_text(json.dumps(result.to_dict()))
        if rows is not None:
            (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    def curve(level):  # 40 updates of 10,000 env steps, the training score `level` after the first 10
        return [{"global_step": 10_000 * (i + 1), "score": level if i >= 10 else 0.0} for i in range(40)]

    config = {
        **TINY,
        "name": "paired",
        "seeds": [1, 2, 3],
        "agents": {
            "rules": {},
            "random": {},
            "a": {"policy": "moe", "teacher": "rules"},
            "b": {"policy": "moe", "fusion": "concat", "teacher": "rules"},
            "rules_soft": {"floor": "rules", "epsilon": 0.1},
            "c": {"policy": "moe", "teacher": "rules", "teacher_epsilon": 0.1},
        },
        "paired": [["a", "b"]],
        "teacher_floor": {"agent": "rules", "after": 200_000},
    }
    root = tmp_path / "results" / "paired"
    write(root / "rules", [80.0, 100.0, 110.0, 110.0], turns=[30, 40, 50, 40])  # mean 100; 90 on two envs' first
    write(root / "random", [10.0, 30.0, 50.0, 50.0])  # mean 35; 20 on the first two envs' episodes
    write(root / "rules_soft", [120.0, 120.0, 140.0, 140.0])  # mean 130: c's teacher
    write(root / "c__s1", [125.0] * 4, curve(125.0))
    for seed, (a, b) in zip((1, 2, 3), ((150.0, 140.0), (120.0, 125.0), (200.0, 170.0)), strict=True):
        write(root / f"a__s{seed}", [a] * 4, curve(a))
        write(root / f"b__s{seed}", [b] * 4, curve(b if seed != 2 else 90.0))
    config["ratio_to"] = ["rules", "rules_soft"]
    config["snapshot_evals"] = [{"step": 500, "episodes": 2}]
    snapshot = EvalResult("NetHackScore-v0", 10_000_000, 8, None, scores=[99.0] * 2, returns=[99.0] * 2)
    snapshot.depths, snapshot.lengths, snapshot.outcomes = [3] * 2, [10] * 2, ["starving"] * 2
    (root / "a__s1" / "eval_step_500.json").write_text(json.dumps(snapshot.to_dict()))
    report = module.report(config, tmp_path / "results").read_text()
    assert "## Against rules: score as a multiple of its mean on the same episodes (100.0 on all 4;" in report
    table = report.split("## Evaluation")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert rows["| rules"].endswith("| 1.00 | 10 (40 turns) | - |")  # the game's clock, where the results have it
    assert rows["| random"].endswith("| 1.00 | 10 | - |")
    assert "| a | 256 (end) | 3 | 1.50, 1.20, 2.00 | 1.57 [1.20, 2.00] | 1.00 |" in report
    # a second reference floor gets its own section: 150 / 130 on seed 1
    assert "## Against rules_soft: score as a multiple of its mean on the same episodes (130.0 on all 4;" in report
    assert "| a | 256 (end) | 3 | 1.15, 0.92, 1.54 |" in report
    # the snapshot, on the seed that has one: its 2 episodes against the rules' 90 on the same two, not 100
    assert "| a | 500 | 1 | 1.10 | 1.10 | 3.00 |" in report
    assert "| a | 1 | 99.0 | 99.0 | 4.95 |" in report  # × random at the snapshot: 99 / 20, not 99 / 35
    row = next(line for line in report.splitlines() if line.startswith("| a − b |"))
    assert "| 3 | s1: +10.0, s2: -5.0, s3: +30.0 | 11.7 [" in row and row.endswith("| 2 of 3 |")
    assert "against the evaluation mean of the run's teacher" in report
    assert "| a | 1 | rules, 100.0 | 150.0 | 150.0 | 100% |" in report
    assert "| b | 2 | rules, 90.0 |" not in report and "| b | 2 | rules, 100.0 | 90.0 | 90.0 | 0% |" in report
    # a softened teacher's student is held to the rules softened, its own teacher, not to the hard rules
    assert "| c | 1 | rules_soft, 130.0 | 125.0 | 125.0 | 0% |" in report


def test_each_task_trains_for_its_own_budget_and_the_report_bounds_unreached_thresholds(tmp_path, module, monkeypatch):
    """An agent's own total_timesteps reaches its training command (fresh and resumed) and the report; a seed
    that never reached the threshold counts at the budget, and the mean says it is a lower bound."""
    from crossmoe.evaluation import EvalResult

    commands = []
    monkeypatch.setattr(module.subprocess, "run", lambda command, check: commands.append(command))
    config = module.load_config(
        _write(
            tmp_path,
            {**TINY, "agents": {"short": {"policy": "mlp", "total_timesteps": 128}, "long": {"policy": "mlp"}}},
        )
    )
    module.train(config, "short", 1, tmp_path / "run", 1)
    module.train(config, "long", 1, tmp_path / "run2", 1)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").touch()
    module.train(config, "short", 1, tmp_path / "run", 1)
    budgets = [command[command.index("--total-timesteps") + 1] for command in commands]
    assert budgets == ["128", "256", "128"] and all(command.count("--total-timesteps") == 1 for command in commands)
    with pytest.raises(ValueError, match="agent 'x': total_timesteps must be a positive int, got 0"):
        module.load_config(_write(tmp_path, {**TINY, "agents": {"x": {"policy": "mlp", "total_timesteps": 0}}}))

    env = "MiniGrid-Empty-5x5-v0"
    config = {
        **TINY,
        "name": "budgets",
        "domain": "minigrid",
        "env_id": env,
        "total_timesteps": 100_000,
        "seeds": [1, 2],
        "agents": {"a": {"policy": "moe", "total_timesteps": 50_000}, "b": {"policy": "moe", "fusion": "concat"}},
        "paired": [["a", "b"]],
        "return_thresholds": {env: 0.5},
        "threshold_window": 1,
    }
    root = tmp_path / "results" / "budgets"
    for agent, seed, returns, level in (
        ("a", 1, 0.9, 0.6),
        ("a", 2, 0.8, 0.0),
        ("b", 1, 0.85, 0.6),
        ("b", 2, 0.8, 0.6),
    ):
        folder = root / f"{agent}__s{seed}"
        folder.mkdir(parents=True)
        result = EvalResult(env, 10_000_000, 2, None, scores=[returns] * 2, returns=[returns] * 2)
        result.depths, result.lengths, result.outcomes = [0, 0], [10, 10], ["success", "success"]
        (folder / "eval.json").write_text(json.dumps(result.to_dict()))
        rows = [{"global_step": 10_000 * (i + 1), "episodic_return": level if i >= 2 else 0.0} for i in range(5)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = module.report(config, tmp_path / "results").read_text()
    assert "50,000 or 100,000 (each agent's `total_timesteps`) env steps per training run" in report
    assert f"| a | {env} | 0.5 | 30k, not reached | ≥ 40k [30k, 50k] | 50k |" in report  # 30k and the budget
    assert f"| b | {env} | 0.5 | 30k, 30k | 30k [30k, 30k] | 100k |" in report
    assert "| a − b | 2 | s1: +0.050, s2: +0.000 | 0.025 [" in report  # returns in [0, 1]: three digits


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(config))
    return path


def test_within_minutes_starts_only_the_runs_that_can_finish(tmp_path, module, monkeypatch, capsys):
    """A finished run says how fast the agent trains; a run that would overrun the time left is skipped and a
    shorter one after it still starts; a half-done run is estimated on its remaining steps."""
    from crossmoe.evaluation import EvalResult

    trained = []

    def fake_training(config, agent, seed, run_dir, torch_threads):
        trained.append((agent, seed))
        raise SystemExit  # stop here: only the choice of runs is under test

    monkeypatch.setattr(module, "train", fake_training)
    config = {
        **TINY,
        "seeds": [1, 2],
        "total_timesteps": 600_000,
        "agents": {"slow": {"policy": "moe"}, "short": {"policy": "moe", "total_timesteps": 60_000}},
        "runs": [["slow", 1], ["slow", 2], ["short", 1]],
    }
    results, runs = tmp_path / "results", tmp_path / "runs"
    finished = results / "tiny" / "slow__s1"  # trained at 100 env steps/s: 600k steps take 100 minutes
    finished.mkdir(parents=True)
    rows = [{"global_step": 60_000 * (i + 1), "sps": 100.0} for i in range(10)]
    (finished / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = EvalResult("NetHackScore-v0", 10_000_000, 2, None, scores=[1.0], returns=[1.0])
    (finished / "eval.json").write_text(json.dumps(result.to_dict()))

    assert module.expected_seconds(config, "slow", runs / "tiny" / "slow__s2", results) == pytest.approx(7000.0)
    assert module.expected_seconds(config, "short", runs / "tiny" / "short__s1", results) == pytest.approx(700.0)
    half = runs / "tiny" / "slow__s2"
    half.mkdir(parents=True)
    (half / "metrics.jsonl").write_text(json.dumps({"global_step": 300_000, "sps": 100.0}) + "\n")
    assert module.expected_seconds(config, "slow", half, results) == pytest.approx(4000.0)  # 300k left + evals
    assert module.expected_seconds({**config, "agents": {"x": {}}}, "x", half, tmp_path / "none") is None

    args = module.Args(
        command="run", runs_root=str(runs), results_root=str(results), torch_threads=1, within_minutes=60
    )
    with pytest.raises(SystemExit):
        module.run(args, config)
    assert trained == [("short", 1)]  # slow s2 needs about 67 minutes of the 60
    assert "skipped: " in capsys.readouterr().out
    args.within_minutes = 90
    with pytest.raises(SystemExit):
        module.run(args, config)
    assert trained[-1] == ("slow", 2)


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "results").glob("*.json")), ids=lambda path: path.name)
def test_every_committed_study_config_loads_and_plans(path, module):
    """A typo in a committed config (an unknown agent in ``runs``, a bad budget) would stop a study midway."""
    config = module.load_config(path)
    runs = module.plan(config)
    assert runs and all(agent in config["agents"] for agent, _ in runs)
    assert all(module.budget_of(config, agent) > 0 for agent, _ in runs)


def test_a_rules_floor_can_be_softened_and_only_a_rules_floor(tmp_path, module, monkeypatch):
    """``{"floor": "rules", "epsilon": e}`` evaluates the rule agent with that epsilon; epsilon on random play
    or on a trained agent is refused by name."""
    players = []
    monkeypatch.setattr("crossmoe.evaluation.evaluate", lambda player, *a, **k: players.append(player) or _Stop())
    agents = {"soft": {"floor": "rules", "epsilon": 0.25}, "rules": {}}
    config = module.load_config(_write(tmp_path, {**TINY, "agents": agents}))
    for agent in agents:
        module.evaluate_run(config, agent, None, None)
    assert [player.epsilon for player in players] == [0.25, 0.0]
    for spec, what in (({"floor": "random", "epsilon": 0.1}, "random"), ({"policy": "mlp", "epsilon": 0.1}, "trained")):
        with pytest.raises(ValueError, match=f"agent 'x': epsilon softens a rules floor, got it on .*{what}"):
            module.load_config(_write(tmp_path, {**TINY, "agents": {"x": spec}}))


class _Stop:
    """What the patched ``evaluate`` returns: a result whose ``to_dict`` is all the study asks of it."""

    def to_dict(self) -> dict:
        return {}
