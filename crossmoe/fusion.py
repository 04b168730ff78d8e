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

    Args:
        dim: Width ``D`` of both token streams and of the context.
        num_heads: Attention heads ``H``.
        sparse_topk: Fraction of kept visual tokens each attention row may use, in ``(0, 1]``.
        dropout: Attention dropout (keep 0 for PPO).
        head_dim: Width of each head; ``None`` means ``dim // num_heads``.

    Shapes:
        - visual_tokens: ``(B, N, D)``; visual_mask: ``(B, N)`` bool or None
        - logic.tokens: ``(B, O, D)``, or ``(U, O, D)`` with ``logic.index (B,)``
        - output: ``FusionOutput(context (B, D), attention (B, H, O, N))``
    """

    def __init__(
        self, dim: int, num_heads: int = 4, sparse_topk: float = 0.3, dropout: float = 0.0, head_dim: int | None = None
    ) -> None:
        super().__init__()
        self.dim = dim
        self.attention = CausalGatedCrossAttention(dim, num_heads, sparse_topk, dropout, head_dim=head_dim)
        self.pool_score = nn.Linear(dim, 1, bias=False)  # a bias would cancel in the softmax
        self.pool_norm = nn.LayerNorm(dim)

    def forward(self, visual_tokens: Tensor, visual_mask: Tensor | None, logic: LogicOutput) -> FusionOutput:
        tokens, scores, _, index = logic
        attn = self.attention
        if visual_mask is not None and not is_compiling():  # a host sync: eager mode only
            check_mask_keeps_a_key(visual_mask, "visual_mask")
        q, gate = attn.project_query(tokens)  # (U or B, ...): once per distinct token set
        token_score = self.pool_score(tokens).squeeze(-1)  # w . t_o, (U or B, O)
        if index is not None:
            # index_select, not x[index]: its backward (index_add) is far faster on the CPU than index_put.
            q, gate, token_score = (x.index_select(0, index) for x in (q, gate, token_score))
        gated, attention = attn.attend(q, gate, *attn.project_context(visual_tokens), visual_mask)  # (B, O, H*d)
        gated_score_weight = attn.to_out.weight.t() @ self.pool_score.weight.squeeze(0)  # W_out^T w, (H*d,)
        pool_logits = token_score + gated @ gated_score_weight
        if scores is not None:
            pool_logits = pool_logits + scores
        pool = torch.softmax(pool_logits, dim=1)  # (B, O)
        pooled_tokens = torch.einsum("bo,bod->bd", pool, logic.per_sample_tokens())
        pooled_gated = torch.einsum("bo,boc->bc", pool, gated)
        return FusionOutput(self.pool_norm(pooled_tokens + attn.to_out(pooled_gated)), attention)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


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
) -> nn.Module:
    """The fusion module named by ``fusion`` (``"cross_attention"`` or ``"concat"``), or ``fusion`` itself.

    A module is returned as it is; the attention arguments apply to ``"cross_attention"`` only.
    """
    if isinstance(fusion, nn.Module):
        return fusion
    if fusion == "cross_attention":
        return CrossAttentionFusion(dim, num_heads, sparse_topk, dropout, head_dim)
    if fusion == "concat":
        return ConcatFusion(dim)
    raise ValueError(
        f"fusion must be one of {FUSIONS} or an nn.Module following crossmoe.fusion.Fusion, got {fusion!r}"
    )
