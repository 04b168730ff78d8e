from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("nle")

from hypothesis import given
from hypothesis import strategies as st
from nle import nethack

from crossmoe.nethack.atoms import ATOM_INDEX, ATOMS, Hunger, atom_index, extract_atoms
from crossmoe.nethack.env import make_env, make_vector_env
from crossmoe.nethack.glyphs import (
    BOULDER_GLYPH,
    GLYPH_CLASS,
    SCREEN_SYMBOLS,
    GlyphClass,
    glyph_class,
    screen_symbol,
)

PLAYER_Y, PLAYER_X = 10, 40
# The player is drawn with a monster glyph; a hostile one is the hardest case.
PLAYER_GLYPH = nethack.GLYPH_MON_OFF
MONSTER_GLYPH = nethack.GLYPH_MON_OFF + 1
PET_GLYPH = nethack.GLYPH_PET_OFF + 1


def cmap(name: str) -> int:
    return nethack.GLYPH_CMAP_OFF + screen_symbol(name)


def object_glyph(name: str) -> int:
    index = next(i for i in range(nethack.NUM_OBJECTS) if nethack.OBJ_NAME(nethack.objclass(i)) == name)
    return nethack.GLYPH_OBJ_OFF + index


DAGGER_GLYPH = object_glyph("dagger")
FOOD_RATION_GLYPH = object_glyph("food ration")


def blank_obs() -> dict[str, np.ndarray]:
    """One healthy, not hungry player on depth 1, alone in solid stone, with no message."""
    glyphs = np.full((1, *nethack.DUNGEON_SHAPE), cmap("S_stone"), dtype=np.int16)
    glyphs[0, PLAYER_Y, PLAYER_X] = PLAYER_GLYPH
    blstats = np.zeros((1, nethack.NLE_BLSTATS_SIZE), dtype=np.int64)
    blstats[0, nethack.NLE_BL_X] = PLAYER_X
    blstats[0, nethack.NLE_BL_Y] = PLAYER_Y
    blstats[0, nethack.NLE_BL_HP] = blstats[0, nethack.NLE_BL_HPMAX] = 20
    blstats[0, nethack.NLE_BL_HUNGER] = Hunger.NOT_HUNGRY
    blstats[0, nethack.NLE_BL_DEPTH] = blstats[0, nethack.NLE_BL_DLEVEL] = 1
    return {
        "glyphs": glyphs,
        "blstats": blstats,
        "message": np.zeros((1, nethack.NLE_MESSAGE_SIZE), dtype=np.uint8),
        "inv_oclasses": np.full((1, nethack.NLE_INVENTORY_SIZE), nethack.MAXOCLASSES, dtype=np.uint8),
    }


Mutation = Callable[[dict[str, np.ndarray]], None]


def cells(*placements: tuple[int, int, int]) -> Mutation:
    """Place glyphs at (dy, dx) offsets from the player."""

    def mutate(obs: dict[str, np.ndarray]) -> None:
        for dy, dx, glyph in placements:
            obs["glyphs"][0, PLAYER_Y + dy, PLAYER_X + dx] = glyph

    return mutate


def stat(index: int, value: int) -> Mutation:
    def mutate(obs: dict[str, np.ndarray]) -> None:
        obs["blstats"][0, index] = value

    return mutate


def condition(mask: int) -> Mutation:
    return stat(nethack.NLE_BL_CONDITION, mask)


def hp(value: int) -> Mutation:
    return stat(nethack.NLE_BL_HP, value)


def hunger(state: Hunger) -> Mutation:
    return stat(nethack.NLE_BL_HUNGER, state)


def depth(value: int) -> Mutation:
    return stat(nethack.NLE_BL_DEPTH, value)


def message(text: str) -> Mutation:
    def mutate(obs: dict[str, np.ndarray]) -> None:
        encoded = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        obs["message"][0, :] = 0
        obs["message"][0, : len(encoded)] = encoded

    return mutate


