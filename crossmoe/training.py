"""Machinery that keeps a training run alive: NaN guard, atomic checkpoints, metrics and reward scaling.

The PPO loop itself is :func:`crossmoe.ppo.train`, written out in one
function; everything here is reusable by any PyTorch training loop:

- :class:`NaNGuard` checks the loss and gradient norm before every optimizer
  step and rolls the model and optimizer back to the last good snapshot on a
  fault, lowering the learning rate.
- :func:`save_checkpoint` writes atomically (temp file, ``fsync``,
  ``os.replace``), so a crash or ``SIGKILL`` never leaves a torn file;
  :func:`load_checkpoint` reads it back with ``torch.load(weights_only=True)``,
  so loading a checkpoint never runs code. A checkpoint therefore holds plain
  data only (dicts, lists, tuples, strings, numbers, booleans, ``None`` and
  tensors), which :func:`save_checkpoint` checks before it writes.
- :func:`rng_state` / :func:`set_rng_state` capture Python, NumPy and torch RNGs
  as plain data.
- :class:`MetricsLogger` appends one JSON row per update to ``metrics.jsonl``
  (truncated to the checkpoint on resume) and mirrors scalars to TensorBoard.
- :class:`RewardScaler` clips or scales rewards with checkpointable state.
- :class:`GracefulExit` turns ``SIGINT``/``SIGTERM`` into a flag the loop polls.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import pickletools
import random
import re
import signal
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "GracefulExit",
    "MetricsLogger",
    "NaNGuard",
    "NonFiniteTrainingError",
    "RewardScaler",
    "UnsafeCheckpointError",
    "compute_gae",
    "load_checkpoint",
    "masked_mean",
    "read_metrics",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


class NonFiniteTrainingError(RuntimeError):
    """Raised by :class:`NaNGuard` after too many consecutive non-finite steps."""


class CheckpointError(ValueError):
    """Raised by :func:`load_checkpoint` for a file that is not a complete checkpoint (truncated or corrupt)."""


class UnsafeCheckpointError(CheckpointError):
    """Raised by :func:`load_checkpoint` for a file that would run code when unpickled.

    Such a file holds objects other than plain data and tensors (a class, a
    function call), which ``torch.load(weights_only=True)`` refuses to build.
    """


class NaNGuard:
    """Skip non-finite optimizer steps and roll back to the last good weights.

    Call :meth:`check` after ``backward()`` (and after clipping, with the
    gradient norm that ``clip_grad_norm_`` returns) and step the optimizer
    only when it returns True. On a non-finite loss or gradient norm it:

    1. restores the model and optimizer state (weights, moments, step counts)
       from the last :meth:`snapshot` (taken at construction, then whenever
       the loop calls it);
    2. multiplies every param group's current ``lr``, and :attr:`lr_scale`, by ``lr_factor``;
    3. counts the fault in :attr:`total_faults`;
    4. raises :class:`NonFiniteTrainingError` after ``max_consecutive`` faults
       in a row.

    A loop that sets the learning rate itself (annealing) must multiply it by
    :attr:`lr_scale`, which the guard keeps in :meth:`state_dict`.

    Args:
        model: The module whose parameters are guarded.
        optimizer: Its optimizer.
        lr_factor: Learning-rate multiplier applied on each fault, in ``(0, 1]``.
        max_consecutive: Faults in a row before giving up, ``>= 1``.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> guard = NaNGuard(model, optimizer)
        >>> loss = model(torch.full((1, 2), float("nan"))).sum()
        >>> loss.backward()
        >>> guard.check(loss, nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        False
        >>> guard.total_faults, optimizer.param_groups[0]["lr"]
        (1, 0.0005)
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, lr_factor: float = 0.5, max_consecutive: int = 5
    ) -> None:
        if not (0.0 < lr_factor <= 1.0):
            raise ValueError(f"lr_factor must be in (0, 1], got {lr_factor!r}")
        if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ValueError(f"max_consecutive must be an integer >= 1, got {max_consecutive!r}")
        self.model, self.optimizer = model, optimizer
        self.lr_factor, self.max_consecutive = lr_factor, max_consecutive
        self.lr_scale = 1.0
        self.total_faults = 0
        self.consecutive_faults = 0
        self._snapshot: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.snapshot()

    def snapshot(self) -> None:
        """Remember the current model and optimizer state as the last good one."""
        self._snapshot = (
            {key: value.detach().clone() for key, value in self.model.state_dict().items()},
            copy.deepcopy(self.optimizer.state_dict()),
        )

    def check(self, loss: Tensor, grad_norm: Tensor | float | None = None) -> bool:
        """True if the step may proceed; otherwise roll back, lower the LR and return False."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if grad_norm is not None:
            finite = finite and math.isfinite(float(grad_norm))
        if finite:
            self.consecutive_faults = 0
            return True
        self.total_faults += 1
        self.consecutive_faults += 1
        self.rollback()
        if self.consecutive_faults >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"{self.consecutive_faults} consecutive non-finite losses or gradients "
                f"(max_consecutive={self.max_consecutive}); the learning rate is already down to "
                f"{self.lr_scale:g}x. Lower the learning rate or check the inputs for NaN/inf."
            )
        return False

    def rollback(self) -> None:
        """Restore the last snapshot, clear the gradients and lower the learning rate."""
        model_state, optimizer_state = self._snapshot
        # The snapshot's learning rates may be stale (a loop that anneals sets them every update).
        current_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scale *= self.lr_factor
        for group, lr in zip(self.optimizer.param_groups, current_lrs, strict=True):
            group["lr"] = lr * self.lr_factor

    def state_dict(self) -> dict[str, Any]:
        """The learning-rate scale and the fault count, as plain Python numbers."""
        return {"lr_scale": float(self.lr_scale), "total_faults": int(self.total_faults)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lr_scale = float(state["lr_scale"])
        self.total_faults = int(state["total_faults"])
        self.consecutive_faults = 0
        self.snapshot()


# What ``torch.load(weights_only=True)`` rebuilds without running code; exact types, since a
# subclass (a NumPy float, an ``IntEnum``) is pickled by reference to its class.
_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.device)
_PLAIN_TENSORS = (Tensor, nn.Parameter)
_PLAIN_DATA = "dict, list, tuple, str, int, float, bool, None, torch.Tensor, torch.Size, torch.dtype or torch.device"


def _check_plain(value: Any, where: str, containers: set[int]) -> None:
    """Raise ValueError naming ``where`` if ``value`` holds anything ``torch.load(weights_only=True)`` rejects."""
    kind = type(value)
    if kind in _PLAIN_SCALARS or kind in _PLAIN_TENSORS or kind is torch.Size:
        return
    if kind not in (dict, OrderedDict, list, tuple):
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise ValueError(
            f"{where} must be plain data ({_PLAIN_DATA}), which load_checkpoint can read back with "
            f"torch.load(weights_only=True), got {name}; convert it first (a NumPy array with .tolist() or "
            "torch.from_numpy, a NumPy scalar with .item(), an object to its state_dict())"
        )
    if id(value) in containers:  # a container that holds itself: already being checked
        return
    containers.add(id(value))
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]", containers)
    else:
        for key, item in value.items():
            _check_plain(key, f"a key of {where}", containers)
            _check_plain(item, f"{where}[{key!r}]", containers)
        if kind is OrderedDict:  # state_dict() sets a ``_metadata`` attribute, pickled along with the items
            for name, item in vars(value).items():
                _check_plain(item, f"{where}.{name}", containers)
    containers.discard(id(value))


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically.

    The bytes go to a temporary file in the same directory, which is flushed,
    ``fsync``-ed and then moved over ``path`` with ``os.replace``. A reader
    therefore sees either the old checkpoint or the new one, never a torn file,
    even if the process is killed mid-write.

    :func:`load_checkpoint` reads checkpoints with ``weights_only=True``, so
    ``state`` may hold only plain data: ``dict`` (``OrderedDict`` included),
    ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``,
    tensors, ``torch.Size``, ``torch.dtype`` and ``torch.device``. Module and
    optimizer ``state_dict()``, :func:`rng_state` and the ``state_dict()`` of
    :class:`NaNGuard` and :class:`RewardScaler` are plain data.

    Raises:
        ValueError: ``state`` holds anything else (a NumPy array or scalar, a
            custom object); the message names where, and nothing is written.
    """
    _check_plain(dict(state), "state", set())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory
        return path
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def _damage(path: Path) -> str | None:
    """Why ``path`` is not a complete ``torch.save`` file, or None if its archive and pickle are whole.

    Reads the file without unpickling it: a zip archive (what ``torch.save``
    writes) must open, pass its CRC checks and hold a ``data.pkl`` record; that
    pickle, or the file itself when it is not a zip archive, must parse to its
    ``STOP`` opcode.
    """
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
                if broken is not None:
                    return f"record {broken!r} fails its CRC check"
                records = [name for name in archive.namelist() if name.rsplit("/", 1)[-1] == "data.pkl"]
                if not records:
                    return "the zip archive has no data.pkl record"
                data = archive.read(records[0])
        except (zipfile.BadZipFile, EOFError, ValueError) as error:
            return f"the zip archive cannot be read: {error}"
    else:
        data = path.read_bytes()
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as error:  # genops raises ValueError, but malformed arguments raise others
        return f"the pickle cannot be parsed: {error}"
    return None


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    The file is loaded with ``torch.load(weights_only=True)``, which rebuilds
    plain data and tensors only and never runs code from the file; there is no
    fallback to ``weights_only=False``. Checkpoints written by
    :func:`save_checkpoint` hold plain data only, so they always load.

    Raises:
        FileNotFoundError: There is no file at ``path``.
        CheckpointError: The file is truncated or corrupt (not a complete
            ``torch.save`` file).
        UnsafeCheckpointError: The file is a complete pickle that references
            classes or functions besides plain data and tensors: loading it
            would run code, so it is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails on a damaged file with OSError, IndexError, EOFError, ...
        try:
            damage = _damage(path)
        except OSError:  # the file cannot be read at all: torch.load's error says why
            damage = ""
        if damage:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is truncated or corrupt ({damage}); save_checkpoint writes atomically, "
                "so the file was cut short or damaged after it was written (an interrupted copy, a full disk)"
            ) from error
        if damage is None and isinstance(error, pickle.UnpicklingError):
            found = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
            culprit = f" ({found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"refusing to execute code from checkpoint {str(path)!r}: it references a class or function"
                f"{culprit} besides plain data and tensors, which torch.load(weights_only=True) will not run. "
                "save_checkpoint never writes such a file; do not load it unless you know where it comes from"
            ) from error
        raise


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU and CUDA) RNG states, as plain data.

    Python's state is its tuple of ints; NumPy's is the dict of
    ``np.random.get_state(legacy=False)`` with the Mersenne Twister key as a
    list of ints; torch's are byte tensors. All of it can go into a checkpoint.
    """
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`rng_state` (wherever ``map_location`` put the tensors)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([device_state.cpu() for device_state in state["cuda"]])


class MetricsLogger:
    """One JSON row per update in ``run_dir/metrics.jsonl``, optionally mirrored to TensorBoard.

    Args:
        run_dir: Directory of the run.
        tensorboard: Also write every numeric value as a TensorBoard scalar
            (``run_dir/tensorboard``), with ``step_key`` as the step.
        resume_after: When resuming, the ``step_key`` value of the checkpoint.
            Rows logged after it (by the run that was killed) are dropped, so
            the file continues exactly where the checkpoint does. ``None``
            starts a fresh file.
        step_key: The row field used as the step.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        tensorboard: bool = False,
        resume_after: int | None = None,
        step_key: str = "global_step",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.step_key = step_key
        if resume_after is None:
            self.path.write_text("")
        else:
            self._truncate(resume_after)
        self._handle = self.path.open("a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Events after the checkpoint's step were logged by the killed run and are logged again.
            purge = None if resume_after is None else resume_after + 1
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)

    def _truncate(self, last_step: int) -> None:
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line torn by the kill
                    continue
                if row.get(self.step_key, math.inf) <= last_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, row: Mapping[str, Any]) -> None:
        """Append ``row``; NaN and infinities are written as ``null``."""
        clean = {key: _jsonable(value) for key, value in row.items()}
        self._handle.write(json.dumps(clean) + "\n")
        self._handle.flush()
        if self._writer is not None:
            step = int(row[self.step_key])
            for key, value in clean.items():
                if key != self.step_key and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._handle.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file, skipping a torn last line."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class RewardScaler:
    r"""Reward clipping or scaling for a vector of environments, with checkpointable state.

    Modes:

    - ``"none"``: rewards pass through.
    - ``"clip"``: :math:`\operatorname{clip}(r, -c, c)`.
    - ``"scale"``: divide by the running standard deviation of the discounted
      return :math:`G_t = \gamma G_{t-1} + r_t` (reset at episode ends), then
      clip to :math:`[-c, c]`. This keeps the value targets of NetHack's score
      rewards, which range from 1 to hundreds, at unit scale without changing
      which policy is optimal. The statistics are updated with every call.

    Args:
        num_envs: Number of parallel environments.
        mode: ``"none"``, ``"clip"`` or ``"scale"``.
        gamma: Discount of the return whose scale is tracked.
        clip: Bound ``c``.
        epsilon: Added to the variance before the square root.
    """

    MODES = ("none", "clip", "scale")

    def __init__(
        self, num_envs: int, mode: str = "scale", gamma: float = 0.99, clip: float = 10.0, epsilon: float = 1e-8
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip!r}")
        self.mode, self.gamma, self.clip, self.epsilon = mode, gamma, clip, epsilon
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def __call__(self, rewards: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Scaled rewards for one vector step; ``ends`` marks episodes that ended at this step."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if self.mode == "none":
            return rewards.astype(np.float32)
        if self.mode == "clip":
            return np.clip(rewards, -self.clip, self.clip).astype(np.float32)
        self.returns = self.returns * self.gamma + rewards
        self._update(self.returns)
        self.returns[np.asarray(ends, dtype=bool)] = 0.0
        return np.clip(rewards / math.sqrt(self.var + self.epsilon), -self.clip, self.clip).astype(np.float32)

    def _update(self, batch: np.ndarray) -> None:
        # Chan et al.'s parallel update of a running mean and variance.
        batch_mean, batch_var, batch_count = float(batch.mean()), float(batch.var()), batch.size
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, Any]:
        """The running statistics as plain data (the per-env returns as a list of floats)."""
        return {
            "mode": self.mode,
            "returns": self.returns.tolist(),
            "mean": float(self.mean),
            "var": float(self.var),
            "count": float(self.count),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"state mode must match this scaler's {self.mode!r}, got {state['mode']!r}")
        if len(state["returns"]) == len(self.returns):
            self.returns = np.array(state["returns"], dtype=np.float64)
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


