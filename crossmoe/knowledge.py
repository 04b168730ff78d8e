"""Knowledge pathways: from the operators that apply in a state to the action distribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from crossmoe.rules import RuleAgent

__all__ = ["ApplicabilityPrior", "AttentionDirectionPrior", "RulePrior"]


def _check_prior_arguments(action_mask: Tensor, **inits: float) -> Tensor:
    """``action_mask`` as a non-empty ``(O, A)`` bool tensor, and each of ``inits`` a number; else a ValueError."""
    action_mask = torch.as_tensor(action_mask, dtype=torch.bool)
    if action_mask.dim() != 2 or 0 in action_mask.shape:
        raise ValueError(f"action_mask must be a non-empty (O, A) bool tensor, got shape {tuple(action_mask.shape)}")
    for name, value in inits.items():
        if not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{name} must be a number, got {value!r}")
    return action_mask


def _check_applicable(applicable: Tensor, num_operators: int) -> None:
    if applicable.dim() != 2 or applicable.shape[1] != num_operators:
        raise ValueError(f"applicable must be (B, O) with O={num_operators}, got shape {tuple(applicable.shape)}")


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
        action_mask = _check_prior_arguments(action_mask, init=init)
        self.num_operators, self.num_actions = action_mask.shape
        self.register_buffer("action_mask", action_mask.float())
        per_action = init / action_mask.sum(dim=1, keepdim=True).clamp_min(1)
        self.weight = nn.Parameter(per_action * self.action_mask)

    def forward(self, applicable: Tensor) -> Tensor:
        _check_applicable(applicable, self.num_operators)
        return applicable.to(self.weight.dtype) @ (self.weight * self.action_mask)

    def extra_repr(self) -> str:
        return f"num_operators={self.num_operators}, num_actions={self.num_actions}"


class RulePrior(nn.Module):
    r"""The rule agent as a learned bias: the first applicable operator in priority order votes for its actions.

    .. math::
        b_{ba} = \sum_o \mathbb{1}[o \text{ is the first applicable operator of } b \text{ in } \pi] \;
            W_{oa} M_{oa}, \qquad W_{oa} \leftarrow \text{init}

    :math:`\pi` is the priority order of a :class:`~crossmoe.rules.RuleAgent`
    and :math:`M` its action mask, so the operator that votes is the one the
    rule agent plays, and it votes ``init`` for each of its actions. Added to
    near-zero logits, the policy starts as the rules, softened: with ``A``
    actions, of which the operator uses ``k``, the rules' actions get
    :math:`k e^{\text{init}} / (k e^{\text{init}} + A - k)` of the mass (0.87
    for ``k = 1`` of NetHack's 23 at the default 5.0). Where no operator
    applies the bias is 0, as the rule agent then plays uniformly. The votes
    are learned and the policy's own logits are added, so PPO can leave the
    rules wherever they are wrong, with no teacher in the loss and none at
    inference: the alternative to kickstarting from the same rules
    (:class:`~crossmoe.teacher.Teacher`), and the rules' order as a
    *residual* prior. Masked entries stay 0 and get no gradient.

    Args:
        action_mask: ``(O, A)`` bool, operator ``o`` uses action ``a``.
        order: Operator indices, most urgent first: the operators that may
            vote (an operator the order leaves out never does; an empty order
            gives a bias of 0).
        init: Initial vote for each of the voting operator's actions.

    Shapes:
        - applicable: ``(B, O)`` bool
        - output: ``(B, A)``, to add to the policy's logits

    Example:
        >>> prior = RulePrior(torch.tensor([[True, False], [False, True]]), order=[1, 0], init=5.0)
        >>> prior(torch.tensor([[True, True], [True, False], [False, False]]))
        tensor([[0., 5.],
                [5., 0.],
                [0., 0.]], grad_fn=<MmBackward0>)
    """

    DEFAULT_INIT = 5.0
    """The default ``init``: ``e^5 / (e^5 + 22) = 0.87`` of the mass on one rule action of NetHack's 23."""

    def __init__(self, action_mask: Tensor, order: Sequence[int], init: float = DEFAULT_INIT) -> None:
        super().__init__()
        action_mask = _check_prior_arguments(action_mask, init=init)
        self.num_operators, self.num_actions = action_mask.shape
        order = torch.as_tensor(order, dtype=torch.long).flatten()
        if order.numel() and (int(order.min()) < 0 or int(order.max()) >= self.num_operators):
            raise ValueError(f"order must list operator indices in [0, {self.num_operators}), got {order.tolist()}")
        if order.unique().numel() != order.numel():
            raise ValueError(f"order must name each operator once, got {order.tolist()}")
        self.register_buffer("order", order)
        self.register_buffer("action_mask", action_mask.float())
        self.weight = nn.Parameter(float(init) * self.action_mask)

    @classmethod
    def from_rules(cls, rules: RuleAgent, init: float = DEFAULT_INIT) -> RulePrior:
        """The prior of a :class:`~crossmoe.rules.RuleAgent`: its priority order and its action mask."""
        return cls(torch.as_tensor(rules.action_mask), rules.order.tolist(), init=init)

    def forward(self, applicable: Tensor) -> Tensor:
        _check_applicable(applicable, self.num_operators)
        ranked = applicable[:, self.order].to(torch.int32)  # (B, O') in priority order
        first = ranked * (ranked.cumsum(1) == 1)  # one-hot of the first applicable one, or all zeros
        votes = (self.weight * self.action_mask).index_select(0, self.order)  # (O', A)
        return first.to(votes.dtype) @ votes

    def extra_repr(self) -> str:
        return f"num_operators={self.num_operators}, num_actions={self.num_actions}, voting={self.order.numel()}"


class AttentionDirectionPrior(nn.Module):
    r"""What from the graph, where from the attention: the operators' attention steers their moves.

    An operator whose actions move in two or more directions ("approach the
    monster", "step onto the item", "flee") does not say *where* to go; its
    cross-attention over the visual tokens does. Each visual token lies in a
    known direction from the agent (``directions``), so the attention of
    operator :math:`o` gives a mass per direction, and that mass becomes the
    operator's vote on the moves in that direction:

    .. math::
        b_{ba} = \sum_o \mathbb{1}[o \text{ applicable in } b]
            \Big( W_{oa} K_{oa} + g_o S_{oa} \sum_k \big(\bar a_{bo} T_b\big)_k D_{ka} \Big)

    with :math:`\bar a_{bo}` the attention of operator :math:`o` over the
    ``N`` tokens (mean over heads), :math:`T_b` the ``(N, K)`` directions of
    the tokens (rows of zeros for tokens with no direction, such as status
    tokens), :math:`D` the ``(K, A)`` moves of each direction, :math:`S` the
    steering operators' move entries and :math:`K` every other entry of the
    operators' action mask, which keeps the fixed vote of
    :class:`ApplicabilityPrior` (``init`` split over the operator's actions;
    an operator with a single move direction, such as "attack north", keeps
    its fixed vote). The gains :math:`g_o` start at ``direction_init``.
    Gradients reach :math:`W`, :math:`g` and, through the attention, the
    queries and keys of the fusion, so PPO teaches each operator where to
    look. The bias is added to the policy's logits, which can always
    override it.

    Args:
        action_mask: ``(O, A)`` bool, operator ``o`` uses action ``a``.
        direction_actions: ``(K, A)`` bool, action ``a`` moves in direction ``k``.
        init: Initial fixed vote of each operator, as in :class:`ApplicabilityPrior`.
        direction_init: Initial gain of each steering operator's attention vote.

    Shapes:
        - applicable: ``(B, O)`` bool
        - attention: ``(B, H, O, N)`` (a :class:`~crossmoe.fusion.FusionOutput`'s attention)
        - directions: ``(B, N, K)`` or ``(N, K)``, the share of each token lying in each direction
        - output: ``(B, A)``, to add to the policy's logits
    """

    uses_attention = True  # CrossAttentionMoEPolicy passes it the attention and the tokens' directions

    def __init__(
        self, action_mask: Tensor, direction_actions: Tensor, init: float = 1.0, direction_init: float = 1.0
    ) -> None:
        super().__init__()
        action_mask = _check_prior_arguments(action_mask, init=init, direction_init=direction_init)
        direction_actions = torch.as_tensor(direction_actions, dtype=torch.bool)
        if direction_actions.dim() != 2 or direction_actions.shape[1] != action_mask.shape[1]:
            raise ValueError(
                f"direction_actions must be (K, A) with A={action_mask.shape[1]}, got shape "
                f"{tuple(direction_actions.shape)}"
            )
        self.num_operators, self.num_actions = action_mask.shape
        self.num_directions = direction_actions.shape[0]
        moves = direction_actions.any(0)  # (A,)
        directions_used = (action_mask.float() @ direction_actions.float().t()) > 0  # (O, K)
        steers = directions_used.sum(1) >= 2  # (O,)
        steer_mask = action_mask & moves & steers[:, None]
        keep_mask = action_mask & ~steer_mask
        self.register_buffer("direction_actions", direction_actions.float())
        self.register_buffer("keep_mask", keep_mask.float())
        self.register_buffer("steer_mask", steer_mask.float())
        self.register_buffer("steers", steers.float())
        per_action = init / action_mask.sum(dim=1, keepdim=True).clamp_min(1)
        self.weight = nn.Parameter(per_action * self.keep_mask)
        self.gain = nn.Parameter(direction_init * self.steers)

    def forward(self, applicable: Tensor, attention: Tensor, directions: Tensor) -> Tensor:
        batch = applicable.shape[0]
        _check_applicable(applicable, self.num_operators)
        if attention.dim() != 4 or attention.shape[0] != batch or attention.shape[2] != self.num_operators:
            raise ValueError(
                f"attention must be (B, H, O, N) with B={batch}, O={self.num_operators}, got shape "
                f"{tuple(attention.shape)}"
            )
        tokens = attention.shape[-1]
        if directions.shape[-2:] != (tokens, self.num_directions) or directions.dim() not in (2, 3):
            raise ValueError(
                f"directions must be (B, N, K) or (N, K) with N={tokens}, K={self.num_directions}, got shape "
                f"{tuple(directions.shape)}"
            )
        looks = attention.mean(1)  # (B, O, N)
        directions = directions.to(looks.dtype)
        toward = looks @ directions  # (B, O, K): the attention mass in each direction
        votes = (toward @ self.direction_actions) * self.steer_mask  # (B, O, A)
        applicable = applicable.to(self.weight.dtype)
        fixed = applicable @ (self.weight * self.keep_mask)
        return fixed + torch.einsum("bo,boa->ba", applicable * (self.gain * self.steers), votes)

    def extra_repr(self) -> str:
        return (
            f"num_operators={self.num_operators}, num_actions={self.num_actions}, "
            f"num_directions={self.num_directions}, steering={int(self.steers.sum())}"
        )
