"""Which operators the NetHack rule agent plays, and over how many actions it splits each step.

    python examples/rule_operators.py --epsilon 0.1 --steps 1500   # the softened rules, 4 envs, the tuning seed

A rule agent (:class:`crossmoe.nethack.RuleAgent`) is uniform over the
actions of the operator it chooses, so as a teacher it fixes the split among
them too (see ``--teacher-loss top_set`` in ``examples/ppo_nethack.py``).
This plays the rules on ``--num-envs`` envs for ``--steps`` steps each and
prints, as JSON, the share of steps in which each operator was chosen
(``"random"``: an epsilon step, or no operator applied) and the share of
steps in which the teacher's top actions numbered 1, 4, 8, ...: the size of
the set that ``top_set`` leaves the split of to the learner. The default
seed is the tuning seed of the results page, never the evaluation seed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import tyro

from crossmoe.hypergraph import env_actions
from crossmoe.nethack import RuleAgent, make_vector_env
from crossmoe.nethack.rules import RULES


@dataclass
class Args:
    rules: str = "rules"
    """The rule agent, by name: ``rules`` (with eating) or ``rules_no_eating``."""
    epsilon: float = 0.0
    """The rules softened: a uniformly random action in this share of the steps."""
    env_id: str = "NetHackScore-v0"
    num_envs: int = 4
    steps: int = 1500
    """Steps per env."""
    seed: int = 20_000_000


def main(args: Args) -> dict:
    if args.rules not in RULES:
        raise ValueError(f"rules must be one of {sorted(RULES)}, got {args.rules!r}")
    envs = make_vector_env(args.num_envs, seed=args.seed, env_id=args.env_id)
    agent = RuleAgent(env_actions(envs), priority=RULES[args.rules], seed=args.seed, epsilon=args.epsilon)
    operators: Counter[str] = Counter()
    splits: Counter[int] = Counter()
    obs, _ = envs.reset(seed=args.seed)
    for _ in range(args.steps):
        probs = agent.action_probs(obs)  # the teacher's distribution, before the sampled step
        chosen, actions = agent.select(obs)
        operators.update(agent.hypergraph.operators[o] if o >= 0 else "random" for o in chosen)
        splits.update((probs >= probs.max(axis=1, keepdims=True) * (1 - 1e-5)).sum(axis=1).tolist())
        obs, *_ = envs.step(actions)
    envs.close()
    total = args.steps * args.num_envs
    result = {
        "rules": args.rules,
        "epsilon": args.epsilon,
        "steps": total,
        "operators": {name: round(count / total, 4) for name, count in operators.most_common()},
        "top_actions": {int(k): round(v / total, 4) for k, v in sorted(splits.items())},
        "mean_top_actions": float(np.average(list(splits), weights=list(splits.values()))),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
