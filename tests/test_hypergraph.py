"""The hypergraph data model and its JSON formats (crossmoe.hypergraph); the encoder is in test_graph.py."""

import copy
import enum
import json
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import crossmoe
from crossmoe.hypergraph import FORMAT, Hypergraph, OperatorSpec, action_name

EXPERTS = ("survival", "combat", "exploration", "general")


def _kitchen_graph():
    """Four conditions, four operators (one without preconditions), three effects."""
    return Hypergraph(
        ["hungry", "has_food", "monster_adjacent", "hp_low"],
        [
            OperatorSpec("eat", requires=("hungry", "has_food"), produces=("fed",), expert="survival"),
            OperatorSpec("fight", requires=("monster_adjacent",), produces=("xp",), expert="combat"),
            OperatorSpec("flee", requires=("monster_adjacent", "hp_low"), produces=("safe",), expert="survival"),
            OperatorSpec("wait", produces=("safe",)),
        ],
        ["fed", "xp", "safe"],
    )


# Six conditions, six operators. Every operator with preconditions has two of them, every
def _brute_force_applicable(graph, activations, threshold=0.5):
    position = {name: i for i, name in enumerate(graph.conditions)}
    return torch.tensor(
        [[all(float(row[position[c]]) > threshold for c in op.requires) for op in graph.specs] for row in activations]
    )


# --- Hypergraph structure ----------------------------------------------------------------------------


def test_construction_exposes_names_and_typed_edges():
    graph = _kitchen_graph()
    assert graph.conditions == ["hungry", "has_food", "monster_adjacent", "hp_low"]
    assert graph.operators == ["eat", "fight", "flee", "wait"]
    assert graph.effects == ["fed", "xp", "safe"]
    assert graph.experts == list(EXPERTS)
    assert (graph.num_conditions, graph.num_operators, graph.num_effects) == (4, 4, 3)
    assert sorted(graph.requires) == [(0, 0), (1, 0), (2, 1), (2, 2), (3, 2)]
    assert sorted(graph.produces) == [(0, 0), (1, 1), (2, 2), (3, 2)]


def test_operator_to_expert_is_a_long_vector_of_expert_indices():
    expert_of = _kitchen_graph().operator_to_expert
    assert expert_of.dtype == torch.long and expert_of.shape == (4,)
    assert expert_of.tolist() == [0, 1, 0, 3]


def test_custom_expert_names_set_the_indices():
    graph = Hypergraph(
        ["a"], [OperatorSpec("x", ("a",), expert="b"), OperatorSpec("y", expert="a")], experts=["a", "b"]
    )
    assert graph.operator_to_expert.tolist() == [1, 0]


def test_edge_indices_and_precondition_matrix_agree_with_the_specs():
    graph = _kitchen_graph()
    requires, produces = graph.requires_index, graph.produces_index
    assert requires.dtype == produces.dtype == torch.long
    assert requires.shape == (2, 5) and produces.shape == (2, 4)
    assert {(graph.conditions[c], graph.operators[o]) for c, o in requires.t().tolist()} == {
        (c, op.name) for op in graph.specs for c in op.requires
    }
    assert {(graph.operators[o], graph.effects[e]) for o, e in produces.t().tolist()} == {
        (op.name, e) for op in graph.specs for e in op.produces
    }
    matrix = graph.precondition_matrix
    assert matrix.dtype == torch.bool and matrix.shape == (4, 4)
    expected = torch.tensor([[c in op.requires for op in graph.specs] for c in graph.conditions])
    assert torch.equal(matrix, expected)


def test_repeated_requirement_gives_one_edge():
    graph = Hypergraph(["a", "b"], [OperatorSpec("x", requires=("a", "a", "b"))])
    assert graph.requires_index.shape == (2, 2)
    assert graph.applicable(torch.tensor([[1.0, 1.0], [1.0, 0.0]])).tolist() == [[True], [False]]


def test_graph_without_edges_has_empty_indices():
    graph = Hypergraph(["a"], [OperatorSpec("x")])
    assert graph.requires_index.shape == (2, 0) and graph.produces_index.shape == (2, 0)
    assert graph.requires_index.dtype == torch.long


