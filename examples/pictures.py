"""Pictures of a NetHack agent: attention on the dungeon, expert usage over training, an episode to step through.

    python examples/pictures.py --checkpoint runs/x/checkpoints/last.pt --out docs/pictures/
    python examples/pictures.py --out /tmp/pictures --steps 20      # an untrained agent: the script always runs
    python examples/pictures.py --checkpoint runs/x/checkpoints/last.pt --what usage

It plays the first ``--steps`` steps of one seeded episode with the agent and writes into ``--out``:

- ``attention.png``: ``--states`` states of the episode, one row each, with the map cells that each of
  the ``--top-k`` applicable operators of highest score attends to (mean over heads), and the router weights.
- ``episode.html``: a self-contained page with a slider over the steps: the tty screen with the attention
  of the top operator as coloured cells, the router weights and the action taken.
- ``episode.gif``: the same as an animation (needs pillow, which matplotlib installs).
- ``expert_usage.png``: the mean routing weight and the top-1 share of each expert over training, from the
  ``metrics.jsonl`` of ``--run-dir`` (by default the checkpoint's run directory).

Without ``--checkpoint`` the agent is an untrained :func:`crossmoe.nethack.make_policy`, and the titles say so.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from crossmoe import CrossAttentionMoEPolicy
from crossmoe.hypergraph import action_name
from crossmoe.nethack import DEFAULT_OBSERVATION_KEYS, load_agent, make_env, make_policy
from crossmoe.nethack.pictures import episode_frames, plot_attention_maps, write_episode_gif, write_episode_html
from crossmoe.plots import plot_expert_usage
from crossmoe.training import load_checkpoint, read_metrics

Picture = Literal["attention", "episode", "gif", "usage"]
SCREEN_KEYS = ("tty_chars", "tty_colors")


@dataclass
class Args:
    checkpoint: str | None = None
    """A ``last.pt`` or ``best.pt`` of ``ppo_nethack.py``; without it, an untrained agent."""
    out: str = "docs/pictures"
    """Directory the pictures go to."""
    what: tuple[Picture, ...] = ("attention", "episode", "gif", "usage")
    """Which pictures to make."""
    run_dir: str | None = None
    """Run directory whose ``metrics.jsonl`` the usage plot reads (default: the checkpoint's)."""
    env_id: str | None = None
    """Environment (default: the checkpoint's, else ``NetHackScore-v0``)."""
    steps: int = 60
    """Steps of the episode to play and show (fewer if it ends earlier)."""
    states: int = 4
    """States of the episode, evenly spaced, in ``attention.png``."""
    top_k: int = 3
    """Operators shown per state: the applicable ones of highest score."""
    seed: int = 7
    """Seed of the episode, the action sampling and the untrained agent."""
    deterministic: bool = False
    """Take the most likely action instead of sampling."""
    fps: float = 4.0
    """Frames per second of the GIF."""


def load(args: Args) -> tuple[CrossAttentionMoEPolicy, str, str]:
    """The agent, the environment id and a label for the titles."""
    if args.checkpoint is None:
        env_id = args.env_id or "NetHackScore-v0"
        torch.manual_seed(args.seed)
        env = make_env(env_id, memory=False)  # for its action set
        policy = make_policy(env=env)
        env.close()
        return policy.eval(), env_id, f"untrained agent (make_policy(), random weights, seed {args.seed})"
    state = load_checkpoint(args.checkpoint)
    policy = load_agent(args.checkpoint)
    if not isinstance(policy, CrossAttentionMoEPolicy):
        raise ValueError(f"checkpoint must hold a MoE agent (make_policy), got {type(policy).__name__}")
    env_id = args.env_id or state.get("args", {}).get("env_id", "NetHackScore-v0")
    step = state.get("counters", {}).get("global_step")
    return policy, env_id, f"agent of {args.checkpoint}" + (f" ({step:,} env steps)" if step is not None else "")


def play(policy: CrossAttentionMoEPolicy, env_id: str, args: Args) -> tuple[dict, list[str], np.ndarray]:
    """The observations (stacked), action names and rewards of the first ``args.steps`` steps of one episode."""
    env = make_env(env_id, observation_keys=(*DEFAULT_OBSERVATION_KEYS, *SCREEN_KEYS), seed=args.seed)
    names = [action_name(action) for action in env.unwrapped.actions]
    obs, _ = env.reset(seed=args.seed)
    torch.manual_seed(args.seed)
    history, actions, rewards = [], [], []
    for _ in range(args.steps):
        history.append({key: np.array(value) for key, value in obs.items()})  # NLE reuses its arrays
        with torch.inference_mode():
            action, *_ = policy.get_action_and_value(
                {key: value[None] for key, value in obs.items()}, deterministic=args.deterministic
            )
        obs, reward, terminated, truncated, _ = env.step(int(action))
        actions.append(names[int(action)])
        rewards.append(float(reward))
        if terminated or truncated:
            break
    env.close()
    stacked = {key: np.stack([step[key] for step in history]) for key in history[0]}
    return stacked, actions, np.asarray(rewards)


def main(args: Args) -> list[Path]:
    if args.steps < 1 or args.states < 1 or args.top_k < 1:
        raise ValueError(f"steps, states and top_k must be >= 1, got {args.steps}, {args.states} and {args.top_k}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "usage" in args.what:
        run_dir = args.run_dir or (str(Path(args.checkpoint).parent.parent) if args.checkpoint else None)
        metrics = Path(run_dir) / "metrics.jsonl" if run_dir else None
        if metrics is not None and metrics.is_file():
            path = plot_expert_usage(
                read_metrics(metrics), out / "expert_usage.png", title=f"Expert usage over training: {run_dir}"
            )
            written += [path] if path else []
        else:
            print(f"usage: skipped, no metrics.jsonl (run dir {run_dir!r}; pass --run-dir)")
    if not {"attention", "episode", "gif"} & set(args.what):
        return written

    policy, env_id, label = load(args)
    obs, actions, rewards = play(policy, env_id, args)
    with torch.inference_mode():
        output = policy(obs)  # the whole episode at once: a sample's output does not depend on its batch
    frames = episode_frames(policy, obs, output, actions, rewards, top_k=args.top_k)
    experts = policy.experts.names
    crop = policy.visual_encoder.crop_size
    if "attention" in args.what:
        chosen = np.unique(np.linspace(0, len(frames) - 1, min(args.states, len(frames))).round().astype(int))
        written.append(
            plot_attention_maps(
                [frames[i] for i in chosen],
                out / "attention.png",
                expert_names=experts,
                title=f"Where the top operators look: {label}, {env_id} seed {args.seed}",
                crop_size=crop,
            )
        )
    if "episode" in args.what:
        written.append(
            write_episode_html(
                frames,
                out / "episode.html",
                expert_names=experts,
                title=f"{env_id}, seed {args.seed}: {label}",
                subtitle=(
                    f"The first {len(frames)} steps. Orange cells: the attention (mean over heads) of the "
                    "applicable operator of highest score."
                ),
            )
        )
    if "gif" in args.what:
        if importlib.util.find_spec("PIL") is None:
            print("gif: skipped, pillow is not installed")
        else:
            written.append(
                write_episode_gif(
                    frames, out / "episode.gif", expert_names=experts, title=label, crop_size=crop, fps=args.fps
                )
            )
    return written


if __name__ == "__main__":
    for path in main(tyro.cli(Args)):
        print(path)
