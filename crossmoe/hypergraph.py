"""A symbolic hypergraph of conditions, operators and effects, and its JSON formats.

Conditions are boolean facts about an observation (``hp_low``,
``monster_adjacent``). An operator is a hyperedge: it *requires* a set of
conditions and *produces* a set of effects, belongs to one expert and uses some
actions. :class:`Hypergraph` holds that structure and reads and writes it as
JSON. Nothing here is specific to a game, and nothing needs torch-geometric;
the graph-attention encoder is :class:`crossmoe.graph.HypergraphEncoder`, and
the NetHack graph and rules live in :mod:`crossmoe.nethack`.
"""

from __future__ import annotations

import enum
import json
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossmoe._cache import DeviceCache
from crossmoe.experts import DEFAULT_EXPERT_NAMES

__all__ = ["FORMAT", "Hypergraph", "OperatorSpec", "action_name", "env_actions"]

#: The ``format`` value of a document in the crossmoe JSON schema (see :meth:`Hypergraph.from_json`).
FORMAT = "crossmoe.hypergraph"

# Relations of the research {nodes, edges} format.
_RESEARCH_REQUIRES = ("satisfies", "context_of")
_RESEARCH_PRODUCES = ("leads_to",)


def action_name(action: Any) -> str:
    """Name of an action the way a hypergraph refers to it.

    An enum member (such as ``nle.nethack.CompassDirection.N``) is named
    ``"CompassDirection.N"``; anything else by ``str``.
    """
    if isinstance(action, enum.Enum):
        return f"{type(action).__name__}.{action.name}"
    return str(action)


def env_actions(env: Any) -> list[str] | None:
    """Names of the actions of an env or a vector env (sync or async, wrapped or not); None when it lists none.

    An env lists its actions as ``env.unwrapped.actions``, in action-index
    order: NLE's tuple of enum members, or MiniGrid's ``Actions`` enum. These
    are the names :meth:`Hypergraph.action_mask` and
    :class:`~crossmoe.rules.RuleAgent` take as ``action_set``.
    """
    base = getattr(env, "unwrapped", env)  # a vector env's wrappers unwrap to the vector env itself
    single = (getattr(base, "envs", None) or [base])[0]  # a SyncVectorEnv holds its envs
    actions = getattr(getattr(single, "unwrapped", single), "actions", None)
    if actions is None and hasattr(base, "get_attr"):
        try:
            actions = base.get_attr("actions")[0]  # an AsyncVectorEnv asks its workers
        except (AttributeError, IndexError):
            actions = None
    return None if actions is None else [action_name(a) for a in actions]


@dataclass(frozen=True)
class OperatorSpec:
    """One operator (hyperedge) of a :class:`Hypergraph`.

    Args:
        name: Unique operator name.
        requires: Names of the precondition conditions; all must hold for the
            operator to be applicable. Empty means always applicable.
        produces: Names of the effects.
        expert: Name of the expert that owns the operator.
        actions: Actions the operator uses: ``"Enum.MEMBER"`` names (for
            example ``"CompassDirection.N"``), ``"Enum.*"`` for every member of
            an enum, or integer action indices.
        description: Free text for the docs.
    """

    name: str
    requires: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    expert: str = "general"
    actions: tuple[str | int, ...] = ()
    description: str = ""


