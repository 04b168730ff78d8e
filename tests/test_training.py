"""crossmoe.training: NaN guard, atomic checkpoints, RNG state, metrics, reward scaling, signals."""

import json
import os
import pathlib
import pickle
import random
import re
import signal

import numpy as np
import pytest
import torch
from torch import nn

from crossmoe.training import (
    CheckpointError,
    GracefulExit,
    MetricsLogger,
    NaNGuard,
    NonFiniteTrainingError,
    RewardScaler,
    UnsafeCheckpointError,
    load_checkpoint,
    read_metrics,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _train_step(model, optimizer, guard, x):
    optimizer.zero_grad()
    loss = model(x).square().mean()
    loss.backward()
    ok = guard.check(loss, nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    if ok:
        optimizer.step()
    return ok


def test_nan_guard_rolls_back_to_snapshot_and_lowers_lr():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    guard = NaNGuard(model, optimizer, lr_factor=0.25, max_consecutive=3)
    x = torch.randn(8, 3)
    assert _train_step(model, optimizer, guard, x)
    guard.snapshot()
    good_weights = {k: v.clone() for k, v in model.state_dict().items()}
    good_adam_step = optimizer.state_dict()["state"][0]["step"].clone()
    assert _train_step(model, optimizer, guard, x)  # moves away from the snapshot
    optimizer.param_groups[0]["lr"] = 0.08  # e.g. LR annealing since the snapshot

    assert not _train_step(model, optimizer, guard, torch.full((8, 3), float("nan")))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, good_weights[key], rtol=0, atol=0)
    assert torch.equal(optimizer.state_dict()["state"][0]["step"], good_adam_step)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # the current LR, not the snapshot's, x 0.25
    assert guard.lr_scale == pytest.approx(0.25) and guard.total_faults == 1
    assert all(p.grad is None for p in model.parameters())
    # A good step afterwards resets the consecutive count and trains on.
    assert _train_step(model, optimizer, guard, x)
    assert guard.consecutive_faults == 0 and guard.total_faults == 1


def test_nan_guard_catches_infinite_gradients_with_finite_loss():
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NaNGuard(model, optimizer)
    loss = model(torch.ones(1, 1)).sum()
    loss.backward()
    model.weight.grad.fill_(float("inf"))
    assert not guard.check(loss, nn.utils.clip_grad_norm_(model.parameters(), 1.0))


def test_nan_guard_gives_up_after_max_consecutive_faults():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NaNGuard(model, optimizer, max_consecutive=2)
    bad = torch.full((1, 2), float("nan"))
    assert not _train_step(model, optimizer, guard, bad)
    with pytest.raises(NonFiniteTrainingError, match="2 consecutive"):
        _train_step(model, optimizer, guard, bad)


@pytest.mark.parametrize(("kwargs", "match"), [({"lr_factor": 0.0}, "lr_factor"), ({"max_consecutive": 0}, "max_cons")])
def test_nan_guard_rejects_bad_arguments(kwargs, match):
    model = nn.Linear(1, 1)
    with pytest.raises(ValueError, match=match):
        NaNGuard(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_save_checkpoint_round_trips(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "last.pt", {"step": 3, "w": torch.arange(4)})
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.arange(4))
    assert os.listdir(tmp_path / "sub") == ["last.pt"]  # no temp file left behind


def test_save_checkpoint_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})

    def torn_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_load_checkpoint_names_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_a_training_state_loads_with_weights_only_and_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = NaNGuard(model, optimizer)
    x = torch.randn(16, 4)
    assert _train_step(model, optimizer, guard, x)
    assert not _train_step(model, optimizer, guard, torch.full((16, 4), float("nan")))  # lowers the LR
    assert _train_step(model, optimizer, guard, x)
    scaler = RewardScaler(3)
    for _ in range(4):
        scaler(np.array([1.0, 5.0, -2.0]), np.array([False, True, False]))
    args = {"env_id": "NetHackScore-v0", "seed": 7, "lr": 1e-2, "anneal": True, "max_steps": None, "aux": {"z": 1e-3}}
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "reward_scaler": scaler.state_dict(),
        "nan_guard": guard.state_dict(),
        "counters": {"global_step": 128, "update": 2},
        "recent_returns": [1.5, -2.0],
        "best_return": -float("inf"),
        "rng": rng_state(),
        "args": args,
    }
    expected = (random.random(), np.random.rand(), torch.rand(3))
    path = save_checkpoint(tmp_path / "last.pt", state)

    assert set(torch.load(path, weights_only=True)) == set(state)  # plain data only, not just via our loader
    loaded = load_checkpoint(path)
    assert loaded["args"] == args and loaded["counters"] == state["counters"]
    assert loaded["best_return"] == -float("inf") and loaded["recent_returns"] == [1.5, -2.0]
    restored_model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    restored_model.load_state_dict(loaded["model"])
    for key, value in model.state_dict().items():
        assert torch.equal(restored_model.state_dict()[key], value)
    restored_optimizer = torch.optim.Adam(restored_model.parameters(), lr=1.0)
    restored_optimizer.load_state_dict(loaded["optimizer"])
    assert restored_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    for index, moments in optimizer.state_dict()["state"].items():
        for key, value in moments.items():
            assert torch.equal(restored_optimizer.state_dict()["state"][index][key], value)
    restored_guard = NaNGuard(restored_model, restored_optimizer)
    restored_guard.load_state_dict(loaded["nan_guard"])
    assert (restored_guard.lr_scale, restored_guard.total_faults) == (0.5, 1)
    restored_scaler = RewardScaler(3)
    restored_scaler.load_state_dict(loaded["reward_scaler"])
    reward, end = np.array([2.0, 0.5, -1.0]), np.array([False, False, True])
    np.testing.assert_array_equal(restored_scaler(reward, end), scaler(reward, end))

    set_rng_state(loaded["rng"])
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


