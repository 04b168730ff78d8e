r"""Fusion of the two streams: how the logic tokens and the visual tokens become one context vector.

A fusion module is called as

.. code-block:: python

    fusion(visual_tokens, visual_mask, logic) -> FusionOutput(context, attention)

with ``visual_tokens (B, N, D)``, ``visual_mask (B, N)`` bool (True = keep) or
None, and ``logic`` a :class:`~crossmoe.encoders.LogicOutput`. It returns the
``(B, D)`` context that drives the router, the experts and the critic, and the
``(B, H, O, N)`` attention maps or None. :class:`~crossmoe.CrossAttentionMoEPolicy`
accepts ``fusion="cross_attention"`` (:class:`CrossAttentionFusion`),
``"concat"`` (:class:`ConcatFusion`, the ablation) or any module that follows
this convention (:class:`Fusion` states it as a protocol).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from crossmoe.attention import CausalGatedCrossAttention
from crossmoe.encoders import LogicOutput
from crossmoe.functional import check_mask_keeps_a_key, is_compiling

__all__ = ["FUSIONS", "ConcatFusion", "CrossAttentionFusion", "Fusion", "FusionOutput", "make_fusion"]


class FusionOutput(NamedTuple):
    """What a fusion module returns: ``context (B, D)`` and ``attention (B, H, O, N)`` or None."""

    context: Tensor
    attention: Tensor | None = None


@runtime_checkable
class Fusion(Protocol):
    """The calling convention of a fusion module (any ``nn.Module`` with this ``__call__`` works)."""

    def __call__(self, visual_tokens: Tensor, visual_mask: Tensor | None, logic: LogicOutput) -> FusionOutput: ...


class CrossAttentionFusion(nn.Module):
    r"""Operator tokens read the visual tokens through a :class:`~crossmoe.CausalGatedCrossAttention`,
    then an attention pool over the operators gives the context.

    With operator tokens :math:`t_o`, the attention's fused tokens are
    :math:`f_o = t_o + W_\text{out} g_o + b_\text{out}`, where :math:`g_o` are
    the gated head outputs (:meth:`~crossmoe.CausalGatedCrossAttention.attend`).
    The pool weighs them by :math:`p = \operatorname{softmax}(w^\top f_o + s_o)`,
    where :math:`s_o` are the logic encoder's operator scores (so the symbolic
    side and the visual evidence decide together which operators shape the
    context), and the context is :math:`c = \operatorname{LN}(\sum_o p_o f_o)`.

    Computed as written, this forms ``(B, O, D)`` fused tokens. Two identities
    avoid that:

    - :math:`w^\top f_o = w^\top t_o + (W_\text{out}^\top w)^\top g_o + w^\top b_\text{out}`,
      and the constant :math:`w^\top b_\text{out}` cancels in the softmax;
    - since :math:`\sum_o p_o = 1`,
      :math:`\sum_o p_o f_o = \sum_o p_o t_o + W_\text{out} \big(\sum_o p_o g_o\big) + b_\text{out}`.

    So the pool is taken on the ``H * head_dim`` channels of :math:`g` before
    the output projection. When the logic output carries an ``index``
    (deduplicated operator tokens, :class:`~crossmoe.encoders.LogicOutput`),
    the query side of the attention and :math:`w^\top t_o` run once per
    distinct row and are gathered per sample; only the part that depends on
    the visual tokens runs per sample. Both shortcuts are exact.

    With ``applicable_queries=True`` only the operators whose preconditions
    hold (``logic.applicable``) read the visual tokens: an operator that
    cannot fire has nothing to look for, so its :math:`g_o` is 0 and its
    attention row is 0, while its token and score still enter the pool. The
    applicable operators of each sample are gathered, ``K`` per sample
    (padded and masked), and only they attend, so the attention costs
    ``B * K`` rows instead of ``B * O``; on NetHack ``K`` is about 8 of 59
    operators. In eager mode ``K`` is the batch's largest applicable count;
    under ``torch.compile`` it is ``max_queries`` when that is set (a static
    cap; the caller must make sure no sample exceeds it, as
    :class:`~crossmoe.CrossAttentionMoEPolicy` does before it runs its
    compiled graph), else ``O``. The result equals the full computation with
    the non-applicable operators' gated outputs and attention masked to 0.
    When ``K`` is small against the number of visual tokens, the keys and
    values are not projected per token: the queries are mapped into the
    tokens' space instead (:meth:`~crossmoe.CausalGatedCrossAttention.attend_context`,
    the same result up to float rounding). Without ``logic.applicable`` every operator queries.

    Args:
        dim: Width ``D`` of both token streams and of the context.
        num_heads: Attention heads ``H``.
        sparse_topk: Fraction of kept visual tokens each attention row may use, in ``(0, 1]``.
        dropout: Attention dropout (keep 0 for PPO).
        head_dim: Width of each head; ``None`` means ``dim // num_heads``.
        applicable_queries: Only the applicable operators query the visual tokens (see above).
        max_queries: Under ``torch.compile``, the static number of gathered operators per sample
            (``None``: all ``O``). Eager mode ignores it.

    Shapes:
        - visual_tokens: ``(B, N, D)``; visual_mask: ``(B, N)`` bool or None
        - logic.tokens: ``(B, O, D)``, or ``(U, O, D)`` with ``logic.index (B,)``
        - output: ``FusionOutput(context (B, D), attention (B, H, O, N))``
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        sparse_topk: float = 0.3,
        dropout: float = 0.0,
        head_dim: int | None = None,
        *,
        applicable_queries: bool = False,
        max_queries: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(applicable_queries, bool):
            raise TypeError(f"applicable_queries must be a bool, got {type(applicable_queries).__name__}")
        if max_queries is not None and (
            not isinstance(max_queries, numbers.Integral) or isinstance(max_queries, bool) or max_queries < 1
        ):
            raise ValueError(f"max_queries must be a positive integer or None, got {max_queries!r}")
        self.dim = dim
        self.applicable_queries = applicable_queries
        self.max_queries = None if max_queries is None else int(max_queries)
        self.attention = CausalGatedCrossAttention(dim, num_heads, sparse_topk, dropout, head_dim=head_dim)
        self.pool_score = nn.Linear(dim, 1, bias=False)  # a bias would cancel in the softmax
        self.pool_norm = nn.LayerNorm(dim)

    def forward(self, visual_tokens: Tensor, visual_mask: Tensor | None, logic: LogicOutput) -> FusionOutput:
        tokens, scores, applicable, index = logic
        attn = self.attention
        if visual_mask is not None and not is_compiling():  # a host sync: eager mode only
            check_mask_keeps_a_key(visual_mask, "visual_mask")
        token_score = self.pool_score(tokens).squeeze(-1)  # w . t_o, (U or B, O): once per distinct token set
        if index is not None:
            # index_select, not x[index]: its backward (index_add) is far faster on the CPU than index_put.
            token_score = token_score.index_select(0, index)
        pool_logits = token_score if scores is None else token_score + scores  # (B, O)
        gated_score_weight = attn.to_out.weight.t() @ self.pool_score.weight.squeeze(0)  # W_out^T w, (H*d,)
        if self.applicable_queries and applicable is not None:
            return self._applicable_only(visual_tokens, visual_mask, logic, pool_logits, gated_score_weight)
        k, v = attn.project_context(visual_tokens)
        q, gate = attn.project_query(tokens)  # (U or B, ...)
        if index is not None:
            q, gate = q.index_select(0, index), gate.index_select(0, index)
        gated, attention = attn.attend(q, gate, k, v, visual_mask)  # (B, O, H*d)
        pool = torch.softmax(pool_logits + gated @ gated_score_weight, dim=1)  # (B, O)
        pooled_tokens = torch.einsum("bo,bod->bd", pool, logic.per_sample_tokens())
        pooled_gated = torch.einsum("bo,boc->bc", pool, gated)
        return FusionOutput(self.pool_norm(pooled_tokens + attn.to_out(pooled_gated)), attention)

    def _applicable_only(
        self,
        visual_tokens: Tensor,
        visual_mask: Tensor | None,
        logic: LogicOutput,
        pool_logits: Tensor,
        gated_score_weight: Tensor,
    ) -> FusionOutput:
        """The forward with only the applicable operators querying: ``K`` gathered operators per sample."""
        attn, (tokens, _, applicable, index) = self.attention, logic
        batch, num_operators = applicable.shape
        if index is not None:
            # Applicability is a function of the token set, so each distinct row gathers its operators once.
            applicable = applicable.new_zeros(tokens.shape[:2]).index_copy_(0, index, applicable)
        counts = applicable.sum(1)  # (U or B,)
        if is_compiling():
            width = num_operators if self.max_queries is None else min(self.max_queries, num_operators)
        else:
            width = int(counts.max()) if counts.numel() else 0  # a host sync: the largest applicable count
        # The applicable operators first, in operator order; the rest of the K slots are padding.
        order = torch.argsort(applicable.to(torch.uint8), dim=1, descending=True, stable=True)[:, :width]  # (U, K)
        valid = torch.arange(width, device=order.device) < counts.unsqueeze(1)  # (U, K)
        gathered = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (U, K, D)
        q, gate = attn.project_query(gathered)
        if index is not None:
            q, gate, order, valid = (x.index_select(0, index) for x in (q, gate, order, valid))
        if attn.context_first_is_cheaper(width, visual_tokens.shape[1]):  # few queries: keep the tokens unprojected
            gated, attention = attn.attend_context(q, gate, visual_tokens, visual_mask)  # (B, K, H*d), (B, H, K, N)
        else:
            gated, attention = attn.attend(q, gate, *attn.project_context(visual_tokens), visual_mask)
        gated = gated * valid.unsqueeze(-1).to(gated.dtype)  # padding slots read nothing
        # The slots of one sample are distinct operators, so a scatter-add places each score once.
        pool = torch.softmax(pool_logits.scatter_add(1, order, gated @ gated_score_weight), dim=1)  # (B, O)
        pooled_tokens = torch.einsum("bo,bod->bd", pool, logic.per_sample_tokens())
        pooled_gated = torch.einsum("bk,bkc->bc", pool.gather(1, order), gated)
        context = self.pool_norm(pooled_tokens + attn.to_out(pooled_gated))
        # The (B, H, O, N) maps of the contract: the gathered rows in place, 0 for the operators that did not query.
        heads, keys = attention.shape[1], attention.shape[-1]
        attention = attention * valid[:, None, :, None].to(attention.dtype)
        full = attention.new_zeros(batch, heads, num_operators, keys)
        full.scatter_(2, order[:, None, :, None].expand(-1, heads, -1, keys), attention)
        return FusionOutput(context, full)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, applicable_queries={self.applicable_queries}, max_queries={self.max_queries}"


