"""The NetHack agent: the shipped knowledge graph and the policy factory."""

from __future__ import annotations

from importlib import resources
from typing import Any

from crossmoe.encoders import HypergraphLogicEncoder
from crossmoe.graph import Hypergraph
from crossmoe.nethack.atoms import extract_atoms
from crossmoe.nethack.encoders import NetHackVisualEncoder
from crossmoe.policy import ActorCritic, CrossAttentionMoEPolicy

__all__ = ["load_hypergraph", "make_baseline_policy", "make_policy"]


def load_hypergraph() -> Hypergraph:
    """The curated NetHack knowledge graph shipped with the package (``crossmoe/nethack/hypergraph.json``).

    Its conditions are the atoms of :func:`~crossmoe.nethack.extract_atoms`, in the same order.
    """
    with resources.as_file(resources.files("crossmoe.nethack") / "hypergraph.json") as path:
        return Hypergraph.from_json(path)


def _num_actions(env: Any) -> int:
    space = getattr(env, "single_action_space", None) or getattr(env, "action_space", None)
    if space is None or not hasattr(space, "n"):
        raise ValueError(f"env must have a Discrete action_space or single_action_space, got {type(env).__name__}")
    return int(space.n)


def _action_dim(action_dim: int | None, env: Any, caller: str) -> int:
    """``action_dim``, or the env's action count; both given must agree."""
    if action_dim is None:
        if env is None:
            raise ValueError(f"{caller} needs action_dim or env to know the number of actions, got neither")
        return _num_actions(env)
    if env is not None and _num_actions(env) != action_dim:
        raise ValueError(f"action_dim must match the env's {_num_actions(env)} actions, got {action_dim}")
    return action_dim


def make_policy(
    action_dim: int | None = None,
    *,
    env: Any = None,
    dim: int = 128,
    fusion: str = "cross_attention",
    hypergraph: Hypergraph | None = None,
    graph_hidden_dim: int | None = None,
    graph_heads: int = 2,
    effect_passes: int = 1,
    crop_size: int = 9,
    crop_patch: int = 3,
    num_heads: int = 2,
    head_dim: int | None = 16,
    **policy_kwargs: Any,
) -> CrossAttentionMoEPolicy:
    """Build the NetHack agent: atoms and hypergraph, visual tokens, fusion, router, experts and critic.

    The returned policy's ``forward`` takes the observation dict of a
    :func:`~crossmoe.nethack.make_vector_env` env (numpy arrays or tensors,
    keys ``glyphs``, ``blstats``, ``message`` and ``inv_oclasses``). An
    ``atoms`` entry, when present, is used instead of recomputing the atoms.

    Args:
        action_dim: Number of actions; taken from ``env`` when not given.
        env: A gymnasium env or vector env whose (single) action space is
            ``Discrete``; the action count comes from it, so the same agent
            serves ``NetHackScore-v0`` (23 actions) and MiniHack tasks.
        dim: Width of the tokens and the context.
        fusion: ``"cross_attention"`` or the ``"concat"`` ablation.
        hypergraph: Knowledge graph; defaults to :func:`load_hypergraph`.
            Its conditions must be the atoms of
            :func:`~crossmoe.nethack.extract_atoms`.
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
        **policy_kwargs: Passed to :class:`~crossmoe.policy.CrossAttentionMoEPolicy`
            (``sparse_topk``, ``alpha``, ``temperature``, ...).
    """
    action_dim = _action_dim(action_dim, env, "make_policy")
    hypergraph = load_hypergraph() if hypergraph is None else hypergraph
    logic = HypergraphLogicEncoder(
        hypergraph,
        dim,
        atoms=extract_atoms,
        hidden_dim=graph_hidden_dim,
        heads=graph_heads,
        effect_passes=effect_passes,
    )
    visual = NetHackVisualEncoder(dim, crop_size=crop_size, crop_patch=crop_patch)
    return CrossAttentionMoEPolicy(
        visual,
        logic,
        action_dim,
        dim=dim,
        num_experts=len(hypergraph.experts),
        fusion=fusion,
        num_heads=num_heads,
        head_dim=head_dim,
        expert_names=hypergraph.experts,
        **policy_kwargs,
    )


def make_baseline_policy(
    action_dim: int | None = None,
    *,
    env: Any = None,
    dim: int = 128,
    hidden_dim: int = 256,
    crop_size: int = 9,
    crop_patch: int = 3,
) -> ActorCritic:
    """The no-MoE baseline: the agent's visual encoder under a plain :class:`~crossmoe.policy.ActorCritic`.

    It has no logic stream, no fusion, no router and no experts, so comparing
    it with :func:`make_policy` (same visual encoder settings) isolates what
    the neuro-symbolic MoE adds. Arguments as in :func:`make_policy`;
    ``hidden_dim`` is the width of the shared trunk.
    """
    action_dim = _action_dim(action_dim, env, "make_baseline_policy")
    visual = NetHackVisualEncoder(dim, crop_size=crop_size, crop_patch=crop_patch)
    return ActorCritic(visual, action_dim, hidden_dim=hidden_dim)
