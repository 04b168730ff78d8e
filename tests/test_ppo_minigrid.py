"""examples/ppo_minigrid.py and the loop it shares with ppo_nethack.py (crossmoe.ppo)."""

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("minigrid")
pytest.importorskip("tyro")

from example_scripts import load_example

from crossmoe.evaluation import PolicyAgent, evaluate
from crossmoe.minigrid import RuleAgent, eval_domain, load_agent, train_domain
from crossmoe.ppo import PPOArgs, TrainDomain, train
from crossmoe.training import load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE = EXAMPLES / "ppo_minigrid.py"
TINY = {"num_envs": 4, "num_steps": 32, "num_minibatches": 2, "update_epochs": 2, "dim": 32, "compile": "off"}


ppo = load_example("ppo_minigrid")


def _run(tmp_path, **overrides):
    args = ppo.Args(**{**TINY, "run_dir": str(tmp_path / "run"), "plots": False, "progress": False, **overrides})
    return ppo.main(args), read_metrics(tmp_path / "run" / "metrics.jsonl")


def _command(run_dir, *extra):
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()]
    return [sys.executable, str(EXAMPLE), *flags, "--no-progress", f"--run-dir={run_dir}", *extra]


def test_example_runs_as_a_script_with_the_shared_metrics_and_a_loadable_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        _command(run_dir, "--total-timesteps=256"), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished: 256 env steps" in result.stdout
    for name in ("metrics.jsonl", "summary.json", "args.json", "checkpoints/last.pt", "learning_curve.png"):
        assert (run_dir / name).is_file(), name
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["global_step"] for row in rows] == [128, 256]
    shared = {"global_step", "sps", "episodic_return", "rolling_return", "score", "routing_entropy", "aux/alignment"}
    assert shared | {"success_rate"} <= set(rows[-1])
    # The MoE agent of the checkpoint plays MiniGrid through the evaluation harness.
    agent = load_agent(run_dir / "checkpoints" / "last.pt")
    assert agent.config["factory"] == "minigrid.make_policy" and agent.config["dim"] == 32
    played = evaluate(PolicyAgent(agent), "MiniGrid-DoorKey-5x5-v0", 4, num_envs=2, domain=eval_domain())
    assert len(played.returns) == 4


def test_on_the_rules_pathway_the_agent_succeeds_from_its_first_update(tmp_path):
    summary, rows = _run(tmp_path, knowledge_pathway="rules", total_timesteps=512)
    assert summary["knowledge_pathway"] == "rules"
    assert (
        load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["policy_config"]["knowledge_pathway"] == "rules"
    )
    finished = [row for row in rows if row["episodes_finished"]]
    assert finished and min(row["success_rate"] for row in finished) >= 0.75  # no teacher, and no learning yet


def test_success_rate_counts_the_episodes_that_ended_with_a_reward(tmp_path):
    """MiniGrid rewards only success: an episode cut at 3 steps never succeeds; on Empty-5x5 the rules' prior does."""
    _, cut = _run(tmp_path / "cut", total_timesteps=256, max_episode_steps=3)
    assert all(row["success_rate"] == 0.0 and row["episodic_length"] == 3 for row in cut)
    _, rows = _run(tmp_path / "empty", env_id="MiniGrid-Empty-5x5-v0", total_timesteps=512)
    for row in rows:
        if row["episodes_finished"]:
            successes = row["success_rate"] * row["episodes_finished"]
            assert successes == pytest.approx(round(successes))
            assert (row["success_rate"] > 0) == (row["episodic_return"] > 0)
    assert max(row["success_rate"] or 0.0 for row in rows) > 0


@pytest.mark.parametrize("policy", ["mlp", "flat"])
def test_the_baselines_train(tmp_path, policy):
    summary, rows = _run(tmp_path, policy=policy, total_timesteps=256)
    assert summary["global_step"] == 256 and "routing_entropy" not in rows[-1]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["policy_config"]["factory"] == (
        "minigrid.make_baseline_policy"
    )


def test_the_rule_agent_is_a_teacher(tmp_path, monkeypatch):
    calls = []
    action_probs = RuleAgent.action_probs

    def spy(self, obs):
        calls.append(len(obs["image"]))
        return action_probs(self, obs)

    monkeypatch.setattr(RuleAgent, "action_probs", spy)
    summary, rows = _run(tmp_path, teacher="rules", total_timesteps=256, fusion="concat")
    assert summary["teacher"] == "rules" and calls == [TINY["num_envs"]] * (2 * TINY["num_steps"])
    assert all(np.isfinite(row["teacher/distill_loss"]) and 0 < row["teacher/policy_mass"] <= 1 for row in rows)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher must be one of \\('none', 'rules'\\), got 'rules_no_eating'"):
        _run(tmp_path, teacher="rules_no_eating", total_timesteps=128)
    with pytest.raises(TypeError, match=r"args must be a crossmoe\.ppo\.PPOArgs \(or a subclass\), got dict"):
        train({"env_id": "MiniGrid-Empty-5x5-v0"}, train_domain())
    with pytest.raises(TypeError, match=r"domain must be a crossmoe\.ppo\.TrainDomain, got str"):
        train(PPOArgs(env_id="MiniGrid-Empty-5x5-v0", run_dir=str(tmp_path / "x")), "minigrid")
    with pytest.raises(ValueError, match="env_id must name a registered environment, got ''"):
        train(PPOArgs(run_dir=str(tmp_path / "y")), train_domain())
    with pytest.raises(ValueError, match="total_timesteps must be >= num_envs \\* num_steps = 128, got 64"):
        _run(tmp_path, total_timesteps=64)


