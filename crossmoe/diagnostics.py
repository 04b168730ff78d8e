"""Cheap, detached statistics of attention and routing for logging."""

from __future__ import annotations

import torch
from torch import Tensor

from crossmoe.losses import routing_entropy

__all__ = [
    "attention_sparsity",
    "context_norm",
    "dead_experts",
    "expert_usage",
    "moe_diagnostics",
    "routing_entropy",
]


@torch.no_grad()
def attention_sparsity(attention: Tensor, threshold: float = 1e-6, context_mask: Tensor | None = None) -> float:
    """Fraction of attention weights below ``threshold``.

    Args:
        attention: ``(B, H, Nq, Nk)`` attention weights.
        threshold: Weights strictly below it count as zero.
        context_mask: Optional ``(B, Nk)`` bool, True = keep. Only kept keys
            are counted, so padding does not inflate the sparsity.
    """
    small = attention < threshold
    if context_mask is None:
        return small.float().mean().item()
    kept = context_mask[:, None, None, :].expand_as(attention)
    return ((small & kept).sum() / kept.sum().clamp_min(1)).item()


@torch.no_grad()
def expert_usage(router_weights: Tensor) -> Tensor:
    """Fraction of samples whose largest routing weight is on each expert.

    Shapes:
        - router_weights: ``(..., E)``
        - output: ``(E,)``, sums to 1
    """
    flat = router_weights.reshape(-1, router_weights.shape[-1])
    counts = torch.bincount(flat.argmax(dim=-1), minlength=flat.shape[-1])
    return counts.to(flat.dtype) / max(flat.shape[0], 1)


@torch.no_grad()
def dead_experts(router_weights: Tensor, threshold: float = 0.0) -> int:
    """Number of experts whose weight is ``<= threshold`` for every sample."""
    flat = router_weights.reshape(-1, router_weights.shape[-1])
    return int((flat <= threshold).all(dim=0).sum())


@torch.no_grad()
def context_norm(context: Tensor) -> float:
    """Mean L2 norm of the context vectors ``(..., D)``."""
    return context.norm(dim=-1).mean().item()


@torch.no_grad()
def moe_diagnostics(
    router_weights: Tensor,
    attention: Tensor | None = None,
    context: Tensor | None = None,
    context_mask: Tensor | None = None,
    names: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """All diagnostics as a flat ``{name: float}`` dict, ready for a metrics logger.

    Keys: ``routing_entropy``, ``dead_experts``, ``usage/<name>`` (the share
    of samples whose largest weight is on the expert), ``weight/<name>`` (its
    mean routing weight; the top-1 share overstates collapse) per expert,
    and ``attention_sparsity`` / ``context_norm`` when those inputs are given.
    """
    usage = expert_usage(router_weights).tolist()
    names = names or tuple(f"expert_{i}" for i in range(len(usage)))
    if len(names) != len(usage):
        raise ValueError(f"names must hold E={len(usage)} names, got {len(names)}")
    stats = {
        "routing_entropy": routing_entropy(router_weights.float()).item(),
        "dead_experts": float(dead_experts(router_weights)),
    }
    stats.update({f"usage/{name}": fraction for name, fraction in zip(names, usage, strict=True)})
    mean_weight = router_weights.reshape(-1, len(usage)).float().mean(dim=0).tolist()
    stats.update({f"weight/{name}": weight for name, weight in zip(names, mean_weight, strict=True)})
    if attention is not None:
        stats["attention_sparsity"] = attention_sparsity(attention, context_mask=context_mask)
    if context is not None:
        stats["context_norm"] = context_norm(context)
    return stats
