"""Sparse, gated, multi-head cross-attention: symbolic queries read visual context."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from crossmoe._checks import check_int, check_real
from crossmoe.functional import check_mask_keeps_a_key, is_compiling, sparse_topk_softmax

__all__ = ["CausalGatedCrossAttention"]


class CausalGatedCrossAttention(nn.Module):
    r"""Multi-head cross-attention with sparse top-k weights and a query-conditioned gate.

    Query tokens (for example operator tokens of a knowledge graph) attend over
    context tokens (for example tokens of a map). Each attention row keeps only
    its :math:`k = \max(1, \lceil \text{sparse\_topk} \cdot n_\text{kept} \rceil)`
    best keys, and a sigmoid gate computed from the query decides how much of
    the attended value enters the query's residual stream:

    .. math::
        \tilde q = \operatorname{LN}(q), \quad \tilde c = \operatorname{LN}(c) \\
        A = \operatorname{topk\text{-}softmax}\!\left(\frac{(\tilde q W_Q)(\tilde c W_K)^\top}{\sqrt{d_h}}\right) \\
        \text{out} = q + \Big(\sigma(\tilde q W_G + b_G) \odot \big(A \, \tilde c W_V\big)\Big) W_O + b_O

    The gate is "causal" in the sense that the symbolic side decides whether
    the visual evidence is used. It acts elementwise on the concatenated head
    outputs, before the output projection (the position that `Qiu et al., 2025
    <https://arxiv.org/abs/2505.06708>`_ found best for gated attention), so it
    costs ``dim x (num_heads * head_dim)`` rather than ``dim x dim``. It is
    initialised like any linear layer (not at zero), so every parameter
    receives gradient from the first step.

    Note:
        A row whose support is a single key (``sparse_topk * n_kept <= 1``,
        which includes the vector form with its one context token) has
        attention weight 1 whatever the scores, so such rows send no gradient
        to ``to_q`` and ``to_k``; only the value path and the gate learn from
        them.

    Args:
        dim: Width ``D`` of the query tokens and of the output.
        num_heads: Number of heads ``H``; must divide ``dim`` unless ``head_dim`` is given.
        sparse_topk: Fraction of the kept keys each attention row may use, in
            ``(0, 1]``. ``1.0`` is dense attention.
        dropout: Dropout on the attention weights (after sparsification).
        context_dim: Width ``Dc`` of the context tokens; ``None`` means ``dim``.
        head_dim: Width of each head; ``None`` means ``dim // num_heads``. A
            smaller value narrows the query, key and value projections (the
            bulk of the cost) without changing the residual width.

    Shapes:
        - query: ``(B, Nq, D)`` tokens, or ``(B, D)`` for a single query vector.
        - context: ``(B, Nk, Dc)`` tokens, or ``(B, Dc)``, one context token.
        - context_mask: ``(B, Nk)`` bool, True = keep (``(B, 1)`` in the vector form).
        - output: shaped like ``query``.
        - attention: ``(B, H, Nq, Nk)``, rows on the simplex over the kept keys.

    Example:
        >>> attn = CausalGatedCrossAttention(64, num_heads=4, sparse_topk=0.25)
        >>> out, a = attn(torch.randn(2, 5, 64), torch.randn(2, 12, 64), return_attention=True)
        >>> out.shape, a.shape
        (torch.Size([2, 5, 64]), torch.Size([2, 4, 5, 12]))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        sparse_topk: float = 0.3,
        dropout: float = 0.0,
        context_dim: int | None = None,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        dim, num_heads = check_int(dim, "dim"), check_int(num_heads, "num_heads", minimum=0)
        head_dim = None if head_dim is None else check_int(head_dim, "head_dim")
        context_dim = dim if context_dim is None else check_int(context_dim, "context_dim")
        sparse_topk, dropout = check_real(sparse_topk, "sparse_topk"), check_real(dropout, "dropout")
        if num_heads <= 0 or (head_dim is None and dim % num_heads != 0):
            raise ValueError(f"num_heads must be a positive divisor of dim={dim} (or pass head_dim), got {num_heads!r}")
        if not (0.0 < sparse_topk <= 1.0):
            raise ValueError(f"sparse_topk must lie in (0, 1], got {sparse_topk!r}")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")

        self.dim = dim
        self.context_dim = context_dim
        self.num_heads = num_heads
        self.sparse_topk = float(sparse_topk)
        self.dropout = float(dropout)
        self.head_dim = dim // num_heads if head_dim is None else head_dim
        inner = num_heads * self.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)

        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        # Separate key and value projections: a fused one splits its output, and the
        # backward of that split costs a strided concatenation as large as both.
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_gate = nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, context_dim={self.context_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"sparse_topk={self.sparse_topk}, dropout={self.dropout}"
        )

    def forward(
        self,
        query: Tensor,
        context: Tensor,
        context_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``query`` to ``context``; see the class docstring for shapes.

        ``forward`` runs three public stages, which a caller may also run
        itself, for example to project a repeated query once:
        ``query + to_out(attend(*project_query(query), *project_context(context), context_mask)[0])``.
        """
        vector_query = self._check_inputs(query, context, context_mask)
        if vector_query:
            query = query.unsqueeze(1)
        if context.dim() == 2:
            context = context.unsqueeze(1)
        gated, attention = self.attend(*self.project_query(query), *self.project_context(context), context_mask)
        out = query + self.to_out(gated)
        if vector_query:
            out = out.squeeze(1)
        return (out, attention) if return_attention else out

    def project_query(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """Query-side projections: ``q (B, H, Nq, head_dim)`` and the gate ``(B, Nq, H * head_dim)`` in (0, 1).

        Both depend on the query tokens only, row by row.
        """
        query = self.norm_query(query)
        q = rearrange(self.to_q(query), "b n (h d) -> b h n d", h=self.num_heads)
        return q, torch.sigmoid(self.to_gate(query))

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Context-side projections: keys and values, each ``(B, H, Nk, head_dim)``."""
        context = self.norm_context(context)
        return (
            rearrange(self.to_k(context), "b n (h d) -> b h n d", h=self.num_heads),
            rearrange(self.to_v(context), "b n (h d) -> b h n d", h=self.num_heads),
        )

    def attend(
        self, q: Tensor, gate: Tensor, k: Tensor, v: Tensor, context_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sparse attention of projected queries over projected keys, gated: ``(gated, attention)``.

        ``forward`` returns ``query + to_out(gated)``.

        Shapes:
            - q: ``(B, H, Nq, head_dim)``, gate: ``(B, Nq, H * head_dim)``
            - k, v: ``(B, H, Nk, head_dim)``; context_mask: ``(B, Nk)`` bool or None
            - gated: ``(B, Nq, H * head_dim)``; attention: ``(B, H, Nq, Nk)``
        """
        scores = torch.einsum("bhnd,bhmd->bhnm", q, k) * self.scale
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, Nk)
        attention = sparse_topk_softmax(scores, self.sparse_topk, mask)
        weights = F.dropout(attention, self.dropout, self.training) if self.dropout > 0 else attention
        attended = rearrange(torch.einsum("bhnm,bhmd->bhnd", weights, v), "b h n d -> b n (h d)")
        return gate * attended, attention

    def attend_context(
        self, q: Tensor, gate: Tensor, context: Tensor, context_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``attend(q, gate, *project_context(context), context_mask)`` without projecting each context token.

        The key and value projections move to the query side: each query,
        mapped back through ``to_k``, scores the normalised context tokens, and
        ``to_v`` maps their attention-weighted mean (both projections are
        linear without bias, so the result is the same up to float rounding).
        It costs about ``2 H Nq Dc (head_dim + Nk)`` multiply-adds against
        ``2 H Nk head_dim (Dc + Nq)``: less when the queries are few and the
        context tokens many (:meth:`context_first_is_cheaper`).

        Shapes:
            - q: ``(B, H, Nq, head_dim)``, gate: ``(B, Nq, H * head_dim)``
            - context: ``(B, Nk, Dc)``; context_mask: ``(B, Nk)`` bool or None
            - gated: ``(B, Nq, H * head_dim)``; attention: ``(B, H, Nq, Nk)``
        """
        context = self.norm_context(context)
        to_k = self.to_k.weight.view(self.num_heads, self.head_dim, self.context_dim)
        to_v = self.to_v.weight.view(self.num_heads, self.head_dim, self.context_dim)
        scores = torch.einsum("bhnc,bmc->bhnm", torch.einsum("bhnd,hdc->bhnc", q, to_k), context) * self.scale
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, Nk)
        attention = sparse_topk_softmax(scores, self.sparse_topk, mask)
        weights = F.dropout(attention, self.dropout, self.training) if self.dropout > 0 else attention
        mixed = torch.einsum("bhnm,bmc->bhnc", weights, context)  # (B, H, Nq, Dc)
        attended = rearrange(torch.einsum("bhnc,hdc->bhnd", mixed, to_v), "b h n d -> b n (h d)")
        return gate * attended, attention

    def context_first_is_cheaper(self, num_queries: int, num_keys: int) -> bool:
        """Whether :meth:`attend_context` takes fewer multiply-adds than ``attend`` after ``project_context``."""
        query_side = num_queries * self.context_dim * (self.head_dim + num_keys)
        return query_side < num_keys * self.head_dim * (self.context_dim + num_queries)

    def _check_inputs(self, query: Tensor, context: Tensor, context_mask: Tensor | None) -> bool:
        """Shape checks, and (in eager mode only) the data-dependent check that every sample keeps a key."""
        if query.dim() not in (2, 3) or query.shape[-1] != self.dim:
            raise ValueError(f"query must be (B, Nq, {self.dim}) or (B, {self.dim}), got {tuple(query.shape)}")
        if context.dim() not in (2, 3) or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must be (B, Nk, {self.context_dim}) or (B, {self.context_dim}), got {tuple(context.shape)}"
            )
        if context.dim() == 3 and context.shape[1] == 0:
            raise ValueError(f"context must hold at least one token (Nk >= 1), got {tuple(context.shape)}")
        if context.shape[0] != query.shape[0]:
            raise ValueError(f"context batch size must match query batch size {query.shape[0]}, got {context.shape[0]}")
        if context_mask is not None:
            expected = (context.shape[0], context.shape[1] if context.dim() == 3 else 1)
            if tuple(context_mask.shape) != expected:
                raise ValueError(f"context_mask must be (B, Nk)={expected}, got {tuple(context_mask.shape)}")
            if context_mask.dtype != torch.bool:
                raise ValueError(f"context_mask must be a bool tensor (True = keep), got dtype {context_mask.dtype}")
            if not is_compiling():  # a host sync: checked in eager mode, skipped when compiled
                check_mask_keeps_a_key(context_mask, "context_mask")
        return query.dim() == 2