def inventory(*object_classes: int) -> Mutation:
    def mutate(obs: dict[str, np.ndarray]) -> None:
        obs["inv_oclasses"][0, : len(object_classes)] = object_classes

    return mutate


FAR = 5  # a cell well outside the 3x3 neighbourhood

# atom -> (mutation that makes it fire, near-identical mutation that does not)
CASES: dict[str, tuple[Mutation, Mutation]] = {
    "hp_critical": (hp(4), hp(5)),
    "hp_low": (hp(5), hp(10)),
    "hp_medium": (hp(10), hp(20)),
    "hp_full": (hp(20), hp(19)),
    "satiated": (hunger(Hunger.SATIATED), hunger(Hunger.NOT_HUNGRY)),
    "not_hungry": (hunger(Hunger.NOT_HUNGRY), hunger(Hunger.HUNGRY)),
    "hungry": (hunger(Hunger.HUNGRY), hunger(Hunger.WEAK)),
    "weak": (hunger(Hunger.FAINTING), hunger(Hunger.HUNGRY)),
    "confused": (condition(nethack.BL_MASK_CONF), condition(nethack.BL_MASK_STUN)),
    "stunned": (condition(nethack.BL_MASK_STUN), condition(nethack.BL_MASK_CONF)),
    "blind": (condition(nethack.BL_MASK_BLIND), condition(nethack.BL_MASK_DEAF)),
    "hallucinating": (condition(nethack.BL_MASK_HALLU), condition(nethack.BL_MASK_BLIND)),
    "ill": (condition(nethack.BL_MASK_TERMILL), condition(nethack.BL_MASK_DEAF)),
    "in_mortal_danger": (condition(nethack.BL_MASK_SLIME), condition(nethack.BL_MASK_FLY)),
    "levitating": (condition(nethack.BL_MASK_LEV), condition(nethack.BL_MASK_FLY)),
    "depth_1": (depth(1), depth(2)),
    "depth_2_4": (depth(4), depth(5)),
    "depth_5_plus": (depth(5), depth(4)),
    "monster_adjacent": (cells((-1, 1, MONSTER_GLYPH)), cells((-2, 2, MONSTER_GLYPH))),
    "monster_visible": (cells((FAR, FAR, MONSTER_GLYPH)), cells((FAR, FAR, PET_GLYPH))),
    "no_monster_visible": (cells((FAR, FAR, PET_GLYPH)), cells((FAR, FAR, nethack.GLYPH_INVISIBLE))),
    "pet_adjacent": (cells((0, 1, PET_GLYPH)), cells((0, 1, MONSTER_GLYPH))),
    "multiple_monsters_adjacent": (
        cells((0, 1, MONSTER_GLYPH), (1, 0, MONSTER_GLYPH)),
        cells((0, 1, MONSTER_GLYPH), (1, 0, PET_GLYPH)),
    ),
    "item_adjacent": (cells((1, -1, DAGGER_GLYPH)), cells((2, -1, DAGGER_GLYPH))),
    "food_adjacent": (cells((1, -1, nethack.GLYPH_BODY_OFF)), cells((1, -1, DAGGER_GLYPH))),
    "item_visible": (cells((-FAR, FAR, FOOD_RATION_GLYPH)), cells((-FAR, FAR, MONSTER_GLYPH))),
    "item_here": (message("You see here a dagger."), message("You see no objects here.")),
    "stairs_down_adjacent": (cells((1, 1, cmap("S_dnstair"))), cells((1, 1, cmap("S_upstair")))),
    "stairs_down_visible": (cells((FAR, 0, cmap("S_dnladder"))), cells((FAR, 0, cmap("S_upladder")))),
    "stairs_up_adjacent": (cells((-1, -1, cmap("S_upladder"))), cells((-1, -1, cmap("S_dnladder")))),
    "on_stairs": (message("There is a staircase down here."), message("There is a fountain here.")),
    "door_closed_adjacent": (cells((0, 1, cmap("S_vcdoor"))), cells((1, 1, cmap("S_vcdoor")))),
    "door_open_adjacent": (cells((-1, 0, cmap("S_ndoor"))), cells((-1, 1, cmap("S_hodoor")))),
    "in_corridor": (
        cells((0, -1, cmap("S_corr")), (0, 1, cmap("S_litcorr"))),
        cells((0, -1, cmap("S_corr")), (0, 1, cmap("S_room"))),
    ),
    "in_room": (cells((1, 0, cmap("S_darkroom"))), cells((1, 0, cmap("S_corr")))),
    "dead_end": (
        cells((0, -1, cmap("S_corr"))),
        cells((0, -1, cmap("S_corr")), (1, 1, cmap("S_corr"))),
    ),
    "trap_adjacent": (cells((1, 0, cmap("S_bear_trap"))), cells((1, 0, cmap("S_fountain")))),
    "boulder_adjacent": (cells((0, -1, BOULDER_GLYPH)), cells((0, -1, DAGGER_GLYPH))),
    "wall_adjacent": (cells((-1, 0, cmap("S_hwall"))), cells((-2, 0, cmap("S_hwall")))),
    "has_food": (inventory(nethack.WEAPON_CLASS, nethack.FOOD_CLASS), inventory(nethack.WEAPON_CLASS)),
    "msg_attacked": (message("The jackal bites!"), message("The kitten bites the jackal.")),
    "msg_killed": (message("You kill the newt!"), message("The newt is killed!")),
    "msg_locked": (message("This door is locked."), message("That door is closed.")),
    "msg_door_opened": (message("The door opens."), message("WHAMM!!")),
    "msg_prompt": (message("What do you want to eat? [fg or ?*] "), message("You see here a dagger.")),
    "msg_hungry": (message("You are beginning to feel hungry."), message("You hear the footsteps of a guard.")),
    "msg_nothing_to_eat": (message("You don't have anything to eat."), message("You cannot eat that!")),
    "msg_empty": (message(""), message("It's a wall.")),
}