class ConcatFusion(nn.Module):
    r"""The ablation: :math:`c = \operatorname{LN}(W [\text{pool}(t); \text{mean}(v)] + b)`, no attention.

    The operator tokens are pooled with ``softmax(operator scores)`` (a plain
    mean without scores), the visual tokens by their masked mean. This is the
    earlier "V3" design, kept for comparison runs; ``attention`` is None.

    Shapes:
        - output: ``FusionOutput(context (B, D), None)``
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Sequential(nn.Linear(2 * dim, dim), nn.LayerNorm(dim))

    def forward(self, visual_tokens: Tensor, visual_mask: Tensor | None, logic: LogicOutput) -> FusionOutput:
        if visual_mask is None:
            visual_summary = visual_tokens.mean(1)
        else:
            keep = visual_mask.unsqueeze(-1).to(visual_tokens.dtype)
            visual_summary = (visual_tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        tokens = logic.per_sample_tokens()
        if logic.scores is None:
            logic_summary = tokens.mean(1)
        else:
            logic_summary = torch.einsum("bo,bod->bd", torch.softmax(logic.scores, dim=1), tokens)
        return FusionOutput(self.proj(torch.cat([logic_summary, visual_summary], dim=-1)), None)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


FUSIONS = ("cross_attention", "concat")


def make_fusion(
    fusion: str | nn.Module,
    dim: int,
    *,
    num_heads: int = 4,
    sparse_topk: float = 0.3,
    dropout: float = 0.0,
    head_dim: int | None = None,
    applicable_queries: bool = False,
    max_queries: int | None = None,
) -> nn.Module:
    """The fusion module named by ``fusion`` (``"cross_attention"`` or ``"concat"``), or ``fusion`` itself.

    A module is returned as it is; the attention arguments (including ``applicable_queries`` and
    ``max_queries``) apply to ``"cross_attention"`` only.
    """
    if isinstance(fusion, nn.Module):
        return fusion
    if fusion == "cross_attention":
        return CrossAttentionFusion(
            dim,
            num_heads,
            sparse_topk,
            dropout,
            head_dim,
            applicable_queries=applicable_queries,
            max_queries=max_queries,
        )
    if fusion == "concat":
        return ConcatFusion(dim)
    raise ValueError(
        f"fusion must be one of {FUSIONS} or an nn.Module following crossmoe.fusion.Fusion, got {fusion!r}"
    )