def test_applicable_matches_hand_computed_table():
    graph = _kitchen_graph()
    # columns: hungry, has_food, monster_adjacent, hp_low
    activations = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0],  # eat
            [1.0, 0.0, 1.0, 1.0],  # fight, flee
            [0.0, 0.0, 1.0, 0.0],  # fight
            [0.0, 0.0, 0.0, 0.0],  # nothing but wait
        ]
    )
    expected = [
        [True, False, False, True],
        [False, True, True, True],
        [False, True, False, True],
        [False, False, False, True],
    ]
    assert graph.applicable(activations).tolist() == expected
    assert graph.applicable(activations.numpy()).tolist() == expected


def test_applicable_needs_activation_strictly_above_threshold():
    graph = Hypergraph(["a"], [OperatorSpec("x", requires=("a",)), OperatorSpec("always")])
    activations = torch.tensor([[0.5], [0.5001], [0.49], [1.0], [-3.0]])
    expected = [[False, True], [True, True], [False, True], [True, True], [False, True]]
    assert graph.applicable(activations).tolist() == expected
    assert graph.applicable(activations, threshold=0.0).tolist() == [[True, True]] * 4 + [[False, True]]


def test_applicable_accepts_bool_and_integer_activations():
    graph = _kitchen_graph()
    bools = torch.tensor([[True, True, False, False], [False, False, True, True]])
    expected = _brute_force_applicable(graph, bools.float())
    assert torch.equal(graph.applicable(bools), expected)
    assert torch.equal(graph.applicable(bools.long()), expected)


def test_nan_activation_does_not_satisfy_a_precondition():
    graph = Hypergraph(["a"], [OperatorSpec("x", requires=("a",))])
    assert graph.applicable(torch.tensor([[float("nan")]])).tolist() == [[False]]


@st.composite
def _graphs_and_activations(draw):
    num_conditions = draw(st.integers(1, 6))
    num_operators = draw(st.integers(1, 6))
    conditions = [f"c{i}" for i in range(num_conditions)]
    specs = [
        OperatorSpec(f"o{o}", requires=tuple(draw(st.lists(st.sampled_from(conditions), max_size=4))))
        for o in range(num_operators)
    ]
    levels = st.sampled_from([0.0, 0.2, 0.5, 0.5001, 0.8, 1.0])
    batch = draw(st.integers(1, 5))
    rows = draw(st.lists(st.lists(levels, min_size=num_conditions, max_size=num_conditions), min_size=batch))
    return Hypergraph(conditions, specs), torch.tensor(rows)


@given(_graphs_and_activations())
def test_applicable_matches_brute_force_on_random_graphs(graph_and_activations):
    graph, activations = graph_and_activations
    result = graph.applicable(activations)
    assert result.dtype == torch.bool and result.shape == (activations.shape[0], graph.num_operators)
    assert torch.equal(result, _brute_force_applicable(graph, activations))


