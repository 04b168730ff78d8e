"""A MiniGrid/BabyAI agent built from crossmoe's public API: envs, atoms, graph, encoder, policies, rule agent.

Requires the ``minigrid`` extra (``pip install "crossmoe[minigrid]"``).
"""

from crossmoe.minigrid.agent import (
    MINIGRID_ACTIONS,
    RuleAgent,
    build_agent,
    eval_domain,
    graph_atoms,
    load_agent,
    load_hypergraph,
    make_baseline_policy,
    make_policy,
    train_domain,
)
from crossmoe.minigrid.atoms import ATOMS, THINGS, extract_atoms, target_cells
from crossmoe.minigrid.encoders import MiniGridVisualEncoder
from crossmoe.minigrid.env import ANY_COLOR, MissionCode, Task, encode_mission, fast_view, make_env, make_vector_env

__all__ = [
    "ANY_COLOR",
    "ATOMS",
    "MINIGRID_ACTIONS",
    "THINGS",
    "MiniGridVisualEncoder",
    "MissionCode",
    "RuleAgent",
    "Task",
    "build_agent",
    "encode_mission",
    "eval_domain",
    "extract_atoms",
    "fast_view",
    "graph_atoms",
    "load_agent",
    "load_hypergraph",
    "make_baseline_policy",
    "make_env",
    "make_policy",
    "make_vector_env",
    "target_cells",
    "train_domain",
]
