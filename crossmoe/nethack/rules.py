"""NetHack rules: which expert owns an operator of a label-only graph, and the hypergraph played as an agent.

The research ``{nodes, edges}`` graphs (see
:meth:`Hypergraph.from_json <crossmoe.hypergraph.Hypergraph.from_json>`) name
each operator after the action it takes (``eat_corpse``,
``melee_attack_vs_newt``, ``move_north``) and have no expert field.
:func:`expert_from_label` maps the leading action word to one of the default
experts; :func:`~crossmoe.nethack.load_hypergraph` applies it to research
files.

:class:`RuleAgent` is "the hypergraph alone": :class:`crossmoe.rules.RuleAgent`,
a fixed-priority agent with no learning, with NetHack's graph, atoms and
priorities filled in; the symbolic floor a learned policy has to beat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crossmoe.hypergraph import Hypergraph
from crossmoe.nethack.atoms import DIRECTIONS, graph_atoms
from crossmoe.rules import RuleAgent as GenericRuleAgent

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
_ATTACKS = tuple(f"attack_{name}" for name in _COMPASS)
_EXPLORE = (
    *(f"follow_path_{name}" for name in _COMPASS),  # towards the down stairs, or else the nearest unexplored exit
    "open_door",
    "enter_doorway",
    "search_dead_end",
    "fallback_move",  # always applicable: the operators after it are never chosen
)
NO_EATING_PRIORITY: tuple[str, ...] = (
    "dismiss_prompt",  # a pending prompt swallows every other key
    "descend_stairs",  # NetHackScore pays 50 points per new level
    *_ATTACKS,
    *_EXPLORE,
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
    *_ATTACKS,
    "eat_typable_food_when_hungry",
    *_EXPLORE,
)
DEFAULT_PRIORITY = EATING_PRIORITY

#: The rule agents by name: ``"rules"`` (:data:`DEFAULT_PRIORITY`, with eating) and ``"rules_no_eating"``
#: (:data:`NO_EATING_PRIORITY`, the rules of the first studies). The names of ``--teacher`` and the study floors.
RULES: Mapping[str, tuple[str, ...]] = {"rules": EATING_PRIORITY, "rules_no_eating": NO_EATING_PRIORITY}


class RuleAgent(GenericRuleAgent):
    """The NetHack knowledge hypergraph played as a fixed-priority rule agent: :class:`crossmoe.rules.RuleAgent`
    with NetHack's graph, atoms and priorities.

    The atoms are :func:`~crossmoe.nethack.extract_atoms`' columns that the
    graph's conditions name (:func:`~crossmoe.nethack.graph_atoms`). It
    follows the :class:`~crossmoe.evaluation.Agent` protocol, so
    :func:`crossmoe.evaluation.evaluate` takes it as it is, and the
    :class:`~crossmoe.teacher.Teacher` protocol (:meth:`action_probs`), so a
    learner can be kickstarted from it (``examples/ppo_nethack.py --teacher rules``).

    Args:
        action_set: The env's actions (``env.unwrapped.actions``: enum members
            or ``"Enum.MEMBER"`` names); defaults to those of ``NetHackScore-v0``.
        hypergraph: The graph, whose conditions are atoms of
            :data:`~crossmoe.nethack.ATOMS`; defaults to the shipped one.
        priority: Operator names, most urgent first (:data:`RULES` names two).
        seed: Seed of the random choice among an operator's actions.
        epsilon: Probability of a uniformly random action in each step (the
            rules softened; 0 plays them as they are).

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
        epsilon: float = 0.0,
    ) -> None:
        if hypergraph is None:
            from crossmoe.nethack.agent import load_hypergraph  # agent.py imports this module

            hypergraph = load_hypergraph()
        if action_set is None:
            from nle.env.tasks import TASK_ACTIONS  # what NetHackScore-v0 and the other NLE tasks use

            action_set = TASK_ACTIONS
        super().__init__(hypergraph, graph_atoms(hypergraph), action_set, priority=priority, seed=seed, epsilon=epsilon)
