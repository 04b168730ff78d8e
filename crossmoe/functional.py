"""Pure functions behind the crossmoe modules.

Everything here is stateless and works on plain tensors, so it can be used
without the :mod:`torch.nn` wrappers:

* :func:`entmax` -- the alpha-entmax family (softmax at ``alpha=1``, sparsemax
  at ``alpha=2``) dispatched to the exact implementation for each alpha.
* :func:`sparse_topk_softmax` -- softmax restricted to the top
  ``ceil(topk * n_kept)`` entries of each row, honouring a key mask.
* :func:`combine_experts` -- the router-weighted sum of expert outputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from entmax import entmax15, entmax_bisect, sparsemax
from torch import Tensor

__all__ = [
    "ALPHA_SOFTMAX_TOL",
    "check_alpha",
    "check_mask_keeps_a_key",
    "check_temperature",
    "combine_experts",
    "entmax",
    "entmax_tensor_alpha",
    "is_compiling",
    "sparse_topk_softmax",
    "topk_support_size",
]

#: ``|alpha - 1|`` below this is routed to :func:`torch.softmax`.
#: ``entmax_bisect`` at ``alpha == 1`` silently returns a uniform distribution,
#: and between 1 and ``1 + 1e-3`` alpha-entmax differs from softmax by less than
#: 6e-4, which is below the bisection's own float32 error there.
ALPHA_SOFTMAX_TOL = 1e-3
_EXACT_TOL = 1e-6


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return ``float(alpha)`` or raise ``ValueError`` if it is outside [1, 2]."""
    value = float(alpha)
    if not (1.0 <= value <= 2.0):  # also rejects NaN
        raise ValueError(f"{name} must lie in [1, 2] (1 = softmax, 2 = sparsemax), got {alpha!r}")
    return value


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """Return ``float(temperature)`` or raise ``ValueError`` if it is not a finite positive number."""
    value = float(temperature)
    if not (0.0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}")
    return value


def entmax(logits: Tensor, alpha: float = 1.5, dim: int = -1, n_iter: int | None = None) -> Tensor:
    r"""alpha-entmax of ``logits`` along ``dim``, dispatched to the exact kernel.

    .. math::
        \operatorname{entmax}_\alpha(z) = \arg\max_{p \in \Delta} \; p^\top z + H^T_\alpha(p)

    where :math:`H^T_\alpha` is the Tsallis entropy (`Peters et al., 2019
    <https://arxiv.org/abs/1905.05702>`_). The limit :math:`\alpha \to 1` is
    softmax and :math:`\alpha = 2` is sparsemax.

    Dispatch: ``|alpha - 1| < ALPHA_SOFTMAX_TOL`` uses :func:`torch.softmax`
    (``entmax_bisect`` is wrong there), ``alpha == 1.5`` uses
    :func:`entmax.entmax15`, ``alpha == 2`` uses :func:`entmax.sparsemax`, and
    every other alpha uses :func:`entmax.entmax_bisect`.

    Half-precision inputs are computed in float32 (entmax returns NaN in
    fp16/bf16), and the result is returned in float32.

    Args:
        logits: Scores. Every slice along ``dim`` must contain a finite value.
        alpha: Value in ``[1, 2]``.
        dim: The dimension that is normalised.
        n_iter: Bisection steps for the general case; ``None`` means 25 in
            float32 (enough for its precision, and half the cost of entmax's
            default) and 50 in float64.

    Returns:
        A tensor shaped like ``logits`` whose slices along ``dim`` lie on the
        probability simplex.
    """
    alpha = check_alpha(alpha)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if alpha - 1.0 < ALPHA_SOFTMAX_TOL:
        return torch.softmax(logits, dim=dim)
    if abs(alpha - 2.0) < _EXACT_TOL:
        return sparsemax(logits, dim=dim)
    if abs(alpha - 1.5) < _EXACT_TOL:
        return entmax15(logits, dim=dim)
    if n_iter is None:
        n_iter = 50 if logits.dtype == torch.float64 else 25
    return entmax_bisect(logits, alpha=alpha, dim=dim, n_iter=n_iter)


