"""A MiniGrid/BabyAI agent's knowledge, built from crossmoe's public API: atoms, graph, rule agent, envs.

Requires the ``minigrid`` extra (``pip install "crossmoe[minigrid]"``).
"""

from crossmoe.minigrid.agent import MINIGRID_ACTIONS, RuleAgent, eval_domain, graph_atoms, load_hypergraph
from crossmoe.minigrid.atoms import ATOMS, THINGS, extract_atoms
from crossmoe.minigrid.env import ANY_COLOR, MissionCode, Task, encode_mission, make_env, make_vector_env

__all__ = [
    "ANY_COLOR",
    "ATOMS",
    "MINIGRID_ACTIONS",
    "THINGS",
    "MissionCode",
    "RuleAgent",
    "Task",
    "encode_mission",
    "eval_domain",
    "extract_atoms",
    "graph_atoms",
    "load_hypergraph",
    "make_env",
    "make_vector_env",
]