def atoms_of(mutation: Mutation) -> np.ndarray:
    obs = blank_obs()
    mutation(obs)
    return extract_atoms(obs)[0]


def test_every_atom_has_a_constructed_case():
    assert set(CASES) == set(ATOMS)


@pytest.mark.parametrize("name", ATOMS)
def test_atom_fires_and_does_not_fire(name):
    fires, does_not_fire = CASES[name]
    assert atoms_of(fires)[atom_index(name)] == 1.0
    assert atoms_of(does_not_fire)[atom_index(name)] == 0.0


def test_output_is_binary_float32_in_atom_order():
    atoms = extract_atoms(blank_obs())
    assert atoms.shape == (1, len(ATOMS)) and atoms.dtype == np.float32
    fired = {ATOMS[i] for i in np.flatnonzero(atoms[0])}
    assert fired == {"hp_full", "not_hungry", "depth_1", "no_monster_visible", "msg_empty"}
    assert ATOM_INDEX == {name: i for i, name in enumerate(ATOMS)}
    with pytest.raises(ValueError, match="unknown atom"):
        atom_index("hp_zero")


def test_player_glyph_is_never_a_monster():
    atoms = atoms_of(cells())
    assert nethack.glyph_is_monster(PLAYER_GLYPH)
    assert atoms[atom_index("monster_visible")] == 0 and atoms[atom_index("no_monster_visible")] == 1
    # Standing on the edge of the map: the padding must not wrap around to the far side.
    obs = blank_obs()
    obs["glyphs"][0, PLAYER_Y, PLAYER_X] = cmap("S_stone")
    obs["glyphs"][0, 0, 0] = PLAYER_GLYPH
    obs["glyphs"][0, -1, -1] = MONSTER_GLYPH
    obs["blstats"][0, [nethack.NLE_BL_X, nethack.NLE_BL_Y]] = 0
    atoms = extract_atoms(obs)[0]
    assert atoms[atom_index("monster_visible")] == 1 and atoms[atom_index("monster_adjacent")] == 0


