"""The composed actor-critic: logic tokens query visual tokens, and the fused context drives a sparse MoE."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from crossmoe._checks import check_int
from crossmoe.encoders import LogicOutput, prepare_observation
from crossmoe.experts import DEFAULT_EXPERT_NAMES, SemanticExpertBank
from crossmoe.functional import combine_experts
from crossmoe.fusion import FUSIONS, make_fusion
from crossmoe.hypergraph import Hypergraph
from crossmoe.recurrent import make_core
from crossmoe.routing import SparsemaxRouter

__all__ = [
    "FUSIONS",
    "ActorCritic",
    "ActorCriticBase",
    "ActorCriticOutput",
    "CrossAttentionMoEPolicy",
    "PolicyOutput",
    "knowledge_policy",
]

Observation = Mapping[str, Any] | Tensor | np.ndarray


class PolicyOutput(NamedTuple):
    """Everything one forward pass of :class:`CrossAttentionMoEPolicy` computes.

    The field names are the ones :func:`crossmoe.losses.aux_loss` reads, so
    ``aux_loss(output, weights)`` works on it directly, except for the
    temporal term, which needs a rollout's ``(T, B, E)`` router weights and
    its ``dones``: set ``AuxLossWeights(temporal=0)`` for a single batch.

    Shapes:
        - logits: ``(B, A)``, the router-weighted sum of the expert logits
        - value: ``(B,)``
        - router_weights, router_logits: ``(B, E)``
        - expert_logits: ``(B, E, A)``
        - expert_features: ``(B, E, F)``, the experts' hidden features
        - context: ``(B, D)``
        - attention: ``(B, H, O, N)``, or None with ``fusion="concat"``
        - operator_scores: ``(B, O)``, or None if the logic encoder gives none
        - applicable: ``(B, O)`` bool, or None if the logic encoder gives none
        - operator_to_expert: ``(O,)`` long, or None without a hypergraph
        - prior: ``(B, A)``, the knowledge pathway's bias (already in ``logits``), or None without one
        - state: ``(n, S)``, the recurrent core's state after the batch's last step, or None without a core
    """

    logits: Tensor
    value: Tensor
    router_weights: Tensor
    router_logits: Tensor
    expert_logits: Tensor
    expert_features: Tensor
    context: Tensor
    attention: Tensor | None
    operator_scores: Tensor | None
    applicable: Tensor | None
    operator_to_expert: Tensor | None
    prior: Tensor | None = None
    state: Tensor | None = None


class ActorCriticBase(nn.Module):
    """What the actor-critics share: ``forward = forward_tensors(prepare(obs))``, compiling, CleanRL sampling.

    A subclass defines :meth:`encoders` (the modules whose ``prepare`` hooks
    run on the raw observation) and :meth:`forward_tensors`, whose output has
    ``logits (B, A)`` and ``value (B,)`` fields.

    **Recurrence.** A policy with a recurrent core (``policy.core``, e.g.
    :class:`~crossmoe.recurrent.LSTMCore`; ``None`` without one) takes a
    ``state`` ``(n, S)`` and ``starts`` next to the observation and returns
    the state after its last step as ``output.state``. A batch of ``B = T *
    n`` observations is read as ``T`` steps of ``n`` episodes, time-major
    (row ``t * n + j`` is step ``t`` of episode ``j``), which is how a PPO
    update replays a rollout's env columns; ``starts (B,)`` marks the first
    step of an episode, where the state is zeroed. Acting, ``T = 1``: pass
    the state from the last step. Without a state each sample is the first
    step of its episode.
    """

    _compiled_forward: Callable[..., Any] | None = None
    _compile_options: dict[str, Any] | None = None

    def encoders(self) -> tuple[nn.Module, ...]:
        """The encoders, in the order their ``prepare`` hooks run."""
        raise NotImplementedError

    def forward_tensors(self, obs: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.compiler.disable
    def prepare(self, obs: Observation) -> dict[str, Any]:
        """The observation as the encoders read it: see :func:`crossmoe.encoders.prepare_observation`."""
        return prepare_observation(obs, self.encoders(), self.device)

    @property
    def recurrent(self) -> bool:
        """Whether the policy has a recurrent core (and so takes and returns a ``state``)."""
        return getattr(self, "core", None) is not None

    def initial_state(self, batch: int) -> Tensor | None:
        """The recurrent core's state before the first step of ``batch`` episodes; None without a core."""
        return self.core.initial_state(batch, self.device) if self.recurrent else None

    def forward(self, obs: Observation, state: Tensor | None = None, starts: Any = None) -> Any:
        """The policy's outputs for a batch: numpy arrays or tensors, a dict or a bare array.

        ``state`` and ``starts`` are for a policy with a recurrent core (see the class docstring).
        """
        obs = self.prepare(obs)
        extra: tuple[Any, ...] = ()
        if state is not None or starts is not None:
            if not self.recurrent:
                raise ValueError(
                    f"state and starts are for a policy with a recurrent core, and this {type(self).__name__} "
                    "has none (core=None)"
                )
            if state is None:
                raise ValueError("starts needs the state it resets: pass state too")
            if not isinstance(state, Tensor):
                raise TypeError(
                    f"state must be a tensor (n, S), from initial_state(n) or output.state, got {type(state).__name__}"
                )
            device = self.device
            extra = (state.to(device), None if starts is None else torch.as_tensor(starts, device=device).bool())
        if (
            self._compiled_forward is None
            or (self._compile_options["inference_only"] and torch.is_grad_enabled())
            or not self.fits_compiled(obs)
        ):
            return self.forward_tensors(obs, *extra)
        return self._compiled_forward(self, obs, *extra)

    def _recur(self, x: Tensor, state: Tensor | None, starts: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``(core(x, state, starts), new state)``, or ``(x, None)`` without a core."""
        if not self.recurrent:
            return x, None
        if state is None:  # every sample is the first step of its episode
            state = self.core.initial_state(x.shape[0], x.device)
        return self.core(x, state, starts)

    def fits_compiled(self, obs: Mapping[str, Any]) -> bool:
        """Whether the compiled graph computes this prepared batch exactly (else :meth:`forward` runs eagerly)."""
        return True

    def compile(self, *args: Any, inference_only: bool = False, **kwargs: Any) -> None:
        """Compile the hot path, :meth:`forward_tensors`, with ``torch.compile(*args, **kwargs)``, in place.

        :meth:`prepare` (numpy to tensors, atoms) stays eager, so the policy
        takes the same inputs as before, in every autograd mode. Copies
        (``copy.deepcopy``, pickling) compile again with the same options.

        Prefer this to ``torch.compile(policy)``: that compiles the whole
        ``forward`` and guards on the raw observation, with a graph break at
        :meth:`prepare`, and with numpy inputs under
        :func:`torch.inference_mode` torch 2.13 fails one of its own guards.

        Args:
            inference_only: Use the compiled graph only when gradients are
                off (``torch.no_grad`` or ``torch.inference_mode``, as in a
                rollout), and run eagerly when they are on. On the CPU,
                compiling pays off at small batches, where the eager
                forward is dominated by per-operator overhead; at training
                batch sizes the eager operators are already large, and the
                eager logic encoder can deduplicate its input
                (``docs/benchmarks.md``).
        """
        # The unbound method, called with self: a copy of the policy then runs its own weights.
        self._compiled_forward = torch.compile(type(self).forward_tensors, *args, **kwargs)
        self._compile_options = {"args": args, "kwargs": kwargs, "inference_only": bool(inference_only)}

    def uncompile(self) -> None:
        """Undo :meth:`compile`: :meth:`forward` runs eagerly again (e.g. when the compiler backend fails)."""
        self._compiled_forward = None
        self.__dict__.pop("_compile_options", None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_compiled_forward", None)  # a compiled function does not pickle; __setstate__ rebuilds it
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        options = state.get("_compile_options")
        if options is not None:
            self.compile(*options["args"], inference_only=options["inference_only"], **options["kwargs"])

    def get_value(self, obs: Observation, state: Tensor | None = None, starts: Any = None) -> Tensor:
        """Critic value ``(B,)``."""
        return self(obs, state, starts).value

    def get_action_and_value(
        self,
        obs: Observation,
        action: Tensor | None = None,
        deterministic: bool = False,
        return_output: bool = False,
        state: Tensor | None = None,
        starts: Any = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor, Any]:
        """Sample (or score) actions, CleanRL style.

        Args:
            obs: Batched observations.
            action: ``(B,)`` actions to score; ``None`` samples new ones.
            deterministic: Take the most likely action instead of sampling.
            return_output: Also return the full :class:`PolicyOutput` (for the
                auxiliary losses in the same pass, and a recurrent core's new ``state``).
            state, starts: A recurrent core's state and episode starts (see the class docstring).

        Returns:
            ``(action (B,), log_prob (B,), entropy (B,), value (B,))``, plus the
            output of :meth:`forward` (:class:`PolicyOutput` or :class:`ActorCriticOutput`)
            when ``return_output`` is True.
        """
        output = self(obs, state, starts)
        dist = Categorical(logits=output.logits)
        if action is None:
            action = output.logits.argmax(-1) if deterministic else dist.sample()
        else:
            action = torch.as_tensor(action, device=output.logits.device)
        result = (action, dist.log_prob(action), dist.entropy(), output.value)
        return (*result, output) if return_output else result


class CrossAttentionMoEPolicy(ActorCriticBase):
    r"""Actor-critic whose symbolic tokens read the visual tokens, routed over semantic experts.

    .. code-block:: text

        obs ─ logic_encoder ─► LogicOutput: operator tokens (B, O, D), scores ─┐
            └ visual_encoder ─► visual tokens (B, N, D), mask ─────────────────┴► fusion ─► context c (B, D)
        c ─► SparsemaxRouter ─► w (B, E);  c ─► SemanticExpertBank ─► (B, E, A);  c ─► critic ─► v (B,)
        logits = Σ_e w_e · expert_logits_e  (+ knowledge(applicable operators), with a knowledge pathway)

    The fusion is a module of its own (:mod:`crossmoe.fusion`):
    ``"cross_attention"`` is :class:`~crossmoe.fusion.CrossAttentionFusion`
    (operator tokens query the visual tokens, then an attention pool over the
    operators), ``"concat"`` the :class:`~crossmoe.fusion.ConcatFusion`
    ablation, and any ``nn.Module`` called as ``fusion(visual_tokens,
    visual_mask, logic) -> FusionOutput`` works too; ``policy.fusion`` is that
    module.

    The encoders own their observation keys and follow the
    :class:`~crossmoe.encoders.VisualEncoder` and
    :class:`~crossmoe.encoders.LogicEncoder` protocols. :meth:`forward` first
    runs :meth:`prepare` (numpy to tensors on the policy's device, and each
    encoder's optional ``prepare`` hook, such as computing NetHack atoms),
    then :meth:`forward_tensors`. Only the second part is traced by
    ``torch.compile``, so a compiled policy takes the same inputs as an eager
    one. Routing has no capacity limit and no noise, so a sample's output
    never depends on the rest of its batch.

    Args:
        visual_encoder: Module mapping the observation dict to visual tokens.
        logic_encoder: Module mapping the observation dict to operator tokens.
        action_dim: Number of discrete actions ``A``.
        dim: Width ``D`` of both token streams and of the context.
        num_experts: Number of experts ``E``.
        fusion: ``"cross_attention"``, ``"concat"`` or a fusion module.
        num_heads: Attention heads (``"cross_attention"`` only).
        head_dim: Width of each attention head; ``None`` means ``dim // num_heads``.
        sparse_topk: Fraction of kept visual tokens each attention row may use.
        applicable_queries: Only the operators the logic encoder reports applicable
            query the visual tokens (``"cross_attention"`` only; see
            :class:`~crossmoe.fusion.CrossAttentionFusion`), so the attention's cost
            follows the applicable count rather than all operators.
        max_queries: With ``applicable_queries``, the static number of gathered operators
            per sample in a compiled graph (``None``: all of them). A batch in which some
            sample has more applicable operators runs eagerly, so the result never depends
            on the cap; this needs a logic encoder with ``applicable_operators(obs)``.
        dropout: Attention dropout (keep 0 for PPO, which needs the rollout
            and the update to see the same policy).
        router_hidden_dim: Hidden width of the router MLP (0 for a linear router).
        expert_hidden_dim: Hidden width ``F`` of each expert.
        critic_hidden_dim: Hidden width of the critic MLP.
        alpha: Initial entmax alpha of the router (a schedule usually sets it).
        temperature: Initial router temperature.
        expert_names: Names of the experts.
        knowledge: A knowledge pathway, a module mapping the logic encoder's
            ``applicable (B, O)`` operators to a ``(B, A)`` bias added to the
            logits, such as :class:`~crossmoe.knowledge.ApplicabilityPrior`;
            ``None`` for none. It needs a logic encoder that reports
            ``applicable``. A pathway with ``uses_attention = True``, such as
            :class:`~crossmoe.knowledge.AttentionDirectionPrior`, is called
            as ``knowledge(applicable, attention, directions)``, with the
            fusion's attention maps and the visual encoder's
            ``token_directions(obs)``.
        uniform_router_init: Start the router's last layer at zero, so every
            expert gets the same weight in every state at the start, and the
            losses, not the random init, decide the first routing (a random
            init routes some experts to 0 under sparsemax from the start).
        core: A recurrent core between the fused context and the router,
            experts and critic: ``"lstm"`` (:class:`~crossmoe.recurrent.LSTMCore`),
            a module of your own (see :func:`~crossmoe.recurrent.make_core`),
            or ``None`` for none. With a core the policy takes a ``state``
            (see :class:`ActorCriticBase`), and ``output.context`` is the
            core's output, what the heads read.

    Example:
        >>> from crossmoe.encoders import BoxEncoder, LearnedQueries
        >>> policy = CrossAttentionMoEPolicy(BoxEncoder(4, 32), LearnedQueries(3, 32), action_dim=2, dim=32)
        >>> action, log_prob, entropy, value = policy.get_action_and_value(torch.randn(5, 4))
        >>> action.shape, value.shape
        (torch.Size([5]), torch.Size([5]))
    """

    def __init__(
        self,
        visual_encoder: nn.Module,
        logic_encoder: nn.Module,
        action_dim: int,
        dim: int = 256,
        num_experts: int = 4,
        fusion: str | nn.Module = "cross_attention",
        *,
        num_heads: int = 4,
        head_dim: int | None = None,
        sparse_topk: float = 0.3,
        dropout: float = 0.0,
        applicable_queries: bool = False,
        max_queries: int | None = None,
        router_hidden_dim: int = 128,
        expert_hidden_dim: int = 128,
        critic_hidden_dim: int = 128,
        alpha: float = 2.0,
        temperature: float = 1.0,
        expert_names: Sequence[str] | None = DEFAULT_EXPERT_NAMES,
        knowledge: nn.Module | None = None,
        uniform_router_init: bool = True,
        core: str | nn.Module | None = None,
    ) -> None:
        super().__init__()
        # check_int returns an int: e.g. numpy integers from a gymnasium Discrete space
        action_dim, dim = check_int(action_dim, "action_dim"), check_int(dim, "dim")
        num_experts = check_int(num_experts, "num_experts")
        self.visual_encoder = visual_encoder
        self.logic_encoder = logic_encoder
        self.action_dim, self.dim = action_dim, dim
        self.fusion = make_fusion(
            fusion,
            dim,
            num_heads=num_heads,
            sparse_topk=sparse_topk,
            dropout=dropout,
            head_dim=head_dim,
            applicable_queries=applicable_queries,
            max_queries=max_queries,
        )
        if self._query_cap() is not None and not hasattr(logic_encoder, "applicable_operators"):
            raise ValueError(
                f"max_queries needs a logic encoder with applicable_operators(obs), so that a batch over the cap "
                f"runs eagerly; got {type(logic_encoder).__name__}"
            )
        self.core = make_core(core, dim)
        self.router = SparsemaxRouter(dim, num_experts, router_hidden_dim, alpha=alpha, temperature=temperature)
        self.experts = SemanticExpertBank(dim, action_dim, num_experts, expert_hidden_dim, names=expert_names)
        self.critic = nn.Sequential(nn.Linear(dim, critic_hidden_dim), nn.Tanh(), nn.Linear(critic_hidden_dim, 1))
        self.knowledge = knowledge
        if getattr(knowledge, "uses_attention", False) and not hasattr(visual_encoder, "token_directions"):
            raise ValueError(
                f"knowledge {type(knowledge).__name__} steers by attention and needs a visual encoder with "
                f"token_directions(obs), got {type(visual_encoder).__name__}"
            )
        with torch.no_grad():
            # Near-uniform initial policy and a critic on the scale of the returns, as PPO implementations do.
            self.experts.w2.mul_(0.01)
            self.experts.b2.zero_()
            nn.init.orthogonal_(self.critic[-1].weight, 1.0)
            self.critic[-1].bias.zero_()
            if uniform_router_init:
                last = self.router.net if isinstance(self.router.net, nn.Linear) else self.router.net[-1]
                last.weight.zero_()
                last.bias.zero_()

    def encoders(self) -> tuple[nn.Module, ...]:
        return (self.visual_encoder, self.logic_encoder)

    def _query_cap(self) -> int | None:
        """The fusion's static number of querying operators in a compiled graph, if it has one."""
        return getattr(self.fusion, "max_queries", None) if getattr(self.fusion, "applicable_queries", False) else None

    def fits_compiled(self, obs: Mapping[str, Any]) -> bool:
        """False when some sample has more applicable operators than the fusion's static ``max_queries``."""
        cap = self._query_cap()
        if cap is None:
            return True
        counts = self.logic_encoder.applicable_operators(obs).sum(1)
        return counts.numel() == 0 or int(counts.max()) <= cap

    def encode(self, obs: Mapping[str, Any]) -> tuple[Tensor, Tensor | None, LogicOutput]:
        """Fuse the two streams of a prepared observation: ``(context (B, D), attention or None, LogicOutput)``."""
        visual_tokens, visual_mask = self.visual_encoder(obs)
        logic = self.logic_encoder(obs)
        if not isinstance(logic, LogicOutput):
            logic = LogicOutput(*logic)  # a plain (tokens, scores[, applicable[, index]]) tuple
        operator_tokens, _, _, index = logic
        batch = visual_tokens.shape[0]
        logic_batch = batch if index is None else operator_tokens.shape[0]
        for name, tokens, rows in (("visual", visual_tokens, batch), ("logic", operator_tokens, logic_batch)):
            if tokens.dim() != 3 or tokens.shape[0] != rows or tokens.shape[-1] != self.dim:
                raise ValueError(
                    f"the {name} encoder must return tokens of shape (B, N, {self.dim}) with B={rows}, "
                    f"got {tuple(tokens.shape)}"
                )
        if visual_mask is not None and tuple(visual_mask.shape) != tuple(visual_tokens.shape[:2]):
            raise ValueError(
                f"the visual encoder's mask must have shape (B, N)={tuple(visual_tokens.shape[:2])}, "
                f"got {tuple(visual_mask.shape)}"
            )
        if index is not None and tuple(index.shape) != (batch,):
            raise ValueError(f"the logic encoder's index must have shape (B,)=({batch},), got {tuple(index.shape)}")
        fused = self.fusion(visual_tokens, visual_mask, logic)
        if not isinstance(fused, tuple) or len(fused) != 2:
            raise ValueError(
                "fusion must return FusionOutput(context (B, D), attention or None), "
                f"got {type(fused).__name__}{'' if not isinstance(fused, tuple) else f' of length {len(fused)}'}"
            )
        context, attention = fused
        if not isinstance(context, Tensor) or tuple(context.shape) != (batch, self.dim):
            shape = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"fusion must return a context of shape (B, D)=({batch}, {self.dim}), got {shape}")
        return context, attention, logic

    def forward_tensors(
        self, obs: Mapping[str, Any], state: Tensor | None = None, starts: Tensor | None = None
    ) -> PolicyOutput:
        """:meth:`forward` on an observation that :meth:`prepare` has already made ready (the compiled part)."""
        context, attention, logic = self.encode(obs)
        context, state = self._recur(context, state, starts)
        routing = self.router(context)
        expert_logits, expert_features = self.experts(context, return_hidden=True)
        logits = combine_experts(routing.weights, expert_logits)
        prior = None
        if self.knowledge is not None:
            if logic.applicable is None:
                raise ValueError("a knowledge pathway needs a logic encoder that returns applicable operators")
            if getattr(self.knowledge, "uses_attention", False):  # e.g. AttentionDirectionPrior
                if attention is None:
                    raise ValueError(
                        f"the knowledge pathway {type(self.knowledge).__name__} needs attention maps, but the fusion "
                        f"{type(self.fusion).__name__} returns none (use fusion='cross_attention')"
                    )
                prior = self.knowledge(logic.applicable, attention, self.visual_encoder.token_directions(obs))
            else:
                prior = self.knowledge(logic.applicable)
            logits = logits + prior
        return PolicyOutput(
            logits=logits,
            value=self.critic(context).squeeze(-1),
            router_weights=routing.weights,
            router_logits=routing.logits,
            expert_logits=expert_logits,
            expert_features=expert_features,
            context=context,
            attention=attention,
            operator_scores=logic.scores,
            applicable=logic.applicable,
            operator_to_expert=getattr(self.logic_encoder, "operator_to_expert", None),
            prior=prior,
            state=state,
        )

    def extra_repr(self) -> str:
        return f"action_dim={self.action_dim}, dim={self.dim}"


class ActorCriticOutput(NamedTuple):
    """One forward pass of :class:`ActorCritic`: ``logits (B, A)``, ``value (B,)``, ``context (B, H)``.

    With a features module that gives applicability, also ``applicable (B, O)``
    bool, with a knowledge pathway its ``prior (B, A)`` (already in ``logits``),
    and with a recurrent core its ``state (n, S)`` after the batch's last step.
    """

    logits: Tensor
    value: Tensor
    context: Tensor
    applicable: Tensor | None = None
    prior: Tensor | None = None
    state: Tensor | None = None


class ActorCritic(ActorCriticBase):
    """Plain actor-critic on a token encoder: the no-MoE, no-logic baseline.

    The encoder's ``(B, N, D)`` tokens (masked tokens zeroed) are flattened and
    mapped by ``Linear -> ReLU`` to a ``hidden_dim`` trunk shared by a linear
    actor and a linear critic. Flattening, rather than pooling, keeps which
    token sits where, so the baseline sees everything the encoder does. It has
    the same ``get_action_and_value`` / ``get_value`` interface as
    :class:`CrossAttentionMoEPolicy`, so a training loop can swap one for the
    other.

    With ``features`` (e.g. :class:`~crossmoe.encoders.AtomFeatures`), a
    ``(B, F)`` vector joins the flattened tokens at the trunk's input, and
    with ``knowledge`` (e.g. :class:`~crossmoe.knowledge.ApplicabilityPrior`)
    a bias from the applicable operators that ``features`` reports is added to
    the logits: the flat-features control, which gets the MoE agent's atoms
    and prior without its graph encoder, fusion, router or experts.

    Args:
        encoder: Module mapping observations to ``(tokens (B, N, D), mask (B, N) or None)``.
        action_dim: Number of discrete actions.
        num_tokens: ``N``; defaults to ``encoder.num_tokens``.
        dim: ``D``; defaults to ``encoder.dim``.
        hidden_dim: Width of the trunk.
        features: Module mapping observations to ``(features (B, F), applicable (B, O) bool or None)``,
            with a ``num_features`` attribute ``F``; None for tokens only.
        knowledge: Module mapping ``applicable (B, O)`` to an ``(B, A)`` logit bias; needs ``features``.
        core: A recurrent core between the trunk and the actor and critic, as in
            :class:`CrossAttentionMoEPolicy` (``"lstm"``, a module, or ``None``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        action_dim: int,
        num_tokens: int | None = None,
        dim: int | None = None,
        hidden_dim: int = 256,
        features: nn.Module | None = None,
        knowledge: nn.Module | None = None,
        core: str | nn.Module | None = None,
    ) -> None:
        super().__init__()
        hidden_dim = check_int(hidden_dim, "hidden_dim")
        num_features = 0 if features is None else getattr(features, "num_features", None)
        if num_features is None or isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise ValueError(f"features must have an integer num_features attribute, got {features!r}")
        if knowledge is not None and features is None:
            raise ValueError("knowledge needs features that report the applicable operators, got features=None")
        num_tokens = getattr(encoder, "num_tokens", None) if num_tokens is None else num_tokens
        dim = getattr(encoder, "dim", None) if dim is None else dim
        for name, value in (("num_tokens", num_tokens), ("dim", dim), ("action_dim", action_dim)):
            if value is None or isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(
                    f"{name} must be a positive integer (pass it, or give the encoder that attribute), got {value!r}"
                )
        self.encoder, self.features, self.knowledge = encoder, features, knowledge
        self.action_dim, self.num_tokens, self.dim = int(action_dim), int(num_tokens), int(dim)
        self.num_features = int(num_features)
        self.trunk = nn.Sequential(nn.Linear(self.num_tokens * self.dim + self.num_features, hidden_dim), nn.ReLU())
        self.core = make_core(core, hidden_dim)
        self.actor = nn.Linear(hidden_dim, self.action_dim)
        self.critic = nn.Linear(hidden_dim, 1)
        with torch.no_grad():
            nn.init.orthogonal_(self.actor.weight, 0.01)
            nn.init.orthogonal_(self.critic.weight, 1.0)
            self.actor.bias.zero_()
            self.critic.bias.zero_()

    def encoders(self) -> tuple[nn.Module, ...]:
        return (self.encoder,) if self.features is None else (self.encoder, self.features)

    def encode(self, obs: Mapping[str, Any]) -> Tensor:
        """The ``(B, hidden_dim)`` trunk features of a prepared observation."""
        return self._encode(obs)[0]

    def _encode(self, obs: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        tokens, mask = self.encoder(obs)
        if tokens.dim() != 3 or tokens.shape[1:] != (self.num_tokens, self.dim):
            raise ValueError(
                f"the encoder must return tokens of shape (B, {self.num_tokens}, {self.dim}), got {tuple(tokens.shape)}"
            )
        if mask is not None:
            tokens = tokens * mask.unsqueeze(-1).to(tokens.dtype)
        inputs, applicable = tokens.flatten(1), None
        if self.features is not None:
            features, applicable = self.features(obs)
            if features.shape != (inputs.shape[0], self.num_features):
                raise ValueError(
                    f"features must return (B, {self.num_features}) with B={inputs.shape[0]}, "
                    f"got {tuple(features.shape)}"
                )
            inputs = torch.cat([inputs, features.to(inputs.dtype)], dim=1)
        return self.trunk(inputs), applicable

    def forward_tensors(
        self, obs: Mapping[str, Any], state: Tensor | None = None, starts: Tensor | None = None
    ) -> ActorCriticOutput:
        """:meth:`forward` on a prepared observation (the part ``torch.compile`` traces)."""
        hidden, applicable = self._encode(obs)
        hidden, state = self._recur(hidden, state, starts)
        logits, prior = self.actor(hidden), None
        if self.knowledge is not None:
            if applicable is None:
                raise ValueError("a knowledge pathway needs features that return the applicable operators")
            prior = self.knowledge(applicable)
            logits = logits + prior
        return ActorCriticOutput(logits, self.critic(hidden).squeeze(-1), hidden, applicable, prior, state)

    def extra_repr(self) -> str:
        return (
            f"action_dim={self.action_dim}, num_tokens={self.num_tokens}, dim={self.dim}, "
            f"num_features={self.num_features}"
        )


def knowledge_policy(
    visual_encoder: nn.Module,
    hypergraph: Hypergraph,
    atoms: Callable[[Mapping[str, Any]], Any],
    action_dim: int,
    *,
    action_set: Sequence[Any] | None = None,
    dim: int = 128,
    fusion: str | nn.Module = "cross_attention",
    graph_hidden_dim: int | None = None,
    graph_heads: int = 2,
    effect_passes: int = 1,
    num_heads: int = 2,
    head_dim: int | None = 16,
    knowledge: bool | nn.Module = True,
    prior_init: float = 1.0,
    applicable_queries: bool = True,
    max_queries: int | None = 16,
    **policy_kwargs: Any,
) -> CrossAttentionMoEPolicy:
    """A knowledge-guided MoE policy for any env: its tokens, its graph and atoms, and its actions.

    The design of the NetHack and MiniGrid agents (:func:`crossmoe.nethack.make_policy`,
    :func:`crossmoe.minigrid.make_policy`), for a domain of your own: a
    :class:`~crossmoe.encoders.HypergraphLogicEncoder` of ``hypergraph`` over
    ``atoms(obs)``, the knowledge pathway (an
    :class:`~crossmoe.knowledge.ApplicabilityPrior` over ``action_set``),
    and a :class:`CrossAttentionMoEPolicy` with one expert per expert of the graph.

    Args:
        visual_encoder: Maps the observation to ``(tokens (B, N, dim), mask)``
            (:class:`~crossmoe.encoders.VisualEncoder`).
        hypergraph: The knowledge graph.
        atoms: Function from a batched observation to ``(B, C)`` activations
            of the graph's conditions, in order.
        action_dim: The env's number of actions.
        action_set: The env's action names (what the operators' actions are
            matched against); needed with ``knowledge=True``.
        dim: Width of the tokens and the context.
        fusion: ``"cross_attention"``, ``"concat"`` or a fusion module.
        graph_hidden_dim, graph_heads, effect_passes: Of the graph encoder
            (:class:`~crossmoe.graph.HypergraphEncoder`).
        num_heads, head_dim: Of the cross-attention.
        knowledge: ``True``: the :class:`~crossmoe.knowledge.ApplicabilityPrior`;
            ``False``: none (the ablation); or a knowledge module of your own.
        prior_init: Initial vote of each operator in the prior.
        applicable_queries, max_queries: Only applicable operators query the
            map, at most ``max_queries`` per sample in a compiled graph (see
            :func:`crossmoe.nethack.make_policy`).
        **policy_kwargs: Passed to :class:`CrossAttentionMoEPolicy`.
    """
    from crossmoe.encoders import HypergraphLogicEncoder
    from crossmoe.knowledge import ApplicabilityPrior

    logic = HypergraphLogicEncoder(
        hypergraph, dim, atoms=atoms, hidden_dim=graph_hidden_dim, heads=graph_heads, effect_passes=effect_passes
    )
    prior = knowledge if isinstance(knowledge, nn.Module) else None
    if knowledge is True:
        if action_set is None:
            raise ValueError("action_set must list the env's actions for the knowledge pathway (knowledge=True)")
        prior = ApplicabilityPrior(hypergraph.action_mask(list(action_set)), init=prior_init)
    return CrossAttentionMoEPolicy(
        visual_encoder,
        logic,
        action_dim,
        dim=dim,
        num_experts=len(hypergraph.experts),
        fusion=fusion,
        num_heads=num_heads,
        head_dim=head_dim,
        expert_names=hypergraph.experts,
        knowledge=prior,
        applicable_queries=applicable_queries,
        max_queries=max_queries,
        **policy_kwargs,
    )
