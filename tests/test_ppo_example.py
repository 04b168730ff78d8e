"""examples/ppo_nethack.py on crossmoe.ppo: GAE, autoreset masking, the schedule, NaN recovery, checkpoints, resume."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nle")
pytest.importorskip("tyro")

from example_scripts import load_example

from crossmoe.nethack import RuleAgent
from crossmoe.ppo import make_scheduler
from crossmoe.routing import SparsemaxRouter
from crossmoe.schedule import DistillationSchedule, TemperatureAnnealingScheduler
from crossmoe.training import load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ppo_nethack.py"


ppo = load_example("ppo_nethack")
# Tiny NetHack runs: 2 envs x 32 steps = 64 env steps per update.
TINY = {
    "num_envs": 2,
    "num_steps": 32,
    "num_minibatches": 2,
    "update_epochs": 2,
    "dim": 32,
    "progress": False,
    "compile": "off",
}


def _run(tmp_path, **overrides):
    args = ppo.Args(**{**TINY, "run_dir": str(tmp_path / "run"), "plots": False, **overrides})
    summary = ppo.main(args)
    return summary, read_metrics(tmp_path / "run" / "metrics.jsonl")


def test_a_plain_ppoargs_trains_with_the_nethack_domains_defaults(tmp_path):
    """The options only the example's Args has (vectorization, knowledge_pathway) keep the factories' defaults."""
    from crossmoe.nethack import train_domain
    from crossmoe.ppo import PPOArgs, train

    args = PPOArgs(env_id="NetHackScore-v0", total_timesteps=64, run_dir=str(tmp_path / "run"), plots=False, **TINY)
    summary = train(args, train_domain())
    assert summary["global_step"] == 64 and "knowledge_pathway" not in summary
    assert (
        load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["policy_config"]["knowledge_pathway"] == "prior"
    )


def test_next_step_autoreset_contract_the_loop_masks():
    """After an episode ends, the next step ignores its action, gives reward 0 and starts the new episode."""
    from crossmoe.nethack import make_vector_env

    observations = []
    for reset_action in (0, 5):
        envs = make_vector_env(1, seed=3, max_episode_steps=4)
        envs.reset(seed=3)
        for _ in range(3):
            _, _, terminated, truncated, _ = envs.step(np.array([1]))
            assert not (terminated | truncated).any()
        _, _, terminated, truncated, _ = envs.step(np.array([1]))
        assert truncated.all() and not terminated.any()
        obs, reward, terminated, truncated, _ = envs.step(np.array([reset_action]))
        assert reward[0] == 0 and not (terminated | truncated).any()
        observations.append(obs["glyphs"].copy())
        envs.close()
    np.testing.assert_array_equal(observations[0], observations[1])  # the action at the reset step is ignored


def test_loop_masks_exactly_the_reset_steps(tmp_path):
    # Episodes are cut at 10 steps, so each env runs 10 valid steps then 1 reset step:
    # 128 steps per env contain floor(128 / 11) = 11 reset steps.
    summary, rows = _run(tmp_path, total_timesteps=256, max_episode_steps=10)
    assert summary["global_step"] == 256
    assert sum(row["reset_steps"] for row in rows) == 11 * TINY["num_envs"]
    lengths = [row["episodic_length"] for row in rows if row["episodic_length"] is not None]
    assert lengths and all(length == 10 for length in lengths)
    # Rollout and update share the network mode and the routing, so the first minibatch has ratio 1.
    assert all(row["first_minibatch_ratio_error"] < 1e-5 for row in rows)


def test_schedule_drives_the_router(tmp_path, monkeypatch):
    seen = []
    forward = SparsemaxRouter.forward

    def spy(self, x):
        seen.append((self.alpha, self.temperature))
        return forward(self, x)

    monkeypatch.setattr(SparsemaxRouter, "forward", spy)
    _, rows = _run(tmp_path, total_timesteps=256, update_epochs=1)
    schedule = TemperatureAnnealingScheduler.from_fractions(256)
    expected = [schedule(row["global_step"] - 64) for row in rows]  # set at the start of each update
    assert [row["phase"] for row in rows] == [state.phase for state in expected]
    assert [row["phase"] for row in rows] == ["warmup", "transition", "transition", "finetune"]
    np.testing.assert_allclose([row["alpha"] for row in rows], [state.alpha for state in expected])
    # Each update runs 32 rollout forwards, 1 bootstrap value and 2 minibatches.
    per_update = 32 + 1 + 2
    assert len(seen) == per_update * len(rows)
    for index, state in enumerate(expected):
        calls = seen[index * per_update : (index + 1) * per_update]
        assert all(call == (state.alpha, state.temperature) for call in calls)


def test_recipe_schedule_counts_episodes():
    args = ppo.Args(schedule_unit="episodes")
    schedule = make_scheduler(args, num_iterations=10)
    assert (schedule.warmup, schedule.transition, schedule.total, schedule.unit) == (1000, 3000, 5000, "episodes")
    scaled = make_scheduler(ppo.Args(num_envs=4, num_steps=10), num_iterations=100)
    assert (scaled.warmup, scaled.transition, scaled.total) == (800, 2400, 4000)
    weighted = make_scheduler(ppo.Args(schedule_coefficients='{"finetune": {"load_balance": 2}}'), 10)
    assert weighted(10**9).coefficients == {"load_balance": 2.0} and weighted(0).coefficients == {}
    plain = make_scheduler(ppo.Args(schedule_coefficients=""), 10)
    assert plain(10**9).coefficients == {}


def test_default_schedule_keeps_experts_alive_from_the_annealing_on():
    """The load-balance weight x10 once annealing starts: what kept all four experts in use (docs/results.md)."""
    schedule = make_scheduler(ppo.Args(num_envs=4, num_steps=10), num_iterations=100)
    assert schedule(0).coefficients == {}
    assert schedule(1000).coefficients == schedule(10**6).coefficients == {"load_balance": 10.0}
    weights = ppo.Args().aux.scaled(schedule(10**6).coefficients)
    assert weights.load_balance == 10 * ppo.Args().aux.load_balance


def test_nan_injection_rolls_back_and_training_recovers(tmp_path):
    summary, rows = _run(tmp_path, total_timesteps=256, inject_nan_at_update=1)
    assert summary["nan_rollbacks"] == 1 and summary["global_step"] == 256
    assert [row["nan_rollbacks"] for row in rows] == [0, 1, 1, 1]
    # Linear annealing over 4 updates (1, 0.75, 0.5, 0.25) x 3e-4, halved from the fault on.
    assert [row["learning_rate"] for row in rows] == pytest.approx([3e-4, 1.125e-4, 7.5e-5, 3.75e-5])
    for row in rows[1:]:
        assert all(np.isfinite(row[key]) for key in ("pg_loss", "v_loss", "entropy", "grad_norm"))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_invalid_minibatch_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_minibatches must divide num_envs=2"):
        _run(tmp_path, num_minibatches=4)


@pytest.mark.parametrize(
    "options",
    [
        {"fusion": "concat"},
        {"policy": "mlp"},
        {"policy": "flat"},
        {"knowledge_pathway": "attention"},
        {"knowledge_pathway": "rules"},
    ],
)
def test_ablations_train(tmp_path, options):
    summary, rows = _run(tmp_path, total_timesteps=128, **options)
    assert summary["global_step"] == 128 and len(rows) == 2
    assert all(np.isfinite(row["v_loss"]) for row in rows)
    assert ("routing_entropy" in rows[0]) == (options.get("policy", "moe") == "moe")


def test_teacher_probabilities_are_computed_once_per_rollout_step_and_pull_the_policy(tmp_path, monkeypatch):
    calls = []
    action_probs = RuleAgent.action_probs

    def spy(self, obs):
        calls.append(len(obs["blstats"]))
        assert "atoms" in obs  # the agent's own atoms, not computed a second time
        return action_probs(self, obs)

    monkeypatch.setattr(RuleAgent, "action_probs", spy)
    summary, rows = _run(tmp_path, total_timesteps=256, teacher="rules", teacher_coef=2.0, update_epochs=3)
    assert calls == [TINY["num_envs"]] * (4 * TINY["num_steps"])  # per step, never in the 3 epochs of an update
    assert summary["teacher"] == "rules" and [row["teacher_coef"] for row in rows] == [2.0] * 4
    assert all(np.isfinite(row["teacher/distill_loss"]) for row in rows)
    assert all(0.0 < row["teacher/policy_mass"] <= 1.0 for row in rows)


@pytest.mark.parametrize("teacher_loss", ["cross_entropy", "top_set"])
def test_a_strong_teacher_weight_makes_the_policy_follow_the_rules(tmp_path, teacher_loss):
    """A large weight dominates the PPO terms: the policy's mass on the teacher's actions climbs (0.22 -> 0.54);
    ``top_set`` pulls the same mass onto them, whatever its split among them."""
    _, rows = _run(
        tmp_path, total_timesteps=640, teacher="rules", teacher_coef=20.0, learning_rate=1e-3, teacher_loss=teacher_loss
    )
    mass = [row["teacher/policy_mass"] for row in rows]
    assert mass[-1] > mass[0] + 0.2 and max(mass[:3]) < min(mass[-3:]), mass


def test_teacher_epsilon_softens_the_target_the_policy_is_pulled_to(tmp_path, monkeypatch):
    """``teacher_epsilon`` mixes epsilon / A into every stored target; the policy-mass metric still counts the
    rules' own actions, not every action the softened target gives a little."""
    from crossmoe import ppo as trainer

    targets = []
    loss = trainer.distillation_loss

    def spy(logits, target, mask, kind):
        targets.append(target.detach().clone())
        return loss(logits, target, mask, kind=kind)

    monkeypatch.setattr(trainer, "distillation_loss", spy)
    _, rows = _run(tmp_path, total_timesteps=128, teacher="rules", teacher_epsilon=0.23)
    target = torch.cat(targets)
    assert torch.allclose(target.amin(-1), torch.full((len(target),), 0.01)), target.amin(-1)  # 0.23 / 23
    torch.testing.assert_close(target.sum(-1), torch.ones(len(target)))
    assert all(row["teacher/policy_mass"] < 0.9 for row in rows)  # a fresh policy on the rules' few actions
    with pytest.raises(ValueError, match=r"teacher_epsilon=0\.1 softens a teacher: pass --teacher"):
        _run(tmp_path, total_timesteps=128, teacher_epsilon=0.1)
    with pytest.raises(ValueError, match=r"teacher_epsilon: epsilon must be a probability in \[0, 1\], got 2"):
        _run(tmp_path, total_timesteps=128, teacher="rules", teacher_epsilon=2)


