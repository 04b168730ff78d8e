"""crossmoe: neuro-symbolic Mixture-of-Experts components for PyTorch."""

from crossmoe import diagnostics, encoders, functional, graph, losses
from crossmoe.attention import CausalGatedCrossAttention
from crossmoe.experts import SemanticExpertBank
from crossmoe.graph import Hypergraph, HypergraphEncoder, OperatorSpec
from crossmoe.losses import AuxLossWeights, aux_loss
from crossmoe.policy import ActorCritic, CrossAttentionMoEPolicy, PolicyOutput
from crossmoe.routing import RouterOutput, SparsemaxRouter
from crossmoe.schedule import RoutingState, TemperatureAnnealingScheduler

__version__ = "0.1.0"

__all__ = [
    "ActorCritic",
    "AuxLossWeights",
    "CausalGatedCrossAttention",
    "CrossAttentionMoEPolicy",
    "Hypergraph",
    "HypergraphEncoder",
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
    "graph",
    "losses",
]
