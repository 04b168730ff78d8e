"""NetHack experts of research-format graphs: expert_from_label and load_hypergraph(path)."""

import collections
import json

import pytest

pytest.importorskip("nle")

from crossmoe.experts import DEFAULT_EXPERT_NAMES
from crossmoe.hypergraph import Hypergraph, OperatorSpec
from crossmoe.nethack import ATOMS, EXPERT_WORDS, expert_from_label, load_hypergraph

# What crossmoe.graph derived for the fixture's 279 operators before the word table moved to crossmoe.nethack.
FIXTURE_EXPERT_COUNTS = {"survival": 24, "combat": 48, "exploration": 72, "general": 135}


def _research(labels):
    """A research-format graph with one operator per label, each requiring a condition of its own."""
    nodes = [{"id": i, "label": f"c{i}", "type": "condition"} for i in range(len(labels))]
    nodes += [{"id": 100 + i, "label": label, "type": "operator"} for i, label in enumerate(labels)]
    return {"nodes": nodes, "edges": [[i, 100 + i, "satisfies"] for i in range(len(labels))]}


LABELS = ["eat_x", "melee_attack_vs_newt", "move_abc", "look_abc"]


def test_research_format_derives_experts_from_the_action_word(tmp_path):
    graph = Hypergraph.from_dict(_research(LABELS), operator_to_expert=expert_from_label)
    assert [op.expert for op in graph.specs] == ["survival", "combat", "exploration", "general"]
    assert graph.operator_to_expert.tolist() == [0, 1, 2, 3]
    path = tmp_path / "research.json"
    path.write_text(json.dumps(_research(LABELS)))
    assert load_hypergraph(path).operator_to_expert.tolist() == [0, 1, 2, 3]


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
    assert expert_from_label(label) == expert
    graph = Hypergraph.from_dict(_research([label]), operator_to_expert=expert_from_label)
    assert graph.specs[0].expert == expert


def test_a_mapping_can_override_the_derived_experts(tmp_path):
    overrides = {"look_abc": "combat", "move_abc": "survival"}
    path = tmp_path / "research.json"
    path.write_text(json.dumps(_research(LABELS)))
    mapped = Hypergraph.from_json(path, operator_to_expert=lambda name: overrides.get(name, expert_from_label(name)))
    assert [op.expert for op in mapped.specs] == ["survival", "combat", "survival", "combat"]


def test_expert_words_name_default_experts_and_no_word_twice():
    assert set(EXPERT_WORDS) <= set(DEFAULT_EXPERT_NAMES) - {"general"}
    words = [word for group in EXPERT_WORDS.values() for word in group]
    assert len(words) == len(set(words))
    for expert, group in EXPERT_WORDS.items():
        for word in group:
            assert expert_from_label(word) == expert_from_label(f"{word}_x") == expert, word


def test_load_hypergraph_keeps_the_experts_of_a_crossmoe_schema_file(tmp_path):
    graph = Hypergraph(["a"], [OperatorSpec("eat_x", requires=("a",), expert="combat"), OperatorSpec("move_y")])
    path = tmp_path / "graph.json"
    graph.to_json(path)
    assert [op.expert for op in load_hypergraph(path).specs] == ["combat", "general"]


def test_load_hypergraph_without_a_path_is_the_shipped_graph():
    graph = load_hypergraph()
    assert graph.conditions == list(ATOMS)
    assert set(graph.operator_to_expert.tolist()) == {0, 1, 2, 3}


def test_real_research_file_gets_the_same_experts_as_before_the_split(research_path):
    graph = Hypergraph.from_json(research_path, operator_to_expert=expert_from_label)
    assert collections.Counter(op.expert for op in graph.specs) == FIXTURE_EXPERT_COUNTS
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
    assert load_hypergraph(research_path).operator_to_expert.tolist() == expert_of.tolist()
