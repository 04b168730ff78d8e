"""A recurrent core: memory across the steps of an episode, between a policy's context and its heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossmoe._checks import check_int

__all__ = ["CORES", "LSTMCore", "make_core"]

CORES = ("lstm",)
"""The names :func:`make_core` (and the policies' ``core`` argument) accept."""


class LSTMCore(nn.Module):
    r"""An LSTM cell with a residual connection, run along time-major flattened rollouts.

    .. code-block:: text

        h_t, c_t = LSTMCell(x_t, (h_{t-1}, c_{t-1}) · (1 - start_t));   y_t = x_t + h_t

    The residual keeps the feed-forward path from the context to the heads
    as it is without a core, so the recurrent agent is the feed-forward agent
    plus memory. The state is one tensor, ``(B, 2 H)`` (``h`` and ``c``
    side by side), zeroed where ``starts`` marks the first step of an
    episode, so a rollout buffer stores it like any other per-env quantity.

    The loop runs over time (the ``T`` steps of a rollout, one step while
    acting), never over the batch.

    Args:
        dim: Width of the input and the output (the context's).

    Example:
        >>> core = LSTMCore(8)
        >>> state = core.initial_state(3)
        >>> out, state = core(torch.randn(5 * 3, 8), state)  # 5 steps of 3 envs, time-major
        >>> out.shape, state.shape
        (torch.Size([15, 8]), torch.Size([3, 16]))
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim")
        self.cell = nn.LSTMCell(self.dim, self.dim)

    @property
    def state_size(self) -> int:
        """Width ``S = 2 H`` of the state."""
        return 2 * self.dim

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """The state before an episode's first step: zeros of shape ``(batch, S)``."""
        return torch.zeros(check_int(batch, "batch", minimum=0), self.state_size, device=device)

    def forward(self, x: Tensor, state: Tensor, starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the ``T = len(x) / B`` steps of ``B`` sequences.

        Args:
            x: ``(T * B, D)`` inputs, time-major (row ``t * B + b`` is step ``t`` of sequence ``b``).
            state: ``(B, S)``, the state before the first step.
            starts: ``(T * B,)`` bool, True where a step is the first of an episode (the state is zeroed
                before it); ``None`` for no episode starts.

        Returns:
            ``(y (T * B, D), state after the last step (B, S))``.
        """
        if not isinstance(state, Tensor) or state.dim() != 2 or state.shape[1] != self.state_size:
            shape = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"state must have shape (B, {self.state_size}), got {shape}")
        batch = state.shape[0]
        if x.dim() != 2 or x.shape[1] != self.dim or batch == 0 or x.shape[0] % batch:
            raise ValueError(
                f"x must have shape (T * B, {self.dim}) with B={batch} the state's batch, got {tuple(x.shape)}"
            )
        steps = x.shape[0] // batch
        if starts is not None and tuple(starts.shape) != (x.shape[0],):
            raise ValueError(f"starts must have shape (T * B,)=({x.shape[0]},), got {tuple(starts.shape)}")
        keep = None if starts is None else (~starts.bool()).to(x.dtype).view(steps, batch, 1)
        h, c = state.to(x.dtype).chunk(2, dim=1)
        outputs = []
        for t, x_t in enumerate(x.view(steps, batch, self.dim)):
            if keep is not None:
                h, c = h * keep[t], c * keep[t]
            h, c = self.cell(x_t, (h, c))
            outputs.append(h)
        return x + torch.cat(outputs), torch.cat([h, c], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def make_core(core: str | nn.Module | None, dim: int) -> nn.Module | None:
    """The recurrent core a policy's ``core`` argument names: ``"lstm"`` (:class:`LSTMCore`), a module, or None.

    A module of your own is called as ``core(x (T * B, D), state (B, S), starts (T * B,) or None) ->
    (y (T * B, D), state)`` and has ``initial_state(batch, device)``.
    """
    if core is None or isinstance(core, nn.Module):
        if core is not None and not callable(getattr(core, "initial_state", None)):
            raise TypeError(f"core must have an initial_state(batch, device) method, got {type(core).__name__}")
        return core
    if core == "lstm":
        return LSTMCore(dim)
    raise ValueError(f"core must be one of {CORES}, a module or None, got {core!r}")
