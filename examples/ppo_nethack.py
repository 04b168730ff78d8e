"""PPO for the crossmoe NetHack agent: NetHack's defaults on the shared loop, :func:`crossmoe.ppo.train`.

    python examples/ppo_nethack.py --total-timesteps 100000
    python examples/ppo_nethack.py --env-id MiniHack-Room-5x5-v0 --total-timesteps 500000
    python examples/ppo_nethack.py --policy mlp                 # the no-MoE baseline
    python examples/ppo_nethack.py --policy flat                # the atoms and the prior, no MoE
    python examples/ppo_nethack.py --fusion concat              # the fusion ablation
    python examples/ppo_nethack.py --run-dir runs/x --resume    # continue a killed run
    python examples/ppo_nethack.py --teacher rules              # kickstarted from the rule agent

The loop (rollout, GAE, PPO update with the MoE auxiliary losses, the routing
schedule, the NaN guard, checkpoints and resume) is described in
:mod:`crossmoe.ppo`; ``examples/ppo_minigrid.py`` runs the same loop on
MiniGrid. What is NetHack's comes from :func:`crossmoe.nethack.train_domain`:
NLE ends an episode at its own step cap by quitting the game (``terminated``
with ``info["end_status"] == ABORTED``, the final observation blanked), which
is a cut-off bootstrapped from the last real observation, not a terminal
state; the metrics' ``score`` is the largest in-game score of each episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import tyro

from crossmoe.nethack import train_domain
from crossmoe.ppo import PPOArgs, train


@dataclass
class Args(PPOArgs):
    env_id: str = "NetHackScore-v0"
    """NLE or MiniHack environment id (MiniHack needs the ``minihack`` extra)."""
    teacher: Literal["none", "rules", "rules_no_eating"] = "none"
    """Kickstart from a teacher (Schmitt et al., 2018): ``rules`` is the knowledge hypergraph played as rules
    (``crossmoe.nethack.RuleAgent``), ``rules_no_eating`` the same rules before they learned to eat; the
    distillation loss from its action distribution to the policy's, on the rollout's states, joins the PPO
    loss. ``none``: plain PPO."""
    knowledge_pathway: Literal["prior", "attention", "rules"] = "prior"
    """``prior``: each applicable operator votes for its actions (``ApplicabilityPrior``); ``attention``: operators
    that move in several directions vote for the directions their cross-attention reads
    (``AttentionDirectionPrior``, ``--fusion cross_attention`` only); ``rules``: the first applicable operator
    in the rules' order votes (``RulePrior``): the policy starts as the rules, softened, with no teacher."""
    vectorization: Literal["sync", "async"] = "sync"
    """``sync`` steps the envs in this process; ``async`` in one subprocess each (slower on 2 cores)."""


def main(args: Args) -> dict:
    """Train (or resume) one run; returns its summary."""
    return train(args, train_domain())


if __name__ == "__main__":
    main(tyro.cli(Args))
