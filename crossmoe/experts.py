"""A bank of small MLP experts evaluated together with batched einsums."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from crossmoe._checks import check_int

__all__ = ["DEFAULT_EXPERT_NAMES", "SemanticExpertBank"]

DEFAULT_EXPERT_NAMES = ("survival", "combat", "exploration", "general")


class SemanticExpertBank(nn.Module):
    r"""``E`` two-layer MLP experts with stacked weights, applied in one pass.

    .. math::
        h_{be} = \phi(x_b W^{(1)}_e + b^{(1)}_e), \qquad y_{be} = h_{be} W^{(2)}_e + b^{(2)}_e

    The weights are ``(E, ., .)`` parameters and each layer is one batched
    matrix multiply over all experts (:func:`torch.baddbmm`, the einsum
    ``"bd,edf->ebf"`` with the bias fused), so there is no Python loop over
    experts. ``baddbmm`` measured about 1.5x faster than :func:`torch.einsum`
    here, which permutes and copies the stacked weights on every call. Each
    expert is initialised independently, like an :class:`torch.nn.Linear` of
    the same size.

    Args:
        dim: Input width ``D``.
        out_dim: Output width ``A`` (for a policy, the number of actions).
        num_experts: Number of experts ``E``.
        hidden_dim: Hidden width ``F`` of each expert.
        names: One name per expert; ``None`` gives ``expert_0, expert_1, ...``.
            The default names the four semantic experts of the NetHack agent,
            and falls back to the generic names when ``num_experts != 4``.
        activation: Module applied between the two layers.

    Shapes:
        - x: ``(B, D)``
        - output: ``(B, E, A)``; with ``return_hidden=True`` also the hidden
          features ``(B, E, F)`` (the input of
          :func:`~crossmoe.losses.semantic_orthogonality_loss`).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        num_experts: int = 4,
        hidden_dim: int = 128,
        names: Sequence[str] | None = DEFAULT_EXPERT_NAMES,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        dim, out_dim = check_int(dim, "dim"), check_int(out_dim, "out_dim")
        num_experts, hidden_dim = check_int(num_experts, "num_experts"), check_int(hidden_dim, "hidden_dim")
        if names is None or (tuple(names) == DEFAULT_EXPERT_NAMES and num_experts != len(DEFAULT_EXPERT_NAMES)):
            names = tuple(f"expert_{i}" for i in range(num_experts))
        if len(names) != num_experts:
            raise ValueError(
                f"names must hold num_experts={num_experts} names (or be None), got {len(names)}: {tuple(names)}"
            )
        self.dim, self.out_dim, self.num_experts, self.hidden_dim = dim, out_dim, num_experts, hidden_dim
        self.names = tuple(names)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, out_dim))
        self.b2 = nn.Parameter(torch.empty(num_experts, out_dim))
        self.activation = nn.GELU() if activation is None else activation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every expert like an independent :class:`torch.nn.Linear` pair."""
        for weight, bias in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, out_dim={self.out_dim}, hidden_dim={self.hidden_dim}, names={self.names}"

    def forward(self, x: Tensor, return_hidden: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}), got {tuple(x.shape)}")
        x = x.unsqueeze(0).expand(self.num_experts, -1, -1)  # (E, B, D), a view
        hidden = self.activation(torch.baddbmm(self.b1.unsqueeze(1), x, self.w1))  # (E, B, F)
        out = torch.baddbmm(self.b2.unsqueeze(1), hidden, self.w2)  # (E, B, A)
        out = out.transpose(0, 1)  # (B, E, A)
        return (out, hidden.transpose(0, 1)) if return_hidden else out
