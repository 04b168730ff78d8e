import enum
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crossmoe.graph import FORMAT, Hypergraph, HypergraphEncoder, OperatorSpec, action_name

EXPERTS = ("survival", "combat", "exploration", "general")
RESEARCH_FIXTURE = Path(__file__).resolve().parents[1].parent / "shared/fixtures/tedg_hypergraph_gat_structure.json"


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
# effect but e3 has two producers, so every attention coefficient has something to choose.
ENCODER_OPERATORS = {
    "o0": (("c0", "c1"), ("e0",)),
    "o1": (("c1", "c2"), ("e0", "e1")),
    "o2": (("c3", "c4"), ("e1",)),
    "o3": (("c4", "c5"), ("e2",)),
    "o4": (("c0", "c5"), ("e2", "e3")),
    "o5": ((), ("e3",)),
}


def _encoder_graph():
    specs = [
        OperatorSpec(name, requires=requires, produces=produces, expert=EXPERTS[i % 4])
        for i, (name, (requires, produces)) in enumerate(ENCODER_OPERATORS.items())
    ]
    return Hypergraph([f"c{i}" for i in range(6)], specs, ["e0", "e1", "e2", "e3"])


def _activations(batch, num_conditions, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, num_conditions, generator=g) < 0.5).to(dtype)


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


def test_research_format_derives_experts_from_the_action_word():
    graph = Hypergraph.from_dict(_research_dict())
    assert [op.expert for op in graph.specs] == ["survival", "combat", "exploration", "general"]
    assert graph.operator_to_expert.tolist() == [0, 1, 2, 3]
    applicable = graph.applicable(torch.zeros(1, 4))
    assert applicable.tolist() == [[False, False, False, True]]  # look_abc has no preconditions


@pytest.mark.parametrize(
    ("label", "expert"),
    [
        ("eat_corpse", "survival"),
        ("pray", "survival"),
        ("melee_attack_vs_newt", "combat"),
        ("kick_door", "combat"),
        ("move_north", "exploration"),
        ("search_treats", "exploration"),  # the first word decides, not "eat" inside "treats"
        ("go_down_stairs", "exploration"),
        ("Move_Upper", "exploration"),
        ("moveable_boulder", "general"),  # "move" must be a whole word
        ("look_around", "general"),
    ],
)
def test_research_expert_comes_from_the_leading_action_word(label, expert):
    data = {
        "nodes": [{"id": 0, "label": "c", "type": "condition"}, {"id": 1, "label": label, "type": "operator"}],
        "edges": [[0, 1, "satisfies"]],
    }
    assert Hypergraph.from_dict(data).specs[0].expert == expert


def test_research_format_expert_override_mapping_and_callable(tmp_path):
    path = tmp_path / "research.json"
    path.write_text(json.dumps(_research_dict()))
    mapped = Hypergraph.from_json(path, operator_to_expert={"look_abc": "combat", "move_abc": "survival"})
    assert [op.expert for op in mapped.specs] == ["survival", "combat", "survival", "combat"]
    called = Hypergraph.from_json(path, operator_to_expert=lambda name: "exploration" if "x" in name else "general")
    assert [op.expert for op in called.specs] == ["exploration", "general", "general", "general"]


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
    graph = Hypergraph.from_dict(_research_dict())
    path = tmp_path / "converted.json"
    graph.to_json(path)
    assert _structure(Hypergraph.from_json(path)) == _structure(graph)


@pytest.fixture(scope="module")
def research_file():
    if not RESEARCH_FIXTURE.exists():
        pytest.skip(f"research fixture not found at {RESEARCH_FIXTURE}")
    return json.loads(RESEARCH_FIXTURE.read_text())


def test_real_research_file_loads_with_its_own_counts(research_file):
    graph = Hypergraph.from_json(RESEARCH_FIXTURE)
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

    expert_of = graph.operator_to_expert
    assert set(expert_of.tolist()) == {0, 1, 2, 3}
    for label, expert in zip(graph.operators, expert_of.tolist(), strict=True):
        if label.startswith("eat_"):
            assert expert == 0, label
        elif label.startswith("melee_attack"):
            assert expert == 1, label
        elif label.startswith("move_"):
            assert expert == 2, label
        elif label.startswith("look_"):
            assert expert == 3, label


def test_encoder_runs_on_the_real_research_graph(research_file):
    graph = Hypergraph.from_json(RESEARCH_FIXTURE)
    encoder = HypergraphEncoder(graph, 32)
    tokens, scores = encoder(_activations(3, graph.num_conditions))
    assert tokens.shape == (3, 279, 32) and scores.shape == (3, 279)
    assert torch.isfinite(tokens).all() and torch.isfinite(scores).all()