def test_applicable_rejects_wrong_shape():
    graph = _kitchen_graph()
    with pytest.raises(ValueError, match=r"activations must be \(B, C\) with C=4, got shape \(2, 3\)"):
        graph.applicable(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        graph.applicable(torch.ones(4))


# --- action_mask ---------------------------------------------------------------------------------------


class Move(enum.Enum):
    N = 0
    E = 1
    S = 2
    W = 3


class MoveFar(enum.IntEnum):  # its name starts with "Move": "Move.*" must not reach it
    N = 75


class Command(enum.IntEnum):
    EAT = 101
    KICK = 4


def test_action_name_of_enum_members_and_plain_values():
    assert action_name(Move.N) == "Move.N"
    assert action_name(Command.EAT) == "Command.EAT"
    assert action_name(MoveFar.N) == "MoveFar.N"
    assert action_name("wait") == "wait"
    assert action_name(7) == "7"


def test_action_mask_resolves_names_wildcards_and_indices():
    graph = Hypergraph(
        ["a"],
        [
            OperatorSpec("walk", actions=("Move.*",)),
            OperatorSpec("eat", actions=("Command.EAT", "Move.N")),
            OperatorSpec("by_index", actions=(0, 6)),
            OperatorSpec("absent", actions=("Command.PRAY", "Other.X")),
            OperatorSpec("plain", actions=("wait",)),
        ],
    )
    action_set = [Move.N, Move.E, Move.S, Move.W, Command.EAT, Command.KICK, MoveFar.N, "wait"]
    mask = graph.action_mask(action_set)
    assert mask.dtype == torch.bool and mask.shape == (5, 8)
    expected = [
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0],
        [1, 0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
    ]
    assert mask.int().tolist() == expected


def test_action_mask_skips_names_the_action_set_lacks():
    graph = Hypergraph(
        ["a"], [OperatorSpec("eat", actions=("Command.EAT",)), OperatorSpec("walk", actions=("Move.*",))]
    )
    mask = graph.action_mask([Command.KICK, Command.EAT])
    assert mask.int().tolist() == [[0, 1], [0, 0]]


@pytest.mark.parametrize("index", [3, -1])
def test_action_mask_rejects_out_of_range_index(index):
    graph = Hypergraph(["a"], [OperatorSpec("bad", actions=(index,))])
    with pytest.raises(ValueError, match=rf"operator 'bad': action index must lie in \[0, 3\), got {index}"):
        graph.action_mask([Move.N, Move.E, Move.S])


def test_action_mask_with_nethack_enums():
    nethack = pytest.importorskip("nle.nethack")
    tasks = pytest.importorskip("nle.env.tasks")
    score_actions = list(tasks.TASK_ACTIONS)
    assert len(score_actions) == 23
    assert action_name(nethack.CompassDirection.N) == "CompassDirection.N"
    graph = Hypergraph(
        ["a"],
        [
            OperatorSpec("everything", actions=tuple(action_name(a) for a in score_actions)),
            OperatorSpec("move", actions=("CompassDirection.*",)),
            OperatorSpec("run", actions=("CompassDirectionLonger.*",)),
            OperatorSpec("eat", actions=("Command.EAT",)),
        ],
    )
    full = graph.action_mask(score_actions)
    assert full.shape == (4, 23)
    assert full[0].all()
    compass = [isinstance(a, nethack.CompassDirection) for a in score_actions]
    assert full[1].tolist() == compass
    assert full[2].tolist() == [isinstance(a, nethack.CompassDirectionLonger) for a in score_actions]
    assert full[3].tolist() == [a is nethack.Command.EAT for a in score_actions]

    only_compass = graph.action_mask(list(nethack.CompassDirection))
    assert only_compass.shape == (4, 8)
    assert only_compass[0].all() and only_compass[1].all()
    assert not only_compass[2:].any()


# --- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Hypergraph(["a", "a"], [OperatorSpec("x")]), "conditions must have unique names, got 'a' twice"),
        (
            lambda: Hypergraph(["a"], [OperatorSpec("x"), OperatorSpec("x")]),
            "operators must have unique names, got 'x' twice",
        ),
        (lambda: Hypergraph(["a"], [OperatorSpec("x")], ["e", "e"]), "effects must have unique names, got 'e' twice"),
        (
            lambda: Hypergraph(["a"], [OperatorSpec("x")], experts=["s", "s"]),
            "experts must have unique names, got 's' twice",
        ),
        (
            lambda: Hypergraph(["a"], [OperatorSpec("x", requires=("b",))]),
            "operator 'x' requires an unknown condition 'b'",
        ),
        (
            lambda: Hypergraph(["a"], [OperatorSpec("x", produces=("gone",))], ["e"]),
            "operator 'x' produces an unknown effect 'gone'",
        ),
        (lambda: Hypergraph(["a"], [OperatorSpec("x", expert="wizard")]), "operator 'x': expert must be one of"),
        (lambda: Hypergraph([], [OperatorSpec("x")]), "conditions must name at least one condition"),
        (lambda: Hypergraph(["a"], []), "operators must hold at least one OperatorSpec"),
    ],
)
def test_invalid_graphs_raise_value_error_naming_the_problem(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# --- JSON, crossmoe schema -----------------------------------------------------------------------------


def _described_graph():
    return Hypergraph(
        ["hungry", "has_food"],
        [
            OperatorSpec(
                "eat",
                requires=("hungry", "has_food"),
                produces=("fed",),
                expert="eater",
                actions=("Command.EAT", 3),
                description="eat something",
            ),
            OperatorSpec("idle", actions=("Move.*",)),
        ],
        ["fed"],
        experts=["eater", "general"],
        descriptions={"hungry": "hunger status is Hungry or worse", "fed": "no longer hungry"},
    )


def _structure(graph):
    return (
        graph.conditions,
        graph.operators,
        graph.effects,
        graph.experts,
        graph.requires,
        graph.produces,
        [op.actions for op in graph.specs],
        [op.requires for op in graph.specs],
        [op.produces for op in graph.specs],
        [op.description for op in graph.specs],
        graph.operator_to_expert.tolist(),
    )


def test_json_round_trip_keeps_everything(tmp_path):
    graph = _described_graph()
    path = tmp_path / "graph.json"
    graph.to_json(path)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["version"] == 1
    loaded = Hypergraph.from_json(path)
    assert _structure(loaded) == _structure(graph)
    assert loaded.specs == graph.specs
    for name in ("hungry", "fed"):
        assert loaded.descriptions[name] == graph.descriptions[name]
    assert loaded.descriptions.get("has_food", "") == ""


def test_from_dict_accepts_bare_name_lists_and_defaults():
    data = {
        "format": FORMAT,
        "conditions": ["a", "b"],
        "effects": ["e"],
        "operators": [{"name": "x", "requires": ["a"], "produces": ["e"]}],
    }
    graph = Hypergraph.from_dict(data)
    assert graph.conditions == ["a", "b"] and graph.effects == ["e"]
    assert graph.experts == list(EXPERTS)
    assert graph.specs[0] == OperatorSpec("x", requires=("a",), produces=("e",), expert="general")


def test_from_dict_expert_override_in_crossmoe_schema():
    data = _described_graph().to_dict()
    graph = Hypergraph.from_dict(data, operator_to_expert={"idle": "eater"})
    assert [op.expert for op in graph.specs] == ["eater", "eater"]


@pytest.mark.parametrize("data", [{}, {"format": "something.else", "operators": []}, {"nodes": []}])
def test_from_dict_rejects_unknown_format(data):
    with pytest.raises(ValueError, match=r"data must be a 'crossmoe\.hypergraph' document or a research graph"):
        Hypergraph.from_dict(data)


# --- JSON, research format -----------------------------------------------------------------------------


def _research_dict():
    nodes = [
        (1, "hungry", "condition"),
        (2, "has_food", "condition"),
        (3, "monster_adjacent", "condition"),
        (4, "unexplored_near", "condition"),
        (10, "eat_x", "operator"),
        (11, "melee_attack_vs_newt", "operator"),
        (12, "move_abc", "operator"),
        (13, "look_abc", "operator"),
        (20, "hunger_relieved", "effect"),
        (21, "monster_killed", "effect"),
        (22, "new_area", "effect"),
    ]
    edges = [
        [1, 10, "satisfies"],
        [2, 10, "context_of"],
        [1, 10, "satisfies"],  # duplicate
        [1, 10, "context_of"],  # same pair through the other relation
        [11, 3, "satisfies"],  # operator -> condition: read by node type
        [4, 12, "context_of"],
        [10, 20, "leads_to"],
        [11, 21, "leads_to"],
        [11, 21, "leads_to"],  # duplicate
        [22, 12, "leads_to"],  # effect -> operator: read by node type
    ]
    return {
        "meta": {"version": "test", "node_types": {"condition": 4, "operator": 4, "effect": 3}},
        "nodes": [{"id": i, "label": label, "type": kind} for i, label, kind in nodes],
        "edges": edges,
    }


@pytest.mark.filterwarnings("ignore:a research:UserWarning")
def test_research_format_reads_typed_nodes_and_edges():
    graph = Hypergraph.from_dict(_research_dict())
    assert graph.conditions == ["hungry", "has_food", "monster_adjacent", "unexplored_near"]
    assert graph.operators == ["eat_x", "melee_attack_vs_newt", "move_abc", "look_abc"]
    assert graph.effects == ["hunger_relieved", "monster_killed", "new_area"]
    by_name = {op.name: op for op in graph.specs}
    assert set(by_name["eat_x"].requires) == {"hungry", "has_food"}
    assert len(by_name["eat_x"].requires) == 2
    assert by_name["melee_attack_vs_newt"].requires == ("monster_adjacent",)
    assert by_name["move_abc"].requires == ("unexplored_near",)
    assert by_name["look_abc"].requires == ()
    assert by_name["eat_x"].produces == ("hunger_relieved",)
    assert by_name["melee_attack_vs_newt"].produces == ("monster_killed",)
    assert by_name["move_abc"].produces == ("new_area",)
    assert len(graph.requires) == 4 and len(graph.produces) == 3


def test_research_format_experts_default_to_general():
    """The format has no expert field, and the domain-agnostic reader knows no action words."""
    with pytest.warns(UserWarning, match="names no experts, so every operator is 'general'; pass operator_to_expert"):
        graph = Hypergraph.from_dict(_research_dict())
    assert [op.expert for op in graph.specs] == ["general"] * 4
    assert graph.operator_to_expert.tolist() == [3, 3, 3, 3]
    applicable = graph.applicable(torch.zeros(1, 4))
    assert applicable.tolist() == [[False, False, False, True]]  # look_abc has no preconditions


def test_research_format_expert_override_mapping_and_callable(tmp_path):
    path = tmp_path / "research.json"
    path.write_text(json.dumps(_research_dict()))
    mapped = Hypergraph.from_json(path, operator_to_expert={"look_abc": "combat", "move_abc": "survival"})
    assert [op.expert for op in mapped.specs] == ["general", "general", "survival", "combat"]
    called = Hypergraph.from_json(path, operator_to_expert=lambda name: "exploration" if "x" in name else "general")
    assert [op.expert for op in called.specs] == ["exploration", "general", "general", "general"]


@pytest.mark.filterwarnings("ignore:a research:UserWarning")
def test_research_format_rejects_unknown_relation_and_node_type():
    data = _research_dict()
    data["edges"].append([1, 13, "enables"])
    with pytest.raises(ValueError, match="got 'enables' between"):
        Hypergraph.from_dict(data)
    data = _research_dict()
    data["edges"].append([1, 20, "satisfies"])  # a known relation between the wrong node types
    with pytest.raises(ValueError, match="got 'satisfies' between"):
        Hypergraph.from_dict(data)
    data = _research_dict()
    data["nodes"].append({"id": 99, "label": "strange", "type": "goal"})
    with pytest.raises(ValueError, match="type must be one of"):
        Hypergraph.from_dict(data)


def test_research_format_round_trips_through_crossmoe_schema(tmp_path):
    experts = {"eat_x": "survival", "melee_attack_vs_newt": "combat", "move_abc": "exploration"}
    graph = Hypergraph.from_dict(_research_dict(), operator_to_expert=experts)
    assert graph.operator_to_expert.tolist() == [0, 1, 2, 3]
    path = tmp_path / "converted.json"
    graph.to_json(path)
    assert _structure(Hypergraph.from_json(path)) == _structure(graph)


@pytest.mark.filterwarnings("ignore:a research:UserWarning")
def test_real_research_file_loads_with_its_own_counts(research_path, research_file):
    graph = Hypergraph.from_json(research_path)
    counts = research_file["meta"]["node_types"]
    assert graph.num_conditions == counts["condition"]
    assert graph.num_operators == counts["operator"]
    assert graph.num_effects == counts["effect"]

    types = {node["id"]: node["type"] for node in research_file["nodes"]}
    requires, produces = set(), set()
    for src, dst, rel in research_file["edges"]:
        pair = (src, dst) if types[src] != "operator" else (dst, src)
        (produces if rel == "leads_to" else requires).add(pair)
    assert len(graph.requires) == len(requires)
    assert len(graph.produces) == len(produces)
    # Without operator_to_expert every operator is general; test_nethack_rules.py derives the experts.
    assert set(graph.operator_to_expert.tolist()) == {3}


# --- modules and copies --------------------------------------------------------------------------------


def test_data_model_is_importable_from_every_documented_place():
    graph_module = pytest.importorskip("crossmoe.graph")
    for name in ("FORMAT", "Hypergraph", "OperatorSpec", "action_name"):
        assert getattr(graph_module, name) is getattr(crossmoe.hypergraph, name), name
    assert crossmoe.Hypergraph is Hypergraph and crossmoe.OperatorSpec is OperatorSpec
    assert set(crossmoe.hypergraph.__all__) == {"FORMAT", "Hypergraph", "OperatorSpec", "action_name", "env_actions"}


def test_copies_and_pickles_rebuild_the_device_cache():
    graph = _kitchen_graph()
    activations = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    expected = graph.applicable(activations)  # fills the cache
    for clone in (copy.deepcopy(graph), pickle.loads(pickle.dumps(graph))):
        assert len(clone._precondition_on) == 0
        assert torch.equal(clone.applicable(activations), expected)


def test_applicable_is_the_same_in_and_out_of_inference_mode():
    graph = _kitchen_graph()
    activations = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    with torch.inference_mode():
        inside = graph.applicable(activations)  # the cache is filled here
    assert torch.equal(graph.applicable(activations), inside)


# --- malformed documents -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ([1, 2], TypeError, r"data must be a JSON object .* got list"),
        ("graph", TypeError, r"data must be a JSON object .* got str"),
        ({"format": FORMAT, "conditions": "a", "operators": []}, TypeError, r"conditions must be a list, got str"),
        ({"format": FORMAT, "conditions": [3], "operators": []}, TypeError, r"conditions\[0\] must be a name"),
        ({"format": FORMAT, "conditions": [{"text": "a"}]}, TypeError, r"conditions\[0\]\.name must be a string"),
        (
            {"format": FORMAT, "conditions": ["a"], "operators": [{"name": "x", "requires": "a"}]},
            TypeError,
            r"operators\[0\]\.requires must be a list, got str",
        ),
        (
            {"format": FORMAT, "conditions": ["a"], "operators": [{"name": "x", "actions": [[1]]}]},
            TypeError,
            r"operators\[0\]\.actions\[0\] must be a name or an action index, got list",
        ),
        (
            {"format": FORMAT, "conditions": ["a"], "operators": [{"name": 7}]},
            TypeError,
            r"operators\[0\]\.name must be a string, got int",
        ),
        (
            {"format": FORMAT, "conditions": ["a"], "operators": [{"name": "x"}], "experts": "general"},
            TypeError,
            r"experts must be a list, got str",
        ),
        ({"nodes": {}, "edges": []}, TypeError, r"nodes must be a list, got dict"),
        ({"nodes": [[1, "a", "condition"]], "edges": []}, TypeError, r"nodes\[0\] must be an object"),
        ({"nodes": [{"id": 1, "type": "condition"}], "edges": []}, TypeError, r"nodes\[0\]\.label must be a string"),
        (
            {"nodes": [{"id": 1, "label": "a", "type": "condition"}], "edges": [[1, 1]]},
            ValueError,
            r"edges\[0\] must be",
        ),
        ({"nodes": [{"id": [1], "label": "a", "type": "condition"}], "edges": []}, ValueError, r"nodes\[0\] must have"),
    ],
)
@pytest.mark.filterwarnings("ignore:a research:UserWarning")
def test_a_malformed_document_gets_an_error_that_says_where(data, error, match):
    with pytest.raises(error, match=match):
        Hypergraph.from_dict(data)


