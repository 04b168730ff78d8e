"""Auxiliary losses for sparse Mixture-of-Experts policies.

Every loss is a pure function from tensors to a scalar tensor. Leading
dimensions before the expert axis are treated as batch dimensions and
averaged. :func:`~crossmoe.aux_loss` computes them all from a bundle of model outputs
and returns ``(total, parts)``: the weighted sum to optimise and the
unweighted, detached values to log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DISTILLATION_KINDS",
    "AuxLossWeights",
    "aux_loss",
    "distillation_loss",
    "expert_diversity_loss",
    "expert_overlap_penalty",
    "hypergraph_alignment_loss",
    "load_balance_loss",
    "router_z_loss",
    "routing_entropy",
    "semantic_orthogonality_loss",
    "temporal_consistency_loss",
]


def _check_rank(name: str, tensor: Tensor, min_dim: int, layout: str) -> None:
    if tensor.dim() < min_dim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(tensor.shape)}")


def load_balance_loss(probs: Tensor) -> Tensor:
    r"""Switch-Transformer load-balancing loss (`Fedus et al., 2021 <https://arxiv.org/abs/2101.03961>`_).

    .. math::
        \mathcal{L}_\text{bal} = E \sum_{i=1}^{E} f_i \, P_i, \qquad
        f_i = \frac{1}{B} \sum_b [\arg\max_e p_{be} = i], \quad P_i = \frac{1}{B} \sum_b p_{bi}

    It is 1 when both the top-1 assignments and the mean probabilities are
    uniform, and ``E`` when every sample goes to one expert. Gradients flow
    through :math:`P` only. Pass dense probabilities (``softmax(logits)``) even
    when routing with sparsemax: sparsemax gives no gradient to dead experts.

    Shapes:
        - probs: ``(..., E)``
        - output: scalar
    """
    _check_rank("probs", probs, 2, "(..., E) with a batch dimension")
    probs = probs.reshape(-1, probs.shape[-1])
    num_experts = probs.shape[-1]
    fraction = F.one_hot(probs.argmax(dim=-1), num_experts).to(probs.dtype).mean(dim=0)
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    r"""Router z-loss (`Zoph et al., 2022 <https://arxiv.org/abs/2202.08906>`_).

    .. math::
        \mathcal{L}_z = \frac{1}{B} \sum_b \Big(\log \sum_e e^{z_{be}}\Big)^2

    Keeps router logits small, which keeps the routing numerically stable.

    Shapes:
        - logits: ``(..., E)``
        - output: scalar
    """
    _check_rank("logits", logits, 1, "(..., E)")
    return torch.logsumexp(logits, dim=-1).square().mean()


def expert_diversity_loss(expert_logits: Tensor, weights: Tensor | None = None) -> Tensor:
    r"""Mean pairwise cosine similarity of the experts' action distributions.

    .. math::
        \mathcal{L}_\text{div} = \frac{\sum_b \sum_{i<j} c_{bij} \cos(\pi_{bi}, \pi_{bj})}{\sum_b \sum_{i<j} c_{bij}},
        \qquad \pi_{be} = \operatorname{softmax}(\ell_{be})

    with :math:`c_{bij} = 1` unweighted, or :math:`c_{bij} = w_{bi} w_{bj}`
    given routing ``weights`` (detached). Weighted, a pair only counts in the
    states where both experts are routed to: an expert the router does not
    use in a state is not pushed away from the others there. Unweighted, the
    loss pushes every expert apart in every state, and a rarely used expert
    escapes it by putting all its mass on one action whatever the state.

    It lies in ``(0, 1]``: 1 when all experts propose the same distribution, and
    it approaches 0 as their distributions move to disjoint actions. Lower
    means more diverse.

    Shapes:
        - expert_logits: ``(..., E, A)`` with ``E >= 2``
        - weights: ``(..., E)`` or None
        - output: scalar
    """
    _check_rank("expert_logits", expert_logits, 2, "(..., E, A)")
    num_experts = expert_logits.shape[-2]
    if num_experts < 2:
        raise ValueError(
            f"expert_logits must have at least 2 experts on dim -2, got shape {tuple(expert_logits.shape)}"
        )
    unit = F.normalize(torch.softmax(expert_logits, dim=-1), dim=-1)
    gram = unit @ unit.transpose(-1, -2)  # (..., E, E)
    if weights is None:
        off_diagonal = gram.sum(dim=(-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
        return (off_diagonal / (num_experts * (num_experts - 1))).mean()
    if weights.shape != expert_logits.shape[:-1]:
        raise ValueError(
            f"weights must be (..., E) = {tuple(expert_logits.shape[:-1])}, got shape {tuple(weights.shape)}"
        )
    weights = weights.detach().to(gram.dtype)
    pair = weights.unsqueeze(-1) * weights.unsqueeze(-2)
    pair = pair * (1.0 - torch.eye(num_experts, dtype=gram.dtype, device=gram.device))
    return (pair * gram).sum() / pair.sum().clamp_min(torch.finfo(gram.dtype).tiny)


def semantic_orthogonality_loss(expert_features: Tensor) -> Tensor:
    r"""Squared distance of the experts' normalised feature Gram matrix from the identity.

    .. math::
        \mathcal{L}_\perp = \frac{1}{B}\sum_b \lVert \hat E_b \hat E_b^\top - I \rVert_F^2,
        \qquad \hat E_{be} = \frac{e_{be}}{\lVert e_{be} \rVert}

    It is 0 iff the experts' vectors are mutually orthogonal (they are unit
    length by construction), and reaches :math:`E(E-1)` when all are parallel.

    Shapes:
        - expert_features: ``(..., E, F)``; ``(E, F)`` (for example expert
          weight vectors) counts as a batch of one.
        - output: scalar
    """
    _check_rank("expert_features", expert_features, 2, "(..., E, F)")
    unit = F.normalize(expert_features, dim=-1)
    gram = unit @ unit.transpose(-1, -2)
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return (gram - identity).square().sum(dim=(-1, -2)).mean()


def hypergraph_alignment_loss(
    router_weights: Tensor,
    operator_scores: Tensor,
    operator_to_expert: Tensor,
    applicable: Tensor | None = None,
    eps: float = 1e-6,
    *,
    target: str = "balanced",
    smoothing: float = 0.1,
) -> Tensor:
    r"""KL divergence from the symbolic expert target to the router weights.

    Two targets :math:`t_b` over the experts:

    - ``"balanced"`` (the default): a softmax over the experts that have an
      applicable operator, of the *mean* score of those operators,
      :math:`t_{be} \propto \exp\big(\tfrac{1}{|A_{be}|}\sum_{o \in A_{be}} s_{bo}\big)`
      with :math:`A_{be}` the applicable operators of expert :math:`e`. An
      expert's share does not grow with how many of its operators apply, so
      an expert with many broad operators (exploration) cannot crowd out one
      with a few specific ones (combat, survival).
    - ``"sum"``: the softmax mass of the applicable operators that belong to
      each expert,
      :math:`t_{be} = \sum_{o \,:\, \text{exp}(o) = e} \operatorname{softmax}_{o \in A_b}(s_{bo})`.
      On NetHack it follows how many operators each expert owns, and the
      router collapses onto that.

    Then :math:`t \leftarrow (1 - \lambda) t + \lambda / E` with
    :math:`\lambda` = ``smoothing``, so no expert's target is 0, and

    .. math::
        \mathcal{L}_\text{align} = \frac{1}{|B'|}\sum_{b \in B'} \sum_e t_{be} \log \frac{t_{be}}{\tilde w_{be}},
        \qquad \tilde w = \frac{w + \epsilon}{1 + E\epsilon}

    The target is detached: the symbolic side teaches the router, not the
    reverse. Pass dense probabilities (:func:`aux_loss` uses
    ``softmax(router_logits)``): sparsemax weights are exactly 0 for unused
    experts, which then get no gradient, and :math:`\tilde w` only keeps
    ``log(0)`` finite. Samples with no applicable operator
    (:math:`b \notin B'`) have no target and are left out; with none left the
    loss is 0.

    Args:
        router_weights: ``(B, E)`` routing probabilities.
        operator_scores: ``(B, O)`` operator scores (logits).
        operator_to_expert: ``(O,)`` long, the expert of each operator.
        applicable: ``(B, O)`` bool, True where all of an operator's
            preconditions hold; ``None`` means every operator applies.
        eps: Smoothing of the router weights.
        target: ``"balanced"`` or ``"sum"``, see above.
        smoothing: Weight :math:`\lambda` of the uniform mixture in the target, in ``[0, 1]``.

    Returns:
        Scalar tensor, ``>= 0``.
    """
    if target not in ("balanced", "sum"):
        raise ValueError(f"target must be 'balanced' or 'sum', got {target!r}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must lie in [0, 1], got {smoothing!r}")
    if router_weights.dim() != 2:
        raise ValueError(f"router_weights must be (B, E), got {tuple(router_weights.shape)}")
    batch, num_experts = router_weights.shape
    if operator_scores.dim() != 2 or operator_scores.shape[0] != batch:
        raise ValueError(f"operator_scores must be (B, O) with B={batch}, got {tuple(operator_scores.shape)}")
    num_operators = operator_scores.shape[1]
    if operator_to_expert.shape != (num_operators,) or operator_to_expert.dtype != torch.long:
        raise ValueError(
            f"operator_to_expert must be a LongTensor of shape (O,)=({num_operators},), "
            f"got {operator_to_expert.dtype} {tuple(operator_to_expert.shape)}"
        )
    if not bool(((operator_to_expert >= 0) & (operator_to_expert < num_experts)).all()):
        raise ValueError(f"operator_to_expert values must lie in [0, {num_experts}), got {operator_to_expert.tolist()}")
    if applicable is None:
        applicable = torch.ones_like(operator_scores, dtype=torch.bool)
    if applicable.shape != operator_scores.shape or applicable.dtype != torch.bool:
        raise ValueError(
            f"applicable must be a bool tensor shaped like operator_scores {tuple(operator_scores.shape)}, "
            f"got {applicable.dtype} {tuple(applicable.shape)}"
        )

    has_target = applicable.any(dim=-1)
    if not bool(has_target.any()):
        return router_weights.sum() * 0.0
    with torch.no_grad():
        dtype = router_weights.dtype
        app = applicable[has_target]
        scores = operator_scores[has_target].to(dtype)
        membership = F.one_hot(operator_to_expert.to(router_weights.device), num_experts).to(dtype)  # (O, E)
        if target == "sum":
            operator_probs = torch.softmax(scores.masked_fill(~app, float("-inf")), dim=-1)  # (B', O)
            goal = operator_probs @ membership  # (B', E)
        else:
            count = app.to(dtype) @ membership  # (B', E) applicable operators per expert
            mean = (scores.masked_fill(~app, 0.0) @ membership) / count.clamp_min(1.0)
            goal = torch.softmax(mean.masked_fill(count == 0, float("-inf")), dim=-1)
        goal = (1.0 - smoothing) * goal + smoothing / num_experts
    smoothed = (router_weights[has_target] + eps) / (1.0 + num_experts * eps)
    kl = (torch.xlogy(goal, goal) - goal * smoothed.log()).sum(dim=-1)
    return kl.clamp_min(0.0).mean()


def temporal_consistency_loss(weights: Tensor, dones: Tensor) -> Tensor:
    r"""Mean squared change of the routing weights between consecutive steps of an episode.

    .. math::
        \mathcal{L}_\text{temp} = \frac{1}{|P|} \sum_{(t, b) \in P} \lVert w_{t,b} - w_{t-1,b} \rVert_2^2,
        \qquad P = \{(t, b) : t \ge 1,\ \neg\,\text{done}_{t,b}\}

    ``dones[t] = True`` means step ``t`` starts a new episode (CleanRL's stored
    ``dones``), so the pair ``(t-1, t)`` crosses an episode boundary and is
    excluded. With no pair left the loss is 0.

    Shapes:
        - weights: ``(T, B, E)`` in time order
        - dones: ``(T, B)`` bool or 0/1
        - output: scalar
    """
    if weights.dim() != 3:
        raise ValueError(f"weights must be (T, B, E), got {tuple(weights.shape)}")
    if tuple(dones.shape) != tuple(weights.shape[:2]):
        raise ValueError(f"dones must be (T, B)={tuple(weights.shape[:2])}, got {tuple(dones.shape)}")
    same_episode = ~dones[1:].to(torch.bool)  # (T-1, B)
    step_change = (weights[1:] - weights[:-1]).square().sum(dim=-1)  # (T-1, B)
    pairs = same_episode.sum()
    return (step_change * same_episode).sum() / pairs.clamp_min(1).to(weights.dtype)


def expert_overlap_penalty(weights: Tensor) -> Tensor:
    r"""Mean pairwise product of routing weights, :math:`\operatorname{mean}_b \sum_{i<j} w_{bi} w_{bj}`.

    Computed as :math:`\tfrac12\big((\sum_i w_i)^2 - \sum_i w_i^2\big)`. It is 0
    for one-hot weights and largest, :math:`\tfrac12(1 - 1/E)`, for uniform
    weights on the simplex.

    Shapes:
        - weights: ``(..., E)``
        - output: scalar
    """
    _check_rank("weights", weights, 1, "(..., E)")
    return (0.5 * (weights.sum(dim=-1).square() - weights.square().sum(dim=-1))).mean()


def routing_entropy(weights: Tensor) -> Tensor:
    r"""Mean Shannon entropy of the routing weights in nats, :math:`-\operatorname{mean}_b \sum_e w_{be} \log w_{be}`.

    0 for one-hot routing, :math:`\log E` for uniform routing; zero weights
    (sparsemax, entmax) contribute 0 and get a finite gradient (``xlogy`` would
    give 0/0 there, and entmax's backward turns that NaN into NaN everywhere).

    Shapes:
        - weights: ``(..., E)``
        - output: scalar
    """
    _check_rank("weights", weights, 1, "(..., E)")
    safe = torch.where(weights > 0, weights, torch.ones_like(weights))
    return -(weights * safe.log()).sum(dim=-1).mean()


DISTILLATION_KINDS = ("cross_entropy", "kl", "top_set")
"""What :func:`distillation_loss` can measure."""


def distillation_loss(
    student_logits: Tensor, teacher_probs: Tensor, mask: Tensor | None = None, *, kind: str = "cross_entropy"
) -> Tensor:
    r"""The kickstarting loss: how far the student's policy is from a teacher's, on the student's own states.

    `Schmitt et al., 2018 <https://arxiv.org/abs/1803.03835>`_ add it to the
    RL loss with a weight that decays over training (see
    :class:`~crossmoe.schedule.DistillationSchedule`). With
    :math:`\pi = \operatorname{softmax}(\text{student\_logits})` and the
    teacher's :math:`p`, per state:

    .. math::
        \text{cross\_entropy} = -\sum_a p(a) \log \pi(a), \qquad
        \text{kl} = \sum_a p(a) \log \frac{p(a)}{\pi(a)}

    Both have the same gradient; ``kl`` is 0 where the student agrees with the
    teacher, ``cross_entropy`` is then the teacher's entropy. Actions the
    teacher gives probability 0 add nothing (even where the student's logit
    is ``-inf``).

    ``top_set`` asks less: that the student put the teacher's mass on the
    teacher's top actions :math:`S = \{a : p(a) = \max_b p(b)\}`, however it
    splits that mass among them. With :math:`q = \sum_{a \in S} p(a)` and
    :math:`P = \sum_{a \in S} \pi(a)`, it is the KL between the two
    distributions seen through "one of :math:`S`, or not":

    .. math::
        \text{top\_set} = q \log \frac{q}{P} + (1 - q) \log \frac{1 - q}{1 - P}

    A rule agent is uniform over the actions of the operator it chooses
    (e.g. the eight directions of "explore"), so ``kl`` holds the student to
    that uniform split, where ``top_set`` holds it only to the operator and
    leaves the RL loss to choose among its actions: the rules say what to
    do, learning says how. For a one-hot teacher it equals ``cross_entropy``.

    The teacher's probabilities are a target: no gradient reaches them.
    Computed in float32.

    Args:
        student_logits: The student's action logits.
        teacher_probs: The teacher's action probabilities (rows summing to 1).
        mask: Weight of each state (e.g. 0 for the reset steps of a rollout),
            or None for all 1; the result is the weighted mean.
        kind: ``"cross_entropy"``, ``"kl"`` or ``"top_set"``.

    Shapes:
        - student_logits: ``(..., A)``
        - teacher_probs: ``(..., A)``
        - mask: ``(...)``
        - output: scalar

    Example:
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> teacher = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
        >>> distillation_loss(logits, teacher, kind="kl").backward()  # pulls logits towards the teacher
    """
    if kind not in DISTILLATION_KINDS:
        raise ValueError(f"kind must be one of {DISTILLATION_KINDS}, got {kind!r}")
    _check_rank("student_logits", student_logits, 1, "(..., A)")
    if teacher_probs.shape != student_logits.shape:
        raise ValueError(
            f"teacher_probs must have the shape of student_logits {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_probs.shape)}"
        )
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"mask must have the leading shape of student_logits {tuple(student_logits.shape[:-1])}, "
            f"got {tuple(mask.shape)}"
        )
    target = teacher_probs.detach().float()
    log_student = torch.log_softmax(student_logits.float(), dim=-1)
    if kind == "top_set":
        loss = _top_set_kl(log_student, target)
    else:
        support = target > 0
        loss = -(target * log_student.masked_fill(~support, 0.0)).sum(dim=-1)
        if kind == "kl":
            loss = loss + torch.special.xlogy(target, target).sum(dim=-1)
    if mask is None:
        return loss.mean()
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def _top_set_kl(log_student: Tensor, target: Tensor) -> Tensor:
    """The KL of :func:`distillation_loss`'s ``top_set`` kind, per state, in log space."""
    top = target >= target.amax(dim=-1, keepdim=True) * (1 - 1e-5)  # ties within float32 rounding
    q, rest = (target * top).sum(dim=-1), (target * ~top).sum(dim=-1)  # rest is 0 where S is every action
    # A finite fill, not -inf: an empty side then has a finite log-mass (times a weight of 0) and no NaN gradient.
    fill = torch.finfo(log_student.dtype).min
    log_in = torch.logsumexp(log_student.masked_fill(~top, fill), dim=-1)
    log_out = torch.logsumexp(log_student.masked_fill(top, fill), dim=-1)
    return torch.special.xlogy(q, q) - q * log_in + torch.special.xlogy(rest, rest) - rest * log_out


@dataclass(frozen=True)
class AuxLossWeights:
    """Coefficients of the auxiliary losses in :func:`aux_loss`; 0 disables a term.

    The field names are the keys of the ``parts`` dict that :func:`aux_loss` returns.
    """

    load_balance: float = 0.01
    """:func:`~crossmoe.losses.load_balance_loss` on ``softmax(router_logits)``."""
    router_z: float = 1e-3
    """:func:`~crossmoe.losses.router_z_loss` on ``router_logits``."""
    diversity: float = 0.01
    """:func:`~crossmoe.losses.expert_diversity_loss` on ``expert_logits``."""
    orthogonality: float = 0.01
    """:func:`~crossmoe.losses.semantic_orthogonality_loss` on ``expert_features``."""
    alignment: float = 0.05
    """:func:`~crossmoe.losses.hypergraph_alignment_loss` on ``router_weights`` and ``operator_scores``."""
    temporal: float = 0.01
    """:func:`~crossmoe.losses.temporal_consistency_loss` on ``(T, B, E)`` ``router_weights`` with ``dones``."""
    overlap: float = 0.0
    """:func:`~crossmoe.losses.expert_overlap_penalty` on ``router_weights``."""
    entropy: float = 0.0
    """:func:`~crossmoe.losses.routing_entropy` on ``router_weights``; positive values favour sharper routing."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"AuxLossWeights.{field.name} must be a number, got {value!r}")

    def scaled(self, multipliers: Mapping[str, float]) -> AuxLossWeights:
        """Return a copy with each named coefficient multiplied, for example by a schedule phase."""
        names = {field.name for field in dataclasses.fields(self)}
        unknown = set(multipliers) - names
        if unknown:
            raise ValueError(f"multipliers must name aux losses from {sorted(names)}, got unknown {sorted(unknown)}")
        return dataclasses.replace(self, **{name: getattr(self, name) * float(m) for name, m in multipliers.items()})


def _get(outputs: Any, name: str) -> Tensor | None:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _pair_weights(router_weights: Tensor | None, expert_logits: Tensor, weighted: bool) -> Tensor | None:
    """``router_weights`` with the leading dims of ``expert_logits`` (one may be flat, the other ``(T, B)``)."""
    if not weighted or router_weights is None:
        return None
    if router_weights.numel() != expert_logits[..., 0].numel():
        raise ValueError(
            f"router_weights {tuple(router_weights.shape)} must hold one weight per expert of expert_logits "
            f"{tuple(expert_logits.shape)} for the weighted diversity term"
        )
    return router_weights.reshape(expert_logits.shape[:-1])


def aux_loss(
    outputs: Any,
    weights: AuxLossWeights,
    *,
    operator_to_expert: Tensor | None = None,
    dones: Tensor | None = None,
    alignment_target: str = "balanced",
    alignment_smoothing: float = 0.1,
    weighted_diversity: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of every auxiliary loss whose inputs ``outputs`` provides.

    ``outputs`` is a mapping or any object with attributes (for example
    ``PolicyOutput``) holding some of ``router_logits (..., E)``,
    ``router_weights (..., E)``, ``expert_logits (..., E, A)``,
    ``expert_features (..., E, F)``, ``operator_scores (..., O)`` and
    ``applicable (..., O)``. If ``router_weights`` is ``(T, B, E)`` and ``dones``
    is given, the temporal term is computed along ``T``.

    The alignment term compares its target with the dense
    ``softmax(router_logits)`` when ``router_logits`` is given (sparse weights
    give unused experts no gradient), and the diversity term weights each
    pair of experts by their ``router_weights`` when given (unless
    ``weighted_diversity`` is False). ``alignment_target`` and
    ``alignment_smoothing`` are :func:`hypergraph_alignment_loss`'s ``target``
    and ``smoothing``.

    A term whose coefficient is 0 is still computed (without gradient) when its
    inputs are present, so it can be logged; a term with a non-zero coefficient
    whose inputs are missing raises ``ValueError``.

    Returns:
        ``(total, parts)``: the weighted scalar to add to the loss, and the
        unweighted, detached value of each computed term keyed by the
        :class:`AuxLossWeights` field names.
    """
    router_logits = _get(outputs, "router_logits")
    router_weights = _get(outputs, "router_weights")
    expert_logits = _get(outputs, "expert_logits")
    expert_features = _get(outputs, "expert_features")
    operator_scores = _get(outputs, "operator_scores")
    applicable = _get(outputs, "applicable")
    if operator_to_expert is None:
        operator_to_expert = _get(outputs, "operator_to_expert")

    if router_logits is not None and router_logits.dtype in (torch.float16, torch.bfloat16):
        router_logits = router_logits.float()  # logsumexp and softmax in half precision overflow
    flat_weights = None if router_weights is None else router_weights.reshape(-1, router_weights.shape[-1])
    if flat_weights is not None and operator_scores is not None:
        if operator_scores.shape[:-1] != router_weights.shape[:-1]:
            raise ValueError(
                f"operator_scores must be (..., O) with the leading dims of router_weights "
                f"{tuple(router_weights.shape[:-1])}, got {tuple(operator_scores.shape)}"
            )
    terms = {
        "load_balance": (("router_logits",), lambda: load_balance_loss(torch.softmax(router_logits, dim=-1))),
        "router_z": (("router_logits",), lambda: router_z_loss(router_logits)),
        "diversity": (
            ("expert_logits",),
            lambda: expert_diversity_loss(
                expert_logits, _pair_weights(router_weights, expert_logits, weighted_diversity)
            ),
        ),
        "orthogonality": (("expert_features",), lambda: semantic_orthogonality_loss(expert_features)),
        "alignment": (
            ("router_weights", "operator_scores", "operator_to_expert"),
            lambda: hypergraph_alignment_loss(
                flat_weights
                if router_logits is None
                else torch.softmax(router_logits, dim=-1).reshape(flat_weights.shape),
                operator_scores.reshape(flat_weights.shape[0], -1),
                operator_to_expert,
                None if applicable is None else applicable.reshape(flat_weights.shape[0], -1),
                target=alignment_target,
                smoothing=alignment_smoothing,
            ),
        ),
        "temporal": (("router_weights", "dones"), lambda: temporal_consistency_loss(router_weights, dones)),
        "overlap": (("router_weights",), lambda: expert_overlap_penalty(flat_weights)),
        "entropy": (("router_weights",), lambda: routing_entropy(flat_weights)),
    }
    available = {
        "router_logits": router_logits is not None,
        "router_weights": router_weights is not None,
        "expert_logits": expert_logits is not None,
        "expert_features": expert_features is not None,
        "operator_scores": operator_scores is not None,
        "operator_to_expert": operator_to_expert is not None,
        "dones": dones is not None and router_weights is not None and router_weights.dim() == 3,
    }

    total: Tensor | None = None
    parts: dict[str, Tensor] = {}
    for name, (needs, compute) in terms.items():
        coefficient = float(getattr(weights, name))
        missing = [need for need in needs if not available[need]]
        if missing:
            if coefficient != 0.0:
                raise ValueError(
                    f"aux_loss term {name!r} has weight {coefficient} but outputs lack {missing}"
                    + (" (temporal needs router_weights shaped (T, B, E) and dones)" if name == "temporal" else "")
                )
            continue
        if coefficient == 0.0:
            with torch.no_grad():
                parts[name] = compute()
            continue
        value = compute()
        parts[name] = value.detach()
        total = coefficient * value if total is None else total + coefficient * value
    if total is None:
        reference = next((t for t in (router_logits, router_weights, expert_logits) if t is not None), None)
        total = torch.zeros((), device=None if reference is None else reference.device)
    return total, parts
