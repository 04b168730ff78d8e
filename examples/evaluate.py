"""Evaluate a checkpoint of ``examples/ppo_nethack.py`` on fresh episodes.

    python examples/evaluate.py runs/demo/checkpoints/best.pt --episodes 50
    python examples/evaluate.py runs/x/checkpoints/last.pt --deterministic --out eval.json

The environment comes from the checkpoint's arguments, and the agent, with
the routing state (alpha and temperature) of its step, from
:func:`crossmoe.nethack.load_agent`. Episodes are seeded from
``--seed``, far from the training seeds by default. Prints one JSON object:
mean, standard deviation and median of the return, the episode lengths and
in-game scores, and the routing usage of the experts (MoE agents).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from nle import nethack

from crossmoe import CrossAttentionMoEPolicy
from crossmoe.diagnostics import expert_usage
from crossmoe.nethack import load_agent, make_vector_env, split_episode_ends
from crossmoe.training import load_checkpoint


@dataclass
class Args:
    checkpoint: tyro.conf.Positional[str]
    """A ``last.pt`` or ``best.pt`` written by ``ppo_nethack.py``."""
    episodes: int = 20
    """Episodes to finish."""
    num_envs: int = 8
    """Environments stepped in parallel."""
    seed: int = 1_000_000
    """Seed of the evaluation episodes."""
    deterministic: bool = False
    """Take the most likely action instead of sampling."""
    device: str = "cpu"
    """Torch device."""
    out: str | None = None
    """Also write the JSON result to this path."""


def evaluate(args: Args) -> dict:
    if args.episodes < 1 or args.num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {args.episodes} and {args.num_envs}")
    state = load_checkpoint(args.checkpoint)
    train = state["args"]  # the training run's arguments, as plain data
    env_kwargs = {} if train["max_episode_steps"] is None else {"max_episode_steps": train["max_episode_steps"]}
    envs = make_vector_env(args.num_envs, args.seed, train["env_id"], **env_kwargs)
    agent = load_agent(args.checkpoint, map_location=args.device)
    moe = isinstance(agent, CrossAttentionMoEPolicy)

    obs, _ = envs.reset(seed=args.seed)
    returns, lengths, scores, weights = [], [], [], []
    running_return = np.zeros(args.num_envs)
    running_length = np.zeros(args.num_envs, dtype=int)
    running_score = np.zeros(args.num_envs)
    active = np.ones(args.num_envs, dtype=bool)  # False on the autoreset step after an episode end
    while len(returns) < args.episodes:
        with torch.inference_mode():
            action, _, _, _, output = agent.get_action_and_value(
                obs, deterministic=args.deterministic, return_output=True
            )
        if moe:
            weights.append(output.router_weights[torch.from_numpy(active)].cpu())
        obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
        _, done, _ = split_episode_ends(terminated, truncated, info)
        running_return += np.where(active, reward, 0.0)
        running_length += active
        running_score = np.where(active, np.maximum(running_score, obs["blstats"][:, nethack.NLE_BL_SCORE]), 0.0)
        for index in np.flatnonzero(done & active):
            returns.append(float(running_return[index]))
            lengths.append(int(running_length[index]))
            scores.append(float(running_score[index]))
        running_return[done] = 0.0
        running_length[done] = 0
        active = ~done
    envs.close()
    returns, lengths, scores = returns[: args.episodes], lengths[: args.episodes], scores[: args.episodes]
    result = {
        "checkpoint": args.checkpoint,
        "env_id": train["env_id"],
        "policy": train["policy"],
        "global_step": state["counters"]["global_step"],
        "episodes": len(returns),
        "deterministic": args.deterministic,
        "return_mean": statistics.fmean(returns),
        "return_std": statistics.pstdev(returns),
        "return_median": statistics.median(returns),
        "length_mean": statistics.fmean(lengths),
        "score_mean": statistics.fmean(scores),
    }
    if moe:
        usage = expert_usage(torch.cat(weights)).tolist()
        result["expert_usage"] = dict(zip(agent.experts.names, usage, strict=True))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(evaluate(tyro.cli(Args)), indent=2))