def _entmax_backward(probs: Tensor, grad: Tensor, alpha: float) -> Tensor:
    r"""Vector-Jacobian product of :func:`entmax` along the last dim.

    With :math:`s = p^{2 - \alpha}` on the support (0 elsewhere),
    :math:`\nabla_z = s \odot (g - \frac{s^\top g}{\sum s})` (Peters et al., 2019):
    the softmax backward at ``alpha = 1`` and the sparsemax backward at ``alpha = 2``.
    """
    support = probs > 0
    s = torch.where(support, probs.clamp_min(torch.finfo(probs.dtype).tiny) ** (2.0 - alpha), 0.0)
    return s * (grad - (s * grad).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))


if hasattr(torch.library, "custom_op"):  # torch >= 2.4

    @torch.library.custom_op("crossmoe::entmax_last_dim", mutates_args=())
    def _entmax_op(logits: Tensor, alpha: Tensor) -> Tensor:
        return entmax(logits, float(alpha), dim=-1).to(logits.dtype)

    @_entmax_op.register_fake
    def _(logits: Tensor, alpha: Tensor) -> Tensor:
        return torch.empty_like(logits)

    def _entmax_op_setup(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output, inputs[1])

    @torch.library.custom_op("crossmoe::entmax_last_dim_backward", mutates_args=())
    def _entmax_backward_op(probs: Tensor, grad: Tensor, alpha: Tensor) -> Tensor:
        return _entmax_backward(probs, grad, float(alpha))

    @_entmax_backward_op.register_fake
    def _(probs: Tensor, grad: Tensor, alpha: Tensor) -> Tensor:
        return torch.empty_like(grad)

    def _entmax_op_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        probs, alpha = ctx.saved_tensors
        return _entmax_backward_op(probs, grad, alpha), None

    _entmax_op.register_autograd(_entmax_op_backward, setup_context=_entmax_op_setup)
else:  # pragma: no cover - old torch: the compiled graph breaks at the router instead
    _entmax_op = None


def entmax_tensor_alpha(logits: Tensor, alpha: Tensor) -> Tensor:
    """:func:`entmax` along the last dim with ``alpha`` held in a 0-dim tensor (for compiled code).

    Under ``torch.compile`` this is one opaque operator (``crossmoe::entmax_last_dim``)
    whose ``alpha`` is a tensor input, so a schedule that changes alpha between
    steps does not recompile the graph; its backward is the closed form of
    :func:`_entmax_backward`. In eager mode it is :func:`entmax` itself.
    """
    if _entmax_op is None or not is_compiling():
        return entmax(logits, float(alpha), dim=-1)
    return _entmax_op(logits, alpha)


def topk_support_size(n_kept: Tensor, topk: float) -> Tensor:
    """``max(1, ceil(topk * n_kept))``: how many keys a row of attention may use.

    A tiny slack keeps ``ceil`` from rounding ``0.3 * 10 = 3.0000000000000004``
    up to 4.
    """
    k = torch.ceil(n_kept.to(torch.float64) * topk - 1e-9).to(torch.long)
    return k.clamp(min=1)


