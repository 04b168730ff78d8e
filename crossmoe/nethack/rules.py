"""NetHack rules for knowledge graphs that carry no experts: which expert owns an operator, read from its label.

The research ``{nodes, edges}`` graphs (see
:meth:`Hypergraph.from_json <crossmoe.hypergraph.Hypergraph.from_json>`) name
each operator after the action it takes (``eat_corpse``,
``melee_attack_vs_newt``, ``move_north``) and have no expert field.
:func:`expert_from_label` maps the leading action word to one of the default
experts; :func:`~crossmoe.nethack.load_hypergraph` applies it to research
files.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["EXPERT_WORDS", "expert_from_label"]

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