# --- HypergraphEncoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dim", "hidden_dim", "heads", "effect_passes"), [(16, None, 2, 1), (24, 8, 4, 2), (8, 6, 3, 0)]
)
def test_encoder_output_shapes(dim, hidden_dim, heads, effect_passes):
    encoder = HypergraphEncoder(_encoder_graph(), dim, hidden_dim=hidden_dim, heads=heads, effect_passes=effect_passes)
    tokens, scores = encoder(_activations(5, 6))
    assert tokens.shape == (5, 6, dim) and scores.shape == (5, 6)
    assert tokens.dtype == scores.dtype == torch.float32


def test_encoder_output_follows_each_samples_activations():
    encoder = HypergraphEncoder(_encoder_graph(), 16).eval()
    activations = torch.zeros(3, 6)
    tokens, scores = encoder(activations)
    changed = activations.clone()
    changed[1] = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    new_tokens, new_scores = encoder(changed)
    assert not torch.allclose(new_tokens[1], tokens[1])
    assert not torch.allclose(new_scores[1], scores[1])
    torch.testing.assert_close(new_tokens[[0, 2]], tokens[[0, 2]])
    torch.testing.assert_close(new_scores[[0, 2]], scores[[0, 2]])


def test_encoder_batch_independence():
    encoder = HypergraphEncoder(_encoder_graph(), 16, effect_passes=2).eval()
    activations = torch.rand(4, 6, generator=torch.Generator().manual_seed(3))
    alone_tokens, alone_scores = encoder(activations[:1])
    tokens, scores = encoder(activations)
    torch.testing.assert_close(tokens[:1], alone_tokens)
    torch.testing.assert_close(scores[:1], alone_scores)
    permutation = torch.tensor([2, 0, 3, 1])
    shuffled_tokens, shuffled_scores = encoder(activations[permutation])
    torch.testing.assert_close(shuffled_tokens, tokens[permutation])
    torch.testing.assert_close(shuffled_scores, scores[permutation])


def test_encoder_is_exact_whatever_batch_sizes_came_before():
    """The cached disjoint-union edges grow and are sliced; every batch size must still see its own graph."""
    encoder = HypergraphEncoder(_encoder_graph(), 16, effect_passes=1).eval()
    activations = torch.rand(70, 6, generator=torch.Generator().manual_seed(5))
    alone = [encoder(activations[i : i + 1]) for i in range(3)]
    for batch in (3, 70, 2, 65, 3):  # grows past the initial capacity, then shrinks
        tokens, scores = encoder(activations[:batch])
        for i in range(min(batch, 3)):
            torch.testing.assert_close(tokens[i], alone[i][0][0])
            torch.testing.assert_close(scores[i], alone[i][1][0])


def _reachable(condition, effect_passes):
    """Operators whose output can depend on ``condition``, walked by hand over ENCODER_OPERATORS."""
    reached = {op for op, (requires, _) in ENCODER_OPERATORS.items() if condition in requires}
    for _ in range(effect_passes):
        effects = {e for op in reached for e in ENCODER_OPERATORS[op][1]}
        reached |= {op for op, (_, produces) in ENCODER_OPERATORS.items() if effects & set(produces)}
    return reached


def test_reachability_helper_matches_hand_computed_sets():
    assert _reachable("c3", 0) == {"o2"}
    assert _reachable("c3", 1) == {"o1", "o2"}
    assert _reachable("c3", 2) == {"o0", "o1", "o2"}
    assert _reachable("c0", 1) == {"o0", "o1", "o4", "o3", "o5"}


@pytest.mark.parametrize("effect_passes", [0, 1, 2])
@pytest.mark.parametrize("condition", range(6))
def test_flipping_a_condition_changes_exactly_the_reachable_operators(effect_passes, condition):
    graph = _encoder_graph()
    encoder = HypergraphEncoder(graph, 16, effect_passes=effect_passes).eval()
    activations = _activations(2, 6, seed=condition)
    flipped = activations.clone()
    flipped[:, condition] = 1 - flipped[:, condition]
    tokens, scores = encoder(activations)
    new_tokens, new_scores = encoder(flipped)
    changed = (new_tokens - tokens).abs().amax(-1) > 1e-5  # (B, O)
    expected = torch.tensor([name in _reachable(f"c{condition}", effect_passes) for name in graph.operators])
    assert changed.tolist() == [expected.tolist()] * 2
    torch.testing.assert_close(new_scores[:, ~expected], scores[:, ~expected])


