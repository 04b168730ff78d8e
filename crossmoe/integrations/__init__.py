"""Adapters that train crossmoe policies inside other RL libraries.

- :mod:`crossmoe.integrations.sb3`: a Stable-Baselines3 policy and a PPO that
  adds the auxiliary losses and drives the routing schedule
  (``pip install "crossmoe[sb3]"``).
- :mod:`crossmoe.integrations.rllib`: an RLlib new-API-stack ``TorchRLModule``,
  a PPO learner with the auxiliary losses and a schedule callback
  (``pip install "crossmoe[rllib]"``).

Neither is imported by ``import crossmoe``: each needs its own optional
dependency. What both share (building a policy from a preset or from your
encoders, restoring observation dtypes, the auxiliary losses of a shuffled
minibatch) is in :mod:`crossmoe.integrations.common`.
"""
