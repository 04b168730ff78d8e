"""crossmoe: neuro-symbolic Mixture-of-Experts components for PyTorch."""

import importlib
from typing import Any

from crossmoe import diagnostics, encoders, functional, fusion, hypergraph, losses
from crossmoe.attention import CausalGatedCrossAttention
from crossmoe.experts import SemanticExpertBank
from crossmoe.fusion import ConcatFusion, CrossAttentionFusion, FusionOutput
from crossmoe.hypergraph import Hypergraph, OperatorSpec
from crossmoe.losses import AuxLossWeights, aux_loss
from crossmoe.policy import ActorCritic, CrossAttentionMoEPolicy, PolicyOutput
from crossmoe.recurrent import LSTMCore
from crossmoe.routing import RouterOutput, SparsemaxRouter
from crossmoe.schedule import RoutingState, TemperatureAnnealingScheduler

__version__ = "0.1.0"

__all__ = [
    "ActorCritic",
    "AuxLossWeights",
    "CausalGatedCrossAttention",
    "ConcatFusion",
    "CrossAttentionFusion",
    "CrossAttentionMoEPolicy",
    "FusionOutput",
    "Hypergraph",
    "HypergraphEncoder",
    "LSTMCore",
    "OperatorSpec",
    "PolicyOutput",
    "RouterOutput",
    "RoutingState",
    "SemanticExpertBank",
    "SparsemaxRouter",
    "TemperatureAnnealingScheduler",
    "__version__",
    "aux_loss",
    "diagnostics",
    "encoders",
    "functional",
    "fusion",
    "graph",
    "hypergraph",
    "losses",
]


def __getattr__(name: str) -> Any:
    """Import ``crossmoe.graph`` (and :class:`~crossmoe.graph.HypergraphEncoder`) on first use (PEP 562).

    It needs torch-geometric, so ``import crossmoe`` works without it and only
    these two names raise its ImportError, which names the install command.
    """
    if name == "graph":
        return importlib.import_module("crossmoe.graph")
    if name == "HypergraphEncoder":
        value = importlib.import_module("crossmoe.graph").HypergraphEncoder
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
