"""A knowledge hypergraph played as a fixed-priority rule agent, for any environment.

:class:`RuleAgent` is "the hypergraph alone": no learning, the symbolic floor
a learned policy has to beat, and a teacher to kickstart one from
(:class:`~crossmoe.teacher.Teacher`). It needs three things from a domain: the
graph, a function from observations to the graph's condition activations (the
atoms), and the env's action names. :class:`crossmoe.nethack.RuleAgent` is
this agent with NetHack's graph, atoms and priorities filled in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from crossmoe._checks import check_probability
from crossmoe.hypergraph import Hypergraph, action_name
from crossmoe.teacher import soften

__all__ = ["RuleAgent"]


class RuleAgent:
    """A knowledge hypergraph played as a fixed-priority rule agent, with no learning.

    Each step it computes the atoms (``atoms(obs)``, or the observation's
    ``"atoms"`` entry when present), finds the applicable operators
    (:meth:`Hypergraph.applicable <crossmoe.hypergraph.Hypergraph.applicable>`),
    takes the first of them in ``priority`` order and picks uniformly at
    random among that operator's actions that the env has
    (:meth:`Hypergraph.action_mask <crossmoe.hypergraph.Hypergraph.action_mask>`).
    Operators the priority list does not name follow it in graph order;
    operators with no action in the env's action set are never chosen. When no
    operator applies, any action is equally likely. With ``epsilon`` it plays
    the rules softened: in each step, with that probability, any action
    instead (epsilon-greedy over the rules). The whole batch is decided at
    once with NumPy.

    It follows the :class:`~crossmoe.evaluation.Agent` protocol (:meth:`act`)
    and the :class:`~crossmoe.teacher.Teacher` protocol (:meth:`action_probs`).

    Args:
        hypergraph: The knowledge graph.
        atoms: Function from a batched observation dict to ``(B, C)`` 0/1
            activations of ``hypergraph``'s conditions, in their order.
        action_set: The env's actions, in action-index order (enum members,
            ``"Enum.MEMBER"`` names or anything :func:`~crossmoe.hypergraph.action_name`
            names); :func:`~crossmoe.hypergraph.env_actions` reads them from an env.
        priority: Operator names, most urgent first.
        seed: Seed of the random choice among an operator's actions.
        epsilon: Probability in ``[0, 1]`` of a uniformly random action in
            each step; 0 (the default) plays the rules as they are.

    Example:
        >>> from crossmoe import Hypergraph, OperatorSpec
        >>> graph = Hypergraph(["door_ahead"], [OperatorSpec("open", requires=("door_ahead",), actions=(1,))])
        >>> agent = RuleAgent(graph, lambda obs: obs["door"], action_set=[0, 1], priority=("open",))
        >>> agent.act({"door": np.array([[1.0]])})
        array([1])
    """

    def __init__(
        self,
        hypergraph: Hypergraph,
        atoms: Callable[[Mapping[str, Any]], Any],
        action_set: Sequence[Any],
        *,
        priority: Sequence[str] = (),
        seed: int | None = 0,
        epsilon: float = 0.0,
    ) -> None:
        if not isinstance(hypergraph, Hypergraph):
            raise TypeError(f"hypergraph must be a crossmoe Hypergraph, got {type(hypergraph).__name__}")
        if not callable(atoms):
            raise TypeError(f"atoms must be a function from observations to activations, got {type(atoms).__name__}")
        if isinstance(priority, str):
            raise TypeError(f"priority must be a sequence of operator names, got the string {priority!r}")
        index = {name: o for o, name in enumerate(hypergraph.operators)}
        unknown = [name for name in priority if name not in index]
        if unknown:
            raise ValueError(f"priority must name operators of the hypergraph, got unknown names {unknown}")
        if len(set(priority)) != len(priority):
            raise ValueError(f"priority must name each operator once, got {list(priority)}")
        epsilon = check_probability(epsilon, "epsilon")
        listed = [index[name] for name in priority]
        order = np.asarray(listed + sorted(set(range(hypergraph.num_operators)) - set(listed)))
        self.hypergraph = hypergraph
        self.atoms = atoms
        self.action_set = [action_name(action) for action in action_set]
        if not self.action_set:
            raise ValueError("action_set must list at least one action, got none")
        self.action_mask = hypergraph.action_mask(self.action_set).numpy()  # (O, A)
        self.order = order[self.action_mask[order].any(axis=1)]  # operator indices, most urgent first
        self.priority = tuple(hypergraph.operators[o] for o in self.order)
        self.epsilon = epsilon
        self._rng = np.random.default_rng(seed)

    @property
    def num_actions(self) -> int:
        return len(self.action_set)

    def reset(self, seed: int | None = None) -> None:
        """Restart the random choice among an operator's actions from ``seed``."""
        self._rng = np.random.default_rng(seed)

    def select(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The chosen operator and action of each observation.

        An ``atoms`` entry of ``obs``, when present, is used instead of
        computing the atoms.

        Shapes:
            - obs: a dict of batched arrays, as a vector env returns
            - output: ``(operators (B,), actions (B,))``, both int64; the operator
              is ``-1`` where none applies or (``epsilon``) the action is random
        """
        operators, allowed = self._choose(obs)
        if self.epsilon > 0.0:  # drawn only then, so the rules alone keep their random stream
            explore = self._rng.random(len(operators)) < self.epsilon
            operators = np.where(explore, -1, operators)
            allowed = allowed | explore[:, None]
        # The argmax of i.i.d. uniforms over the allowed actions is a uniform choice among them.
        actions = np.where(allowed, self._rng.random(allowed.shape), -1.0).argmax(axis=1)
        return operators, actions

    def action_probs(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The distribution :meth:`act` samples from: uniform over the chosen operator's actions.

        This makes the rule agent a :class:`~crossmoe.teacher.Teacher` for
        kickstarting. Where no operator applies, it is uniform over every
        action; with ``epsilon``, ``epsilon / A`` is mixed into every action.
        An ``atoms`` entry of ``obs`` is used when present.

        Shapes:
            - output: ``(B, A)`` float32, rows summing to 1
        """
        _, allowed = self._choose(obs)
        return soften(allowed / allowed.sum(axis=1, keepdims=True), self.epsilon).astype(np.float32)

    def _choose(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The first applicable operator in priority order (``-1``: none) and its ``(B, A)`` bool allowed actions."""
        atoms = obs["atoms"] if "atoms" in obs else self.atoms(obs)
        if hasattr(atoms, "detach"):
            atoms = atoms.detach().cpu().numpy()
        applicable = self.hypergraph.applicable(np.asarray(atoms, dtype=np.float32)).numpy()  # (B, O)
        if not self.order.size:  # no operator has an action in the env's action set: uniform play
            return np.full(len(applicable), -1), np.ones((len(applicable), self.num_actions), dtype=bool)
        ranked = applicable[:, self.order]  # (B, O') in priority order
        found = ranked.any(axis=1)
        operators = np.where(found, self.order[ranked.argmax(axis=1)], -1)
        allowed = np.where(found[:, None], self.action_mask[operators], True)  # (B, A)
        return operators, allowed

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The ``(B,)`` actions of a batch of observations (see :meth:`select`)."""
        return self.select(obs)[1]
