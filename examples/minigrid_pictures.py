"""Where a MiniGrid agent's operators look: the 7x7 view under each top operator's attention, for a few real states.

    python examples/minigrid_pictures.py --checkpoint runs/x/checkpoints/last.pt --out docs/pictures/minigrid
    python examples/minigrid_pictures.py --out /tmp/pictures --steps 10     # an untrained agent: the script always runs

It plays the first ``--steps`` steps of one seeded episode with the agent and
writes ``attention.png`` into ``--out``: ``--states`` states of the episode,
evenly spaced, one row each, with the view as MiniGrid draws it under the
attention (mean over heads) of each of the ``--top-k`` applicable operators
of highest score, the share of that attention on the mission token, and the
router weights. With ``--target-steps N`` it also plays ``N`` steps of fresh
episodes and writes ``target_attention.json`` (and prints it as a table): per
operator, over the states where it applies and the mission's object is in
view, the share of its attention on that object's cells against the share
that uniform attention over the seen tokens would give. Without
``--checkpoint`` the agent is an untrained
:func:`crossmoe.minigrid.make_policy`, and the title says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from crossmoe import CrossAttentionMoEPolicy
from crossmoe.hypergraph import action_name, env_actions
from crossmoe.minigrid import load_agent, make_env, make_policy
from crossmoe.minigrid.pictures import attention_on_target, grid_frames, plot_grid_attention
from crossmoe.training import load_checkpoint


@dataclass
class Args:
    checkpoint: str | None = None
    """A ``last.pt`` or ``best.pt`` of ``ppo_minigrid.py``; without it, an untrained agent."""
    out: str = "docs/pictures/minigrid"
    """Directory the picture goes to."""
    env_id: str | None = None
    """Environment (default: the checkpoint's, else ``MiniGrid-UnlockPickup-v0``)."""
    steps: int = 60
    """Steps of the episode to play (fewer if it ends earlier)."""
    states: int = 4
    """States of the episode, evenly spaced, in the picture."""
    top_k: int = 3
    """Operators shown per state: the applicable ones of highest score."""
    seed: int = 7
    """Seed of the episode, the action sampling and the untrained agent."""
    deterministic: bool = False
    """Take the most likely action instead of sampling."""
    target_steps: int = 0
    """Also play this many steps (fresh episodes) and write ``target_attention.json``: per operator, the share
    of its attention on the mission's object against what uniform attention would give; 0: skip."""


def load(args: Args) -> tuple[CrossAttentionMoEPolicy, str, str]:
    """The agent, the environment id and a label for the title."""
    if args.checkpoint is None:
        torch.manual_seed(args.seed)
        return make_policy().eval(), args.env_id or "MiniGrid-UnlockPickup-v0", f"untrained agent (seed {args.seed})"
    policy = load_agent(args.checkpoint)
    if not isinstance(policy, CrossAttentionMoEPolicy):
        raise ValueError(f"checkpoint must hold a MoE agent (make_policy), got {type(policy).__name__}")
    state = load_checkpoint(args.checkpoint)
    env_id = args.env_id or state.get("args", {}).get("env_id", "MiniGrid-UnlockPickup-v0")
    step = state.get("counters", {}).get("global_step")
    return policy, env_id, f"agent of {args.checkpoint}" + (f" ({step:,} env steps)" if step is not None else "")


def play(
    policy: CrossAttentionMoEPolicy,
    env_id: str,
    steps: int,
    seed: int,
    deterministic: bool,
    *,
    one_episode: bool = True,
):
    """The observations (stacked), missions, action names and rewards of ``steps`` steps of play: the first
    episode only, or as many episodes as the steps hold without ``one_episode``."""
    env = make_env(env_id, seed=seed)
    names = [action_name(action) for action in env_actions(env)]
    obs, _ = env.reset(seed=seed)
    torch.manual_seed(seed)
    history, missions, actions, rewards = [], [], [], []
    for _ in range(steps):
        history.append({key: np.array(value) for key, value in obs.items()})
        missions.append(env.unwrapped.mission)
        with torch.inference_mode():
            action, *_ = policy.get_action_and_value(
                {key: np.asarray(value)[None] for key, value in obs.items()}, deterministic=deterministic
            )
        obs, reward, terminated, truncated, _ = env.step(int(action))
        actions.append(names[int(action)].removeprefix("Actions."))
        rewards.append(float(reward))
        if terminated or truncated:
            if one_episode:
                break
            obs, _ = env.reset()
    env.close()
    return {key: np.stack([step[key] for step in history]) for key in history[0]}, missions, actions, rewards


def target_table(policy: CrossAttentionMoEPolicy, obs: dict) -> list[dict]:
    """Per operator, over the states where it applies and the mission's object is in view: the mean share of
    its attention on the object, and the share that uniform attention over the seen tokens would give."""
    with torch.inference_mode():
        output = policy(obs)
    share, uniform = attention_on_target(output.attention, obs)
    applicable = output.applicable.numpy() & ~np.isnan(share)
    rows = []
    for index, name in enumerate(policy.logic_encoder.hypergraph.operators):
        states = applicable[:, index]
        if states.any():
            rows.append(
                {
                    "operator": name,
                    "states": int(states.sum()),
                    "share_on_target": float(share[states, index].mean()),
                    "uniform_share": float(uniform[states].mean()),
                }
            )
    return rows


def main(args: Args) -> list[Path]:
    if args.steps < 1 or args.states < 1 or args.top_k < 1 or args.target_steps < 0:
        raise ValueError(
            f"steps, states and top_k must be >= 1 and target_steps >= 0, got {args.steps}, {args.states}, "
            f"{args.top_k} and {args.target_steps}"
        )
    policy, env_id, label = load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    obs, missions, actions, rewards = play(policy, env_id, args.steps, args.seed, args.deterministic)
    with torch.inference_mode():
        output = policy(obs)  # the whole episode at once: a sample's output does not depend on its batch
    frames = grid_frames(policy, obs, output, actions, rewards, missions, top_k=args.top_k)
    chosen = np.unique(np.linspace(0, len(frames) - 1, min(args.states, len(frames))).round().astype(int))
    written = [
        plot_grid_attention(
            [frames[i] for i in chosen],
            out / "attention.png",
            expert_names=policy.experts.names,
            title=f"Where the top operators look: {label}, {env_id} seed {args.seed}",
        )
    ]
    if args.target_steps:
        seed = args.seed + 1_000  # other episodes than the picture's
        played, *_ = play(policy, env_id, args.target_steps, seed, args.deterministic, one_episode=False)
        rows = target_table(policy, played)
        path = out / "target_attention.json"
        meta = {"agent": label, "env_id": env_id, "steps": args.target_steps, "seed": seed}
        path.write_text(json.dumps({**meta, "operators": rows}, indent=1) + "\n")
        print("| operator | states | attention on the mission's object | uniform attention would give | ratio |")
        print("|---|---:|---:|---:|---:|")
        for row in rows:
            ratio = row["share_on_target"] / row["uniform_share"]
            print(
                f"| {row['operator']} | {row['states']} | {row['share_on_target']:.3f} | {row['uniform_share']:.3f} "
                f"| {ratio:.2f} |"
            )
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main(tyro.cli(Args)):
        print(path)
