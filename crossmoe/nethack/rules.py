"""NetHack rules: which expert owns an operator of a label-only graph, and the hypergraph played as an agent.

The research ``{nodes, edges}`` graphs (see
:meth:`Hypergraph.from_json <crossmoe.hypergraph.Hypergraph.from_json>`) name
each operator after the action it takes (``eat_corpse``,
``melee_attack_vs_newt``, ``move_north``) and have no expert field.
:func:`expert_from_label` maps the leading action word to one of the default
experts; :func:`~crossmoe.nethack.load_hypergraph` applies it to research
files.

:class:`RuleAgent` is "the hypergraph alone": a fixed-priority agent with no
learning, the symbolic floor a learned policy has to beat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from crossmoe.hypergraph import Hypergraph, action_name
from crossmoe.nethack.atoms import DIRECTIONS, graph_atoms

__all__ = [
    "DEFAULT_PRIORITY",
    "EATING_PRIORITY",
    "EXPERT_WORDS",
    "NO_EATING_PRIORITY",
    "RULES",
    "RuleAgent",
    "expert_from_label",
]

#: Leading action words of an operator label, per expert; any other label is ``"general"``.
EXPERT_WORDS: Mapping[str, tuple[str, ...]] = {
    "survival": ("eat", "pray", "quaff", "drink", "flee", "elbereth", "rest", "heal", "retreat", "escape"),
    "combat": ("attack", "melee", "ranged", "fight", "fire", "throw", "wield", "zap", "turn_undead", "kick"),
    "exploration": (
        "move",
        "search",
        "go_down",
        "go_up",
        "descend",
        "ascend",
        "climb",
        "open",
        "unlock",
        "force_lock",
        "travel",
        "explore",
        "jump",
        "teleport",
    ),
}


def expert_from_label(label: str) -> str:
    """The expert that owns an operator, from the action word its label starts with.

    A label belongs to an expert of :data:`EXPERT_WORDS` when it is one of its
    words or starts with the word and an underscore, case-insensitively; the
    word must be whole (``moveable_boulder`` is not a move) and only the start
    counts (``search_treats`` is exploration, not eating). Any other label is
    ``"general"``.

    Example:
        >>> expert_from_label("melee_attack_vs_newt"), expert_from_label("look_around")
        ('combat', 'general')
    """
    label = label.lower()
    for expert, words in EXPERT_WORDS.items():
        if any(label == word or label.startswith(word + "_") for word in words):
            return expert
    return "general"


_COMPASS = tuple(name for name, _, _ in DIRECTIONS)

#: Operators of the shipped graph, most urgent first, that :class:`RuleAgent` tries in turn: the rules without
#: eating, as first measured.
NO_EATING_PRIORITY: tuple[str, ...] = (
    "dismiss_prompt",  # a pending prompt swallows every other key
    "descend_stairs",  # NetHackScore pays 50 points per new level
    *(f"attack_{name}" for name in _COMPASS),
    *(f"follow_path_{name}" for name in _COMPASS),  # towards the down stairs, or else the nearest unexplored exit
    "open_door",
    "enter_doorway",
    "search_dead_end",
    "fallback_move",  # always applicable: the operators after it are never chosen
)

#: :data:`NO_EATING_PRIORITY` with eating: EAT when Weak, or when Hungry and no fight or stairs come first, if a
#: move's key is a food item's letter; answer EAT's questions (which item, and no to what lies here) before
#: ``dismiss_prompt`` would cancel them.
EATING_PRIORITY: tuple[str, ...] = (
    *(f"name_food_{name}" for name in _COMPASS),
    "decline_corpse",
    "dismiss_prompt",
    "eat_typable_food_when_weak",
    "descend_stairs",
    *(f"attack_{name}" for name in _COMPASS),
    "eat_typable_food_when_hungry",
    *NO_EATING_PRIORITY[2 + len(_COMPASS) :],
)
DEFAULT_PRIORITY = EATING_PRIORITY

#: The rule agents by name: ``"rules"`` (:data:`DEFAULT_PRIORITY`, with eating) and ``"rules_no_eating"``
#: (:data:`NO_EATING_PRIORITY`, the rules of the first studies). The names of ``--teacher`` and the study floors.
RULES: Mapping[str, tuple[str, ...]] = {"rules": EATING_PRIORITY, "rules_no_eating": NO_EATING_PRIORITY}


class RuleAgent:
    """The knowledge hypergraph played as a fixed-priority rule agent, with no learning.

    Each step it computes the atoms (:func:`~crossmoe.nethack.extract_atoms`),
    finds the applicable operators (:meth:`Hypergraph.applicable
    <crossmoe.hypergraph.Hypergraph.applicable>`), takes the first of them in
    ``priority`` order and picks uniformly at random among that operator's
    actions that the env has (:meth:`Hypergraph.action_mask
    <crossmoe.hypergraph.Hypergraph.action_mask>`). Operators the priority list
    does not name follow it in graph order; operators with no action in the
    env's action set are never chosen. When no operator applies, any action
    is equally likely. The whole batch is decided at once with NumPy.

    It follows the :class:`~crossmoe.evaluation.Agent` protocol, so
    :func:`crossmoe.evaluation.evaluate` takes it as it is, and the
    :class:`~crossmoe.teacher.Teacher` protocol (:meth:`action_probs`), so a
    learner can be kickstarted from it (``examples/ppo_nethack.py --teacher rules``).

    Args:
        action_set: The env's actions (``env.unwrapped.actions``: enum members
            or ``"Enum.MEMBER"`` names); defaults to those of ``NetHackScore-v0``.
        hypergraph: The graph whose conditions are the atoms of
            :func:`~crossmoe.nethack.extract_atoms`; defaults to the shipped one.
        priority: Operator names, most urgent first.
        seed: Seed of the random choice among an operator's actions.

    Example:
        >>> agent = RuleAgent(seed=0)
        >>> agent.act(obs)  # doctest: +SKIP
        array([ 0, 11])
    """

    def __init__(
        self,
        action_set: Sequence[Any] | None = None,
        *,
        hypergraph: Hypergraph | None = None,
        priority: Sequence[str] = DEFAULT_PRIORITY,
        seed: int | None = 0,
    ) -> None:
        if hypergraph is None:
            from crossmoe.nethack.agent import load_hypergraph  # agent.py imports this module

            hypergraph = load_hypergraph()
        if action_set is None:
            from nle.env.tasks import TASK_ACTIONS  # what NetHackScore-v0 and the other NLE tasks use

            action_set = TASK_ACTIONS
        index = {name: o for o, name in enumerate(hypergraph.operators)}
        unknown = [name for name in priority if name not in index]
        if unknown:
            raise ValueError(f"priority must name operators of the hypergraph, got unknown names {unknown}")
        if len(set(priority)) != len(priority):
            raise ValueError(f"priority must name each operator once, got {list(priority)}")
        listed = [index[name] for name in priority]
        order = np.asarray(listed + sorted(set(range(hypergraph.num_operators)) - set(listed)))
        self.hypergraph = hypergraph
        self._atoms = graph_atoms(hypergraph)
        self.action_set = [action_name(action) for action in action_set]
        self.action_mask = hypergraph.action_mask(self.action_set).numpy()  # (O, A)
        self.order = order[self.action_mask[order].any(axis=1)]  # operator indices, most urgent first
        self.priority = tuple(hypergraph.operators[o] for o in self.order)
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
            - obs: a dict of batched arrays, as :func:`~crossmoe.nethack.make_vector_env` returns
            - output: ``(operators (B,), actions (B,))``, both int64; the operator
              is ``-1`` where none applies
        """
        operators, allowed = self._choose(obs)
        # The argmax of i.i.d. uniforms over the allowed actions is a uniform choice among them.
        actions = np.where(allowed, self._rng.random(allowed.shape), -1.0).argmax(axis=1)
        return operators, actions

    def action_probs(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The distribution :meth:`act` samples from: uniform over the chosen operator's actions.

        This makes the rule agent a :class:`~crossmoe.teacher.Teacher` for
        kickstarting. Where no operator applies, it is uniform over every
        action. An ``atoms`` entry of ``obs`` is used when present.

        Shapes:
            - output: ``(B, A)`` float32, rows summing to 1
        """
        _, allowed = self._choose(obs)
        return (allowed / allowed.sum(axis=1, keepdims=True)).astype(np.float32)

    def _choose(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The first applicable operator in priority order (``-1``: none) and its ``(B, A)`` bool allowed actions."""
        atoms = obs["atoms"] if "atoms" in obs else self._atoms(obs)
        applicable = self.hypergraph.applicable(np.asarray(atoms, dtype=np.float32)).numpy()  # (B, O)
        ranked = applicable[:, self.order]  # (B, O') in priority order
        found = ranked.any(axis=1)
        operators = np.where(found, self.order[ranked.argmax(axis=1)], -1)
        allowed = np.where(found[:, None], self.action_mask[operators], True)  # (B, A)
        return operators, allowed

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The ``(B,)`` actions of a batch of observations (see :meth:`select`)."""
        return self.select(obs)[1]