def test_empty_batch():
    obs = {key: value[:0] for key, value in blank_obs().items()}
    assert extract_atoms(obs).shape == (0, len(ATOMS))


def test_prompt_detects_a_trailing_question_mark():
    assert atoms_of(message("Are you sure?  "))[atom_index("msg_prompt")] == 1
    assert atoms_of(message("Is it? No."))[atom_index("msg_prompt")] == 0


def test_death_observation_has_no_status_atoms():
    obs = blank_obs()
    obs["blstats"][:] = 0
    atoms = extract_atoms(obs)[0]
    for prefix in ("hp_", "depth_"):
        assert all(atoms[i] == 0 for name, i in ATOM_INDEX.items() if name.startswith(prefix))
    for name in ("satiated", "not_hungry", "hungry", "weak"):
        assert atoms[atom_index(name)] == 0


@given(hp_max=st.integers(1, 999), data=st.data())
def test_exactly_one_hp_band_fires_when_alive(hp_max, data):
    hit_points = data.draw(st.integers(-10, hp_max))
    obs = blank_obs()
    obs["blstats"][0, nethack.NLE_BL_HPMAX] = hp_max
    obs["blstats"][0, nethack.NLE_BL_HP] = hit_points
    atoms = extract_atoms(obs)[0]
    bands = [atoms[atom_index(name)] for name in ("hp_critical", "hp_low", "hp_medium", "hp_full")]
    assert sum(bands) == 1
    assert atoms[atom_index("hp_full")] == (hit_points == hp_max)
    assert atoms[atom_index("hp_critical")] == (4 * hit_points < hp_max)


@given(hunger_state=st.sampled_from(list(Hunger)))
def test_exactly_one_hunger_atom_fires(hunger_state):
    atoms = atoms_of(hunger(hunger_state))
    assert sum(atoms[atom_index(name)] for name in ("satiated", "not_hungry", "hungry", "weak")) == 1


def test_screen_symbols_match_nle_explanations():
    expected = {
        "S_vwall": "wall",
        "S_ndoor": "doorway",
        "S_vodoor": "open door",
        "S_hcdoor": "closed door",
        "S_tree": "tree",
        "S_room": "floor of a room",
        "S_corr": "corridor",
        "S_litcorr": "lit corridor",
        "S_upstair": "staircase up",
        "S_dnstair": "staircase down",
        "S_upladder": "ladder up",
        "S_dnladder": "ladder down",
        "S_fountain": "fountain",
        "S_arrow_trap": "arrow trap",
        "S_polymorph_trap": "polymorph trap",
        "S_vibrating_square": "vibrating square",
        "S_poisoncloud": "poison cloud",
    }
    for name, explanation in expected.items():
        assert nethack.symdef.from_idx(screen_symbol(name)).explanation == explanation
    assert len(SCREEN_SYMBOLS) == nethack.MAXPCHARS


