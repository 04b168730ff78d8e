"""The NetHack agent: atoms, the knowledge hypergraph, visual tokens, environments and the policy factory.

Requires the ``nethack`` extra (``pip install "crossmoe[nethack]"``), which
installs the NetHack Learning Environment.
"""

from crossmoe.nethack.agent import load_hypergraph, make_baseline_policy, make_policy
from crossmoe.nethack.atoms import ATOMS, extract_atoms
from crossmoe.nethack.encoders import NetHackVisualEncoder, blstats_features
from crossmoe.nethack.env import DEFAULT_OBSERVATION_KEYS, make_env, make_vector_env
from crossmoe.nethack.glyphs import GLYPH_CLASS, GlyphClass, glyph_class

__all__ = [
    "ATOMS",
    "DEFAULT_OBSERVATION_KEYS",
    "GLYPH_CLASS",
    "GlyphClass",
    "NetHackVisualEncoder",
    "blstats_features",
    "extract_atoms",
    "glyph_class",
    "load_hypergraph",
    "make_baseline_policy",
    "make_env",
    "make_policy",
    "make_vector_env",
]