def test_every_encoder_parameter_gets_a_finite_nonzero_gradient():
    graph = _encoder_graph()
    encoder = HypergraphEncoder(graph, 16, effect_passes=1)
    activations = torch.cat([torch.ones(1, 6), _activations(7, 6, seed=1)])  # row 0 activates every operator
    tokens, scores = encoder(activations)
    weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(5))
    ((tokens * weights).sum() + scores.square().sum()).backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    node_rows = graph.num_conditions + graph.num_operators + graph.num_effects
    assert (encoder.node_embedding.weight.grad[:node_rows].abs().sum(-1) > 0).all()  # every node is wired in


def test_eval_mode_is_deterministic_and_disables_dropout():
    graph = _encoder_graph()
    encoder = HypergraphEncoder(graph, 16, dropout=0.5)
    activations = _activations(4, 6, seed=2)
    encoder.train()
    assert not torch.allclose(encoder(activations)[0], encoder(activations)[0])
    encoder.eval()
    tokens, scores = encoder(activations)
    torch.testing.assert_close(encoder(activations), (tokens, scores), rtol=0, atol=0)
    without_dropout = HypergraphEncoder(graph, 16, dropout=0.0).eval()
    without_dropout.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(without_dropout(activations), (tokens, scores))


def test_edge_cache_serves_changing_batch_sizes():
    graph = _encoder_graph()
    encoder = HypergraphEncoder(graph, 16).eval()
    fresh = HypergraphEncoder(graph, 16).eval()
    fresh.load_state_dict(encoder.state_dict())
    for batch, seed in ((3, 0), (5, 1), (3, 2), (1, 3), (5, 4)):
        activations = _activations(batch, 6, seed=seed)
        tokens, scores = encoder(activations)
        per_sample = [fresh(activations[i : i + 1]) for i in range(batch)]
        torch.testing.assert_close(tokens, torch.cat([t for t, _ in per_sample]))
        torch.testing.assert_close(scores, torch.cat([s for _, s in per_sample]))


def test_encoder_accepts_other_activation_dtypes():
    encoder = HypergraphEncoder(_encoder_graph(), 16).eval()
    activations = _activations(3, 6)
    reference = encoder(activations)
    torch.testing.assert_close(encoder(activations.double()), reference)
    torch.testing.assert_close(encoder(activations.bool()), reference)


def test_encoder_rejects_wrong_activation_shape():
    encoder = HypergraphEncoder(_encoder_graph(), 16)
    with pytest.raises(ValueError, match=r"activations must be \(B, C\) with C=6, got shape \(2, 5\)"):
        encoder(torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"got shape \(6,\)"):
        encoder(torch.ones(6))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 16, "hidden_dim": 10, "heads": 3}, "hidden_dim must be divisible by heads=3, got 10"),
        ({"dim": 0}, "dim must be a positive integer, got 0"),
        ({"dim": 16, "hidden_dim": 0}, "hidden_dim must be a positive integer, got 0"),
        ({"dim": 16, "heads": 0}, "heads must be a positive integer, got 0"),
        ({"dim": 16, "effect_passes": -1}, "effect_passes must be >= 0, got -1"),
    ],
)
def test_encoder_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HypergraphEncoder(_encoder_graph(), **kwargs)


def test_effect_passes_need_produces_edges():
    graph = Hypergraph(["a", "b"], [OperatorSpec("x", requires=("a", "b"))], ["unused"])
    with pytest.raises(ValueError, match="effect_passes must be 0 for a hypergraph without produces edges"):
        HypergraphEncoder(graph, 8)
    tokens, scores = HypergraphEncoder(graph, 8, effect_passes=0)(torch.ones(2, 2))
    assert tokens.shape == (2, 1, 8) and scores.shape == (2, 1)


def test_encoder_gradcheck_float64():
    graph = Hypergraph(
        ["a", "b", "c"],
        [
            OperatorSpec("x", ("a", "b"), ("e",)),
            OperatorSpec("y", ("b", "c"), ("e", "f")),
            OperatorSpec("z", (), ("f",)),
        ],
        ["e", "f"],
    )
    encoder = HypergraphEncoder(graph, 4, hidden_dim=4, heads=2).double()
    activations = torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    activations.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: encoder(a), (activations,))


def test_empty_batch_gives_empty_outputs():
    graph = Hypergraph(["a", "b"], [OperatorSpec("x", requires=("a",), produces=("e",))], ["e"])
    tokens, scores = HypergraphEncoder(graph, 8)(torch.zeros(0, 2))
    assert tokens.shape == (0, 1, 8) and scores.shape == (0, 1)
