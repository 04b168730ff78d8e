"""The graph-attention encoder of a :class:`~crossmoe.hypergraph.Hypergraph`; needs torch-geometric.

:class:`HypergraphEncoder` turns per-sample condition activations into
operator tokens with torch-geometric's :class:`~torch_geometric.nn.GATv2Conv`.
The graph itself (:class:`~crossmoe.hypergraph.Hypergraph`,
:class:`~crossmoe.hypergraph.OperatorSpec`, :data:`~crossmoe.hypergraph.FORMAT`
and :func:`~crossmoe.hypergraph.action_name`) lives in :mod:`crossmoe.hypergraph`,
which does not need torch-geometric; those names are re-exported here so that
``from crossmoe.graph import Hypergraph`` keeps working.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from crossmoe._checks import check_int, check_real
from crossmoe.hypergraph import FORMAT, Hypergraph, OperatorSpec, action_name

try:
    from torch_geometric.nn import GATv2Conv
    from torch_geometric.utils import softmax
except ImportError as error:
    raise ImportError(
        "crossmoe.graph (HypergraphEncoder) needs torch-geometric, which is not installed: "
        "run `pip install torch-geometric`. The graph data model in crossmoe.hypergraph works without it."
    ) from error

__all__ = ["FORMAT", "Hypergraph", "HypergraphEncoder", "OperatorSpec", "action_name"]


def _gatv2(conv: GATv2Conv, source: Tensor, target: Tensor, edges: Tensor, num_targets: int) -> Tensor:
    """What ``conv((x_src, x_dst), edges)`` computes, on per-sample node tensors with one shared edge list.

    ``source`` and ``target`` are the projected node states ``lin_l(x_src)`` and ``lin_r(x_dst)``, each
    ``(B, N, H d)``, or ``(N, H d)`` when the same for every sample; ``edges`` is the graph's ``(2, R)`` edge
    list, not ``B`` offset copies of it. GATv2 (Brody et al., 2022): ``e_ts = att . leaky_relu(x_s + x_t)``,
    softmax over a target's sources, ``out_t = sum_s alpha_ts x_s + bias``; a target without sources gets the bias.
    """
    heads, channels = conv.heads, conv.out_channels
    # index_select, not x[..., index, :]: its backward (index_add) is far faster on the CPU than index_put.
    x_j = source.index_select(-2, edges[0]).unflatten(-1, (heads, channels))  # (B, R, H, d)
    x_i = target.index_select(-2, edges[1]).unflatten(-1, (heads, channels))
    scores = (F.leaky_relu(x_j + x_i, conv.negative_slope) * conv.att).sum(-1)  # (B, R, H)
    alpha = softmax(scores, edges[1], num_nodes=num_targets, dim=-2)
    alpha = F.dropout(alpha, p=conv.dropout, training=conv.training)
    messages = (x_j * alpha.unsqueeze(-1)).flatten(-2)  # (B, R, H d)
    out = messages.new_zeros(*messages.shape[:-2], num_targets, messages.shape[-1])
    return out.index_add(-2, edges[1], messages) + conv.bias


class HypergraphEncoder(nn.Module):
    r"""Condition activations to operator tokens through bipartite GATv2 passes.

    Each node starts as the sum of a node-type embedding and a node-identity
    embedding; a condition also adds a linear projection of its activation.
    A :class:`~torch_geometric.nn.GATv2Conv` pass (`Brody et al., 2022
    <https://arxiv.org/abs/2105.14491>`_) sends messages from conditions to
    the operators that require them. ``effect_passes`` further rounds go from
    operators to their effects and back, so operators that share effects see
    each other. Each pass is residual, and a LayerNorm precedes the output
    heads.

    The graph is static and only the activations change per sample, so the
    passes run on ``(B, nodes, width)`` tensors with the graph's own edge list
    (gathered and scattered along the node axis, for the whole batch at once).
    The layers are torch-geometric's :class:`~torch_geometric.nn.GATv2Conv`
    modules, whose parameters are used as they are and whose ``forward`` on
    the disjoint union of ``B`` copies of the graph is the reference the tests
    compare against; the same algebra is computed with two shortcuts that
    follow from the graph being the same for every sample. A condition's
    state is affine in its activation, so its projection
    :math:`W(b_c + a\,w) = W b_c + a\,(W w)` costs a broadcast instead of a
    ``(B C, h) x (h, h)`` matrix product; and the operators and effects start
    from per-node constants, so their first projections are computed once, not
    once per sample. Samples never exchange messages, so each sample's output
    depends only on its own activations.

    Args:
        hypergraph: The graph.
        dim: Output width ``D`` of the operator tokens.
        hidden_dim: Width of the node states; ``None`` means ``min(dim, 64)``.
        heads: Attention heads per pass (their outputs are concatenated).
        effect_passes: Rounds of operator -> effect -> operator messages.
        dropout: Dropout on the graph attention coefficients.

    Shapes:
        - activations: ``(B, C)`` float, usually in ``{0, 1}``
        - output: ``(operator_tokens (B, O, D), operator_scores (B, O))``
    """

    def __init__(
        self,
        hypergraph: Hypergraph,
        dim: int,
        *,
        hidden_dim: int | None = None,
        heads: int = 2,
        effect_passes: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(hypergraph, Hypergraph):
            raise TypeError(f"hypergraph must be a crossmoe Hypergraph, got {type(hypergraph).__name__}")
        dim = check_int(dim, "dim")
        hidden_dim = min(dim, 64) if hidden_dim is None else check_int(hidden_dim, "hidden_dim")
        heads, effect_passes = check_int(heads, "heads"), check_int(effect_passes, "effect_passes", minimum=0)
        dropout = check_real(dropout, "dropout")
        if hidden_dim % heads:
            raise ValueError(f"hidden_dim must be divisible by heads={heads}, got {hidden_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if effect_passes < 0:
            raise ValueError(f"effect_passes must be >= 0, got {effect_passes}")
        if effect_passes and not hypergraph.produces:
            raise ValueError(f"effect_passes must be 0 for a hypergraph without produces edges, got {effect_passes}")
        self.hypergraph = hypergraph
        self.dim, self.hidden_dim, self.heads = dim, hidden_dim, heads
        self.effect_passes = effect_passes
        num_c, num_o, num_e = hypergraph.num_conditions, hypergraph.num_operators, hypergraph.num_effects

        self.type_embedding = nn.Embedding(3, hidden_dim)  # condition, operator, effect
        self.node_embedding = nn.Embedding(num_c + num_o + max(num_e, 1), hidden_dim)
        self.activation_proj = nn.Linear(1, hidden_dim)

        def conv() -> GATv2Conv:
            return GATv2Conv(
                (hidden_dim, hidden_dim), hidden_dim // heads, heads=heads, add_self_loops=False, dropout=dropout
            )

        self.condition_to_operator = conv()
        self.operator_to_effect = nn.ModuleList(conv() for _ in range(effect_passes))
        self.effect_to_operator = nn.ModuleList(conv() for _ in range(effect_passes))
        self.norm = nn.LayerNorm(hidden_dim)
        self.to_tokens = nn.Linear(hidden_dim, dim)
        self.to_scores = nn.Linear(hidden_dim, 1, bias=False)  # scores meet softmaxes over operators only

        self.register_buffer("requires_index", hypergraph.requires_index, persistent=False)
        self.register_buffer("produces_index", hypergraph.produces_index, persistent=False)
        self.register_buffer("produced_by_index", hypergraph.produces_index.flip(0), persistent=False)

    def forward(self, activations: Tensor) -> tuple[Tensor, Tensor]:
        graph = self.hypergraph
        num_c, num_o, num_e = graph.num_conditions, graph.num_operators, graph.num_effects
        if activations.dim() != 2 or activations.shape[1] != num_c:
            raise ValueError(f"activations must be (B, C) with C={num_c}, got shape {tuple(activations.shape)}")
        batch = activations.shape[0]
        activations = activations.to(self.activation_proj.weight.dtype)
        node, typ = self.node_embedding.weight, self.type_embedding.weight

        # A condition is base_c + a * w (activation_proj is Linear(1, h)): lin_l(condition) = lin_l(base_c) + a * W w.
        conv = self.condition_to_operator
        base = node[:num_c] + typ[0] + self.activation_proj.bias  # (C, h)
        slope = F.linear(self.activation_proj.weight[:, 0], conv.lin_l.weight)  # (H d,): no bias, it is in lin_l(base)
        conditions_l = conv.lin_l(base) + activations.unsqueeze(-1) * slope  # (B, C, H d)
        operators = node[num_c : num_c + num_o] + typ[1]  # (O, h), the same for every sample
        operators = operators + _gatv2(conv, conditions_l, conv.lin_r(operators), self.requires_index, num_o)
        if self.effect_passes:
            effects = node[num_c + num_o : num_c + num_o + num_e] + typ[2]  # (E, h), the same for every sample
            for to_effect, to_operator in zip(self.operator_to_effect, self.effect_to_operator, strict=True):
                effects = effects + _gatv2(
                    to_effect,
                    to_effect.lin_l(operators),
                    to_effect.lin_r(effects),
                    self.produces_index,
                    num_e,
                )
                operators = operators + _gatv2(
                    to_operator,
                    to_operator.lin_l(effects),
                    to_operator.lin_r(operators),
                    self.produced_by_index,
                    num_o,
                )
        operators = self.norm(operators.expand(batch, num_o, self.hidden_dim))
        return self.to_tokens(operators), self.to_scores(operators).squeeze(-1)

    def extra_repr(self) -> str:
        g = self.hypergraph
        return (
            f"conditions={g.num_conditions}, operators={g.num_operators}, effects={g.num_effects}, "
            f"dim={self.dim}, hidden_dim={self.hidden_dim}, heads={self.heads}, effect_passes={self.effect_passes}"
        )
