"""The NetHack agent: atoms, the knowledge hypergraph, visual tokens, environments and the policy factory.

Requires the ``nethack`` extra (``pip install "crossmoe[nethack]"``), which
installs the NetHack Learning Environment.
"""

from crossmoe.nethack.agent import (
    NETHACK_SCORE_ACTIONS,
    build_agent,
    env_actions,
    load_agent,
    load_hypergraph,
    make_baseline_policy,
    make_policy,
    train_domain,
)
from crossmoe.nethack.atoms import ATOMS, NetHackAtoms, extract_atoms, graph_atoms
from crossmoe.nethack.encoders import COMPASS, NetHackVisualEncoder, blstats_features, compass_direction
from crossmoe.nethack.env import (
    DEFAULT_OBSERVATION_KEYS,
    MEMORY_KEYS,
    EpisodeOutcome,
    MapMemory,
    eval_domain,
    make_env,
    make_vector_env,
    split_episode_ends,
)
from crossmoe.nethack.glyphs import GLYPH_CLASS, GlyphClass, glyph_class
from crossmoe.nethack.rules import DEFAULT_PRIORITY, EXPERT_WORDS, RuleAgent, expert_from_label

__all__ = [
    "ATOMS",
    "COMPASS",
    "DEFAULT_OBSERVATION_KEYS",
    "DEFAULT_PRIORITY",
    "EXPERT_WORDS",
    "GLYPH_CLASS",
    "MEMORY_KEYS",
    "NETHACK_SCORE_ACTIONS",
    "EpisodeOutcome",
    "GlyphClass",
    "MapMemory",
    "NetHackAtoms",
    "NetHackVisualEncoder",
    "RuleAgent",
    "blstats_features",
    "build_agent",
    "compass_direction",
    "env_actions",
    "eval_domain",
    "expert_from_label",
    "extract_atoms",
    "glyph_class",
    "graph_atoms",
    "load_agent",
    "load_hypergraph",
    "make_baseline_policy",
    "make_env",
    "make_policy",
    "make_vector_env",
    "split_episode_ends",
    "train_domain",
]
