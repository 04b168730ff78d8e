"""Statistics across episodes and seeds: bootstrap confidence intervals, run tables, learning curves with bands.

Pure NumPy (matplotlib only for :func:`plot_curves_with_ci`, imported when
called). :mod:`crossmoe.evaluation` uses them for its summaries, and
``examples/study.py`` for the study's tables and plots.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["CurveWithCI", "bootstrap_ci", "compare_runs", "learning_curves_with_ci", "plot_curves_with_ci"]

_MAX_RESAMPLED = 1 << 22  # elements gathered per bootstrap chunk: about 32 MiB of float64


def _bootstrap_means(values: np.ndarray, num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means over axis 0 of ``num_resamples`` resamples with replacement: ``(R, *values.shape[1:])``."""
    n = len(values)
    chunk = max(1, _MAX_RESAMPLED // max(values.size, 1))
    means = []
    for start in range(0, num_resamples, chunk):
        index = rng.integers(n, size=(min(chunk, num_resamples - start), n))  # (r, n)
        means.append(values[index].mean(axis=1))
    return np.concatenate(means)


def _check_confidence(confidence: float, num_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) or num_resamples < 1:
        raise ValueError(f"num_resamples must be an integer >= 1, got {num_resamples!r}")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95, num_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of ``values`` and its percentile-bootstrap confidence interval.

    Resamples ``values`` with replacement ``num_resamples`` times and takes the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    resampled means (Efron & Tibshirani, *An Introduction to the Bootstrap*,
    1993, ch. 13). Vectorised in NumPy; the same seed gives the same interval.

    Args:
        values: ``(n,)`` finite numbers, n >= 1.
        confidence: Coverage of the interval, in (0, 1).
        num_resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        ``(mean, low, high)``, plain floats.

    Example:
        >>> bootstrap_ci([1.0, 1.0, 1.0])
        (1.0, 1.0, 1.0)
    """
    _check_confidence(confidence, num_resamples)
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"values must be a non-empty 1-D sequence of finite numbers, got shape {array.shape}")
    means = _bootstrap_means(array, num_resamples, np.random.default_rng(seed))
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    mean = float(array.mean())
    return mean, float(min(low, mean)), float(max(high, mean))  # guard the rounding of a constant sample


def compare_runs(
    results: Mapping[str, Sequence[float]],
    confidence: float = 0.95,
    num_resamples: int = 10_000,
    seed: int = 0,
    digits: int = 2,
) -> str:
    """Markdown table of each run's mean and bootstrap CI across its seeds.

    Args:
        results: ``{run name: one value per seed}``, e.g. the ``score_mean`` of
            each seed's :meth:`EvalResult.summary`.
        confidence, num_resamples, seed: As in :func:`bootstrap_ci`.
        digits: Decimals shown.

    Example:
        >>> print(compare_runs({"moe": [3.0, 5.0], "mlp": [2.0, 2.0]}, num_resamples=100))  # doctest: +SKIP
        | run | seeds | mean | 95% CI |
        |---|---:|---:|---:|
        | moe | 2 | 4.00 | [3.00, 5.00] |
        | mlp | 2 | 2.00 | [2.00, 2.00] |
    """
    if not results:
        raise ValueError("results must map at least one run name to its values, got none")
    lines = [f"| run | seeds | mean | {confidence:.0%} CI |", "|---|---:|---:|---:|"]
    for name, values in results.items():
        mean, low, high = bootstrap_ci(values, confidence, num_resamples, seed)
        lines.append(f"| {name} | {len(values)} | {mean:.{digits}f} | [{low:.{digits}f}, {high:.{digits}f}] |")
    return "\n".join(lines)


class CurveWithCI(NamedTuple):
    """A learning curve averaged over seeds, with a bootstrap band.

    Shapes:
        - x, mean, low, high: ``(G,)`` on the common grid
        - seeds: ``(S, G)``, each seed interpolated onto the grid
    """

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: np.ndarray


def _seed_series(rows: Sequence[Mapping[str, Any]], key: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    points = sorted((row[x], row[key]) for row in rows if row.get(x) is not None and row.get(key) is not None)
    return np.asarray([p[0] for p in points], dtype=float), np.asarray([p[1] for p in points], dtype=float)


def learning_curves_with_ci(
    runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    key: str = "score",
    x: str = "global_step",
    bins: int = 100,
    confidence: float = 0.95,
    num_resamples: int = 2_000,
    seed: int = 0,
) -> dict[str, CurveWithCI]:
    """Average each run's seeds onto a common grid, with a bootstrap confidence band across seeds.

    Each seed's ``(x, key)`` points (rows where either is missing or None are
    skipped) are linearly interpolated onto ``bins`` evenly spaced points
    over the range that every seed of the run covers, so no seed is
    extrapolated. At each grid point the band is the percentile bootstrap
    of the mean over seeds (:func:`bootstrap_ci`).

    Args:
        runs: ``{run name: [rows of seed 0, rows of seed 1, ...]}``, each a
            ``metrics.jsonl`` as :func:`crossmoe.training.read_metrics` reads it.
        key: The metric to average (``"score"``, ``"rolling_return"``, ...).
        x: The x-axis column.
        bins: Grid points, at least 2.
        confidence, num_resamples, seed: As in :func:`bootstrap_ci`.
    """
    _check_confidence(confidence, num_resamples)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    curves = {}
    for name, seeds in runs.items():
        series = [_seed_series(rows, key, x) for rows in seeds]
        empty = [s for s, (steps, _) in enumerate(series) if len(steps) == 0]
        if not series or empty:
            raise ValueError(f"runs[{name!r}] must hold seeds with {key!r} against {x!r}; seeds {empty} have none")
        start, stop = max(steps[0] for steps, _ in series), min(steps[-1] for steps, _ in series)
        if start > stop:
            raise ValueError(f"runs[{name!r}]: the seeds' {x!r} ranges must overlap, got none in common")
        grid = np.linspace(start, stop, bins)
        values = np.stack([np.interp(grid, steps, metric) for steps, metric in series])  # (S, G)
        means = _bootstrap_means(values, num_resamples, np.random.default_rng(seed))  # (R, G)
        low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
        mean = values.mean(axis=0)
        curves[name] = CurveWithCI(grid, mean, np.minimum(low, mean), np.maximum(high, mean), values)
    return curves


def plot_curves_with_ci(
    curves: Mapping[str, CurveWithCI],
    path: str | os.PathLike[str],
    *,
    xlabel: str = "env steps",
    ylabel: str = "score",
    title: str | None = None,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Plot each curve's mean over seeds with its confidence band and save it to ``path``.

    Uses matplotlib's object interface (:class:`~matplotlib.figure.Figure`), as
    :mod:`crossmoe.plots` does, so it neither needs a display nor changes the
    global backend. ``references`` (``{label: value}``, such as the random
    floor's mean score) are drawn as dashed horizontal lines.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for name, curve in curves.items():
        (line,) = ax.plot(curve.x, curve.mean, label=f"{name} (n={len(curve.seeds)})")
        ax.fill_between(curve.x, curve.low, curve.high, color=line.get_color(), alpha=0.2, lw=0)
    for index, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color=f"{0.2 + 0.25 * index:.2f}", ls="--", lw=1, label=f"{name}: {value:.1f}")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or f"{ylabel}: mean over seeds, bootstrap CI")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return Path(path)
