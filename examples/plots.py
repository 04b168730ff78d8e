"""Plots of a training run from its ``metrics.jsonl``: the learning curve and the routing diagnostics.

python examples/plots.py runs/<run>                  # writes learning_curve.png and routing.png there
python examples/plots.py runs/a runs/b --out cmp.png # compare the learning curves of several runs
python examples/plots.py runs/demo --floor random.json --evaluation eval.json   # score against the random floor
python examples/plots.py runs/demo --floor random.json --rules rules.json --evaluation eval.json   # and the rules

The plotting functions live in :mod:`crossmoe.plots`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from crossmoe.plots import plot_learning_curves, plot_run, plot_score_against_floor
from crossmoe.training import read_metrics


@dataclass
class Args:
    run_dirs: tyro.conf.Positional[tuple[str, ...]] = field(default_factory=tuple)
    """Run directories (each with a ``metrics.jsonl``)."""
    out: str | None = None
    """With several runs: where to write the comparison of their learning curves."""
    floor: str | None = None
    """The ``--out`` JSON of ``examples/evaluate.py --agent random``: also plot the run's score against it."""
    evaluation: str | None = None
    """The ``--out`` JSON of ``examples/evaluate.py`` on the run's checkpoint, shown with the floor."""
    rules: str | None = None
    """The ``--out`` JSON of ``examples/evaluate.py --agent rules``: the rules' score, drawn with the floor."""


if __name__ == "__main__":
    args = tyro.cli(Args)
    if len(args.run_dirs) == 1 and args.out is None:
        for path in plot_run(args.run_dirs[0]):
            print(path)
        if args.floor is not None:
            run_dir = Path(args.run_dirs[0])
            floor = json.loads(Path(args.floor).read_text())
            evaluation = None if args.evaluation is None else json.loads(Path(args.evaluation).read_text())
            rows = read_metrics(run_dir / "metrics.jsonl")
            references = {} if args.rules is None else {"rules": json.loads(Path(args.rules).read_text())}
            path = run_dir / "score_vs_random.png"
            print(plot_score_against_floor(rows, path, floor, evaluation, references=references))
    else:
        runs = {Path(d).name: read_metrics(Path(d) / "metrics.jsonl") for d in args.run_dirs}
        print(plot_learning_curves(runs, Path(args.out or "comparison.png")))
