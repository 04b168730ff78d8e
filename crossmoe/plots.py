"""Plots of a training run from its ``metrics.jsonl``: the learning curve, the routing diagnostics, the expert usage.

Pictures of an agent at work are in :mod:`crossmoe.nethack.pictures` and :mod:`crossmoe.minigrid.pictures`;
:func:`top_applicable` picks the operators they show.
Needs matplotlib (the ``examples`` extra). ``examples/plots.py`` is the command line for these functions.
The figures are built with matplotlib's object interface (:class:`~matplotlib.figure.Figure`), so
importing this module neither changes the global backend nor needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from crossmoe.training import read_metrics

__all__ = [
    "draw_router_weights",
    "plot_expert_usage",
    "plot_learning_curves",
    "plot_routing",
    "plot_run",
    "plot_score_against_floor",
    "top_applicable",
]

PHASE_COLORS = {"warmup": "tab:blue", "transition": "tab:orange", "finetune": "tab:green"}


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(row["global_step"], row[key]) for row in rows if row.get(key) is not None]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points, strict=True)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _shade_phases(ax: Axes, rows: list[dict]) -> None:
    start = 0.0
    for index, row in enumerate(rows):
        last = index == len(rows) - 1
        if last or rows[index + 1].get("phase") != row.get("phase"):
            if row.get("phase") in PHASE_COLORS:
                ax.axvspan(start, row["global_step"], color=PHASE_COLORS[row["phase"]], alpha=0.08, lw=0)
            start = row["global_step"]


def plot_learning_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """Rolling mean episodic return (and the per-update mean, faint) against env steps."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for label, rows in runs.items():
        steps, returns = _series(rows, "episodic_return")
        (line,) = ax.plot(*_series(rows, "rolling_return"), label=label)
        ax.plot(steps, returns, color=line.get_color(), alpha=0.25, lw=0.8)
    if len(runs) == 1:
        _shade_phases(ax, next(iter(runs.values())))
    ax.set(xlabel="env steps", ylabel="episodic return", title="Learning curve (rolling mean; faint: per update)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return path


def plot_routing(rows: list[dict], path: Path) -> Path | None:
    """Alpha and temperature, routing entropy, expert usage, and attention sparsity over training."""
    if not any("routing_entropy" in row for row in rows):
        return None  # the mlp baseline has no router
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    ax = axes[0, 0]
    ax.plot(*_series(rows, "alpha"), label="alpha")
    ax.plot(*_series(rows, "temperature"), label="temperature")
    ax.set(title="Routing schedule")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(*_series(rows, "routing_entropy"), color="tab:purple")
    ax.set(title="Routing entropy (nats)")
    ax = axes[1, 0]
    usage_keys = sorted({key for row in rows for key in row if key.startswith("usage/")})
    steps = np.asarray([row["global_step"] for row in rows if usage_keys[0] in row], dtype=float)
    usage = [np.asarray([row[key] for row in rows if usage_keys[0] in row], dtype=float) for key in usage_keys]
    ax.stackplot(steps, *usage, labels=[key.removeprefix("usage/") for key in usage_keys], alpha=0.8)
    ax.set(title="Expert usage (share of top-1 routing)", xlabel="env steps", ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1, 1]
    for key in ("attention_sparsity", "aux/load_balance", "aux/alignment"):
        if any(row.get(key) is not None for row in rows):
            ax.plot(*_series(rows, key), label=key)
    ax.set(title="Attention sparsity and aux losses", xlabel="env steps")
    ax.legend(fontsize=8)
    for ax in axes.flat:
        _shade_phases(ax, rows)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``learning_curve.png`` and (for MoE runs) ``routing.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    written = [plot_learning_curves({run_dir.name: rows}, run_dir / "learning_curve.png")]
    routing = plot_routing(rows, run_dir / "routing.png")
    return written + ([routing] if routing else [])


def _ordered_keys(rows: list[dict], prefix: str) -> list[str]:
    keys = {key: None for row in rows for key in row if key.startswith(prefix)}  # first appearance order
    return list(keys)


def plot_expert_usage(rows: list[dict], path: Path, *, title: str = "Expert usage over training") -> Path | None:
    """Mean routing weight (``weight/<expert>``) and top-1 share (``usage/<expert>``) as stacked areas.

    Returns None when the rows hold neither (a run without a router).
    """
    experts = list(
        {key.split("/", 1)[1]: None for key in _ordered_keys(rows, "weight/") + _ordered_keys(rows, "usage/")}
    )
    if not experts:
        return None
    panels = (("weight", "Mean routing weight"), ("usage", "Share of steps routed top-1 to the expert"))
    fig = Figure(figsize=(9, 6), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, (prefix, label) in zip(axes, panels, strict=True):
        keys = [f"{prefix}/{name}" for name in experts]
        logged = [row for row in rows if all(row.get(key) is not None for key in keys)]
        if logged:
            steps = np.asarray([row["global_step"] for row in logged], dtype=float)
            values = [np.asarray([row[key] for row in logged], dtype=float) for key in keys]
            colors = [f"C{i}" for i in range(len(experts))]
            ax.stackplot(steps, *values, labels=experts, colors=colors, alpha=0.85)
            ax.legend(loc="upper left", fontsize=8, ncols=len(experts))
        else:
            ax.text(
                0.5, 0.5, f"this run did not log {prefix}/<expert>", ha="center", va="center", transform=ax.transAxes
            )
        _shade_phases(ax, rows)
        ax.set(title=f"{label} ({prefix}/<expert>)", ylim=(0, 1), ylabel="share")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("env steps")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    return path


def plot_score_against_floor(
    rows: list[dict],
    path: Path,
    floor: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
    *,
    window: int = 20,
    label: str = "agent",
    references: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """The in-game score of a run's training episodes against the random floor, and its final evaluation.

    Args:
        rows: The run's ``metrics.jsonl`` rows (``score`` per update, the mean over the episodes it finished).
        path: Where to write the figure.
        floor: :meth:`EvalResult.summary() <crossmoe.evaluation.EvalResult.summary>` of the random agent
            (``score_mean``, ``score_ci_low``, ``score_ci_high``): drawn as a band.
        evaluation: The same summary for the trained agent, drawn at the run's last step with its CI.
        window: Updates in the rolling mean of the training score.
        label: Name of the agent in the legend.
        references: More agents to beat, by name (e.g. ``{"rules": summary}``): each drawn as its own band.
    """
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    steps, scores = _series(rows, "score")
    if len(scores):
        kernel = np.ones(min(window, len(scores))) / min(window, len(scores))
        rolling = np.convolve(scores, kernel, mode="valid")
        ax.plot(steps, scores, color="C0", alpha=0.25, lw=0.8)
        ax.plot(steps[len(steps) - len(rolling) :], rolling, color="C0", label=f"{label}: training episodes")
    ax.axhspan(floor["score_ci_low"], floor["score_ci_high"], color="0.5", alpha=0.25, lw=0)
    ax.axhline(floor["score_mean"], color="0.35", ls="--", label=f"uniform random: {floor['score_mean']:.1f}")
    for index, (name, reference) in enumerate((references or {}).items()):
        color = f"C{2 + index}"
        ax.axhspan(reference["score_ci_low"], reference["score_ci_high"], color=color, alpha=0.15, lw=0)
        ax.axhline(reference["score_mean"], color=color, ls=":", label=f"{name}: {reference['score_mean']:.1f}")
    if evaluation is not None:
        x = rows[-1]["global_step"] if rows else 0.0  # the end of training
        error = [
            [evaluation["score_mean"] - evaluation["score_ci_low"]],
            [evaluation["score_ci_high"] - evaluation["score_mean"]],
        ]
        ax.errorbar(
            [x],
            [evaluation["score_mean"]],
            yerr=error,
            fmt="o",
            color="C3",
            capsize=4,
            label=f"{label}, {evaluation.get('episodes', '?')} fresh episodes: {evaluation['score_mean']:.1f}",
        )
    against = "the random floor" if not references else "random play and " + ", ".join(references)
    ax.set(xlabel="env steps", ylabel="in-game score", title=f"In-game score against {against} (95% CIs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def top_applicable(scores: Any, applicable: Any, k: int) -> np.ndarray:
    """The ``k`` applicable operators of highest score per sample, best first; ``-1`` pads where fewer apply.

    Shapes: scores, applicable ``(B, O)``; output ``(B, k)`` int.
    """
    scores, applicable = np.asarray(scores, dtype=np.float64), np.asarray(applicable, dtype=bool)
    if scores.shape != applicable.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and applicable must be (B, O) of one shape, got {scores.shape} and {applicable.shape}"
        )
    order = np.argsort(np.where(applicable, -scores, np.inf), axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(applicable, order, 1), order, -1)


def draw_router_weights(ax: Axes, weights: Any, expert_names: Sequence[str]) -> None:
    """One state's router weights as horizontal bars, one per expert in its own colour, on ``ax``."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(expert_names),):
        raise ValueError(f"weights must be ({len(expert_names)},), one per expert name, got {weights.shape}")
    ax.barh(np.arange(len(expert_names)), weights, color=[f"C{i}" for i in range(len(expert_names))])
    ax.set(xlim=(0, 1), yticks=np.arange(len(expert_names)), title="router weights")
    ax.set_yticklabels(expert_names, fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=6)