@contextlib.contextmanager
def _training(run_dir, *extra):
    process = subprocess.Popen(
        _command(run_dir, "--total-timesteps=64000", *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()


def test_resume_after_sigkill_continues_the_run(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    with _training(run_dir, "--checkpoint-every=2") as process:
        deadline = time.monotonic() + 240
        while not (last.exists() and len(read_metrics(run_dir / "metrics.jsonl")) >= 3):
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for the training run"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    state = load_checkpoint(last)
    step, update = state["counters"]["global_step"], state["counters"]["update"]
    assert step == 128 * update and update % 2 == 0 and update >= 2
    result = subprocess.run(
        _command(run_dir, "--resume", f"--total-timesteps={step + 256}", "--no-plots"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["global_step"] for row in rows] == [128 * (index + 1) for index in range(update + 2)]
    assert rows[update]["episodes"] == state["counters"]["episodes"] + rows[update]["episodes_finished"]
    assert load_checkpoint(last)["counters"]["global_step"] == step + 256
    assert load_checkpoint(last)["args"]["env_id"] == "MiniGrid-DoorKey-5x5-v0"


def test_each_domain_says_what_is_its_own():
    minigrid = train_domain()
    assert isinstance(minigrid, TrainDomain) and minigrid.teachers.keys() == {"rules"}
    assert minigrid.policy_options == ("knowledge_pathway",)
    assert minigrid.env.score is None  # the return is the score
    np.testing.assert_array_equal(minigrid.success(np.array([0.9, 0.0, 0.5]), np.array([True, True, False])), [1, 0, 0])
    nethack = pytest.importorskip("crossmoe.nethack")
    domain = nethack.train_domain()
    assert domain.teachers.keys() == {"rules", "rules_no_eating"} and domain.success is None
    assert domain.env.episode_ends is nethack.split_episode_ends
    assert domain.env_options == ("vectorization",) and domain.policy_options == ("knowledge_pathway",)


def _blocks(path, size=6):
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return {tuple(lines[i : i + size]) for i in range(len(lines) - size + 1)}


def test_the_training_examples_are_thin_and_share_no_block_of_six_lines():
    """Issue 28's bar: the loop lives in crossmoe.ppo, each example is <= 250 lines and none repeats the other."""
    nethack, minigrid = EXAMPLES / "ppo_nethack.py", EXAMPLES / "ppo_minigrid.py"
    assert len(nethack.read_text().splitlines()) <= 250 and len(minigrid.read_text().splitlines()) <= 250
    assert not _blocks(nethack) & _blocks(minigrid)


class _AlwaysLeft:
    """A teacher that only ever turns left (action 0)."""

    def action_probs(self, obs):
        probs = np.zeros((len(obs["image"]), 7))
        probs[:, 0] = 1.0
        return probs


def test_imitation_lets_the_teacher_play_then_hands_over_to_ppo(tmp_path, monkeypatch):
    import gymnasium as gym

    played = []
    step = gym.vector.SyncVectorEnv.step

    def spy(self, actions):
        played.append(np.array(actions))
        return step(self, actions)

    monkeypatch.setattr(gym.vector.SyncVectorEnv, "step", spy)
    domain = dataclasses.replace(train_domain(), teachers={"left": lambda envs: _AlwaysLeft()})
    args = PPOArgs(
        **TINY,
        env_id="MiniGrid-Empty-5x5-v0",
        total_timesteps=512,
        max_episode_steps=8,
        teacher="left",
        teacher_coef=10.0,
        learning_rate=1e-3,
        imitation_steps=256,
        run_dir=str(tmp_path / "run"),
        plots=False,
        progress=False,
    )
    train(args, domain)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [row["imitation"] for row in rows] == [True, True, False, False]
    actions = np.stack(played)  # (4 updates x 32 steps, 4 envs)
    assert (actions[:64] == 0).all() and (actions[64:] != 0).any()  # the teacher's turns, then the policy's
    # Turning left never reaches the goal; imitation pulls the policy towards the teacher.
    assert rows[0]["success_rate"] == rows[1]["success_rate"] == 0.0
    assert rows[1]["teacher/policy_mass"] > rows[0]["teacher/policy_mass"]
    with pytest.raises(ValueError, match="imitation_steps=256 needs a teacher to imitate"):
        train(dataclasses.replace(args, teacher="none", run_dir=str(tmp_path / "x")), domain)
