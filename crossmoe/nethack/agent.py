"""The NetHack agent: the shipped knowledge graph and the policy factory."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Literal

import torch
from torch import nn

from crossmoe._checks import check_int
from crossmoe.encoders import AtomFeatures
from crossmoe.hypergraph import Hypergraph, action_name, env_actions
from crossmoe.knowledge import ApplicabilityPrior, AttentionDirectionPrior, RulePrior
from crossmoe.nethack.atoms import graph_atoms
from crossmoe.nethack.encoders import COMPASS, NetHackVisualEncoder
from crossmoe.nethack.rules import RuleAgent, expert_from_label
from crossmoe.policy import ActorCritic, CrossAttentionMoEPolicy, knowledge_policy
from crossmoe.ppo import TrainDomain
from crossmoe.schedule import RoutingState
from crossmoe.training import load_checkpoint

__all__ = [
    "NETHACK_SCORE_ACTIONS",
    "build_agent",
    "env_actions",
    "load_agent",
    "load_hypergraph",
    "make_baseline_policy",
    "make_policy",
    "train_domain",
]


def load_hypergraph(path: str | os.PathLike[str] | None = None) -> Hypergraph:
    """A NetHack knowledge graph: by default the curated one shipped with the package.

    The shipped graph (``crossmoe/nethack/hypergraph.json``) has the atoms of
    :func:`~crossmoe.nethack.extract_atoms` as its conditions, in the same order;
    another graph may use any of them, in any order (:func:`~crossmoe.nethack.graph_atoms`).

    Args:
        path: A graph file to read instead, in either format of
            :meth:`Hypergraph.from_json <crossmoe.hypergraph.Hypergraph.from_json>`.
            A crossmoe-schema file keeps its experts; a research ``{nodes, edges}``
            file has none, so each operator's expert comes from its label
            (:func:`~crossmoe.nethack.expert_from_label`).
    """
    if path is None:
        with resources.as_file(resources.files("crossmoe.nethack") / "hypergraph.json") as shipped:
            return Hypergraph.from_json(shipped)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    research = isinstance(data, dict) and "nodes" in data and "edges" in data
    return Hypergraph.from_dict(data, operator_to_expert=expert_from_label if research else None)


#: Actions of ``NetHackScore-v0``: what :func:`make_policy` builds for when given neither ``action_dim`` nor ``env``.
NETHACK_SCORE_ACTIONS = 23


def _num_actions(env: Any) -> int:
    space = getattr(env, "single_action_space", None) or getattr(env, "action_space", None)
    if space is None or not hasattr(space, "n"):
        raise ValueError(f"env must have a Discrete action_space or single_action_space, got {type(env).__name__}")
    return int(space.n)


def _action_set(action_set: Sequence[Any] | None, action_dim: int, env: Any) -> list[str]:
    """The env's actions as hypergraph names: given, read from ``env``, or ``NetHackScore-v0``'s."""
    if action_set is None and env is not None:
        action_set = env_actions(env)
        if action_set is None:
            raise ValueError(f"action_set must be given: the env {type(env).__name__} does not list its NLE actions")
    if action_set is None:
        from nle.env.tasks import TASK_ACTIONS  # what NetHackScore-v0 and the other NLE tasks use

        action_set = TASK_ACTIONS
    names = [action_name(a) for a in action_set]
    if len(names) != action_dim:
        raise ValueError(
            f"action_set must list the env's {action_dim} actions (pass action_set= or env=), got {len(names)}"
        )
    return names


def _action_dim(action_dim: int | None, env: Any) -> int:
    """``action_dim``, else the env's action count, else ``NetHackScore-v0``'s 23; both given must agree."""
    if action_dim is None:
        return NETHACK_SCORE_ACTIONS if env is None else _num_actions(env)
    action_dim = check_int(action_dim, "action_dim")
    if env is not None and _num_actions(env) != action_dim:
        raise ValueError(f"action_dim must match the env's {_num_actions(env)} actions, got {action_dim}")
    return int(action_dim)


def make_policy(
    action_dim: int | None = None,
    *,
    env: Any = None,
    dim: int = 128,
    fusion: str | nn.Module = "cross_attention",
    hypergraph: Hypergraph | None = None,
    graph_hidden_dim: int | None = None,
    graph_heads: int = 2,
    effect_passes: int = 1,
    crop_size: int = 9,
    crop_patch: int = 3,
    num_heads: int = 2,
    head_dim: int | None = 16,
    knowledge: bool = True,
    prior_init: float | None = None,
    knowledge_pathway: Literal["prior", "attention", "rules"] = "prior",
    action_set: Sequence[Any] | None = None,
    applicable_queries: bool = True,
    max_queries: int | None = 16,
    **policy_kwargs: Any,
) -> CrossAttentionMoEPolicy:
    """Build the NetHack agent: atoms and hypergraph, visual tokens, fusion, router, experts and critic.

    With neither ``action_dim`` nor ``env`` it is the ``NetHackScore-v0``
    agent (23 actions). The returned policy's ``forward`` takes the
    observation dict of a :func:`~crossmoe.nethack.make_vector_env` env
    (numpy arrays or tensors, keys ``glyphs``, ``blstats``, ``message`` and
    ``inv_oclasses``). An ``atoms`` entry, when present, is used instead of
    recomputing the atoms. ``policy.config`` holds the arguments as plain
    data (the hypergraph as its JSON dict), which is what checkpoints store
    for :func:`load_agent`.

    Args:
        action_dim: Number of actions; taken from ``env`` when not given.
        env: A gymnasium env or vector env whose (single) action space is
            ``Discrete``; the action count comes from it, so the same agent
            serves ``NetHackScore-v0`` (23 actions) and MiniHack tasks.
        dim: Width of the tokens and the context.
        fusion: ``"cross_attention"``, the ``"concat"`` ablation, or a fusion
            module (:mod:`crossmoe.fusion`).
        hypergraph: Knowledge graph; defaults to :func:`load_hypergraph`.
            Its conditions must be atoms of :data:`~crossmoe.nethack.ATOMS`,
            in any order (:func:`~crossmoe.nethack.graph_atoms`).
        graph_hidden_dim: Node width of the graph encoder (default ``min(dim, 64)``).
        graph_heads: Attention heads of the graph encoder.
        effect_passes: Operator -> effect -> operator rounds in the graph encoder.
        crop_size: Side of the egocentric glyph window.
        crop_patch: Side of the blocks of crop cells that form one token (see
            :class:`~crossmoe.nethack.NetHackVisualEncoder`). The default 3
            gives 9 crop tokens; ``1`` gives one token per cell (81), which
            makes the attention maps per cell but the policy 1.45-1.65x slower
            (``benchmarks/bench_policy.py``).
        num_heads: Heads of the cross-attention.
        head_dim: Width of each head (narrower than ``dim // num_heads`` to keep
            the key and value projections of the many map tokens cheap).
        knowledge: Add the knowledge pathway, an
            :class:`~crossmoe.knowledge.ApplicabilityPrior` over the actions of
            the applicable operators; ``False`` is the no-knowledge ablation
            (the graph then only shapes the context).
        prior_init: Initial vote of each operator in the prior; ``None``: the
            pathway's default (1.0, or the :class:`~crossmoe.knowledge.RulePrior`'s 5.0).
        knowledge_pathway: ``"prior"``, the
            :class:`~crossmoe.knowledge.ApplicabilityPrior` (design (a)),
            ``"attention"``, the
            :class:`~crossmoe.knowledge.AttentionDirectionPrior` (design (b)):
            operators that move in several directions vote for the directions
            their cross-attention reads (``fusion="cross_attention"`` only), or
            ``"rules"``, the :class:`~crossmoe.knowledge.RulePrior` of the
            rule agent (:data:`~crossmoe.nethack.rules.DEFAULT_PRIORITY`): the
            policy starts as the rules, softened, and learns from there.
        action_set: The env's actions (enum members or ``"Enum.MEMBER"``
            names), which the operators' actions are matched against; read
            from ``env`` when given, else ``NetHackScore-v0``'s.
        applicable_queries: Only the applicable operators query the map
            (:class:`~crossmoe.fusion.CrossAttentionFusion`); about 5 of the 59
            apply in a typical state, so the cross-attention costs a fraction
            of all operators querying. ``False`` is the earlier design, in
            which every operator reads the map (what checkpoints from before
            this option load as).
        max_queries: Operators gathered per sample in a compiled graph; a
            batch in which some state has more applicable operators runs
            eagerly. ``None``: all of them.
        **policy_kwargs: Passed to :class:`~crossmoe.policy.CrossAttentionMoEPolicy`
            (``sparse_topk``, ``alpha``, ``temperature``, ``core="lstm"`` for a
            recurrent core, ...).

    Example:
        >>> policy = make_policy()
        >>> policy.action_dim
        23
    """
    action_dim = _action_dim(action_dim, env)
    hypergraph = load_hypergraph() if hypergraph is None else hypergraph
    if not isinstance(hypergraph, Hypergraph):
        raise TypeError(
            f"hypergraph must be a crossmoe Hypergraph (e.g. Hypergraph.from_json(path)) or None, "
            f"got {type(hypergraph).__name__}"
        )
    visual = NetHackVisualEncoder(dim, crop_size=crop_size, crop_patch=crop_patch)
    # The no-knowledge ablation needs no action set (make_policy(8, knowledge=False) for an 8-action env).
    actions = _action_set(action_set, action_dim, env) if knowledge or action_set is not None else None
    if knowledge_pathway not in ("prior", "attention", "rules"):
        raise ValueError(f"knowledge_pathway must be 'prior', 'attention' or 'rules', got {knowledge_pathway!r}")
    init = (RulePrior.DEFAULT_INIT if knowledge_pathway == "rules" else 1.0) if prior_init is None else prior_init
    prior: bool | nn.Module = bool(knowledge)
    if knowledge and knowledge_pathway == "rules":
        prior = RulePrior.from_rules(RuleAgent(actions, hypergraph=hypergraph), init=init)
    if knowledge and knowledge_pathway == "attention":
        if fusion != "cross_attention":
            raise ValueError(
                f"knowledge_pathway='attention' steers by the cross-attention, so fusion must be 'cross_attention', "
                f"got {fusion if isinstance(fusion, str) else type(fusion).__name__!r}"
            )
        direction_actions = torch.tensor(
            [[name in (f"CompassDirection.{d}", f"CompassDirectionLonger.{d}") for name in actions] for d in COMPASS]
        )
        prior = AttentionDirectionPrior(
            hypergraph.action_mask(actions), direction_actions, init=init, direction_init=init
        )
    policy = knowledge_policy(
        visual,
        hypergraph,
        graph_atoms(hypergraph),  # extract_atoms, searching paths only where the hero moved
        action_dim,
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
        "factory": "make_policy",
        "action_dim": action_dim,
        "dim": dim,
        "fusion": fusion if isinstance(fusion, str) else None,  # a module is code, not data
        "hypergraph": hypergraph.to_dict(),
        "graph_hidden_dim": graph_hidden_dim,
        "graph_heads": graph_heads,
        "effect_passes": effect_passes,
        "crop_size": crop_size,
        "crop_patch": crop_patch,
        "num_heads": num_heads,
        "head_dim": head_dim,
        "knowledge": knowledge,
        "prior_init": init,
        "knowledge_pathway": knowledge_pathway,
        "action_set": actions,
        "applicable_queries": applicable_queries,
        "max_queries": max_queries,
        **policy_kwargs,
    }
    return policy


def make_baseline_policy(
    action_dim: int | None = None,
    *,
    env: Any = None,
    dim: int = 128,
    hidden_dim: int = 256,
    crop_size: int = 9,
    crop_patch: int = 3,
    knowledge: bool = False,
    hypergraph: Hypergraph | None = None,
    prior_init: float = 1.0,
    action_set: Sequence[Any] | None = None,
    core: str | None = None,
) -> ActorCritic:
    """The no-MoE baseline: the agent's visual encoder under a plain :class:`~crossmoe.policy.ActorCritic`.

    It has no logic stream, no fusion, no router and no experts, so comparing
    it with :func:`make_policy` (same visual encoder settings) isolates what
    the neuro-symbolic MoE adds. Arguments as in :func:`make_policy` (with
    neither ``action_dim`` nor ``env``, 23 actions); ``hidden_dim`` is the
    width of the shared trunk.

    With ``knowledge=True`` it is the flat-features control: the atoms
    (:class:`~crossmoe.encoders.AtomFeatures` over ``hypergraph``'s
    conditions, computed by :class:`~crossmoe.nethack.NetHackAtoms`) join the
    flattened visual tokens at the trunk's input, and the same
    :class:`~crossmoe.knowledge.ApplicabilityPrior` as :func:`make_policy`'s
    is added to the logits: the MoE agent's knowledge, with no hypergraph
    encoder, fusion, router or experts. ``hypergraph``, ``prior_init`` and
    ``action_set`` are then as in :func:`make_policy`. ``core="lstm"`` puts a
    recurrent core (:class:`~crossmoe.recurrent.LSTMCore`) between the trunk
    and the heads, as ``make_policy(core="lstm")`` does for the MoE agent.

    Example:
        >>> make_baseline_policy(knowledge=True).num_features  # one input per atom
        77
    """
    action_dim = _action_dim(action_dim, env)
    if not isinstance(knowledge, bool):
        raise TypeError(f"knowledge must be a bool, got {type(knowledge).__name__} {knowledge!r}")
    visual = NetHackVisualEncoder(dim, crop_size=crop_size, crop_patch=crop_patch)
    features = prior = actions = None
    if knowledge:
        hypergraph = load_hypergraph() if hypergraph is None else hypergraph
        if not isinstance(hypergraph, Hypergraph):
            raise TypeError(f"hypergraph must be a crossmoe Hypergraph or None, got {type(hypergraph).__name__}")
        actions = _action_set(action_set, action_dim, env)
        features = AtomFeatures(hypergraph, atoms=graph_atoms(hypergraph))
        prior = ApplicabilityPrior(hypergraph.action_mask(actions), init=prior_init)
    elif hypergraph is not None or action_set is not None:
        raise ValueError("hypergraph and action_set are for the flat-features control: pass knowledge=True")
    policy = ActorCritic(visual, action_dim, hidden_dim=hidden_dim, features=features, knowledge=prior, core=core)
    policy.config = {
        "factory": "make_baseline_policy",
        "action_dim": action_dim,
        "dim": dim,
        "hidden_dim": hidden_dim,
        "crop_size": crop_size,
        "crop_patch": crop_patch,
        **({} if core is None else {"core": core}),
    }
    if knowledge:
        policy.config.update(knowledge=True, hypergraph=hypergraph.to_dict(), prior_init=prior_init, action_set=actions)
    return policy


def build_agent(config: Mapping[str, Any]) -> CrossAttentionMoEPolicy | ActorCritic:
    """Rebuild an untrained agent from its ``policy.config`` (plain data, as stored in checkpoints)."""
    if not isinstance(config, Mapping) or config.get("factory") not in ("make_policy", "make_baseline_policy"):
        factory = config.get("factory") if isinstance(config, Mapping) else type(config).__name__
        raise ValueError(
            f"config must be a policy.config dict of make_policy or make_baseline_policy, got factory {factory!r}"
        )
    kwargs = {key: value for key, value in config.items() if key != "factory"}
    if "hypergraph" in kwargs:
        kwargs["hypergraph"] = Hypergraph.from_dict(kwargs["hypergraph"])
    if config["factory"] == "make_baseline_policy":
        return make_baseline_policy(**kwargs)
    if kwargs.get("fusion") is None:
        raise ValueError("config['fusion'] is None: the agent used a custom fusion module, which a config cannot hold")
    kwargs.setdefault("knowledge", False)  # a config from before the knowledge pathway: its weights have no prior
    kwargs.setdefault("applicable_queries", False)  # from before applicable_queries: every operator read the map
    return make_policy(**kwargs)


def load_agent(
    checkpoint: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> CrossAttentionMoEPolicy | ActorCritic:
    """The trained agent of a checkpoint, in eval mode, at the routing state (alpha, temperature) of its step.

    The checkpoint must hold ``policy_config`` (the agent's ``config``),
    ``model`` (its ``state_dict``) and, for MoE agents, ``routing`` (a
    :class:`~crossmoe.RoutingState` as a dict), as ``examples/ppo_nethack.py``
    writes them. It is read with ``weights_only=True``
    (:func:`crossmoe.training.load_checkpoint`), so it cannot run code.

    Example:
        >>> agent = load_agent("runs/demo/checkpoints/best.pt")  # doctest: +SKIP
        >>> action, *_ = agent.get_action_and_value(obs)  # doctest: +SKIP
    """
    state = load_checkpoint(checkpoint, map_location=map_location)
    missing = [key for key in ("policy_config", "model") if key not in state]
    if missing:
        raise ValueError(f"checkpoint {str(checkpoint)!r} must hold 'policy_config' and 'model', it lacks {missing}")
    agent = build_agent(state["policy_config"]).to(map_location)
    agent.load_state_dict(state["model"])
    routing = state.get("routing")
    if routing is not None:
        RoutingState(**routing).apply(agent)
    return agent.eval()


def train_domain() -> TrainDomain:
    """NetHack as a :class:`~crossmoe.ppo.TrainDomain`: what :func:`crossmoe.ppo.train` trains on.

    The envs, score and episode ends of :func:`~crossmoe.nethack.eval_domain`
    (NLE's own step cap is a cut-off, bootstrapped from the last real
    observation); :func:`make_policy` and :func:`make_baseline_policy`, with
    ``knowledge_pathway`` from the args; the rule agents of
    :data:`~crossmoe.nethack.rules.RULES` as teachers (``rules``: with eating);
    ``vectorization`` from the args goes to the vector env.

    Example:
        >>> train(PPOArgs(env_id="NetHackScore-v0", total_timesteps=100_000), train_domain())  # doctest: +SKIP
    """
    import functools

    from crossmoe.integrations.common import TEACHERS, make_teacher
    from crossmoe.nethack.env import eval_domain

    return TrainDomain(
        env=eval_domain(),
        make_policy=make_policy,
        make_baseline_policy=make_baseline_policy,
        teachers={name: functools.partial(make_teacher, name) for name in TEACHERS},
        env_options=("vectorization",),
        policy_options=("knowledge_pathway",),
    )
