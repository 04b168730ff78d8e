from __future__ import annotations

import collections
import json
from importlib import resources

import pytest
from nethack_facts import VI_KEY_MOVES

pytest.importorskip("nle")

from nle import nethack

from crossmoe.nethack.atoms import ATOMS, DIRECTIONS
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


# Atoms no operator requires: computed, but without edges they never change the logic stream
# (test_nethack_policy.py::test_every_atom_reaches_the_logic_stream). Since the path operators
# replaced head_for_downstairs and leave_first_level, these four have no operator.
UNREAD_ATOMS = ("depth_1", "stairs_down_visible", "on_stairs_up", "path_to_downstairs")


def test_every_condition_is_a_precondition(graph):
    required = {atom for operator in graph["operators"] for atom in operator["requires"]}
    assert [atom for atom in ATOMS if atom not in required] == list(UNREAD_ATOMS)


def test_operator_count_and_the_removed_operators(graph):
    names = {operator["name"] for operator in graph["operators"]}
    assert len(graph["operators"]) == 70 and len(graph["conditions"]) == len(ATOMS) == 77
    assert not names & {"head_for_downstairs", "leave_first_level", "melee_adjacent_monster"}


@pytest.mark.parametrize(("name", "dy", "dx"), DIRECTIONS)
def test_the_move_that_names_the_food_is_the_one_whose_key_is_its_letter(graph, name, dy, dx):
    operator = _operator(graph, f"name_food_{name}")
    assert sorted(operator["requires"]) == sorted(["msg_eat_prompt", f"food_key_{name}"])
    (action,) = operator["actions"]
    key = chr(nethack.CompassDirection[action.split(".")[1]])
    assert VI_KEY_MOVES[key] == (dy, dx)


def test_eating_starts_only_when_a_move_can_name_the_food(graph):
    for name in ("eat_typable_food_when_hungry", "eat_typable_food_when_weak"):
        assert "has_food_key" in _operator(graph, name)["requires"]
        assert _operator(graph, name)["actions"] == ["Command.EAT"]
    decline = _operator(graph, "decline_corpse")
    assert decline["requires"] == ["msg_eat_corpse_prompt"] and decline["actions"] == ["CompassDirection.SE"]
    assert chr(nethack.CompassDirection.SE) == "n"  # "eat it? [ynq]": n declines


def _operator(graph, name):
    return next(operator for operator in graph["operators"] if operator["name"] == name)


@pytest.mark.parametrize(("name", "dy", "dx"), DIRECTIONS)
def test_directional_operators_move_toward_their_atom(graph, name, dy, dx):
    """attack_<dir> needs a monster on that side and moves (attacks) there; follow_path_<dir> takes that step."""
    for operator, atom, expert in (
        (f"attack_{name}", f"monster_{name}", "combat"),
        (f"follow_path_{name}", f"path_{name}", "exploration"),
    ):
        spec = _operator(graph, operator)
        assert spec["requires"] == [atom] and spec["expert"] == expert
        (action,) = spec["actions"]
        enum_name, member = action.split(".")
        assert enum_name == "CompassDirection"
        assert VI_KEY_MOVES[chr(nethack.CompassDirection[member].value)] == (dy, dx)


def test_descend_stairs_needs_the_hero_on_the_down_stairs(graph):
    for name in ("descend_stairs", "descend_with_pet"):
        spec = _operator(graph, name)
        assert "on_stairs_down" in spec["requires"] and "MiscDirection.DOWN" in spec["actions"]
    assert not any(
        "on_stairs_up" in operator["requires"]
        for operator in graph["operators"]
        if "MiscDirection.DOWN" in operator["actions"]
    )


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
