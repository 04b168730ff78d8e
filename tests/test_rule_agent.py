"""RuleAgent: the hypergraph played as a fixed-priority agent."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nle")

from nle import nethack
from nle.env.tasks import TASK_ACTIONS

from crossmoe.hypergraph import Hypergraph, OperatorSpec, action_name
from crossmoe.nethack import ATOMS, extract_atoms, make_vector_env
from crossmoe.nethack.atoms import Hunger
from crossmoe.nethack.glyphs import screen_symbol
from crossmoe.nethack.rules import DEFAULT_PRIORITY, EATING_PRIORITY, NO_EATING_PRIORITY, RULES, RuleAgent

Y, X = 10, 40
ACTIONS = [action_name(action) for action in TASK_ACTIONS]
MORE = ACTIONS.index("MiscAction.MORE")
EAST = ACTIONS.index("CompassDirection.E")
COMPASS = {ACTIONS.index(f"CompassDirection.{d}") for d in ("N", "E", "S", "W", "NE", "SE", "SW", "NW")}


def obs_batch(
    size: int = 1,
    monster_east: bool = False,
    message: str = "",
    hunger: Hunger = Hunger.NOT_HUNGRY,
    food: str = "",
) -> dict[str, np.ndarray]:
    """``size`` copies of a healthy hero alone in solid stone, with no map memory (so no path).

    ``food``: the inventory letters of food items (none by default).
    """
    glyphs = np.full((size, *nethack.DUNGEON_SHAPE), nethack.GLYPH_CMAP_OFF + screen_symbol("S_stone"), np.int16)
    glyphs[:, Y, X] = nethack.GLYPH_MON_OFF  # the hero
    if monster_east:
        glyphs[:, Y, X + 1] = nethack.GLYPH_MON_OFF + 1
    blstats = np.zeros((size, nethack.NLE_BLSTATS_SIZE), dtype=np.int64)
    blstats[:, nethack.NLE_BL_X], blstats[:, nethack.NLE_BL_Y] = X, Y
    blstats[:, nethack.NLE_BL_HP] = blstats[:, nethack.NLE_BL_HPMAX] = 12
    blstats[:, nethack.NLE_BL_HUNGER] = hunger
    blstats[:, nethack.NLE_BL_DEPTH] = blstats[:, nethack.NLE_BL_DLEVEL] = 1
    text = np.zeros((size, nethack.NLE_MESSAGE_SIZE), dtype=np.uint8)
    text[:, : len(message)] = np.frombuffer(message.encode(), dtype=np.uint8)
    inventory = np.full((size, nethack.NLE_INVENTORY_SIZE), nethack.MAXOCLASSES, dtype=np.uint8)
    letters = np.zeros((size, nethack.NLE_INVENTORY_SIZE), dtype=np.uint8)
    inventory[:, : len(food)] = nethack.FOOD_CLASS
    letters[:, : len(food)] = [ord(letter) for letter in food]
    return {"glyphs": glyphs, "blstats": blstats, "message": text, "inv_oclasses": inventory, "inv_letters": letters}


def concat(*batches: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


@pytest.fixture(scope="module")
def agent() -> RuleAgent:
    return RuleAgent(seed=0)


def test_attacks_the_monster_to_the_east_and_presses_more_at_a_prompt(agent):
    obs = concat(
        obs_batch(monster_east=True),
        obs_batch(message="Really attack the jackal? [yn] (n)"),
        obs_batch(monster_east=True, message="Really attack the jackal? [yn] (n)"),  # the prompt comes first
    )
    operators, actions = agent.select(obs)
    names = [agent.hypergraph.operators[o] for o in operators]
    assert names == ["attack_e", "dismiss_prompt", "dismiss_prompt"]
    assert actions.tolist() == [EAST, MORE, MORE]
    assert agent.act(obs).tolist() == [EAST, MORE, MORE]


EAT, WEST, SOUTH_EAST = (ACTIONS.index(a) for a in ("Command.EAT", "CompassDirection.W", "CompassDirection.SE"))
EAT_PROMPT, CORPSE_PROMPT = "What do you want to eat? [fh or ?*] ", "There is a newt corpse here; eat it? [ynq] (n) "


@pytest.mark.parametrize(
    ("situation", "operator", "action"),
    [
        (dict(hunger=Hunger.WEAK, food="h", monster_east=True), "eat_typable_food_when_weak", EAT),
        (dict(hunger=Hunger.HUNGRY, food="h", monster_east=True), "attack_e", EAST),
        (dict(hunger=Hunger.HUNGRY, food="fh"), "eat_typable_food_when_hungry", EAT),
        (dict(hunger=Hunger.WEAK, food="f"), "fallback_move", None),  # no move types f: EAT could not be answered
        (dict(hunger=Hunger.NOT_HUNGRY, food="h"), "fallback_move", None),
        (dict(message=EAT_PROMPT, food="fh"), "name_food_w", WEST),  # h is the west move's key
        (dict(message=EAT_PROMPT, food="f"), "dismiss_prompt", MORE),
        (dict(message=CORPSE_PROMPT, food="h"), "decline_corpse", SOUTH_EAST),  # n is the south-east move's key
    ],
)
def test_eats_food_that_a_move_can_name(agent, situation, operator, action):
    operators, actions = agent.select(obs_batch(**situation))
    assert agent.hypergraph.operators[operators[0]] == operator
    assert actions[0] == action if action is not None else actions[0] in COMPASS


def test_the_rules_without_eating_never_press_eat():
    agent = RuleAgent(priority=RULES["rules_no_eating"], seed=0)
    obs = concat(obs_batch(hunger=Hunger.WEAK, food="h"), obs_batch(message=EAT_PROMPT, food="h"))
    operators, _ = agent.select(obs)
    assert [agent.hypergraph.operators[o] for o in operators] == ["fallback_move", "dismiss_prompt"]
    assert RuleAgent().priority[: len(EATING_PRIORITY)] == EATING_PRIORITY  # "rules" is the default
    assert RULES["rules"] == DEFAULT_PRIORITY == EATING_PRIORITY and NO_EATING_PRIORITY == RULES["rules_no_eating"]


def test_picks_uniformly_among_the_chosen_operators_actions(agent):
    operators, actions = agent.select(obs_batch(800))  # nothing but the fallback applies
    assert {agent.hypergraph.operators[o] for o in operators} == {"fallback_move"}
    counts = np.bincount(actions, minlength=len(ACTIONS))
    assert set(np.flatnonzero(counts)) == COMPASS
    assert counts[list(COMPASS)].min() > 60 and counts[list(COMPASS)].max() < 140  # 100 expected each


def test_seeded_choices_repeat_and_reset_restarts_them():
    obs = obs_batch(16)
    first, second = RuleAgent(seed=3), RuleAgent(seed=3)
    actions = first.act(obs)
    assert np.array_equal(actions, second.act(obs))
    assert not np.array_equal(actions, RuleAgent(seed=4).act(obs))
    first.reset(seed=3)
    assert np.array_equal(first.act(obs), actions)


def test_takes_the_highest_priority_applicable_operator_on_real_games(agent):
    """Against a per-row loop over the priority list, on 2 x 60 steps of NetHackScore played by the agent."""
    envs = make_vector_env(2, 123)
    obs, _ = envs.reset(seed=123)
    mask = agent.hypergraph.action_mask(ACTIONS).numpy()
    try:
        for _ in range(60):
            operators, actions = agent.select(obs)
            applicable = agent.hypergraph.applicable(extract_atoms(obs)).numpy()
            for row in range(2):
                expected = next(o for o in agent.order if applicable[row, o])
                assert operators[row] == expected
                assert mask[operators[row], actions[row]]  # only actions of the chosen operator
            obs, *_ = envs.step(actions)
    finally:
        envs.close()


def test_priority_lists_named_operators_first_and_skips_operators_without_actions():
    agent = RuleAgent(priority=("fallback_move", "attack_e"))
    assert agent.priority[:2] == ("fallback_move", "attack_e")
    assert set(agent.priority) == set(agent.hypergraph.operators)  # every operator has an action in TASK_ACTIONS
    narrow = RuleAgent(["CompassDirection.E", "MiscAction.MORE"], priority=DEFAULT_PRIORITY)
    assert "attack_n" not in narrow.priority and "attack_e" in narrow.priority
    assert narrow.act(obs_batch(monster_east=True)).tolist() == [0]  # attack_e's E is action 0 here


def test_any_action_when_no_operator_applies():
    graph = Hypergraph(list(ATOMS), [OperatorSpec("eat", requires=("weak",), actions=("Command.EAT",))])
    agent = RuleAgent(hypergraph=graph, priority=())
    operators, actions = agent.select(obs_batch(400))
    assert (operators == -1).all()
    assert len(np.unique(actions)) == len(ACTIONS)


@pytest.mark.parametrize(
    ("priority", "match"), [(("attack_e", "no_such_rule"), "no_such_rule"), (("attack_e", "attack_e"), "once")]
)
def test_rejects_bad_priority_lists(priority, match):
    with pytest.raises(ValueError, match=match):
        RuleAgent(priority=priority)


# the rule agent as a teacher


def test_action_probs_are_uniform_over_the_chosen_operators_actions(agent):
    obs = concat(obs_batch(monster_east=True), obs_batch(message="Really attack? [yn] (n)"), obs_batch())
    probs = agent.action_probs(obs)
    assert probs.shape == (3, len(ACTIONS)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], np.eye(len(ACTIONS))[EAST])  # attack_e has the one action E
    np.testing.assert_allclose(probs[1], np.eye(len(ACTIONS))[MORE])
    fallback = np.zeros(len(ACTIONS))
    fallback[list(COMPASS)] = 1 / 8
    np.testing.assert_allclose(probs[2], fallback, rtol=1e-6)


def test_action_probs_are_uniform_when_no_operator_applies():
    graph = Hypergraph(list(ATOMS), [OperatorSpec("eat", requires=("weak",), actions=("Command.EAT",))])
    probs = RuleAgent(hypergraph=graph, priority=()).action_probs(obs_batch(2))
    np.testing.assert_allclose(probs, np.full((2, len(ACTIONS)), 1 / len(ACTIONS)), rtol=1e-6)


def test_action_probs_are_the_distribution_act_samples_from_on_real_games(agent):
    """On 2 x 40 steps of NetHackScore: the support is the chosen operator's actions (``select``), the mass uniform,
    and ``act`` never leaves the support; with precomputed atoms the result is the same."""
    from crossmoe.teacher import Teacher, teacher_probs

    assert isinstance(agent, Teacher)
    envs = make_vector_env(2, 7)
    obs, _ = envs.reset(seed=7)
    mask = agent.hypergraph.action_mask(ACTIONS).numpy()
    try:
        for _ in range(40):
            probs = teacher_probs(agent, obs, len(ACTIONS)).numpy()
            np.testing.assert_array_equal(probs, agent.action_probs({**obs, "atoms": extract_atoms(obs)}))
            operators, actions = agent.select(obs)
            for row in range(2):
                support = mask[operators[row]] if operators[row] >= 0 else np.ones(len(ACTIONS), bool)
                np.testing.assert_array_equal(probs[row] > 0, support)
                np.testing.assert_allclose(probs[row][support], 1 / support.sum(), rtol=1e-6)
                assert probs[row, actions[row]] > 0
            obs, *_ = envs.step(actions)
    finally:
        envs.close()


def test_teachers_by_name_are_the_rule_agents_of_rules():
    from crossmoe.integrations.common import TEACHERS, make_teacher

    assert set(TEACHERS) == set(RULES)
    envs = make_vector_env(1, 0)
    try:
        for name in TEACHERS:
            assert make_teacher(name, envs).priority[: len(RULES[name])] == RULES[name]
    finally:
        envs.close()


def test_the_operator_census_script_counts_each_step_once_and_splits_as_the_operators_do():
    """``examples/rule_operators.py``: shares of steps that sum to 1, and the steps split over one action are
    exactly the steps of the chosen operators that have one action in the env."""
    from example_scripts import load_example

    module = load_example("rule_operators")
    result = module.main(module.Args(num_envs=2, steps=60))
    assert result["steps"] == 120 and "random" not in result["operators"]  # fallback_move always applies
    assert sum(result["operators"].values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(result["top_actions"].values()) == pytest.approx(1.0, abs=1e-3)
    agent = RuleAgent(TASK_ACTIONS)  # NetHackScore-v0 plays TASK_ACTIONS
    sizes = dict(zip(agent.hypergraph.operators, agent.action_mask.sum(axis=1).tolist(), strict=True))
    single = sum(share for name, share in result["operators"].items() if sizes[name] == 1)
    assert result["top_actions"].get(1, 0.0) == pytest.approx(single, abs=1e-3)