class GracefulExit:
    """Context manager that turns ``SIGINT`` and ``SIGTERM`` into a flag.

    Inside the ``with`` block the first signal sets :attr:`requested` (the
    loop saves a checkpoint and stops at its next safe point); a second one
    raises ``KeyboardInterrupt`` as usual. The previous handlers come back on
    exit. Outside the main thread it does nothing.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> GracefulExit:
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminal: Tensor,
    ends: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over a ``(T, N)`` rollout, in time order.

    ``next_values[t]`` is the value of the state after step ``t``: usually
    ``values[t + 1]``, which in ``NEXT_STEP`` autoreset mode is the value of
    the final observation when an episode ended at ``t`` (the bootstrap a
    truncated episode needs). ``terminal[t]`` (a true terminal state) cuts the
    bootstrap; ``ends[t]`` (any episode end) cuts the recursion, so no
    advantage leaks across episodes. The loop runs over time only, with the
    ``N`` envs as a vector.

    Shapes:
        - every input: ``(T, N)`` (``terminal`` and ``ends`` as 0/1 floats)
        - output: ``(advantages, returns)``, both ``(T, N)``

    Raises:
        ValueError: if the inputs do not share one ``(T, N)`` shape.
    """
    inputs = (rewards, values, next_values, terminal, ends)
    shapes = {name: tuple(x.shape) for name, x in zip(_GAE_INPUTS, inputs, strict=True)}
    if len(set(shapes.values())) != 1 or len(shapes["rewards"]) != 2:
        raise ValueError(f"rewards, values, next_values, terminal and ends must share one (T, N) shape, got {shapes}")
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * (1.0 - terminal[t]) - values[t]
        last_gae = delta + gamma * gae_lambda * (1.0 - ends[t]) * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


_GAE_INPUTS = ("rewards", "values", "next_values", "terminal", "ends")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``x`` over the entries where ``mask`` is 1 (0 when none is)."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)