def test_glyph_class_table_agrees_with_nle_predicates():
    glyphs = np.arange(nethack.MAX_GLYPH, dtype=np.int32)
    classes = glyph_class(glyphs)
    assert GLYPH_CLASS.shape == (nethack.MAX_GLYPH + 1,) and GLYPH_CLASS.dtype == np.uint8
    assert GLYPH_CLASS[nethack.MAX_GLYPH] == GlyphClass.STONE
    np.testing.assert_array_equal(classes == GlyphClass.PET, nethack.glyph_is_pet(glyphs))
    is_monster = (nethack.glyph_is_monster(glyphs) & ~nethack.glyph_is_pet(glyphs)) | nethack.glyph_is_invisible(glyphs)
    np.testing.assert_array_equal(classes == GlyphClass.MONSTER, is_monster)
    np.testing.assert_array_equal(
        np.isin(classes, [GlyphClass.OBJECT, GlyphClass.FOOD]), nethack.glyph_is_object(glyphs)
    )
    # NetHack's glyph_is_trap counts TRAPNUM symbols from S_arrow_trap, one past the last trap
    # (TRAPNUM includes NO_TRAP), so it also accepts the zap beam S_vbeam.
    is_trap = nethack.glyph_is_trap(glyphs) & (glyphs != cmap("S_vbeam"))
    np.testing.assert_array_equal(classes == GlyphClass.TRAP, is_trap)
    assert np.all(classes[nethack.glyph_is_body(glyphs)] == GlyphClass.FOOD)
    assert np.all(classes[nethack.glyph_is_statue(glyphs)] == GlyphClass.OBJECT)
    assert np.all(classes[nethack.glyph_is_warning(glyphs) | nethack.glyph_is_swallow(glyphs)] == GlyphClass.OTHER)
    assert glyph_class(np.array([BOULDER_GLYPH, FOOD_RATION_GLYPH])).tolist() == [GlyphClass.OBJECT, GlyphClass.FOOD]
    with pytest.raises(ValueError, match="MAX_GLYPH"):
        glyph_class(np.array([nethack.MAX_GLYPH + 1]))


def test_batch_rows_are_independent():
    mutations = [fires for fires, _ in CASES.values()]
    singles = [blank_obs() for _ in mutations]
    for obs, mutation in zip(singles, mutations, strict=True):
        mutation(obs)
    batch = {key: np.concatenate([obs[key] for obs in singles]) for key in singles[0]}
    expected = np.concatenate([extract_atoms(obs) for obs in singles])
    np.testing.assert_array_equal(extract_atoms(batch), expected)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    obs = blank_obs()
    cells((0, 1, MONSTER_GLYPH))(obs)
    tensors = {key: torch.from_numpy(value) for key, value in obs.items()}
    np.testing.assert_array_equal(extract_atoms(tensors), extract_atoms(obs))


@pytest.mark.parametrize("key", ["glyphs", "blstats", "message", "inv_oclasses"])
def test_missing_key_is_named(key):
    obs = blank_obs()
    del obs[key]
    with pytest.raises(ValueError, match=key):
        extract_atoms(obs)


def test_unbatched_and_misshaped_inputs_are_rejected():
    obs = blank_obs()
    with pytest.raises(ValueError, match=r"obs\['glyphs'\] must be \(B, 21, 79\), got shape \(21, 79\).*batched"):
        extract_atoms({**obs, "glyphs": obs["glyphs"][0]})
    with pytest.raises(ValueError, match=r"obs\['blstats'\] must be \(B, 27\), got shape \(1, 26\)"):
        extract_atoms({**obs, "blstats": obs["blstats"][:, :-1]})
    with pytest.raises(ValueError, match=r"obs\['message'\] has batch size 2"):
        extract_atoms({**obs, "message": np.zeros((2, nethack.NLE_MESSAGE_SIZE), dtype=np.uint8)})


# Atoms a seeded random agent reaches in 3000 steps (8 environments x 375 steps, seed 0).
# The rest are covered by the constructed cases above, and where noted by a scripted game:
# hp_critical, hungry, weak, depth_2_4, depth_5_plus, food_adjacent, stairs_down_adjacent,
# stairs_down_visible, trap_adjacent, msg_killed, msg_locked and msg_hungry show up within
# 30000 random steps; confused, stunned, blind, hallucinating, ill, in_mortal_danger and
# levitating need items or monsters a random agent rarely meets; msg_nothing_to_eat needs a
# role without food (test_nothing_to_eat_on_a_real_game).
REACHED_BY_RANDOM_AGENT = (
    "hp_low",
    "hp_medium",
    "hp_full",
    "satiated",
    "not_hungry",
    "depth_1",
    "monster_adjacent",
    "monster_visible",
    "no_monster_visible",
    "pet_adjacent",
    "multiple_monsters_adjacent",
    "item_adjacent",
    "item_visible",
    "item_here",
    "stairs_up_adjacent",
    "on_stairs",
    "door_closed_adjacent",
    "door_open_adjacent",
    "in_corridor",
    "in_room",
    "dead_end",
    "boulder_adjacent",
    "wall_adjacent",
    "has_food",
    "msg_attacked",
    "msg_door_opened",
    "msg_prompt",
    "msg_empty",
)


