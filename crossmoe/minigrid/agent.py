"""The MiniGrid agent: the shipped graph, the policy factories, its rule agent and the evaluation domain."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from crossmoe.encoders import AtomFeatures
from crossmoe.evaluation import EvalDomain
from crossmoe.hypergraph import Hypergraph, action_name, env_actions
from crossmoe.knowledge import ApplicabilityPrior, RulePrior
from crossmoe.minigrid.atoms import ATOMS, MiniGridAtoms, extract_atoms
from crossmoe.minigrid.encoders import MiniGridVisualEncoder
from crossmoe.minigrid.env import make_vector_env
from crossmoe.policy import ActorCritic, CrossAttentionMoEPolicy, knowledge_policy
from crossmoe.ppo import TrainDomain
from crossmoe.rules import RuleAgent as GenericRuleAgent
from crossmoe.schedule import RoutingState
from crossmoe.training import load_checkpoint

__all__ = [
    "MINIGRID_ACTIONS",
    "RuleAgent",
    "build_agent",
    "eval_domain",
    "graph_atoms",
    "load_agent",
    "load_hypergraph",
    "make_baseline_policy",
    "make_policy",
    "train_domain",
]

MINIGRID_ACTIONS: tuple[str, ...] = tuple(
    f"Actions.{name}" for name in ("left", "right", "forward", "pickup", "drop", "toggle", "done")
)
"""The 7 actions of every MiniGrid and BabyAI env (``minigrid.core.actions.Actions``), in index order."""


def load_hypergraph(path: str | os.PathLike[str] | None = None) -> Hypergraph:
    """A MiniGrid knowledge graph: by default the one shipped with the package (``crossmoe/minigrid/hypergraph.json``).

    The shipped graph's conditions are :data:`~crossmoe.minigrid.ATOMS`, in
    order, and its operators are listed most urgent first (the rule agent's
    priority).
    """
    if path is None:
        with resources.as_file(resources.files("crossmoe.minigrid") / "hypergraph.json") as shipped:
            return Hypergraph.from_json(shipped)
    return Hypergraph.from_json(path)


def graph_atoms(hypergraph: Hypergraph) -> MiniGridAtoms:
    """The atoms ``hypergraph``'s conditions name, in its order (a :class:`~crossmoe.minigrid.atoms.MiniGridAtoms`).

    Raises:
        ValueError: if a condition is not an atom of :data:`~crossmoe.minigrid.ATOMS`.
    """
    try:
        return MiniGridAtoms(hypergraph.conditions)
    except ValueError as error:
        raise ValueError(f"hypergraph's conditions must be atoms of crossmoe.minigrid.ATOMS: {error}") from None


class RuleAgent(GenericRuleAgent):
    """The MiniGrid graph played as rules: :class:`crossmoe.rules.RuleAgent` with MiniGrid's graph and atoms.

    Args:
        action_set: The env's actions; MiniGrid's 7 by default.
        hypergraph: The graph; the shipped one by default.
        priority: Operator names, most urgent first; by default the graph's order.
        seed: Seed of the random choice among an operator's actions.
        epsilon: Probability of a uniformly random action in each step (the
            rules softened; 0 plays them as they are).
    """

    def __init__(
        self,
        action_set: Sequence[Any] = MINIGRID_ACTIONS,
        *,
        hypergraph: Hypergraph | None = None,
        priority: Sequence[str] = (),
        seed: int | None = 0,
        epsilon: float = 0.0,
    ) -> None:
        hypergraph = load_hypergraph() if hypergraph is None else hypergraph
        super().__init__(hypergraph, graph_atoms(hypergraph), action_set, priority=priority, seed=seed, epsilon=epsilon)


def eval_domain() -> EvalDomain:
    """MiniGrid as an :class:`~crossmoe.evaluation.EvalDomain`: the score is the return (MiniGrid's is
    ``1 - 0.9 * steps / max_steps`` on success, else 0), with no depth; the atoms are
    :func:`~crossmoe.minigrid.extract_atoms`.

    Example:
        >>> result = evaluate(RuleAgent(), "MiniGrid-Empty-8x8-v0", 100, domain=eval_domain())  # doctest: +SKIP
    """
    return EvalDomain(make_vector_env=make_vector_env, atoms=extract_atoms, atom_names=ATOMS)


def _action_set(action_set: Sequence[Any] | None, env: Any) -> list[str]:
    """The env's action names: given, read from ``env``, or MiniGrid's 7."""
    if action_set is None and env is not None:
        action_set = env_actions(env)
    names = [action_name(a) for a in (MINIGRID_ACTIONS if action_set is None else action_set)]
    if not names:
        raise ValueError("action_set must list at least one action, got none")
    return names


def _graph(hypergraph: Hypergraph | None) -> Hypergraph:
    hypergraph = load_hypergraph() if hypergraph is None else hypergraph
    if not isinstance(hypergraph, Hypergraph):
        raise TypeError(f"hypergraph must be a crossmoe Hypergraph or None, got {type(hypergraph).__name__}")
    return hypergraph


def make_policy(
    *,
    env: Any = None,
    action_set: Sequence[Any] | None = None,
    dim: int = 64,
    fusion: str = "cross_attention",
    hypergraph: Hypergraph | None = None,
    graph_hidden_dim: int | None = None,
    graph_heads: int = 2,
    effect_passes: int = 1,
    num_heads: int = 2,
    head_dim: int | None = 16,
    knowledge: bool = True,
    prior_init: float | None = None,
    knowledge_pathway: Literal["prior", "rules"] = "prior",
    applicable_queries: bool = True,
    max_queries: int | None = 8,
    **policy_kwargs: Any,
) -> CrossAttentionMoEPolicy:
    """The MiniGrid agent: atoms and hypergraph, the 7x7 cells and the mission as tokens, fusion, router, experts.

    The same design and options as :func:`crossmoe.nethack.make_policy`,
    with :class:`~crossmoe.minigrid.encoders.MiniGridVisualEncoder` for the
    tokens and :func:`graph_atoms` for the atoms. Its ``forward`` takes the
    observation dict of :func:`~crossmoe.minigrid.make_vector_env`
    (``image``, ``direction``, ``mission``). ``policy.config`` holds the
    arguments as plain data, for :func:`load_agent`.

    Args:
        env: An env or vector env whose actions are read (MiniGrid's 7 by default).
        action_set: The env's action names instead of ``env``'s.
        dim: Width of the tokens and the context.
        fusion: ``"cross_attention"`` or the ``"concat"`` ablation.
        hypergraph: Knowledge graph; defaults to :func:`load_hypergraph`.
        knowledge: Add the knowledge pathway; ``False`` is the ablation.
        prior_init: Initial vote of each operator in the prior; ``None``: the
            pathway's default (1.0, or the :class:`~crossmoe.knowledge.RulePrior`'s 5.0).
        knowledge_pathway: ``"prior"``, the :class:`~crossmoe.knowledge.ApplicabilityPrior`,
            or ``"rules"``, the :class:`~crossmoe.knowledge.RulePrior` of :class:`RuleAgent`:
            the policy starts as the rules, softened, and learns from there.
        applicable_queries, max_queries: As in :func:`crossmoe.nethack.make_policy`.
        graph_hidden_dim, graph_heads, effect_passes, num_heads, head_dim: As there too.
        **policy_kwargs: Passed to :class:`~crossmoe.policy.CrossAttentionMoEPolicy`.

    Example:
        >>> make_policy().action_dim
        7
    """
    hypergraph = _graph(hypergraph)
    actions = _action_set(action_set, env)
    if knowledge_pathway not in ("prior", "rules"):
        raise ValueError(f"knowledge_pathway must be 'prior' or 'rules', got {knowledge_pathway!r}")
    init = (RulePrior.DEFAULT_INIT if knowledge_pathway == "rules" else 1.0) if prior_init is None else prior_init
    prior: bool | nn.Module = bool(knowledge)
    if knowledge and knowledge_pathway == "rules":
        prior = RulePrior.from_rules(RuleAgent(actions, hypergraph=hypergraph), init=init)
    policy = knowledge_policy(
        MiniGridVisualEncoder(dim),
        hypergraph,
        graph_atoms(hypergraph),
        len(actions),
        action_set=actions,
        dim=dim,
        fusion=fusion,
        graph_hidden_dim=graph_hidden_dim,
        graph_heads=graph_heads,
        effect_passes=effect_passes,
        num_heads=num_heads,
        head_dim=head_dim,
        knowledge=prior,
        prior_init=init,
        applicable_queries=applicable_queries,
        max_queries=max_queries,
        **policy_kwargs,
    )
    policy.config = {
        "factory": "minigrid.make_policy",
        "action_set": actions,
        "dim": dim,
        "fusion": fusion,
        "hypergraph": hypergraph.to_dict(),
        "graph_hidden_dim": graph_hidden_dim,
        "graph_heads": graph_heads,
        "effect_passes": effect_passes,
        "num_heads": num_heads,
        "head_dim": head_dim,
        "knowledge": knowledge,
        "prior_init": init,
        "knowledge_pathway": knowledge_pathway,
        "applicable_queries": applicable_queries,
        "max_queries": max_queries,
        **policy_kwargs,
    }
    return policy


def make_baseline_policy(
    *,
    env: Any = None,
    action_set: Sequence[Any] | None = None,
    dim: int = 64,
    hidden_dim: int = 256,
    knowledge: bool = False,
    hypergraph: Hypergraph | None = None,
    prior_init: float = 1.0,
    core: str | None = None,
) -> ActorCritic:
    """The no-MoE baseline: :class:`~crossmoe.minigrid.encoders.MiniGridVisualEncoder` under a plain
    :class:`~crossmoe.policy.ActorCritic`; with ``knowledge=True`` the flat-features control (the atoms as
    input and the same knowledge prior as :func:`make_policy`'s), as in :func:`crossmoe.nethack.make_baseline_policy`
    (``core`` too).
    """
    if not isinstance(knowledge, bool):
        raise TypeError(f"knowledge must be a bool, got {type(knowledge).__name__} {knowledge!r}")
    actions = _action_set(action_set, env)
    features = prior = None
    if knowledge:
        hypergraph = _graph(hypergraph)
        features = AtomFeatures(hypergraph, atoms=graph_atoms(hypergraph))
        prior = ApplicabilityPrior(hypergraph.action_mask(actions), init=prior_init)
    elif hypergraph is not None:
        raise ValueError("hypergraph is for the flat-features control: pass knowledge=True")
    visual = MiniGridVisualEncoder(dim)
    policy = ActorCritic(visual, len(actions), hidden_dim=hidden_dim, features=features, knowledge=prior, core=core)
    policy.config = {
        "factory": "minigrid.make_baseline_policy",
        "action_set": actions,
        "dim": dim,
        "hidden_dim": hidden_dim,
        **({} if core is None else {"core": core}),
    }
    if knowledge:
        policy.config.update(knowledge=True, hypergraph=hypergraph.to_dict(), prior_init=prior_init)
    return policy


_FACTORIES = {"minigrid.make_policy": make_policy, "minigrid.make_baseline_policy": make_baseline_policy}


def build_agent(config: Mapping[str, Any]) -> CrossAttentionMoEPolicy | ActorCritic:
    """Rebuild an untrained MiniGrid agent from its ``policy.config`` (plain data, as checkpoints store it)."""
    factory = config.get("factory") if isinstance(config, Mapping) else type(config).__name__
    if factory not in _FACTORIES:
        raise ValueError(f"config must be a policy.config of {sorted(_FACTORIES)}, got factory {factory!r}")
    kwargs = {key: value for key, value in config.items() if key != "factory"}
    if "hypergraph" in kwargs:
        kwargs["hypergraph"] = Hypergraph.from_dict(kwargs["hypergraph"])
    return _FACTORIES[factory](**kwargs)


def load_agent(checkpoint: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained MiniGrid agent of a checkpoint, in eval mode (read with ``weights_only=True``: no code runs).

    The checkpoint holds ``policy_config``, ``model`` and, for MoE agents, ``routing``, as
    :func:`crossmoe.nethack.load_agent` reads them.
    """
    state = load_checkpoint(checkpoint, map_location=map_location)
    missing = [key for key in ("policy_config", "model") if key not in state]
    if missing:
        raise ValueError(f"checkpoint {str(checkpoint)!r} must hold 'policy_config' and 'model', it lacks {missing}")
    agent = build_agent(state["policy_config"]).to(map_location)
    agent.load_state_dict(state["model"])
    if state.get("routing") is not None:
        RoutingState(**state["routing"]).apply(agent)
    return agent.eval()


def _rules_teacher(envs: Any) -> RuleAgent:
    return RuleAgent(_action_set(None, envs))


def _success(reward: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    return np.asarray(terminal, dtype=bool) & (np.asarray(reward) > 0)


def train_domain() -> TrainDomain:
    """MiniGrid as a :class:`~crossmoe.ppo.TrainDomain`: what :func:`crossmoe.ppo.train` trains on.

    The envs of :func:`~crossmoe.minigrid.make_vector_env`, scored by their
    return; :func:`make_policy` and :func:`make_baseline_policy`; the graph's
    :class:`RuleAgent` as the ``rules`` teacher. An episode succeeds when it
    ends with a positive reward (MiniGrid rewards only success), which the
    metrics log as ``success_rate``.

    Example:
        >>> train(PPOArgs(env_id="MiniGrid-DoorKey-5x5-v0", total_timesteps=200_000), train_domain())  # doctest: +SKIP
    """
    return TrainDomain(
        env=eval_domain(),
        make_policy=make_policy,
        make_baseline_policy=make_baseline_policy,
        teachers={"rules": _rules_teacher},
        success=_success,
        policy_options=("knowledge_pathway",),
    )
