"""Train the crossmoe NetHack agent with Stable-Baselines3's PPO.

    python examples/sb3_nethack.py --total-timesteps 200000 --n-envs 16
    tensorboard --logdir runs/sb3           # train/aux/<name>, train/routing_alpha, rollout/ep_rew_mean

The whole user code is the ten lines of ``main``: SB3 runs the loop,
:class:`~crossmoe.integrations.sb3.MoEPPO` adds the auxiliary losses and the
routing schedule, and the model saves and loads as any SB3 model.
"""

from dataclasses import dataclass

import torch
import tyro
from stable_baselines3.common.env_util import make_vec_env

from crossmoe.integrations.sb3 import CrossMoEPolicy, MoEPPO
from crossmoe.nethack import make_env


@dataclass
class Args:
    env_id: str = "NetHackScore-v0"
    """A NetHack or MiniHack env id."""
    total_timesteps: int = 200_000
    n_envs: int = 16
    n_steps: int = 128
    """Steps per env per rollout (the rollout is n_envs * n_steps)."""
    batch_size: int = 512
    seed: int = 1
    torch_threads: int = 2
    out: str = "runs/sb3"
    """TensorBoard logs and the saved model (``<out>/agent.zip``)."""


def main(args: Args) -> None:
    torch.set_num_threads(args.torch_threads)
    env = make_vec_env(lambda: make_env(args.env_id), n_envs=args.n_envs, seed=args.seed)
    model = MoEPPO(
        CrossMoEPolicy,
        env,
        policy_kwargs={"preset": "nethack"},
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=4,
        ent_coef=0.01,  # the rest are SB3's defaults, which match examples/ppo_nethack.py
        seed=args.seed,
        tensorboard_log=args.out,
        verbose=1,
    )
    model.learn(args.total_timesteps)
    model.save(f"{args.out}/agent.zip")
    env.close()


if __name__ == "__main__":
    main(tyro.cli(Args))
