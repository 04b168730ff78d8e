"""Evaluate agents on fresh episodes (NetHack's, or any env family's), and compare runs with bootstrap CIs.

An *agent* is anything with ``act(obs) -> actions`` (:class:`Agent`): a
trained policy (:class:`PolicyAgent`), the uniform-random floor
(:class:`RandomAgent`) or the hypergraph alone
(:class:`~crossmoe.nethack.rules.RuleAgent`). :func:`evaluate` plays a fixed,
seeded set of episodes and returns an :class:`EvalResult`: per-episode score,
return, depth, length and outcome, and for agents with a router the mean
routing weight of each expert in a few situations (monster adjacent, HP low,
...). :mod:`crossmoe.stats` compares runs across seeds.

What an env family needs to tell :func:`evaluate` (how to make its vector
envs, what its in-game score, depth and atoms are) is an :class:`EvalDomain`;
NetHack's (:func:`crossmoe.nethack.eval_domain`, which needs the ``nethack``
extra) is the default.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from crossmoe.stats import bootstrap_ci

__all__ = [
    "ALL_STEPS",
    "DEFAULT_SITUATIONS",
    "METRICS",
    "Agent",
    "AgentStep",
    "EvalDomain",
    "EvalResult",
    "PolicyAgent",
    "RandomAgent",
    "evaluate",
]

METRICS: tuple[str, ...] = ("score", "return", "depth", "length", "turn")
"""Per-episode metrics of an :class:`EvalResult`, as named in :meth:`EvalResult.summary`."""

ALL_STEPS = "all steps"
"""The first row of every usage table: each step counts."""

DEFAULT_SITUATIONS: Mapping[str, tuple[str, ...]] = {
    "monster adjacent": ("monster_adjacent",),
    "no monster visible": ("no_monster_visible",),
    "hp low or critical": ("hp_low", "hp_critical"),
    "stairs down known": ("on_stairs_down", "path_to_downstairs"),
    "in corridor": ("in_corridor",),
    "hungry or weak": ("hungry", "weak"),
}
"""Situations of the routing-usage table, after :data:`ALL_STEPS`: a step is in one when any of its atoms holds."""


def _episode_ends(terminated: np.ndarray, truncated: np.ndarray, info: Mapping[str, Any]):
    ends = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
    return np.asarray(terminated, dtype=bool), ends, np.zeros_like(ends)


@dataclass(frozen=True)
class EvalDomain:
    """What :func:`evaluate` needs to know about a family of environments.

    Every function takes the batched observation dict of the vector env.

    Args:
        make_vector_env: ``(num_envs, seed, env_id, **env_kwargs) -> VectorEnv``
            whose env ``i`` is seeded with ``seed + i``, in gymnasium's default
            ``NEXT_STEP`` autoreset mode; ``env_kwargs`` include
            ``max_episode_steps`` when :func:`evaluate` is given one.
        score: The ``(N,)`` in-game score of each env's game (an episode's is
            the largest seen); ``None``: the return.
        depth: The ``(N,)`` depth (dungeon level, room, ...) of each env's game
            (an episode's is the deepest); ``None``: 0.
        turns: The ``(N,)`` in-game clock of each env's game (NetHack's turn
            counter: one agent step can take many turns); an episode's is
            the largest seen. ``None``: no ``turns`` in the result.
        atoms: Function to ``(N, C)`` condition activations, columns in
            ``atom_names`` order: what situations and ``condition_names`` are
            read from. ``None``: agents compute their own, and no usage table.
        atom_names: The names of the atoms' columns.
        situations: The default rows of the usage table (see :data:`DEFAULT_SITUATIONS`).
        episode_ends: ``(terminated, truncated, info) -> (terminal, ends,
            aborted)``, each ``(N,)`` bool (see
            :func:`crossmoe.nethack.split_episode_ends`); by default an episode
            ends when either flag is set and none is aborted. An aborted end
            (a game's own step cap) is a ``"step cap"``, as a truncation is.

    Outcomes come from ``info["outcome"]`` when the env reports one
    (:class:`crossmoe.nethack.EpisodeOutcome`), else they are ``"terminated"``
    or ``"step cap"``.
    """

    make_vector_env: Callable[..., Any]
    score: Callable[[Mapping[str, Any]], np.ndarray] | None = None
    depth: Callable[[Mapping[str, Any]], np.ndarray] | None = None
    turns: Callable[[Mapping[str, Any]], np.ndarray] | None = None
    atoms: Callable[[Mapping[str, Any]], np.ndarray] | None = None
    atom_names: Sequence[str] = ()
    situations: Mapping[str, Sequence[str]] = field(default_factory=dict)
    episode_ends: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] = _episode_ends


# --- agents -----------------------------------------------------------------------------------------------


class AgentStep(NamedTuple):
    """What an agent returns for one batch of observations.

    Shapes:
        - actions: ``(N,)`` integer actions
        - router_weights: ``(N, E)`` routing weights of an agent with experts, or None
    """

    actions: np.ndarray
    router_weights: np.ndarray | None = None


@runtime_checkable
class Agent(Protocol):
    """Anything :func:`evaluate` can play: ``act`` maps a batch of observations to actions.

    ``act`` takes the observation dict of a vector env (batched NumPy arrays)
    and returns the ``(N,)`` actions, as an array or as an :class:`AgentStep`
    that also carries router weights. Optional members that :func:`evaluate`
    uses when present: ``reset(seed)``, called once before the first step so
    that an evaluation is reproducible; ``expert_names``, the names of
    the ``E`` experts of the router weights (the agent then also receives the
    atoms, as ``obs["atoms"]``, instead of computing them again);
    ``condition_names``, the atoms it reads, in order (it then receives
    those columns); and ``end_episodes(done)``, called after each step with
    the ``(N,)`` bool episode ends, so that an agent with memory (a policy
    with a recurrent core) starts the next episode without it.
    """

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray | AgentStep: ...


def _batch_size(obs: Mapping[str, Any]) -> int:
    if not isinstance(obs, Mapping) or not obs:
        raise ValueError(f"obs must be a non-empty dict of batched arrays, got {type(obs).__name__}")
    return len(next(iter(obs.values())))


class RandomAgent:
    """Uniformly random actions: the floor every agent has to beat.

    Args:
        num_actions: Size of the env's discrete action space.
        seed: Seed of the actions; :meth:`reset` restarts them.
    """

    def __init__(self, num_actions: int, seed: int | None = 0) -> None:
        if isinstance(num_actions, bool) or not isinstance(num_actions, (int, np.integer)) or num_actions < 1:
            raise ValueError(f"num_actions must be an integer >= 1, got {num_actions!r}")
        self.num_actions = int(num_actions)
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Restart the actions from ``seed``."""
        self._rng = np.random.default_rng(seed)

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """``(N,)`` actions drawn uniformly from ``range(num_actions)``."""
        return self._rng.integers(self.num_actions, size=_batch_size(obs))


class PolicyAgent:
    """A crossmoe policy as an :class:`Agent`: actions, and router weights for a Mixture-of-Experts policy.

    Calls ``policy.get_action_and_value(obs, return_output=True)`` under
    :func:`torch.inference_mode`. Sampled actions come from the agent's own
    :class:`torch.Generator`, so an evaluation neither depends on nor advances
    torch's global random state. The policy is used in the mode it is in:
    :func:`~crossmoe.nethack.load_agent` returns it in eval mode. A policy
    with a recurrent core carries its state from step to step and zeroes it
    where an episode starts (:meth:`end_episodes`; vector envs that autoreset
    on the step after an episode's end, as gymnasium's do by default).

    Args:
        policy: A :class:`~crossmoe.CrossAttentionMoEPolicy` (its ``router_weights``
            are recorded, under the names ``policy.experts.names``), an
            :class:`~crossmoe.ActorCritic`, or any module with that API.
        deterministic: Take the most likely action instead of sampling.
        seed: Seed of the sampling; :meth:`reset` restarts it.
        compile: Compile the policy's forward in place
            (``policy.compile(dynamic=False, inference_only=True)``): at the
            small batches of an evaluation the eager forward is mostly
            per-operator overhead, and the compiled one is several times
            faster. The first call compiles (a minute or two on a CPU); if the
            compiler backend fails, the policy is uncompiled and the
            evaluation goes on eagerly, with a warning. Compiled and eager
            logits agree to float rounding, so a sampled action can differ in
            rare ties.
    """

    def __init__(self, policy: nn.Module, deterministic: bool = False, seed: int = 0, compile: bool = False) -> None:
        if not callable(getattr(policy, "get_action_and_value", None)):
            raise ValueError(f"policy must have get_action_and_value (a crossmoe policy), got {type(policy).__name__}")
        if compile:
            if not callable(getattr(policy, "compile", None)) or not callable(getattr(policy, "uncompile", None)):
                raise ValueError(
                    f"compile=True needs a crossmoe policy (compile and uncompile), got {type(policy).__name__}"
                )
            policy.compile(dynamic=False, inference_only=True)
        self.policy = policy
        self.deterministic = deterministic
        names = getattr(getattr(policy, "experts", None), "names", None)
        self.expert_names: tuple[str, ...] | None = None if names is None else tuple(names)
        reader = getattr(policy, "logic_encoder", None) or getattr(policy, "features", None)
        graph = getattr(reader, "hypergraph", None)
        #: The conditions the policy reads as ``obs["atoms"]``, in order (its graph's), or None.
        self.condition_names: tuple[str, ...] | None = None if graph is None else tuple(graph.conditions)
        self._generator = torch.Generator().manual_seed(seed)
        self._forget()

    def _forget(self) -> None:
        # a recurrent policy's state, and which envs start an episode at the next step and ended one at the last
        self._state: torch.Tensor | None = None
        self._starts: np.ndarray | None = None
        self._ended: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> None:
        """Restart the sampling from ``seed`` (``None``: a fresh random seed), and forget a recurrent state."""
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self._forget()

    def end_episodes(self, done: np.ndarray) -> None:
        """Mark the ``(N,)`` envs whose episode ended at the last step: a recurrent state starts afresh there.

        The state is zeroed for the autoreset step (whose action the env ignores) and again for the new
        episode's first observation, so nothing of the last episode reaches the next one.
        """
        done = np.asarray(done, dtype=bool)
        self._starts = done if self._ended is None else done | self._ended
        self._ended = done

    def act(self, obs: Mapping[str, Any]) -> AgentStep:
        """The actions and (MoE policies) the ``(N, E)`` router weights of a batch."""
        memory = {}
        if getattr(self.policy, "recurrent", False):
            batch = _batch_size(obs)
            if self._state is None or len(self._state) != batch:  # the first step of every episode
                self._state, self._starts = self.policy.initial_state(batch), np.ones(batch, dtype=bool)
            starts = np.zeros(batch, dtype=bool) if self._starts is None else self._starts
            memory = {"state": self._state, "starts": torch.from_numpy(starts)}
        with torch.inference_mode():
            try:
                actions, *_, output = self.policy.get_action_and_value(
                    obs, deterministic=True, return_output=True, **memory
                )
            except torch._dynamo.exc.BackendCompilerFailed as error:
                warnings.warn(f"compiling the policy failed, evaluating eagerly: {error}", RuntimeWarning, stacklevel=2)
                self.policy.uncompile()
                actions, *_, output = self.policy.get_action_and_value(
                    obs, deterministic=True, return_output=True, **memory
                )
            if memory:
                self._state, self._starts = output.state, None
            if not self.deterministic:
                probs = output.logits.float().softmax(dim=-1).cpu()
                actions = torch.multinomial(probs, 1, generator=self._generator).squeeze(-1)
            weights = getattr(output, "router_weights", None)
            return AgentStep(actions.cpu().numpy(), None if weights is None else weights.float().cpu().numpy())


# --- one evaluation ---------------------------------------------------------------------------------------


def _describe(values: Sequence[float], prefix: str) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    mean, low, high = bootstrap_ci(array)
    return {
        f"{prefix}_mean": mean,
        f"{prefix}_std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        f"{prefix}_median": float(np.median(array)),
        f"{prefix}_ci_low": low,
        f"{prefix}_ci_high": high,
    }


def _quota(episodes: int, num_envs: int) -> np.ndarray:
    """Episodes per environment: ``episodes`` over ``min(num_envs, episodes)`` environments, the first ones one more."""
    num_envs = min(int(num_envs), int(episodes))
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    return quota


@dataclass
class EvalResult:
    """The episodes of one :func:`evaluate` call, and the routing usage of its agent.

    Episodes are listed env by env (all of environment 0's, then 1's, ...),
    each environment's in the order it played them. The usage arrays have one
    row per situation and one column per expert; they are sums, so results
    of several evaluations can be pooled by adding them.

    Attributes:
        env_id, seed, num_envs, max_episode_steps: What was evaluated, as passed to :func:`evaluate`.
        scores: Largest in-game score seen in each episode.
        returns: Sum of the env rewards of each episode.
        depths: Deepest dungeon level reached in each episode.
        lengths: Agent steps of each episode.
        turns: In-game turns of each episode (its game's clock at the end), for a
            domain with a clock (NetHack); empty otherwise.
        outcomes: How each episode ended (``"killed by <monster>"``, ``"starving"``,
            ``"step cap"``, ...; see :class:`~crossmoe.nethack.env.EpisodeOutcome`).
        expert_names: Names of the experts (empty for an agent without a router).
        situations: Names of the usage rows: :data:`ALL_STEPS`, then the situations evaluated.
        usage_weight: ``(S, E)`` sums of the routing weights over the steps of each situation.
        usage_top1: ``(S, E)`` counts of the steps whose largest weight is on each expert.
        usage_steps: ``(S,)`` number of steps in each situation.
        metadata: Free-form plain data about the run (agent, checkpoint, ...).
    """

    env_id: str
    seed: int
    num_envs: int
    max_episode_steps: int | None
    scores: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    expert_names: list[str] = field(default_factory=list)
    situations: list[str] = field(default_factory=list)
    usage_weight: list[list[float]] = field(default_factory=list)
    usage_top1: list[list[int]] = field(default_factory=list)
    usage_steps: list[int] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    turns: list[int] = field(default_factory=list)

    @property
    def num_episodes(self) -> int:
        return len(self.scores)

    def metric(self, name: str, episodes: int | None = None) -> np.ndarray:
        """The per-episode values of ``name``, one of :data:`METRICS` (``"score"``, ``"return"``, ...).

        With ``episodes``, only the episodes that an evaluation of that many
        episodes with the same seed and ``num_envs`` plays (each environment's
        first ones, :func:`evaluate`'s split): what to compare a shorter
        evaluation of another agent with, such as a 50-episode snapshot
        against a 100-episode floor.
        """
        if name not in METRICS:
            raise ValueError(f"name must be one of {METRICS}, got {name!r}")
        values = np.asarray(getattr(self, name + "s"), dtype=float)
        if episodes is None:
            return values
        if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or not 1 <= episodes:
            raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
        if episodes > self.num_episodes:
            raise ValueError(f"episodes must be at most the {self.num_episodes} evaluated, got {episodes}")
        played = _quota(self.num_episodes, self.num_envs)
        starts = np.concatenate([[0], np.cumsum(played)[:-1]])
        wanted = _quota(episodes, self.num_envs)
        return np.concatenate([values[start : start + k] for start, k in zip(starts, wanted, strict=False)])

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON data; :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """The result that :meth:`to_dict` wrote."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"data must hold EvalResult fields only, got unknown keys {unknown}")
        return cls(**data)

    def outcome_counts(self) -> dict[str, int]:
        """How many episodes ended each way, most frequent first."""
        names, counts = np.unique(np.asarray(self.outcomes, dtype=str), return_counts=True)
        order = np.lexsort((names, -counts))
        return {str(names[i]): int(counts[i]) for i in order}

    def summary(self) -> dict[str, Any]:
        """One flat, JSON-ready dict: metadata, then per metric the mean, std, median and 95% bootstrap CI.

        Keys: the :attr:`metadata`, ``env_id``, ``episodes``,
        ``<metric>_mean``, ``_std`` (sample standard deviation), ``_median``,
        ``_ci_low`` and ``_ci_high`` for each of ``score``, ``return``,
        ``depth``, ``length`` and, where the domain has a clock, ``turn``, and ``outcomes`` (:meth:`outcome_counts`).
        With experts also ``expert_usage`` (share of steps whose largest
        routing weight is on each expert) and ``expert_weight`` (mean
        routing weight), over all steps.
        """
        if not self.num_episodes:
            raise ValueError("summary needs at least one episode, got an EvalResult with none")
        summary: dict[str, Any] = {**self.metadata, "env_id": self.env_id, "episodes": self.num_episodes}
        for name in METRICS:
            values = self.metric(name)
            if values.size:  # no turns from a domain without a clock, or from a result written before them
                summary.update(_describe(values, name))
        summary["outcomes"] = self.outcome_counts()
        if self.expert_names and self.usage_steps and self.usage_steps[0]:
            steps = self.usage_steps[0]  # the first row is ALL_STEPS
            summary["expert_usage"] = {
                name: count / steps for name, count in zip(self.expert_names, self.usage_top1[0], strict=True)
            }
            summary["expert_weight"] = {
                name: weight / steps for name, weight in zip(self.expert_names, self.usage_weight[0], strict=True)
            }
        return summary

    def usage_table(self, digits: int = 2) -> str:
        """Markdown table of the mean routing weight of each expert in each situation ("" without experts)."""
        if not self.expert_names:
            return ""
        header = ["situation", "steps", *self.expert_names]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for name, steps, weights in zip(self.situations, self.usage_steps, self.usage_weight, strict=True):
            cells = [f"{weight / steps:.{digits}f}" if steps else "-" for weight in weights]
            lines.append("| " + " | ".join([name, str(steps), *cells]) + " |")
        return "\n".join(lines)


class _RunningEpisodes:
    """Return, length, best score, deepest level and latest turn so far of the episode each of ``N`` envs plays."""

    def __init__(self, score: np.ndarray, depth: np.ndarray, turns: np.ndarray) -> None:
        self.score = np.asarray(score, dtype=np.float64)  # from the first observations
        self.depth = np.asarray(depth, dtype=np.int64)
        self.turns = np.asarray(turns, dtype=np.int64)
        self.episode_return = np.zeros(len(self.score))
        self.length = np.zeros(len(self.score), dtype=np.int64)

    def update(
        self, active: np.ndarray, reward: np.ndarray, score: np.ndarray, depth: np.ndarray, turns: np.ndarray
    ) -> None:
        """Add one env step; rows not ``active`` were autoreset steps, whose observation starts the next episode."""
        self.episode_return = np.where(active, self.episode_return + reward, 0.0)
        self.length = np.where(active, self.length + 1, 0)
        # Maxima, because NLE zeroes the bottom line on the death observation.
        self.score = np.where(active, np.maximum(self.score, score), score)
        self.depth = np.where(active, np.maximum(self.depth, depth), depth)
        self.turns = np.where(active, np.maximum(self.turns, turns), turns)


class _UsageBySituation:
    """Sums of router weights, top-1 counts and step counts per situation; see :class:`EvalResult`."""

    def __init__(self, situations: Mapping[str, Sequence[str]], atoms: Sequence[str]) -> None:
        index = {name: c for c, name in enumerate(atoms)}
        self.names = list(situations)
        self.atoms = np.zeros((len(situations), len(atoms)), dtype=np.float32)  # (S, C): any of them puts a step in
        for s, (name, members) in enumerate(situations.items()):
            unknown = [atom for atom in members if atom not in index]
            if unknown:
                raise ValueError(f"situations[{name!r}] must list the domain's atoms, got unknown atoms {unknown}")
            self.atoms[s, [index[atom] for atom in members]] = 1.0
        self.every_step = self.atoms.sum(axis=1) == 0
        self.steps = np.zeros(len(situations), dtype=np.int64)
        self.weight: np.ndarray | None = None  # (S, E) once the first weights arrive
        self.top1: np.ndarray | None = None

    def add(self, atoms: np.ndarray, weights: np.ndarray, counted: np.ndarray) -> None:
        """Add the ``(N, E)`` weights of the ``counted`` ``(N,)`` rows, whose atoms are ``(N, C)``."""
        if self.weight is None:
            self.weight = np.zeros((len(self.names), weights.shape[1]))
            self.top1 = np.zeros((len(self.names), weights.shape[1]), dtype=np.int64)
        member = (((atoms @ self.atoms.T) > 0) | self.every_step) & counted[:, None]  # (N, S)
        top1 = np.eye(weights.shape[1], dtype=np.int64)[weights.argmax(axis=1)]  # (N, E)
        self.weight += member.T.astype(np.float64) @ weights
        self.top1 += member.T.astype(np.int64) @ top1
        self.steps += member.sum(axis=0)


def evaluate(
    agent: Agent,
    env_id: str = "NetHackScore-v0",
    episodes: int = 100,
    num_envs: int = 8,
    seed: int = 10_000_000,
    max_episode_steps: int | None = None,
    *,
    situations: Mapping[str, Sequence[str]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    domain: EvalDomain | None = None,
    **env_kwargs: Any,
) -> EvalResult:
    """Play exactly ``episodes`` fresh episodes with ``agent`` and record how each went.

    The environments come from ``domain.make_vector_env`` (by default
    :func:`crossmoe.nethack.make_vector_env`) with ``seed``, and environment
    ``i`` contributes its first ``k_i`` episodes (``episodes`` split as evenly
    as possible), so the set of episodes depends
    only on the seed, ``num_envs`` and the agent, never on which episodes
    happen to end first. The agent is ``reset(seed)`` first when it has that
    method. The default seed lies far from the seeds training runs use.

    Per episode: the largest in-game score seen (NLE zeroes the bottom line on
    the death observation, hence the maximum), the return (sum of rewards),
    the deepest level, the length and the outcome (both NLE's own step cap and
    a ``max_episode_steps`` time limit are ``"step cap"``). For an agent that
    returns router weights, the weights are summed per situation: a step is in
    a situation when any of its atoms (``domain.atoms``, NetHack's
    :func:`~crossmoe.nethack.extract_atoms`) holds. The atoms are computed
    once per step and handed to the agent as ``obs["atoms"]``: in the columns
    its ``condition_names`` lists (a :class:`PolicyAgent`'s are its graph's
    conditions, so a checkpoint whose graph predates an atom reads what it
    was trained on), or all of them for an agent with ``expert_names`` and no
    ``condition_names``.

    Args:
        agent: An :class:`Agent`.
        env_id: A registered id of the domain's envs (NLE or MiniHack by default).
        episodes: Episodes to record, at least 1.
        num_envs: Environments stepped together (at most ``episodes`` are made).
        seed: Seed of the environments and of the agent.
        max_episode_steps: A time limit in agent steps; ``None`` keeps the env's own.
        situations: ``{name: atoms}``, the rows of the usage table after :data:`ALL_STEPS`;
            ``None``: the domain's (NetHack's: :data:`DEFAULT_SITUATIONS`).
        metadata: Plain data stored in the result (agent name, checkpoint, ...).
        domain: The env family (:class:`EvalDomain`); ``None``: NetHack's
            (:func:`crossmoe.nethack.eval_domain`).
        **env_kwargs: Passed to ``domain.make_vector_env``.

    Example:
        >>> result = evaluate(RandomAgent(23), episodes=20)  # doctest: +SKIP
        >>> result.summary()["score_mean"], result.outcome_counts()  # doctest: +SKIP
    """
    if domain is None:
        from crossmoe.nethack import eval_domain  # the nethack extra

        domain = eval_domain()
    if not isinstance(domain, EvalDomain):
        raise TypeError(f"domain must be an EvalDomain or None, got {type(domain).__name__}")
    situations = domain.situations if situations is None else situations
    atom_index = {name: c for c, name in enumerate(domain.atom_names)}

    for name, value in (("episodes", episodes), ("num_envs", num_envs)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not callable(getattr(agent, "act", None)):
        raise ValueError(f"agent must have an act(obs) method, got {type(agent).__name__}")
    if tuple(situations.get(ALL_STEPS, ())):
        raise ValueError(f"situations[{ALL_STEPS!r}] is every step and takes no atoms, got {situations[ALL_STEPS]}")
    usage = _UsageBySituation({ALL_STEPS: (), **situations}, domain.atom_names)
    num_envs = min(int(num_envs), int(episodes))
    quota = _quota(episodes, num_envs)
    if max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = max_episode_steps
    envs = domain.make_vector_env(num_envs, seed, env_id, **env_kwargs)
    if callable(getattr(agent, "reset", None)):
        agent.reset(seed=seed)
    expert_names = getattr(agent, "expert_names", None)
    # The atoms are computed once per step, for the usage table and, in its graph's columns, for the agent.
    conditions = getattr(agent, "condition_names", None)
    if conditions is None and expert_names is not None:
        conditions = domain.atom_names
    columns = None
    if domain.atoms is not None and conditions is not None and all(name in atom_index for name in conditions):
        columns = np.array([atom_index[name] for name in conditions], dtype=np.int64)

    def game_state(obs: Mapping[str, Any], rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Without a score the episode's return stands in for it (taken when the episode ends).
        score = np.zeros(len(rewards)) if domain.score is None else np.asarray(domain.score(obs), dtype=np.float64)
        depth = np.zeros(len(rewards), dtype=np.int64) if domain.depth is None else np.asarray(domain.depth(obs))
        turns = np.zeros(len(rewards), dtype=np.int64) if domain.turns is None else np.asarray(domain.turns(obs))
        return score, depth, turns

    played: list[list[tuple[float, float, int, int, str, int]]] = [[] for _ in range(num_envs)]
    try:
        obs, _ = envs.reset(seed=seed)
        running = _RunningEpisodes(*game_state(obs, np.zeros(num_envs)))
        active = np.ones(num_envs, dtype=bool)  # False on the autoreset step after an episode end
        finished = np.zeros(num_envs, dtype=np.int64)
        while (finished < quota).any():
            counting = active & (finished < quota)
            atoms = None
            if columns is not None:
                atoms = domain.atoms(obs)
                obs = {**obs, "atoms": atoms[:, columns]}
            step = agent.act(obs)
            if not isinstance(step, AgentStep):
                step = AgentStep(np.asarray(step))
            if step.router_weights is not None and domain.atoms is not None:
                atoms = domain.atoms(obs) if atoms is None else atoms
                usage.add(atoms, np.asarray(step.router_weights, dtype=np.float64), counting)
            obs, reward, terminated, truncated, info = envs.step(np.asarray(step.actions))
            _, done, aborted = domain.episode_ends(terminated, truncated, info)
            if callable(getattr(agent, "end_episodes", None)):
                agent.end_episodes(done)
            running.update(active, reward, *game_state(obs, reward))
            for i in np.flatnonzero(done & (finished < quota)):  # episode ends only: rare
                outcome = str(info["outcome"][i]) if "outcome" in info and info["_outcome"][i] else None
                if outcome == "truncated" or (outcome is None and (aborted[i] or truncated[i])):
                    outcome = "step cap"
                elif outcome is None:  # an env without EpisodeOutcome
                    outcome = "terminated"
                played[i].append(
                    (
                        float(running.score[i] if domain.score is not None else running.episode_return[i]),
                        float(running.episode_return[i]),
                        int(running.depth[i]),
                        int(running.length[i]),
                        outcome,
                        int(running.turns[i]),
                    )
                )
                finished[i] += 1
            active = ~done
    finally:
        envs.close()

    episodes_in_order = [episode for per_env in played for episode in per_env]
    scores, returns, depths, lengths, outcomes, turns = (
        list(column) for column in zip(*episodes_in_order, strict=True)
    )
    routed = usage.weight is not None
    if routed and expert_names is None:
        expert_names = [f"expert_{e}" for e in range(usage.weight.shape[1])]
    return EvalResult(
        env_id=env_id,
        seed=seed,
        num_envs=num_envs,
        max_episode_steps=max_episode_steps,
        scores=scores,
        returns=returns,
        depths=depths,
        lengths=lengths,
        outcomes=outcomes,
        expert_names=list(expert_names) if routed else [],
        situations=usage.names if routed else [],
        usage_weight=usage.weight.tolist() if routed else [],
        usage_top1=usage.top1.tolist() if routed else [],
        usage_steps=usage.steps.tolist() if routed else [],
        metadata=dict(metadata or {}),
        turns=turns if domain.turns is not None else [],
    )