class Hypergraph:
    """Conditions, operators and effects, with typed *requires* and *produces* edges.

    Args:
        conditions: Condition names, in the column order of the activations.
        operators: One :class:`OperatorSpec` per operator.
        effects: Effect names.
        experts: Expert names; each operator's ``expert`` must be one of them.
        descriptions: Optional ``{name: text}`` for conditions and effects.

    Example:
        >>> graph = Hypergraph(
        ...     ["hungry", "has_food"],
        ...     [OperatorSpec("eat", requires=("hungry", "has_food"), expert="survival")],
        ... )
        >>> graph.applicable(torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
        tensor([[ True],
                [False]])
    """

    def __init__(
        self,
        conditions: Sequence[str],
        operators: Sequence[OperatorSpec],
        effects: Sequence[str] = (),
        *,
        experts: Sequence[str] = DEFAULT_EXPERT_NAMES,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        self.conditions = list(conditions)
        self.specs = tuple(operators)
        self.operators = [op.name for op in self.specs]
        self.effects = list(effects)
        self.experts = list(experts)
        self.descriptions = dict(descriptions or {})
        for kind, names in (("conditions", self.conditions), ("operators", self.operators), ("effects", self.effects)):
            _check_unique(kind, names)
        _check_unique("experts", self.experts)
        if not self.conditions:
            raise ValueError("conditions must name at least one condition, got none")
        if not self.operators:
            raise ValueError("operators must hold at least one OperatorSpec, got none")

        cond_index = {name: i for i, name in enumerate(self.conditions)}
        effect_index = {name: i for i, name in enumerate(self.effects)}
        expert_index = {name: i for i, name in enumerate(self.experts)}
        requires, produces, op_experts = [], [], []
        for o, op in enumerate(self.specs):
            if op.expert not in expert_index:
                raise ValueError(f"operator {op.name!r}: expert must be one of {self.experts}, got {op.expert!r}")
            op_experts.append(expert_index[op.expert])
            for name in dict.fromkeys(op.requires):
                if name not in cond_index:
                    raise ValueError(f"operator {op.name!r} requires an unknown condition {name!r}")
                requires.append((cond_index[name], o))
            for name in dict.fromkeys(op.produces):
                if name not in effect_index:
                    raise ValueError(f"operator {op.name!r} produces an unknown effect {name!r}")
                produces.append((o, effect_index[name]))
        self.requires = requires
        self.produces = produces
        self._operator_experts = op_experts
        self._precondition = torch.zeros(len(self.conditions), len(self.operators))
        for cond, op in requires:
            self._precondition[cond, op] = 1.0
        self._precondition_on: DeviceCache[Tensor] = DeviceCache()

    # --- structure as tensors -------------------------------------------------------------------------

    @property
    def num_conditions(self) -> int:
        return len(self.conditions)

    @property
    def num_operators(self) -> int:
        return len(self.operators)

    @property
    def num_effects(self) -> int:
        return len(self.effects)

    @property
    def operator_to_expert(self) -> Tensor:
        """``(O,)`` LongTensor: the expert index of each operator."""
        return torch.tensor(self._operator_experts, dtype=torch.long)

    @property
    def requires_index(self) -> Tensor:
        """``(2, R)`` LongTensor of ``(condition, operator)`` pairs."""
        return torch.tensor(self.requires, dtype=torch.long).reshape(-1, 2).t().contiguous()

    @property
    def produces_index(self) -> Tensor:
        """``(2, P)`` LongTensor of ``(operator, effect)`` pairs."""
        return torch.tensor(self.produces, dtype=torch.long).reshape(-1, 2).t().contiguous()

    @property
    def precondition_matrix(self) -> Tensor:
        """``(C, O)`` bool: entry ``[c, o]`` is True when operator ``o`` requires condition ``c``."""
        return self._precondition.bool()

    def applicable(self, activations: Tensor | np.ndarray, threshold: float = 0.5) -> Tensor:
        """Which operators have all their preconditions met.

        A condition holds when its activation is above ``threshold``. An
        operator without preconditions is always applicable.

        Shapes:
            - activations: ``(B, C)``
            - output: ``(B, O)`` bool
        """
        activations = torch.as_tensor(activations)
        if activations.dim() != 2 or activations.shape[1] != self.num_conditions:
            raise ValueError(
                f"activations must be (B, C) with C={self.num_conditions}, got shape {tuple(activations.shape)}"
            )
        unmet = (~(activations > threshold)).to(torch.float32)  # NaN never satisfies a precondition
        required = self._precondition_on.get(activations.device, self._precondition.to)
        return (unmet @ required) == 0  # number of unmet preconditions per operator

    def action_mask(self, action_set: Sequence[Any]) -> Tensor:
        """``(O, A)`` bool: which of the env's actions each operator uses.

        Action names are resolved against ``action_set``, the env's own list of
        actions (for NLE, ``env.unwrapped.actions``). Names the env does not
        have are skipped, so one graph serves action sets of different sizes.
        Integer actions are taken as indices.
        """
        names = [action_name(a) for a in action_set]
        position = {name: i for i, name in enumerate(names)}
        mask = torch.zeros(self.num_operators, len(names), dtype=torch.bool)
        for o, op in enumerate(self.specs):
            for action in op.actions:
                if isinstance(action, enum.Enum):
                    action = action_name(action)
                if isinstance(action, numbers.Integral):
                    action = int(action)
                    if not 0 <= action < len(names):
                        raise ValueError(
                            f"operator {op.name!r}: action index must lie in [0, {len(names)}), got {action}"
                        )
                    mask[o, action] = True
                elif action.endswith(".*"):
                    prefix = action[:-1]
                    for i, name in enumerate(names):
                        if name.startswith(prefix):
                            mask[o, i] = True
                elif action in position:
                    mask[o, position[action]] = True
        return mask

    # --- JSON --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The graph in the ``crossmoe.hypergraph`` JSON schema (see :meth:`from_json`)."""

        def described(name: str) -> dict[str, str]:
            return {"name": name, "description": self.descriptions.get(name, "")}

        return {
            "format": FORMAT,
            "version": 1,
            "experts": list(self.experts),
            "conditions": [described(name) for name in self.conditions],
            "effects": [described(name) for name in self.effects],
            "operators": [
                {
                    "name": op.name,
                    "expert": op.expert,
                    "requires": list(op.requires),
                    "produces": list(op.produces),
                    "actions": list(op.actions),
                    "description": op.description,
                }
                for op in self.specs
            ],
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        operator_to_expert: Mapping[str, str] | Callable[[str], str] | None = None,
    ) -> Hypergraph:
        """Build a graph from a parsed JSON document; see :meth:`from_json`.

        A malformed document (a wrong type anywhere, a missing name) raises a
        ``TypeError`` or ``ValueError`` that says where, never an error from
        deep inside.
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"data must be a JSON object (a {FORMAT!r} document or a research graph), got {type(data).__name__}"
            )
        if "nodes" in data and "edges" in data:
            if operator_to_expert is None:
                warnings.warn(
                    "a research {nodes, edges} graph names no experts, so every operator is 'general'; pass "
                    "operator_to_expert (for NetHack, crossmoe.nethack.expert_from_label, which "
                    "crossmoe.nethack.load_hypergraph(path) applies)",
                    UserWarning,
                    stacklevel=3,
                )
            return cls._from_research(data, operator_to_expert)
        if data.get("format") != FORMAT:
            raise ValueError(
                f"data must be a {FORMAT!r} document or a research graph with 'nodes' and 'edges', "
                f"got keys {sorted(data)}"
            )

        def names(key: str) -> tuple[list[str], dict[str, str]]:
            out, text = [], {}
            for i, item in enumerate(_json_list(data, key, key)):
                if isinstance(item, str):
                    out.append(item)
                    continue
                where = f"{key}[{i}]"
                if not isinstance(item, Mapping):
                    raise TypeError(f"{where} must be a name or an object with a 'name', got {type(item).__name__}")
                out.append(_json_str(item, "name", where))
                text[out[-1]] = _json_str(item, "description", where, default="")
            return out, text

        conditions, cond_text = names("conditions")
        effects, effect_text = names("effects")
        experts = _json_list(data, "experts", "experts", default=list(DEFAULT_EXPERT_NAMES))
        for i, expert in enumerate(experts):
            if not isinstance(expert, str):
                raise TypeError(f"experts[{i}] must be a string, got {type(expert).__name__}")
        specs = []
        for i, op in enumerate(_json_list(data, "operators", "operators")):
            where = f"operators[{i}]"
            if not isinstance(op, Mapping) or "name" not in op:
                raise ValueError(f"each operator must be an object with a 'name', got {where} = {op!r:.80}")
            name = _json_str(op, "name", where)
            expert = _json_str(op, "expert", where, default="general")
            if operator_to_expert is not None:
                expert = _lookup_expert(operator_to_expert, name, expert)
            lists = {}
            for key in ("requires", "produces", "actions"):
                items = _json_list(op, key, f"{where}.{key}")
                for j, item in enumerate(items):
                    allowed = (str, int) if key == "actions" else (str,)
                    if not isinstance(item, allowed) or isinstance(item, bool):
                        expected = "a name or an action index" if key == "actions" else "a condition or effect name"
                        raise TypeError(f"{where}.{key}[{j}] must be {expected}, got {type(item).__name__}")
                lists[key] = tuple(items)
            specs.append(
                OperatorSpec(name=name, expert=expert, description=_json_str(op, "description", where, ""), **lists)
            )
        return cls(conditions, specs, effects, experts=experts, descriptions={**cond_text, **effect_text})

    @classmethod
    def from_json(
        cls,
        path: str | os.PathLike[str],
        *,
        operator_to_expert: Mapping[str, str] | Callable[[str], str] | None = None,
    ) -> Hypergraph:
        """Read a graph from JSON, in either of two formats.

        **crossmoe schema** (what :meth:`to_json` writes)::

            {"format": "crossmoe.hypergraph", "version": 1,
             "experts": ["survival", "combat", "exploration", "general"],
             "conditions": [{"name": "hungry", "description": "..."}, ...],
             "effects": [{"name": "hunger_relieved", "description": "..."}, ...],
             "operators": [{"name": "eat_food", "expert": "survival",
                            "requires": ["hungry", "has_food"], "produces": ["hunger_relieved"],
                            "actions": ["Command.EAT"], "description": "..."}, ...]}

        **Research format** ``{"meta": ..., "nodes": [{"id", "label", "type"}], "edges": [[src, dst, rel]]}``:
        node types are ``condition``, ``operator`` and ``effect``;
        ``satisfies`` and ``context_of`` edges link a condition to an operator
        (*requires*), ``leads_to`` edges link an operator to an effect
        (*produces*). That format has no expert field: each operator's expert
        comes from ``operator_to_expert``, and is ``"general"`` where it says
        nothing. For the NetHack research graphs,
        :func:`crossmoe.nethack.expert_from_label` derives the expert from the
        action word an operator's label starts with, and
        :func:`crossmoe.nethack.load_hypergraph` applies it.
        Preconditions are conjunctive here as everywhere, so research graphs
        that merged several observed contexts into one operator (the NetHack
        research graph has operators requiring both ``has_gold`` and
        ``no_gold``) contain operators that :meth:`applicable` never marks
        applicable; their tokens are still learned from the messages.

        Args:
            path: The JSON file.
            operator_to_expert: Overrides the experts: a ``{operator name:
                expert name}`` mapping (operators it does not name keep their
                expert, ``"general"`` in the research format) or a callable
                from operator name to expert name.
        """
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls.from_dict(data, operator_to_expert=operator_to_expert)

    @classmethod
    def _from_research(
        cls,
        data: Mapping[str, Any],
        operator_to_expert: Mapping[str, str] | Callable[[str], str] | None,
    ) -> Hypergraph:
        raw_nodes, edges = _json_list(data, "nodes", "nodes"), _json_list(data, "edges", "edges")
        nodes: dict[Any, Mapping[str, Any]] = {}
        for i, node in enumerate(raw_nodes):
            where = f"nodes[{i}]"
            if not isinstance(node, Mapping):
                raise TypeError(f"{where} must be an object with 'id', 'label' and 'type', got {type(node).__name__}")
            if "id" not in node or isinstance(node["id"], (bool, list, dict)) or node["id"] is None:
                raise ValueError(f"{where} must have an 'id' (a string or an integer), got {node.get('id')!r:.80}")
            _json_str(node, "label", where)
            _json_str(node, "type", where)
            nodes[node["id"]] = node
        for i, edge in enumerate(edges):
            if not isinstance(edge, (list, tuple)) or len(edge) != 3 or not isinstance(edge[2], str):
                raise ValueError(f"edges[{i}] must be [source id, target id, relation name], got {edge!r:.80}")
            if any(isinstance(end, (list, dict)) for end in edge[:2]):
                raise ValueError(f"edges[{i}] must connect node ids (strings or integers), got {edge!r:.80}")
        missing = {end for edge in edges for end in edge[:2] if end not in nodes}
        if missing:
            raise ValueError(f"edges must connect existing node ids, got unknown ids {sorted(missing)[:5]}")
        by_type: dict[str, list[str]] = {"condition": [], "operator": [], "effect": []}
        for node in raw_nodes:
            if node["type"] not in by_type:
                raise ValueError(f"node {node['id']}: type must be one of {sorted(by_type)}, got {node['type']!r}")
            by_type[node["type"]].append(node["label"])
        requires: dict[str, list[str]] = {label: [] for label in by_type["operator"]}
        produces: dict[str, list[str]] = {label: [] for label in by_type["operator"]}
        for src, dst, rel in edges:
            ends = {nodes[src]["type"]: nodes[src]["label"], nodes[dst]["type"]: nodes[dst]["label"]}
            if rel in _RESEARCH_REQUIRES and {"condition", "operator"} <= ends.keys():
                requires[ends["operator"]].append(ends["condition"])
            elif rel in _RESEARCH_PRODUCES and {"operator", "effect"} <= ends.keys():
                produces[ends["operator"]].append(ends["effect"])
            else:
                raise ValueError(
                    f"edge {[src, dst, rel]}: expected a condition-operator {_RESEARCH_REQUIRES} edge or an "
                    f"operator-effect {_RESEARCH_PRODUCES} edge, got {rel!r} between {sorted(ends)}"
                )
        specs = []
        for label in by_type["operator"]:
            expert = "general"
            if operator_to_expert is not None:
                expert = _lookup_expert(operator_to_expert, label, expert)
            specs.append(
                OperatorSpec(
                    label,
                    requires=tuple(dict.fromkeys(requires[label])),
                    produces=tuple(dict.fromkeys(produces[label])),
                    expert=expert,
                )
            )
        return cls(by_type["condition"], specs, by_type["effect"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(conditions={self.num_conditions}, operators={self.num_operators}, "
            f"effects={self.num_effects}, requires={len(self.requires)}, produces={len(self.produces)}, "
            f"experts={self.experts})"
        )


def _check_unique(kind: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{kind} must have unique names, got {name!r} twice")
        seen.add(name)


def _json_list(data: Mapping[str, Any], key: str, where: str, default: Any = ()) -> list[Any]:
    """``data[key]`` (``default`` when absent), which must be a JSON array."""
    value = data.get(key, default)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where} must be a list, got {type(value).__name__}")
    return list(value)


def _json_str(data: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    """``data[key]``, which must be a string (``default`` when absent, if given)."""
    if key not in data and default is not None:
        return default
    value = data.get(key)
    if not isinstance(value, str):
        raise TypeError(f"{where}.{key} must be a string, got {type(value).__name__}")
    return value


def _lookup_expert(mapping: Mapping[str, str] | Callable[[str], str], name: str, default: str) -> str:
    if callable(mapping):
        return mapping(name)
    return mapping.get(name, default)
