"""PPO for the crossmoe MiniGrid agent: MiniGrid's defaults on the shared loop, :func:`crossmoe.ppo.train`.

    python examples/ppo_minigrid.py                                           # MiniGrid-DoorKey-5x5-v0, 200k steps
    python examples/ppo_minigrid.py --env-id BabyAI-GoToRedBallNoDists-v0
    python examples/ppo_minigrid.py --policy mlp --fusion concat --no-knowledge   # the baselines and ablations
    python examples/ppo_minigrid.py --teacher rules                           # kickstarted from the rule agent
    python examples/ppo_minigrid.py --run-dir runs/x --resume                 # continue a killed run

Any MiniGrid or BabyAI id with the standard 7 actions works. The flags, the
metrics (plus ``success_rate``: the share of episodes that ended with a
reward), the checkpoints and resume are those of ``examples/ppo_nethack.py``:
both run :mod:`crossmoe.ppo`'s loop, and :func:`crossmoe.minigrid.train_domain`
says what is MiniGrid's. Evaluate a checkpoint with
``crossmoe.evaluation.evaluate(PolicyAgent(crossmoe.minigrid.load_agent(path)), env_id,
domain=crossmoe.minigrid.eval_domain())``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import tyro

from crossmoe.minigrid import train_domain
from crossmoe.ppo import PPOArgs, train


@dataclass
class Args(PPOArgs):
    env_id: str = "MiniGrid-DoorKey-5x5-v0"
    """MiniGrid or BabyAI environment id (the ``minigrid`` extra)."""
    total_timesteps: int = 200_000
    """Env steps to train for (all ``N`` envs together, reset steps included)."""
    dim: int = 64
    """Token and context width."""
    teacher: Literal["none", "rules"] = "none"
    """Kickstart from the MiniGrid graph played as rules (``crossmoe.minigrid.RuleAgent``); ``none``: plain PPO."""
    knowledge_pathway: Literal["prior", "rules"] = "prior"
    """``prior``: each applicable operator votes for its actions (``ApplicabilityPrior``); ``rules``: the first
    applicable operator in the rules' order votes (``RulePrior``): the policy starts as the rules, softened."""


def main(args: Args) -> dict:
    """Train (or resume) one run; returns its summary."""
    return train(args, train_domain())


if __name__ == "__main__":
    main(tyro.cli(Args))
