"""The MiniGrid agent's knowledge: the shipped graph, its rule agent and the evaluation domain."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

from crossmoe.evaluation import EvalDomain
from crossmoe.hypergraph import Hypergraph
from crossmoe.minigrid.atoms import ATOMS, extract_atoms
from crossmoe.minigrid.env import make_vector_env
from crossmoe.rules import RuleAgent as GenericRuleAgent

__all__ = ["MINIGRID_ACTIONS", "RuleAgent", "eval_domain", "graph_atoms", "load_hypergraph"]

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


def graph_atoms(hypergraph: Hypergraph):
    """The function from observations to the atoms ``hypergraph``'s conditions name, in its order.

    Raises:
        ValueError: if a condition is not an atom of :data:`~crossmoe.minigrid.ATOMS`.
    """
    index = {name: c for c, name in enumerate(ATOMS)}
    unknown = [name for name in hypergraph.conditions if name not in index]
    if unknown:
        raise ValueError(f"hypergraph's conditions must be atoms of crossmoe.minigrid.ATOMS, got {unknown[:5]}")
    columns = [index[name] for name in hypergraph.conditions]
    if columns == list(range(len(ATOMS))):
        return extract_atoms

    def atoms(obs):
        return extract_atoms(obs)[:, columns]

    return atoms


class RuleAgent(GenericRuleAgent):
    """The MiniGrid graph played as rules: :class:`crossmoe.rules.RuleAgent` with MiniGrid's graph and atoms.

    Args:
        action_set: The env's actions; MiniGrid's 7 by default.
        hypergraph: The graph; the shipped one by default.
        priority: Operator names, most urgent first; by default the graph's order.
        seed: Seed of the random choice among an operator's actions.
    """

    def __init__(
        self,
        action_set: Sequence[Any] = MINIGRID_ACTIONS,
        *,
        hypergraph: Hypergraph | None = None,
        priority: Sequence[str] = (),
        seed: int | None = 0,
    ) -> None:
        hypergraph = load_hypergraph() if hypergraph is None else hypergraph
        super().__init__(hypergraph, graph_atoms(hypergraph), action_set, priority=priority, seed=seed)


def eval_domain() -> EvalDomain:
    """MiniGrid as an :class:`~crossmoe.evaluation.EvalDomain`: the score is the return (MiniGrid's is
    ``1 - 0.9 * steps / max_steps`` on success, else 0), with no depth; the atoms are
    :func:`~crossmoe.minigrid.extract_atoms`.

    Example:
        >>> result = evaluate(RuleAgent(), "MiniGrid-Empty-8x8-v0", 100, domain=eval_domain())  # doctest: +SKIP
    """
    return EvalDomain(make_vector_env=make_vector_env, atoms=extract_atoms, atom_names=ATOMS)
