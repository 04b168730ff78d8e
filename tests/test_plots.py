"""crossmoe.plots.plot_score_against_floor: the demo's final picture."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from crossmoe.plots import plot_score_against_floor


def test_score_against_floor_writes_a_png(tmp_path):
    rows = [{"global_step": 2048 * (i + 1), "score": float(i % 7) * 10} for i in range(30)]
    rows.insert(3, {"global_step": 7000, "score": None})  # updates without a finished episode are skipped
    floor = {"score_mean": 30.0, "score_ci_low": 25.0, "score_ci_high": 35.0}
    evaluation = {"score_mean": 60.0, "score_ci_low": 50.0, "score_ci_high": 70.0, "episodes": 30}
    path = plot_score_against_floor(rows, tmp_path / "score.png", floor, evaluation)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without an evaluation, and for a run that finished no episode, the floor alone is drawn.
    assert plot_score_against_floor([], tmp_path / "floor.png", floor).is_file()


def test_the_rules_are_drawn_with_the_floor(tmp_path, monkeypatch):
    """The demo's picture: the agent against random play and the rules, each with its own band and label."""
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kwargs: drawn.append(self))
    rows = [{"global_step": 2048 * (i + 1), "score": 100.0 + i} for i in range(30)]
    floor = {"score_mean": 30.0, "score_ci_low": 25.0, "score_ci_high": 35.0}
    rules = {"score_mean": 210.0, "score_ci_low": 180.0, "score_ci_high": 240.0}
    plot_score_against_floor(rows, tmp_path / "score.png", floor, references={"rules": rules})
    axes = drawn[0].axes[0]
    labels = axes.get_legend_handles_labels()[1]
    assert "rules: 210.0" in labels and "uniform random: 30.0" in labels
    assert axes.get_title() == "In-game score against random play and rules (95% CIs)"
    assert axes.get_ylim()[1] >= 240.0  # the rules' band is inside the picture
