"""The encoder contracts of :class:`~crossmoe.policy.CrossAttentionMoEPolicy`, and generic encoders.

The two contracts are stated once, here, as protocols:

- a :class:`VisualEncoder` maps an observation dict to
  ``(tokens (B, N, D), mask (B, N) bool or None)``;
- a :class:`LogicEncoder` maps it to a :class:`LogicOutput`
  ``(tokens, scores, applicable, index)``. A plain tuple ``(tokens, scores)``,
  ``(tokens, scores, applicable)`` or ``(tokens, scores, applicable, index)``
  is accepted too: the policy wraps it with ``LogicOutput(*result)``.

Each encoder reads its own keys. An encoder may also have a
``prepare(obs) -> obs`` method: the policy calls it on the raw observation
dict (numpy arrays or tensors), outside ``torch.compile``, before it turns the
arrays into tensors on its device (:func:`prepare_observation`). Work that is
not tensor maths (the NetHack atoms are computed with NumPy) belongs there,
so that ``forward`` stays compilable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from crossmoe.functional import is_compiling
from crossmoe.hypergraph import Hypergraph

__all__ = [
    "AtomFeatures",
    "BoxEncoder",
    "HypergraphLogicEncoder",
    "LearnedQueries",
    "LogicEncoder",
    "LogicOutput",
    "VisualEncoder",
    "batch_size",
    "obs_tensor",
    "prepare_observation",
    "unique_rows",
]


class LogicOutput(NamedTuple):
    """What a logic encoder returns to :class:`~crossmoe.CrossAttentionMoEPolicy`.

    A plain tuple ``(tokens, scores)`` or ``(tokens, scores, applicable)`` works
    too; the ``index`` field lets an encoder return each distinct token set once.

    Shapes:
        - tokens: ``(B, O, D)`` operator tokens, or ``(U, O, D)`` distinct rows when ``index`` is set
        - scores: ``(B, O)`` operator scores, or None
        - applicable: ``(B, O)`` bool applicability, or None
        - index: ``(B,)`` long, sample ``b`` uses ``tokens[index[b]]``; None when ``tokens`` is per sample
    """

    tokens: Tensor
    scores: Tensor | None = None
    applicable: Tensor | None = None
    index: Tensor | None = None

    def per_sample_tokens(self) -> Tensor:
        """The ``(B, O, D)`` tokens, gathered through ``index`` when it is set."""
        # index_select rather than tokens[index]: its backward (index_add) is far faster on the CPU.
        return self.tokens if self.index is None else self.tokens.index_select(0, self.index)


@runtime_checkable
class VisualEncoder(Protocol):
    """Maps an observation dict to ``(tokens (B, N, D), mask (B, N) bool or None)``; True in the mask = keep."""

    def __call__(self, obs: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]: ...


@runtime_checkable
class LogicEncoder(Protocol):
    """Maps an observation dict to a :class:`LogicOutput` (or a plain tuple of its leading fields)."""

    def __call__(self, obs: Mapping[str, Any]) -> LogicOutput: ...


def prepare_observation(
    obs: Mapping[str, Any] | Tensor | np.ndarray, encoders: Iterable[nn.Module], device: torch.device | str | None
) -> dict[str, Any]:
    """Make an observation ready for the encoders' ``forward``.

    A bare array or tensor becomes ``{"obs": obs}``. Each encoder's optional
    ``prepare(obs) -> obs`` hook runs on the raw dict, in order; then every
    numpy array (and numpy scalar) becomes a tensor on ``device`` (without a
    copy where it can), and tensors move to ``device``. Other values pass
    through. Policies call this outside the compiled region.
    """
    obs = dict(obs) if isinstance(obs, Mapping) else {"obs": obs}
    for encoder in encoders:
        hook = getattr(encoder, "prepare", None)
        if callable(hook):
            obs = hook(obs)
    prepared = {}
    for key, value in obs.items():
        if isinstance(value, (np.ndarray, np.generic)):
            value = torch.as_tensor(value)
        prepared[key] = value.to(device) if isinstance(value, Tensor) else value
    return prepared


def obs_tensor(
    obs: Mapping[str, Any],
    key: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> Tensor:
    """Fetch ``obs[key]`` as a tensor on ``device``, checking its shape.

    Numpy arrays are wrapped without a copy when they are already on the CPU
    in the right dtype.

    Args:
        obs: The observation dict.
        key: The entry to read.
        device: Target device; ``None`` keeps the tensor where it is.
        dtype: Target dtype; ``None`` keeps it.
        shape: Expected shape; ``None`` entries match any size (use it for the batch).
    """
    if not isinstance(obs, Mapping):
        raise ValueError(f"obs must be a dict of arrays or tensors, got {type(obs).__name__}")
    if key not in obs:
        raise ValueError(f"obs is missing key {key!r}; got keys {sorted(obs)}")
    value = obs[key]
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    if shape is not None and (
        tensor.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape, strict=True))
    ):
        expected = "(" + ", ".join("B" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"obs[{key!r}] must have shape {expected}, got {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=dtype)


def batch_size(obs: Mapping[str, Any]) -> int:
    """Leading dimension of the first entry of ``obs``."""
    if not isinstance(obs, Mapping) or not obs:
        raise ValueError(f"obs must be a non-empty dict of batched arrays or tensors, got {obs!r:.80}")
    first = next(iter(obs.values()))
    if np.ndim(first) == 0:
        raise ValueError(f"obs entries must be batched (B, ...) arrays, got a scalar for key {next(iter(obs))!r}")
    return int(first.shape[0])


class BoxEncoder(nn.Module):
    r"""Tokens for a flat ``Box`` observation: one token per feature.

    Feature :math:`i` of value :math:`x_i` becomes the token
    :math:`x_i w_i + b_i` with learned per-feature vectors :math:`w_i, b_i`
    (the feature tokenizer of `Gorishniy et al., 2021
    <https://arxiv.org/abs/2106.11959>`_), so operator queries can attend to
    individual features.

    Args:
        obs_dim: Number of features ``F``.
        dim: Token width ``D``.
        key: Observation key to read; a bare array passed to the policy is
            stored under ``"obs"``.

    Shapes:
        - obs[key]: ``(B, F)`` (extra trailing dims are flattened)
        - output: ``(tokens (B, F, D), None)``
    """

    def __init__(self, obs_dim: int, dim: int, key: str = "obs") -> None:
        super().__init__()
        if obs_dim < 1 or dim < 1:
            raise ValueError(f"obs_dim and dim must be positive integers, got obs_dim={obs_dim}, dim={dim}")
        self.obs_dim, self.dim, self.key = obs_dim, dim, key
        self.weight = nn.Parameter(torch.randn(obs_dim, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.randn(obs_dim, dim) / math.sqrt(dim))

    def forward(self, obs: Mapping[str, Any]) -> tuple[Tensor, None]:
        x = obs_tensor(obs, self.key, device=self.weight.device, dtype=self.weight.dtype)
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.obs_dim:
            raise ValueError(f"obs[{self.key!r}] must have {self.obs_dim} features, got shape {tuple(x.shape)}")
        return x.unsqueeze(-1) * self.weight + self.bias, None  # (B, F, D)


class LearnedQueries(nn.Module):
    """A logic encoder without symbols: ``num_queries`` learned query tokens, the same for every sample.

    Use it when there is no knowledge graph; the policy then reads the visual
    tokens through learned queries, as in a Perceiver.

    Shapes:
        - output: ``(queries (B, Q, D), None)``
    """

    def __init__(self, num_queries: int, dim: int) -> None:
        super().__init__()
        if num_queries < 1 or dim < 1:
            raise ValueError(f"num_queries and dim must be positive, got num_queries={num_queries}, dim={dim}")
        self.dim = dim
        self.queries = nn.Parameter(torch.randn(num_queries, dim) / math.sqrt(dim))

    def forward(self, obs: Mapping[str, Any]) -> tuple[Tensor, None]:
        return self.queries.expand(batch_size(obs), -1, -1), None


class HypergraphLogicEncoder(nn.Module):
    """Logic stream: condition activations from the observation, read by a :class:`~crossmoe.graph.HypergraphEncoder`.

    The activations come from ``obs[key]`` when present (a training loop can
    store them with the rollout), otherwise from ``atoms(obs)``.

    Args:
        hypergraph: The knowledge graph.
        dim: Operator token width ``D``.
        atoms: Function from the observation dict to ``(B, C)`` activations
            (numpy or torch), in the order of ``hypergraph.conditions``.
        key: Observation key holding precomputed activations.
        deduplicate: Run the graph encoder once per distinct activation row
            and return those rows with an ``index`` (see :class:`LogicOutput`).
            The tokens depend on the activations only, and a batch of game
            states repeats few distinct atom sets (tens to a few hundred per
            thousand), so this is exact and several times cheaper; the
            cross-attention fusion then also projects its queries once per
            distinct row.
            Under ``torch.compile`` the encoder runs per sample instead
            (``torch.unique`` has a data-dependent size).
        **encoder_kwargs: Passed to :class:`~crossmoe.graph.HypergraphEncoder`.

    Shapes:
        - output: :class:`LogicOutput` with ``tokens (B, O, D)`` (``(U, O, D)`` and
          ``index (B,)`` when deduplicating), ``scores (B, O)`` and ``applicable (B, O)`` bool
    """

    def __init__(
        self,
        hypergraph: Hypergraph,
        dim: int,
        atoms: Callable[[Mapping[str, Any]], Any] | None = None,
        key: str = "atoms",
        deduplicate: bool = True,
        **encoder_kwargs: Any,
    ) -> None:
        from crossmoe.graph import HypergraphEncoder  # needs torch-geometric; import crossmoe does not

        super().__init__()
        self.dim, self.key, self.atoms, self.deduplicate = dim, key, atoms, deduplicate
        self.graph_encoder = HypergraphEncoder(hypergraph, dim, **encoder_kwargs)
        self.register_buffer("operator_to_expert", hypergraph.operator_to_expert, persistent=False)

    @property
    def hypergraph(self) -> Hypergraph:
        return self.graph_encoder.hypergraph

    def activations(self, obs: Mapping[str, Any]) -> Tensor:
        """The ``(B, C)`` condition activations of ``obs``."""
        return _activations(obs, self.key, self.atoms, self.hypergraph.num_conditions, self.operator_to_expert.device)

    def applicable_operators(self, obs: Mapping[str, Any]) -> Tensor:
        """The ``(B, O)`` bool applicability of a prepared observation's operators."""
        return self.hypergraph.applicable(self.activations(obs))

    def prepare(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Store ``atoms(obs)`` under ``key`` when the observation lacks it (the policy calls this eagerly)."""
        if self.key not in obs and self.atoms is not None:
            obs[self.key] = self.atoms(obs)
        return obs

    def forward(self, obs: Mapping[str, Any]) -> LogicOutput:
        activations = self.activations(obs)
        applicable = self.hypergraph.applicable(activations)
        # torch.unique has a data-dependent size, so the compiled graph runs per sample (the same result).
        if not self.deduplicate or is_compiling():
            return LogicOutput(*self.graph_encoder(activations), applicable)
        distinct, index = unique_rows(activations)
        tokens, scores = self.graph_encoder(distinct)
        return LogicOutput(tokens, scores.index_select(0, index), applicable, index)


def _activations(obs: Mapping[str, Any], key: str, atoms: Callable | None, num_conditions: int, device) -> Tensor:
    """``obs[key]``, else ``atoms(obs)``, as ``(B, C)`` float32 on ``device``, checked."""
    if isinstance(obs, Mapping) and key in obs:
        values = obs_tensor(obs, key, device=device, dtype=torch.float32)
    elif atoms is not None:
        values = torch.as_tensor(atoms(obs), dtype=torch.float32, device=device)
    else:
        raise ValueError(f"obs is missing key {key!r} and no atoms function was given to compute it")
    if values.dim() != 2 or values.shape[1] != num_conditions:
        raise ValueError(
            f"condition activations must be (B, C) with C={num_conditions}, got shape {tuple(values.shape)}"
        )
    return values


class AtomFeatures(nn.Module):
    """Knowledge as plain features: the condition activations as a flat input, and the operators they make applicable.

    The input of the flat-features control (``make_baseline_policy(knowledge=True)``
    in :mod:`crossmoe.nethack`): the same atoms as the logic stream of
    :class:`HypergraphLogicEncoder`, with no graph encoder, for a plain
    :class:`~crossmoe.policy.ActorCritic` to read next to its visual tokens,
    and the applicability that a knowledge prior
    (:class:`~crossmoe.knowledge.ApplicabilityPrior`) votes with. The
    activations come from ``obs[key]`` when present, otherwise from
    ``atoms(obs)`` (its :meth:`prepare` stores them, outside ``torch.compile``).

    Args:
        hypergraph: The knowledge graph: its conditions name the atoms, its
            operators' preconditions give the applicability.
        atoms: Function from the observation dict to ``(B, C)`` activations.
        key: Observation key holding precomputed activations.

    Shapes:
        - output: ``(features (B, C), applicable (B, O) bool)``
    """

    def __init__(
        self, hypergraph: Hypergraph, atoms: Callable[[Mapping[str, Any]], Any] | None = None, key: str = "atoms"
    ) -> None:
        super().__init__()
        if not isinstance(hypergraph, Hypergraph):
            raise TypeError(f"hypergraph must be a crossmoe Hypergraph, got {type(hypergraph).__name__}")
        self.hypergraph, self.atoms, self.key = hypergraph, atoms, key
        self.num_features = hypergraph.num_conditions

    def prepare(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Store ``atoms(obs)`` under ``key`` when the observation lacks it."""
        if self.key not in obs and self.atoms is not None:
            obs[self.key] = self.atoms(obs)
        return obs

    def forward(self, obs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        activations = _activations(obs, self.key, self.atoms, self.num_features, None)  # where prepare put them
        return activations, self.hypergraph.applicable(activations)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, num_operators={self.hypergraph.num_operators}, key={self.key!r}"


def unique_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(distinct rows (U, C), index (B,))`` of a ``(B, C)`` tensor, with ``distinct[index] == x``.

    Rows of 0/1 values (condition activations) are packed, 62 columns at a
    time, into int64 keys; the keys of a row are folded into one by
    deduplicating them a chunk at a time, so the rows are deduplicated with
    1-D ``torch.unique`` calls, several times faster than
    ``torch.unique(dim=0)``, which compares rows one pair at a time. Other rows
    take ``torch.unique(dim=0)``. The order of the distinct rows is unspecified.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (B, C), got shape {tuple(x.shape)}")
    if not bool(((x == 0) | (x == 1)).all()):
        return torch.unique(x, dim=0, return_inverse=True)
    rows, columns = x.shape
    index = torch.zeros(rows, dtype=torch.long, device=x.device)
    for start in range(0, columns, 62):
        chunk = x[:, start : start + 62].long()
        keys = (chunk << torch.arange(chunk.shape[1], device=x.device)).sum(dim=1)
        # (index so far, this chunk's key) -> a new index below B, so the combined key never overflows.
        _, chunk_index = torch.unique(keys, return_inverse=True)
        _, index = torch.unique(index * rows + chunk_index, return_inverse=True)
    first = torch.full((int(index.max()) + 1 if rows else 0,), rows, dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, index, torch.arange(rows, device=x.device), reduce="amin")
    return x[first], index