def is_compiling() -> bool:
    """True while ``torch.compile`` traces the caller (data-dependent checks are skipped then)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())  # torch < 2.3


def check_mask_keeps_a_key(mask: Tensor, name: str = "mask") -> None:
    """Raise ``ValueError`` naming the samples of a ``(B, ..., N)`` bool mask whose rows keep no entry.

    It reads the mask on the host, so callers run it in eager mode only.
    """
    kept = mask.any(dim=-1)
    if not bool(kept.all()):
        empty = (~kept).nonzero()[:, 0].unique().tolist()[:5]
        raise ValueError(f"{name} keeps no key for samples {empty} (first 5 shown); each sample needs at least one key")


def sparse_topk_softmax(scores: Tensor, topk: float = 1.0, mask: Tensor | None = None, dim: int = -1) -> Tensor:
    r"""Softmax over the ``k`` largest kept scores of each row; every other entry is 0.

    With :math:`n` kept entries in a row, :math:`k = \max(1, \lceil \text{topk}
    \cdot n \rceil)`. Masked entries (``mask == False``) never enter the support,
    so they get exactly zero weight and no gradient. Ties at the threshold are
    broken arbitrarily, so a row never has more than ``k`` non-zero weights.
    ``topk=1.0`` is a plain (masked) softmax.

    Under ``torch.compile`` the shapes must not depend on the data, so the
    support is taken as the sorted top ``ceil(topk * N)`` entries cut at each
    row's own ``k`` (the same support), and the check that every row keeps an
    entry is skipped.

    Args:
        scores: Attention scores, any shape.
        topk: Fraction of kept entries that may receive weight, in ``(0, 1]``.
        mask: Boolean, True = keep; broadcastable to ``scores``. Every row must
            keep at least one entry.
        dim: The dimension that is normalised.

    Returns:
        Weights shaped like ``scores``, each row a probability vector.

    Raises:
        ValueError: If ``topk`` is outside ``(0, 1]``, ``mask`` is not boolean,
            or a row keeps no entry.
    """
    if not (0.0 < topk <= 1.0):
        raise ValueError(f"topk must lie in (0, 1], got {topk!r}")
    if dim not in (-1, scores.dim() - 1):
        moved_mask = None if mask is None else mask.expand_as(scores).movedim(dim, -1)
        return sparse_topk_softmax(scores.movedim(dim, -1), topk, moved_mask).movedim(-1, dim)

    n = scores.shape[-1]
    k_cap = max(1, math.ceil(n * topk - 1e-9))  # the support size of a row that keeps all n entries
    if mask is None:
        k_row, k_max = None, k_cap
    else:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = keep), got dtype {mask.dtype}")
        try:
            broadcast = torch.broadcast_shapes(mask.shape, scores.shape) == scores.shape
        except RuntimeError:
            broadcast = False
        if not broadcast:
            raise ValueError(f"mask must be broadcastable to scores {tuple(scores.shape)}, got {tuple(mask.shape)}")
        # Count on the mask as given, e.g. (B, 1, 1, Nk) rather than the expanded
        # (B, H, Nq, Nk): the counts broadcast wherever they are used.
        n_kept = torch.broadcast_to(mask, (*mask.shape[:-1], n)).sum(dim=-1)
        k_row = topk_support_size(n_kept, topk)  # (...,) support size per row, <= k_cap
        if is_compiling():
            k_max = k_cap
        else:
            if not bool((n_kept > 0).all()):
                empty = (n_kept == 0).nonzero().tolist()[:5]
                raise ValueError(f"mask keeps no entry in rows {empty} (first 5 shown); every row needs a kept key")
            k_max = int(k_row.max())
            if int(k_row.min()) == k_max:  # one support size for every row: no ranking needed
                k_row = None
    # k_cap >= n means topk > (n - 1) / n, so every row's k equals its number of kept entries.
    if topk == 1.0 or k_max >= n or k_cap >= n:
        return torch.softmax(scores if mask is None else scores.masked_fill(~mask, -math.inf), dim=-1)

    # Select the support without autograd and add a 0 / -inf bias: the backward is
    # then one dense softmax backward instead of a chain of masks, gathers and
    # scatters. With per-row sizes, the top-k_max are sorted and ranks below a
    # row's k form its support; since k_row <= n_kept they are all kept keys, so no
    # row is all -inf. Ties cannot enlarge the support: it is exactly the selected
    # indices.
    with torch.no_grad():
        if mask is None or (not is_compiling() and bool(mask.all())):
            ranked = scores
        else:
            ranked = scores.masked_fill(~mask, -math.inf)
        index = ranked.topk(k_max, dim=-1, sorted=k_row is not None).indices
        if k_row is None:
            in_support = torch.zeros((), dtype=scores.dtype, device=scores.device).expand(index.shape)
        else:
            ranks = torch.arange(k_max, device=scores.device)
            in_support = torch.where(ranks < k_row.unsqueeze(-1), 0.0, -math.inf).to(scores.dtype).expand(index.shape)
        bias = torch.full_like(scores, -math.inf).scatter_(-1, index, in_support)
    return torch.softmax(scores + bias, dim=-1)


def combine_experts(router_weights: Tensor, expert_outputs: Tensor) -> Tensor:
    r"""Router-weighted sum of expert outputs, :math:`y_b = \sum_e w_{be} \, x_{be}`.

    Shapes:
        - router_weights: ``(B, E)``
        - expert_outputs: ``(B, E, A)``
        - output: ``(B, A)``
    """
    if router_weights.shape != expert_outputs.shape[:2]:
        raise ValueError(
            "router_weights must be (B, E) matching expert_outputs (B, E, A)="
            f"{tuple(expert_outputs.shape)}, got {tuple(router_weights.shape)}"
        )
    return torch.einsum("be,bea->ba", router_weights.to(expert_outputs.dtype), expert_outputs)
