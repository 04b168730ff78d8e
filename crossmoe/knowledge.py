"""Knowledge pathways: from the operators that apply in a state to the action distribution."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ApplicabilityPrior"]


class ApplicabilityPrior(nn.Module):
    r"""A learned bias on the action logits from the applicable operators.

    .. math::
        b_{ba} = \sum_o \mathbb{1}[o \text{ applicable in } b] \; W_{oa} M_{oa},
        \qquad W_{oa} \leftarrow \frac{\text{init}}{|\{a' : M_{oa'}\}|}

    :math:`M` is :meth:`Hypergraph.action_mask <crossmoe.hypergraph.Hypergraph.action_mask>`
    of the env's action set: which actions each operator uses. Each operator
    starts with one vote of size ``init``, split evenly over its actions, so an
    operator with one action ("step north towards the stairs") speaks louder
    than one that lists all eight moves. The votes are learned: PPO's
    gradient reaches :math:`W` through the logits, and the policy's own
    logits are added to the bias, so the learned policy can always override
    it. Masked entries stay 0 and get no gradient.

    Args:
        action_mask: ``(O, A)`` bool, operator ``o`` uses action ``a``.
        init: Initial vote of each operator (0 starts with no prior at all).

    Shapes:
        - applicable: ``(B, O)`` bool
        - output: ``(B, A)``, to add to the policy's logits
    """

    def __init__(self, action_mask: Tensor, init: float = 1.0) -> None:
        super().__init__()
        action_mask = torch.as_tensor(action_mask, dtype=torch.bool)
        if action_mask.dim() != 2 or 0 in action_mask.shape:
            raise ValueError(
                f"action_mask must be a non-empty (O, A) bool tensor, got shape {tuple(action_mask.shape)}"
            )
        if not isinstance(init, (int, float)) or init != init:
            raise ValueError(f"init must be a number, got {init!r}")
        self.num_operators, self.num_actions = action_mask.shape
        self.register_buffer("action_mask", action_mask.float())
        per_action = init / action_mask.sum(dim=1, keepdim=True).clamp_min(1)
        self.weight = nn.Parameter(per_action * self.action_mask)

    def forward(self, applicable: Tensor) -> Tensor:
        if applicable.dim() != 2 or applicable.shape[1] != self.num_operators:
            raise ValueError(
                f"applicable must be (B, O) with O={self.num_operators}, got shape {tuple(applicable.shape)}"
            )
        return applicable.to(self.weight.dtype) @ (self.weight * self.action_mask)

    def extra_repr(self) -> str:
        return f"num_operators={self.num_operators}, num_actions={self.num_actions}"
