"""Sparse routing over experts with the alpha-entmax family."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from crossmoe._checks import check_int
from crossmoe.functional import check_alpha, check_temperature, entmax, entmax_tensor_alpha, is_compiling

__all__ = ["RouterOutput", "SparsemaxRouter"]


class RouterOutput(NamedTuple):
    """What :class:`SparsemaxRouter` returns.

    Attributes:
        weights: ``(B, E)`` routing weights on the simplex (float32 or float64).
        logits: ``(B, E)`` raw router logits, before the temperature.
    """

    weights: Tensor
    logits: Tensor


class SparsemaxRouter(nn.Module):
    r"""An MLP router whose weights are the alpha-entmax of its logits.

    .. math::
        w = \operatorname{entmax}_\alpha\!\left(\frac{\operatorname{MLP}(x)}{T}\right)

    ``alpha=1`` is exactly softmax, ``alpha=2`` exactly sparsemax (experts can
    get zero weight), and values in between interpolate (`Peters et al., 2019
    <https://arxiv.org/abs/1905.05702>`_). ``alpha`` and ``temperature`` are plain
    float attributes, validated on assignment, so a schedule such as
    :class:`~crossmoe.TemperatureAnnealingScheduler` can set them between steps.

    Routing is deterministic and per-sample: there is no noise and no capacity
    limit, so a sample's weights never depend on the rest of the batch (PPO
    needs :math:`\pi_\text{old} = \pi` at the first update epoch). The entmax
    step runs in float32 even under autocast, because entmax returns NaN in
    half precision.

    Under ``torch.compile`` the router reads alpha and temperature from a
    non-persistent float64 buffer that the setters keep in step with the
    attributes, so a schedule that changes them between steps does not
    recompile the graph.

    Args:
        dim: Input width ``D``.
        num_experts: Number of experts ``E`` (at least 2).
        hidden_dim: Width of the hidden layer; ``0`` gives a linear router.
        alpha: Entmax alpha in ``[1, 2]``.
        temperature: Logit temperature ``T > 0``.

    Shapes:
        - x: ``(B, D)``
        - output: :class:`RouterOutput` of ``(B, E)`` tensors.
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        hidden_dim: int = 128,
        alpha: float = 2.0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        dim, num_experts = check_int(dim, "dim"), check_int(num_experts, "num_experts", minimum=2)
        hidden_dim = check_int(hidden_dim, "hidden_dim", minimum=0, hint=" (0 = linear router)")
        self.dim = dim
        self.num_experts = num_experts
        # (alpha, temperature) as a tensor for compiled graphs; kept equal to the float attributes.
        self.register_buffer("routing_state", torch.tensor([1.0, 1.0], dtype=torch.float64), persistent=False)
        self.alpha = alpha
        self.temperature = temperature
        if hidden_dim == 0:
            self.net = nn.Linear(dim, num_experts)
        else:
            self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, num_experts))

    @property
    def alpha(self) -> float:
        """Entmax alpha in ``[1, 2]`` (1 is softmax, 2 is sparsemax)."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = check_alpha(value)
        with torch.no_grad():
            self.routing_state[0] = self._alpha

    @property
    def temperature(self) -> float:
        """Divides the logits before the entmax (must be > 0)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)
        with torch.no_grad():
            self.routing_state[1] = self._temperature

    def _apply(self, fn: Any, recurse: bool = True) -> SparsemaxRouter:
        # .to(), .half(), .to_empty() ... act on every buffer; the routing state is rebuilt from the
        # floats so that it stays exact (float64) and equal to them whatever the module's dtype.
        super()._apply(fn, recurse)
        device = self.routing_state.device
        self.routing_state = torch.tensor([self._alpha, self._temperature], dtype=torch.float64, device=device)
        return self

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, temperature={self.temperature:g}"

    def forward(self, x: Tensor) -> RouterOutput:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}), got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            param_dtype = next(self.net.parameters()).dtype
            logits = self.net(x.to(param_dtype))
            work = logits if logits.dtype == torch.float64 else logits.float()
            if is_compiling():  # tensor-valued alpha and temperature: no recompile when a schedule moves them
                weights = entmax_tensor_alpha(work / self.routing_state[1].to(work.dtype), self.routing_state[0])
            else:
                weights = entmax(work / self.temperature, alpha=self.alpha, dim=-1)
        return RouterOutput(weights=weights, logits=logits)
