from __future__ import annotations

import collections
import json
from importlib import resources

import pytest

pytest.importorskip("nle")

from nle import nethack

from crossmoe.nethack.atoms import ATOMS
from crossmoe.nethack.env import make_env


@pytest.fixture(scope="module")
def graph() -> dict:
    return json.loads(resources.files("crossmoe.nethack").joinpath("hypergraph.json").read_text())


def test_header(graph):
    assert graph["format"] == "crossmoe.hypergraph" and graph["version"] == 1
    assert graph["experts"] == ["survival", "combat", "exploration", "general"]
    assert set(graph) == {"format", "version", "description", "experts", "conditions", "effects", "operators"}


def test_conditions_are_the_atoms_in_order(graph):
    assert [condition["name"] for condition in graph["conditions"]] == list(ATOMS)
    assert all(condition["description"] for condition in graph["conditions"])


def test_sizes_and_unique_names(graph):
    assert len(graph["conditions"]) >= 30 and len(graph["operators"]) >= 15 and len(graph["effects"]) >= 10
    names = [node["name"] for kind in ("conditions", "effects", "operators") for node in graph[kind]]
    assert len(names) == len(set(names))


def test_operators_reference_existing_nodes(graph):
    conditions = {condition["name"] for condition in graph["conditions"]}
    effects = {effect["name"] for effect in graph["effects"]}
    for operator in graph["operators"]:
        assert set(operator) == {"name", "expert", "requires", "produces", "actions", "description"}
        assert operator["expert"] in graph["experts"], operator["name"]
        assert set(operator["requires"]) <= conditions, operator["name"]
        assert operator["produces"] and set(operator["produces"]) <= effects, operator["name"]
        assert operator["actions"], operator["name"]
    produced = {effect for operator in graph["operators"] for effect in operator["produces"]}
    assert produced == effects


def test_each_expert_owns_three_operators(graph):
    owned = collections.Counter(operator["expert"] for operator in graph["operators"])
    assert all(owned[expert] >= 3 for expert in graph["experts"])


def test_a_fallback_operator_is_always_applicable(graph):
    assert any(operator["requires"] == [] for operator in graph["operators"])


def test_every_condition_is_a_precondition(graph):
    # an atom without edges could never change the logic stream
    required = {atom for operator in graph["operators"] for atom in operator["requires"]}
    assert [atom for atom in ATOMS if atom not in required] == []


def test_actions_name_real_nle_enum_members(graph):
    for operator in graph["operators"]:
        for action in operator["actions"]:
            enum_name, member = action.split(".")
            assert member in getattr(nethack, enum_name).__members__, action


def test_every_score_action_is_covered(graph):
    env = make_env("NetHackScore-v0")
    actions = {f"{type(action).__name__}.{action.name}" for action in env.unwrapped.actions}
    env.close()
    assert len(actions) == 23
    covered = {action for operator in graph["operators"] for action in operator["actions"]}
    assert actions <= covered
