"""Evaluate a checkpoint of ``examples/ppo_nethack.py``, or a built-in floor, on fresh episodes.

    python examples/evaluate.py runs/demo/checkpoints/best.pt --episodes 100
    python examples/evaluate.py runs/x/checkpoints/last.pt --deterministic --out eval.json
    python examples/evaluate.py --agent rules --env-id NetHackScore-v0 --episodes 20
    python examples/evaluate.py --agent rules --epsilon 0.1 --episodes 20   # the rules, softened
    python examples/evaluate.py --agent random --episodes 20

A checkpoint's agent comes from :func:`crossmoe.nethack.load_agent` (with the
routing state of its step) and its environment and time limit from the
training run's arguments. ``--agent random`` (uniform actions) and ``--agent
rules`` (the knowledge hypergraph alone, :class:`crossmoe.nethack.rules.RuleAgent`;
``--agent rules_no_eating``: its rules before they learned to eat) need no
checkpoint and play ``--env-id``. The episodes are seeded from ``--seed``,
far from the training seeds by default
(:func:`crossmoe.evaluation.evaluate`). Prints the summary as JSON (mean,
standard deviation, median and 95% bootstrap interval of the score, return,
depth and length, and the outcomes) and, for MoE agents, the mean routing
weight of each expert by situation; ``--out`` writes the summary with every
episode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

from crossmoe import evaluation
from crossmoe.evaluation import Agent, EvalResult, PolicyAgent, RandomAgent
from crossmoe.nethack import load_agent, make_env
from crossmoe.nethack.rules import RULES, RuleAgent
from crossmoe.training import load_checkpoint


@dataclass
class Args:
    checkpoint: tyro.conf.Positional[str | None] = None
    """A ``last.pt`` or ``best.pt`` written by ``ppo_nethack.py`` (only with ``--agent checkpoint``)."""
    agent: Literal["checkpoint", "random", "rules", "rules_no_eating"] = "checkpoint"
    """The checkpoint's policy, or a built-in floor: uniform actions or the hypergraph's rules (with eating, or
    ``rules_no_eating``: as first measured)."""
    env_id: str | None = None
    """Environment; a checkpoint's own by default, ``NetHackScore-v0`` for the floors."""
    max_episode_steps: int | None = None
    """Time limit in agent steps; a checkpoint's training limit by default, else the env's own."""
    episodes: int = 100
    """Episodes to record."""
    num_envs: int = 8
    """Environments stepped in parallel."""
    seed: int = 10_000_000
    """Seed of the evaluation episodes and of the agent's sampling."""
    deterministic: bool = False
    """Take the policy's most likely action instead of sampling."""
    epsilon: float = 0.0
    """With ``--agent rules``/``rules_no_eating``: play the rules softened, a uniformly random action with this
    probability in each step (``RuleAgent(epsilon=...)``)."""
    device: str = "cpu"
    """Torch device of the policy."""
    compile: bool = True
    """Compile the policy's forward (``PolicyAgent(compile=True)``), several times faster at small batches;
    ``--no-compile`` evaluates eagerly."""
    out: str | None = None
    """Also write the summary and every episode, as JSON, to this path."""


def _env_actions(env_id: str) -> list[Any]:
    env = make_env(env_id, memory=False)
    try:
        return list(env.unwrapped.actions)
    finally:
        env.close()


def run(args: Args) -> EvalResult:
    """Build the agent that ``args`` names and evaluate it."""
    if (args.agent == "checkpoint") != (args.checkpoint is not None):
        raise ValueError(
            f"checkpoint must be given with --agent checkpoint and only then, got agent {args.agent!r} "
            f"and checkpoint {args.checkpoint!r}"
        )
    if args.epsilon and not args.agent.startswith("rules"):
        raise ValueError(f"epsilon softens a rule agent, got --epsilon {args.epsilon} with --agent {args.agent}")
    metadata: dict[str, Any] = {"agent": args.agent}
    max_episode_steps = args.max_episode_steps
    agent: Agent
    if args.checkpoint is not None:
        state = load_checkpoint(args.checkpoint)
        train = state["args"]  # the training run's arguments, as plain data
        env_id = args.env_id or train["env_id"]
        max_episode_steps = max_episode_steps if max_episode_steps is not None else train["max_episode_steps"]
        policy = load_agent(args.checkpoint, map_location=args.device)
        agent = PolicyAgent(policy, args.deterministic, args.seed, compile=args.compile)
        metadata.update(
            checkpoint=args.checkpoint,
            policy=train["policy"],
            global_step=state["counters"]["global_step"],
            deterministic=args.deterministic,
        )
    else:
        env_id = args.env_id or "NetHackScore-v0"
        actions = _env_actions(env_id)
        if args.agent == "random":
            agent = RandomAgent(len(actions), args.seed)
        else:
            agent = RuleAgent(actions, priority=RULES[args.agent], seed=args.seed, epsilon=args.epsilon)
            metadata["epsilon"] = args.epsilon
    return evaluation.evaluate(
        agent, env_id, args.episodes, args.num_envs, args.seed, max_episode_steps, metadata=metadata
    )


def report(result: EvalResult, out: str | None = None) -> dict[str, Any]:
    """The summary, with every episode under ``"result"``; also written to ``out`` when given."""
    data = {**result.summary(), "result": result.to_dict()}
    if out:
        Path(out).write_text(json.dumps(data, indent=2))
    return data


def evaluate(args: Args) -> dict[str, Any]:
    """Run the evaluation that ``args`` describes and return (and write) its :func:`report`."""
    return report(run(args), args.out)


if __name__ == "__main__":
    args = tyro.cli(Args)
    result = run(args)
    summary = {key: value for key, value in report(result, args.out).items() if key != "result"}
    print(json.dumps(summary, indent=2))
    if result.expert_names:
        print("\nMean routing weight by situation:\n")
        print(result.usage_table())