class _TouchOnUnpickle:
    """Unpickling this object creates ``marker``: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _torch_save(obj, path):
    torch.save(obj, path)


def _pickle_dump(obj, path):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("write", [_torch_save, _pickle_dump])
def test_load_checkpoint_refuses_a_pickle_that_would_run_code(tmp_path, write):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    write({"model": {"w": torch.zeros(2)}, "payload": _TouchOnUnpickle(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to execute code") as raised:
        load_checkpoint(path)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_load_checkpoint_names_a_truncated_or_corrupt_file(tmp_path, damage):
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.arange(1000.0)}, "step": 3})
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint\n" * 20, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as raised:
        load_checkpoint(path)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, ValueError) and not isinstance(raised.value, UnsafeCheckpointError)


@pytest.mark.parametrize(
    ("state", "where", "kind"),
    [
        ({"reward_scaler": {"returns": np.zeros(3)}}, "state['reward_scaler']['returns']", "numpy.ndarray"),
        ({"recent_returns": [1.0, np.float64(2.0)]}, "state['recent_returns'][1]", "numpy.float64"),
        ({"args": {"seeds": (1, object())}}, "state['args']['seeds'][1]", "object"),
        ({"counters": {np.int64(3): 1}}, "a key of state['counters']", "numpy.int64"),
    ],
)
def test_save_checkpoint_refuses_what_weights_only_cannot_load(tmp_path, state, where, kind):
    with pytest.raises(ValueError, match=re.escape(where) + r" must be plain data .*got " + re.escape(kind)):
        save_checkpoint(tmp_path / "last.pt", {"step": 1, **state})
    assert os.listdir(tmp_path) == []  # nothing written, no temp file left


def test_rng_state_round_trips():
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_metrics_logger_writes_rows_and_truncates_on_resume(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in (10, 20, 30):
            logger.log({"global_step": step, "loss": torch.tensor(0.5), "nan": float("nan"), "n": np.int64(2)})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"global_step": 40, "lo')  # torn by a kill
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [row["global_step"] for row in rows] == [10, 20, 30]
    assert rows[0] == {"global_step": 10, "loss": 0.5, "nan": None, "n": 2}

    with MetricsLogger(tmp_path, resume_after=20) as logger:  # the checkpoint was at step 20
        logger.log({"global_step": 30, "loss": 0.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in lines] == [10, 20, 30]
    assert json.loads(lines[-1])["loss"] == 0.25

    MetricsLogger(tmp_path).close()  # a fresh run starts an empty file
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_metrics_logger_mirrors_scalars_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        logger.log({"global_step": 5, "loss": 1.5, "phase": "warmup"})
        logger.log({"global_step": 10, "loss": 0.5, "phase": "warmup"})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Tags()["scalars"] == ["loss"]  # strings are not scalars
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(5, 1.5), (10, 0.5)]


def test_reward_scaler_divides_by_the_running_std_of_discounted_returns():
    rng = np.random.default_rng(0)
    scaler = RewardScaler(num_envs=3, mode="scale", gamma=0.9, clip=100.0)
    rewards = rng.normal(2.0, 3.0, size=(50, 3))
    ends = rng.random((50, 3)) < 0.1
    returns, history, scaled = np.zeros(3), [], None
    for reward, end in zip(rewards, ends, strict=True):
        returns = returns * 0.9 + reward
        history.append(returns.copy())
        returns[end] = 0.0
        scaled = scaler(reward, end)
    std = np.concatenate(history).std()
    # The running estimate starts from a tiny prior, so it matches the batch std closely.
    np.testing.assert_allclose(scaled, rewards[-1] / std, rtol=1e-3)
    assert scaled.dtype == np.float32


def test_reward_scaler_clip_none_and_state_round_trip():
    clip = RewardScaler(2, mode="clip", clip=1.0)
    np.testing.assert_array_equal(clip(np.array([5.0, -0.5]), np.array([False, False])), [1.0, -0.5])
    np.testing.assert_array_equal(RewardScaler(2, mode="none")(np.array([5.0, -7.0]), np.zeros(2, bool)), [5, -7])
    scaler = RewardScaler(2)
    for _ in range(5):
        scaler(np.array([1.0, 3.0]), np.array([False, True]))
    restored = RewardScaler(2)
    restored.load_state_dict(scaler.state_dict())
    reward, end = np.array([2.0, -1.0]), np.array([False, False])
    np.testing.assert_array_equal(restored(reward, end), scaler(reward, end))
    with pytest.raises(ValueError, match="mode"):
        RewardScaler(2, mode="clip").load_state_dict(scaler.state_dict())
    with pytest.raises(ValueError, match="mode must be one of"):
        RewardScaler(2, mode="normalize")


def test_graceful_exit_turns_sigterm_into_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulExit() as stopper:
        assert stopper.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal interrupts for real
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


# --- generalised advantage estimation -----------------------------------------------------------------


def test_gae_matches_a_hand_computed_example():
    from crossmoe.training import compute_gae

    # gamma 0.9, lambda 0.8, no episode end: delta_t = r_t + 0.9 V_{t+1} - V_t, A_t = delta_t + 0.72 A_{t+1}.
    rewards = torch.tensor([[1.0], [0.0], [2.0], [0.0]])
    values = torch.tensor([[0.5], [0.4], [0.3], [0.2]])
    zeros = torch.zeros(4, 1)
    next_values = torch.tensor([[0.4], [0.3], [0.2], [0.1]])
    advantages, returns = compute_gae(rewards, values, next_values, zeros, zeros, 0.9, 0.8)
    # deltas: -0.11, 1.88, -0.13, 0.86 (t = 3, 2, 1, 0)
    expected = torch.tensor([[1.69993472], [1.166576], [1.8008], [-0.11]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


def test_gae_cuts_at_episode_ends_and_bootstraps_truncations_from_the_final_observation():
    from crossmoe.training import compute_gae

    # Both columns end an episode at t=1; t=2 is the autoreset step, whose value is V(final observation).
    # Column 0 terminates (no bootstrap), column 1 is truncated (bootstraps from values[2]).
    rewards = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    values = torch.tensor([[0.5, 0.5], [0.6, 0.6], [0.7, 0.7], [0.8, 0.8]])
    terminal = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    ends = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    next_values = torch.cat([values[1:], torch.tensor([[0.9, 0.9]])])
    advantages, _ = compute_gae(rewards, values, next_values, terminal, ends, 0.9, 0.8)
    # t=3: 1 + 0.81 - 0.8 = 1.01 in both columns (the new episode).
    torch.testing.assert_close(advantages[3], torch.tensor([1.01, 1.01]))
    # t=1: terminated 1 - 0.6 = 0.4; truncated 1 + 0.9 * 0.7 - 0.6 = 1.03; nothing from t >= 2 leaks in.
    torch.testing.assert_close(advantages[1], torch.tensor([0.4, 1.03]))
    # t=0: 1 + 0.54 - 0.5 = 1.04, plus 0.72 A_1.
    torch.testing.assert_close(advantages[0], torch.tensor([1.04 + 0.72 * 0.4, 1.04 + 0.72 * 1.03]))


def test_gae_names_inputs_of_different_shapes():
    from crossmoe.training import compute_gae

    with pytest.raises(ValueError, match="must share one"):
        compute_gae(
            torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 2), 0.9, 0.8
        )


def test_masked_mean_averages_the_kept_entries_only():
    from crossmoe.training import masked_mean

    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    assert masked_mean(x, torch.tensor([1.0, 1.0, 1.0, 0.0])).item() == 2.0
    assert masked_mean(x, torch.zeros(4)).item() == 0.0