@pytest.mark.parametrize("policy", ["mlp", "flat"])
def test_the_baselines_take_a_teacher(tmp_path, policy):
    summary, rows = _run(tmp_path, total_timesteps=128, policy=policy, teacher="rules")
    assert summary["global_step"] == 128 and all(np.isfinite(row["teacher/distill_loss"]) for row in rows)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"teacher": "oracle"}, "teacher must be one of"),
        ({"teacher": "rules", "teacher_coef": -1.0}, "teacher_coef.*coef must be a finite number >= 0"),
        ({"teacher": "rules", "teacher_anneal_start": 100}, "anneal_start and anneal_end must be given together"),
        (
            {"teacher": "rules", "teacher_anneal_start": 100, "teacher_anneal_end": 50},
            "teacher_anneal_end.*anneal_end must be >= anneal_start",
        ),
        ({"teacher": "rules", "teacher_final_coef": 0.5}, "teacher_final_coef.*final_coef needs anneal_start"),
    ],
)
def test_bad_teacher_arguments_are_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        _run(tmp_path, total_timesteps=128, **overrides)


def _command(run_dir, *extra):
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in TINY.items() if key != "progress"]
    return [sys.executable, str(EXAMPLE), *flags, "--no-progress", f"--run-dir={run_dir}", *extra]