@pytest.fixture(scope="module")
def random_rollout() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    num_envs, steps = 8, 375
    envs = make_vector_env(num_envs, seed=0)
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    atoms, kept = [], []
    for step in range(steps):
        atoms.append(extract_atoms(obs))
        if step % 25 == 0:
            kept.append({key: value.copy() for key, value in obs.items()})
        obs, *_ = envs.step(rng.integers(envs.single_action_space.n, size=num_envs))
    envs.close()
    return np.concatenate(atoms), {key: np.concatenate([o[key] for o in kept]) for key in kept[0]}


def test_random_agent_reaches_atoms(random_rollout):
    atoms, _ = random_rollout
    fired = {name for name, count in zip(ATOMS, atoms.sum(axis=0), strict=True) if count > 0}
    assert set(REACHED_BY_RANDOM_AGENT) <= fired
    # The rollout visits many distinct situations, not one constant vector.
    assert len(np.unique(atoms, axis=0)) > 100


# Together with REACHED_BY_RANDOM_AGENT this is every atom but stunned, hallucinating, ill,
# in_mortal_danger and levitating (constructed cases only) and msg_nothing_to_eat (a scripted game).
REACHED_IN_30000_RANDOM_STEPS = (
    "hp_critical",
    "hungry",
    "weak",
    "confused",
    "blind",
    "depth_2_4",
    "depth_5_plus",
    "food_adjacent",
    "stairs_down_adjacent",
    "stairs_down_visible",
    "trap_adjacent",
    "msg_killed",
    "msg_locked",
    "msg_hungry",
)


def test_random_agent_reaches_rarer_atoms_in_30000_steps():
    num_envs, steps = 8, 3750
    envs = make_vector_env(num_envs, seed=0)
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    fired = np.zeros(len(ATOMS), dtype=bool)
    for _ in range(steps):
        fired |= extract_atoms(obs).astype(bool).any(axis=0)
        obs, *_ = envs.step(rng.integers(envs.single_action_space.n, size=num_envs))
    envs.close()
    missing = [name for name in REACHED_IN_30000_RANDOM_STEPS if not fired[ATOMS.index(name)]]
    assert missing == []


def test_real_player_cell_holds_a_monster_glyph(random_rollout):
    _, obs = random_rollout
    blstats = obs["blstats"]
    alive = blstats[:, nethack.NLE_BL_HPMAX] > 0
    player = obs["glyphs"][np.arange(len(blstats)), blstats[:, nethack.NLE_BL_Y], blstats[:, nethack.NLE_BL_X]]
    assert alive.any() and nethack.glyph_is_monster(player[alive]).all()


def test_real_batch_equals_rows_one_at_a_time(random_rollout):
    _, obs = random_rollout
    rows = [extract_atoms({key: value[i : i + 1] for key, value in obs.items()}) for i in range(len(obs["glyphs"]))]
    np.testing.assert_array_equal(extract_atoms(obs), np.concatenate(rows))


def test_nothing_to_eat_on_a_real_game():
    # A caveman starts without food.
    env = make_env(character="cav-hum-neu-mal", seed=0)
    obs, _ = env.reset()
    before = extract_atoms({key: value[None] for key, value in obs.items()})[0]
    obs, *_ = env.step(env.unwrapped.actions.index(nethack.Command.EAT))
    after = extract_atoms({key: value[None] for key, value in obs.items()})[0]
    env.close()
    assert before[atom_index("has_food")] == 0
    assert after[atom_index("msg_nothing_to_eat")] == 1