_json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_json = st.recursive(
    _json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "format",
        "conditions",
        "effects",
        "operators",
        "experts",
        "name",
        "requires",
        "produces",
        "actions",
        "expert",
        "description",
        "nodes",
        "edges",
        "id",
        "label",
        "type",
    ]
)


def _replace_somewhere(data, path, value):
    """``data`` with the part at the path of indices/keys ``path`` (followed while it fits) replaced by ``value``."""
    if not path or not isinstance(data, (dict, list)) or not data:
        return value
    data = copy.deepcopy(data)
    if isinstance(data, dict):
        keys = sorted(data)
        key = keys[path[0] % len(keys)]
    else:
        key = path[0] % len(data)
    data[key] = _replace_somewhere(data[key], path[1:], value)
    return data


def _check_loads_or_refuses(data):
    try:
        graph = Hypergraph.from_dict(data)
    except (ValueError, TypeError):
        return
    assert isinstance(graph, Hypergraph)
    graph.applicable(torch.zeros(1, graph.num_conditions))  # what loaded is usable


@given(_json)
@pytest.mark.filterwarnings("ignore:a research:UserWarning")
def test_arbitrary_json_is_loaded_or_refused_with_a_clear_error(data):
    _check_loads_or_refuses(data)


@given(
    st.sampled_from(["crossmoe", "research"]),
    st.lists(st.integers(min_value=0, max_value=50), max_size=5),
    _json | st.dictionaries(_keys, _json, max_size=3),
)
@pytest.mark.filterwarnings("ignore:a research:UserWarning")
def test_a_valid_document_damaged_anywhere_is_loaded_or_refused_with_a_clear_error(kind, path, value):
    """Arbitrary JSON rarely looks like a graph; damage a real document in one place instead."""
    data = _described_graph().to_dict() if kind == "crossmoe" else _research_dict()
    _check_loads_or_refuses(_replace_somewhere(data, path, value))