def test_example_runs_as_a_script_and_writes_its_outputs(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        _command(run_dir, "--total-timesteps=128", "--checkpoint-every=1", "--track-tensorboard"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished: 128 env steps" in result.stdout
    outputs = ("metrics.jsonl", "summary.json", "args.json", "checkpoints/last.pt", "learning_curve.png", "routing.png")
    for name in outputs:
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["global_step"] for row in rows] == [64, 128]
    expected_keys = {
        "sps", "episodic_return", "episodic_length", "score", "phase", "alpha", "temperature", "routing_entropy",
        "attention_sparsity", "context_norm", "grad_norm", "approx_kl", "clipfrac", "nan_rollbacks",
        "aux/load_balance", "aux/router_z", "aux/diversity", "aux/orthogonality", "aux/alignment", "aux/temporal",
        "aux/overlap", "pg_loss", "v_loss", "entropy", "usage/survival",
    }  # fmt: skip
    assert expected_keys <= set(rows[-1])
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 128


@contextlib.contextmanager
def _training(run_dir, *extra, stdout):
    """A long training run in a subprocess, killed on the way out if it is still running."""
    process = subprocess.Popen(
        _command(run_dir, "--total-timesteps=64000", *extra), stdout=stdout, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()


def _wait_for(predicate, process, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the training run")


def test_resume_after_sigkill_continues_counters_schedule_and_metrics(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    teacher = ("--teacher=rules", "--teacher-anneal-start=0", "--teacher-anneal-end=100000")
    with _training(run_dir, "--checkpoint-every=2", *teacher, stdout=subprocess.DEVNULL) as process:
        _wait_for(lambda: last.exists() and len(read_metrics(run_dir / "metrics.jsonl")) >= 3, process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    state = load_checkpoint(last)
    assert {"model", "optimizer", "scheduler", "reward_scaler", "counters", "rng", "args", "nan_guard"} <= set(state)
    step, update = state["counters"]["global_step"], state["counters"]["update"]
    assert step == 64 * update and update % 2 == 0 and update >= 2

    result = subprocess.run(
        _command(run_dir, "--resume", f"--total-timesteps={step + 128}", "--no-plots"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = [row["global_step"] for row in rows]
    assert steps == [64 * (index + 1) for index in range(update + 2)]  # rows after the checkpoint were replaced
    assert [row["update"] for row in rows] == list(range(1, update + 3))
    # The schedule keeps the original run's scale (64000 steps), so the resumed rows are still in warm-up.
    schedule = TemperatureAnnealingScheduler(**state["scheduler"])
    assert schedule.total == 64000
    assert [row["phase"] for row in rows[-2:]] == [schedule(step).phase, schedule(step + 64).phase]
    resumed = rows[update]  # the first row of the resumed run
    assert resumed["episodes"] == state["counters"]["episodes"] + resumed["episodes_finished"]
    # So does the teacher's weight, set at the start of each update from the env-step counter.
    teacher_schedule = DistillationSchedule(**state["teacher_schedule"])
    expected = {"coef": 3.0, "anneal_start": 0.0, "anneal_end": 100000.0, "final_coef": 0.0}
    assert teacher_schedule.state_dict() == expected
    assert [row["teacher_coef"] for row in rows] == pytest.approx([teacher_schedule(s - 64) for s in steps])
    assert rows[-1]["teacher_coef"] < rows[0]["teacher_coef"]
    assert load_checkpoint(last)["counters"]["global_step"] == step + 128


def test_sigterm_saves_a_checkpoint_before_exit(tmp_path):
    run_dir = tmp_path / "run"
    with _training(run_dir, "--checkpoint-every=1000", stdout=subprocess.PIPE) as process:
        metrics = run_dir / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and len(read_metrics(metrics)) >= 1, process)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    assert "stopped by signal" in stdout
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    rows = read_metrics(run_dir / "metrics.jsonl")
    # The partial rollout was dropped: every counter is the one of the last finished update.
    assert state["counters"]["global_step"] == rows[-1]["global_step"]
    assert state["counters"]["episodes"] == rows[-1]["episodes"]
    assert state["counters"]["update"] == rows[-1]["update"]
    assert json.loads((run_dir / "summary.json").read_text())["interrupted"] is True


def test_plots_cli_redraws_a_run_and_compares_runs(tmp_path):
    _run(tmp_path, total_timesteps=128)
    run_dir, out = tmp_path / "run", tmp_path / "comparison.png"
    plots = ROOT / "examples" / "plots.py"
    for command in ([str(run_dir)], [str(run_dir), str(run_dir), "--out", str(out)]):
        result = subprocess.run(
            [sys.executable, str(plots), *command], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "learning_curve.png").is_file() and (run_dir / "routing.png").is_file()
    assert out.is_file()


def test_evaluate_a_checkpoint(tmp_path):
    evaluate = load_example("evaluate")
    _run(tmp_path, total_timesteps=128, max_episode_steps=10)
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pt")
    out = tmp_path / "eval.json"
    result = evaluate.evaluate(evaluate.Args(checkpoint, episodes=3, num_envs=2, out=str(out)))
    assert result["episodes"] == 3 and result["length_mean"] == 10  # the training run's time limit
    assert result["global_step"] == 128
    assert set(result["expert_usage"]) == {"survival", "combat", "exploration", "general"}
    assert sum(result["expert_usage"].values()) == pytest.approx(1.0)
    assert json.loads(out.read_text()) == result


def test_evaluate_plays_the_rules_softened_and_only_the_rules(monkeypatch):
    """``--epsilon`` reaches the rule agent that plays, and the summary records it; with random play it is
    refused by name."""
    evaluate = load_example("evaluate")
    calls = []
    monkeypatch.setattr(evaluate.evaluation, "evaluate", lambda agent, *a, metadata: calls.append((agent, metadata)))
    evaluate.run(evaluate.Args(agent="rules", epsilon=0.1))
    evaluate.run(evaluate.Args(agent="rules_no_eating"))
    (soft, soft_metadata), (plain, _) = calls
    assert (soft.epsilon, soft_metadata["epsilon"], plain.epsilon) == (0.1, 0.1, 0.0)
    with pytest.raises(ValueError, match=r"epsilon softens a rule agent, got --epsilon 0\.1 with --agent random"):
        evaluate.run(evaluate.Args(agent="random", epsilon=0.1))


@pytest.mark.slow
def test_learns_minihack_room_5x5(tmp_path):
    """The learning check, on a fifth of its budget: random play scores about 0.44, the bar is 0.8.

    Without the knowledge pathway: with it, the path atoms lead to the goal staircase from the first
    update (test_knowledge_prior_alone_solves_room_5x5), so there would be nothing left to learn.
    """
    pytest.importorskip("minihack")
    args = ppo.Args(
        env_id="MiniHack-Room-5x5-v0",
        seed=1,
        total_timesteps=102_400,
        run_dir=str(tmp_path / "run"),
        progress=False,
        knowledge=False,
    )
    summary = ppo.main(args)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["rolling_return"] < 0.8  # it starts near random play
    assert summary["rolling_return"] >= 0.8, [row["rolling_return"] for row in rows[::10]]
    assert (tmp_path / "run" / "learning_curve.png").is_file()


@pytest.mark.parametrize("policy", ["moe", "mlp", "flat"])
def test_load_agent_rebuilds_the_trained_agent_in_one_line(tmp_path, policy):
    """load_agent(checkpoint) gives the trained weights at the routing state of the checkpoint's step."""
    from crossmoe.nethack import load_agent, make_vector_env

    _run(tmp_path, policy=policy, total_timesteps=128)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    agent = load_agent(path)
    state = load_checkpoint(path)
    assert not agent.training
    for name, tensor in agent.state_dict().items():
        torch.testing.assert_close(tensor, state["model"][name])
    envs = make_vector_env(2, seed=5)
    obs, _ = envs.reset(seed=5)
    action, *_ = agent.get_action_and_value(obs)  # the vector env's numpy observation, as it comes
    assert action.shape == (2,)
    envs.close()
    if policy == "moe":
        routing = TemperatureAnnealingScheduler(**state["scheduler"])(state["counters"]["global_step"])
        routers = [module for module in agent.modules() if isinstance(module, SparsemaxRouter)]
        assert routers and all((r.alpha, r.temperature) == (routing.alpha, routing.temperature) for r in routers)


def test_load_agent_needs_a_policy_config(tmp_path):
    from crossmoe.nethack import load_agent
    from crossmoe.training import save_checkpoint

    path = save_checkpoint(tmp_path / "bare.pt", {"model": {}})
    with pytest.raises(ValueError, match=r"must hold 'policy_config' and 'model', it lacks \['policy_config'\]"):
        load_agent(path)


def test_compile_falls_back_to_eager_when_the_backend_fails(tmp_path, broken_compiler):
    """A machine without a working compiler still trains: --compile warns and goes on eagerly."""
    with pytest.warns(RuntimeWarning, match="--compile rollout failed, training eagerly"):
        summary, rows = _run(tmp_path, compile="rollout", total_timesteps=64)
    assert summary["global_step"] == 64 and rows[-1]["first_minibatch_ratio_error"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "mode"), [("moe", "all"), ("mlp", "all"), ("moe", "rollout"), ("flat", "rollout")])
def test_compiled_training_runs_and_matches_the_rollout_policy(tmp_path, policy, mode):
    """--compile covers both agents; the first minibatch still has ratio 1 (compiled rollout = update policy)."""
    torch._dynamo.reset()
    summary, rows = _run(tmp_path, policy=policy, compile=mode, total_timesteps=128)
    assert summary["global_step"] == 128
    assert all(row["first_minibatch_ratio_error"] < 1e-4 for row in rows)


@pytest.mark.slow
def test_knowledge_prior_alone_solves_room_5x5():
    """The untrained agent's knowledge pathway walks to the goal staircase; without it the agent is near random."""
    pytest.importorskip("minihack")
    from crossmoe.evaluation import PolicyAgent, evaluate
    from crossmoe.nethack import make_env, make_policy

    env = make_env("MiniHack-Room-5x5-v0")
    torch.manual_seed(0)
    returns = {}
    for knowledge in (True, False):
        policy = make_policy(env=env, knowledge=knowledge).eval()
        result = evaluate(PolicyAgent(policy, seed=0), "MiniHack-Room-5x5-v0", episodes=24, num_envs=4, seed=123)
        returns[knowledge] = float(result.metric("return").mean())
    env.close()
    assert returns[True] >= 0.8 > returns[False], returns
