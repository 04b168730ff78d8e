from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from nethack_facts import VI_KEY_MOVES

pytest.importorskip("nle")

from hypothesis import given
from hypothesis import strategies as st
from nle import nethack

from crossmoe.nethack.atoms import ATOM_INDEX, ATOMS, DIRECTIONS, Hunger, atom_index, extract_atoms
from crossmoe.nethack.env import DEFAULT_OBSERVATION_KEYS, make_env, make_vector_env
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
        "inv_letters": np.zeros((1, nethack.NLE_INVENTORY_SIZE), dtype=np.uint8),
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


def lettered(*items: tuple[str, int]) -> Mutation:
    """An inventory of ``(letter, object class)`` items."""

    def mutate(obs: dict[str, np.ndarray]) -> None:
        for slot, (letter, object_class) in enumerate(items):
            obs["inv_letters"][0, slot] = ord(letter)
            obs["inv_oclasses"][0, slot] = object_class

    return mutate


# The key each move types, as NetHack's vi-keys: NetHack's own documentation, not nle's enum values.
MOVE_KEYS = {"n": "k", "e": "l", "s": "j", "w": "h", "ne": "u", "se": "n", "sw": "b", "nw": "y"}
FOOD, WEAPON = nethack.FOOD_CLASS, nethack.WEAPON_CLASS


def remember(
    *placements: tuple[int, int, int],
    visited: tuple[tuple[int, int], ...] = (),
    locked: tuple[tuple[int, int], ...] = (),
) -> Mutation:
    """Add MapMemory keys (all unseen, nothing visited), then remember glyphs at (dy, dx) and mark visited cells
    (1) and doors found locked (2)."""

    def mutate(obs: dict[str, np.ndarray]) -> None:
        if "map_memory" not in obs:
            obs["map_memory"] = np.full((1, *nethack.DUNGEON_SHAPE), cmap("S_stone"), dtype=np.int16)
            obs["visited"] = np.zeros((1, *nethack.DUNGEON_SHAPE), dtype=np.uint8)
        for dy, dx, glyph in placements:
            obs["map_memory"][0, PLAYER_Y + dy, PLAYER_X + dx] = glyph
        for dy, dx in visited:
            obs["visited"][0, PLAYER_Y + dy, PLAYER_X + dx] = 1
        for dy, dx in locked:
            obs["visited"][0, PLAYER_Y + dy, PLAYER_X + dx] = 2

    return mutate


def room(*placements: tuple[int, int, int], radius: int = 3, visited: tuple[tuple[int, int], ...] = ()) -> Mutation:
    """A remembered square of floor of the given radius around the player, walled in, then ``placements``."""
    floor = [(dy, dx, cmap("S_room")) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    walls = [
        (dy, dx, cmap("S_hwall" if abs(dy) > radius else "S_vwall"))
        for dy in range(-radius - 1, radius + 2)
        for dx in range(-radius - 1, radius + 2)
        if max(abs(dy), abs(dx)) == radius + 1
    ]
    return remember(*walls, *floor, *placements, visited=((0, 0), *visited))


def path_atoms(atoms: np.ndarray) -> set[str]:
    return {name for name in ATOMS if name.startswith("path_") and atoms[atom_index(name)] == 1}


FAR = 5  # a cell well outside the 3x3 neighbourhood
DNSTAIR, UPSTAIR = cmap("S_dnstair"), cmap("S_upstair")

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
    **{f"monster_{name}": (cells((dy, dx, MONSTER_GLYPH)), cells((dy, dx, PET_GLYPH))) for name, dy, dx in DIRECTIONS},
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
    "on_stairs_down": (remember((0, 0, DNSTAIR)), remember((0, 0, UPSTAIR))),
    "on_stairs_up": (remember((0, 0, cmap("S_upladder"))), remember((0, 0, cmap("S_dnladder")))),
    # a '>' two cells south-east in the room, or beyond its wall and unseen rock
    "path_to_downstairs": (room((2, 2, DNSTAIR), radius=2), room((0, 5, DNSTAIR), radius=2)),
    **{
        f"path_{name}": (room((2 * dy, 2 * dx, DNSTAIR)), room((-2 * dy, -2 * dx, DNSTAIR)))
        for name, dy, dx in DIRECTIONS
    },
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
    "has_food_key": (lettered(("a", WEAPON), ("y", FOOD)), lettered(("y", WEAPON), ("f", FOOD))),
    # the food under the move's key fires it; a weapon under that key, or the food under another, does not
    **{
        f"food_key_{name}": (
            lettered(("a", WEAPON), (key, FOOD)),
            lettered((key, WEAPON), (MOVE_KEYS["e" if name != "e" else "w"], FOOD)),
        )
        for name, key in MOVE_KEYS.items()
    },
    "msg_attacked": (message("The jackal bites!"), message("The kitten bites the jackal.")),
    "msg_killed": (message("You kill the newt!"), message("The newt is killed!")),
    "msg_locked": (message("This door is locked."), message("That door is closed.")),
    "msg_door_opened": (message("The door opens."), message("WHAMM!!")),
    "msg_prompt": (message("What do you want to eat? [fg or ?*] "), message("You see here a dagger.")),
    "msg_hungry": (message("You are beginning to feel hungry."), message("You hear the footsteps of a guard.")),
    "msg_nothing_to_eat": (message("You don't have anything to eat."), message("You cannot eat that!")),
    "msg_eat_prompt": (message("What do you want to eat? [gh or ?*] "), message("What do you want to drink? [e] ")),
    "msg_eat_corpse_prompt": (
        message("There is a jackal corpse here; eat it? [ynq] (n) "),
        message("There is a jackal corpse here."),
    ),
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
        remember()(obs)  # one batch has the memory keys in every row or in none
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
# stairs_down_visible, on_stairs_down, path_to_downstairs, trap_adjacent, msg_killed, msg_locked
# and msg_hungry show up within 30000 random steps (a slow test; on_stairs_down and
# path_to_downstairs also in test_following_the_path_atoms_reaches_the_down_stairs); confused,
# stunned, blind, hallucinating, ill, in_mortal_danger and levitating need items or monsters a
# random agent rarely meets; msg_nothing_to_eat needs a role without food
# (test_nothing_to_eat_on_a_real_game).
REACHED_BY_RANDOM_AGENT = (
    "hp_low",
    "hp_medium",
    "hp_full",
    "satiated",
    "not_hungry",
    "depth_1",
    "monster_adjacent",
    *(f"monster_{name}" for name, _, _ in DIRECTIONS),
    "monster_visible",
    "no_monster_visible",
    "pet_adjacent",
    "multiple_monsters_adjacent",
    "item_adjacent",
    "item_visible",
    "item_here",
    "stairs_up_adjacent",
    "on_stairs_up",
    *(f"path_{name}" for name, _, _ in DIRECTIONS),
    "door_closed_adjacent",
    "door_open_adjacent",
    "in_corridor",
    "in_room",
    "dead_end",
    "boulder_adjacent",
    "wall_adjacent",
    "has_food",
    "has_food_key",
    "food_key_w",  # the monk's oranges or apples
    "msg_attacked",
    "msg_door_opened",
    "msg_prompt",
    "msg_eat_prompt",
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
# in_mortal_danger, levitating, msg_eat_corpse_prompt and the food_key atoms of keys other than h
# (constructed cases only) and msg_nothing_to_eat (a scripted game).
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
    "on_stairs_down",
    "path_to_downstairs",
    "trap_adjacent",
    "msg_killed",
    "msg_locked",
    "msg_hungry",
)


@pytest.mark.slow  # about 30 s: the path atoms' search runs on every one of the 3750 batches
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


def test_without_inventory_letters_no_food_is_typable():
    obs = blank_obs()
    lettered(("h", FOOD))(obs)
    del obs["inv_letters"]
    atoms = extract_atoms(obs)[0]
    assert atoms[atom_index("has_food")] == 1
    assert not any(atoms[atom_index(name)] for name in ATOMS if "food_key" in name)


def test_inventory_letters_must_have_the_shape_of_the_classes():
    obs = blank_obs()
    obs["inv_letters"] = np.zeros((1, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"obs\['inv_letters'\] must have the shape of obs\['inv_oclasses'\]"):
        extract_atoms(obs)


def test_the_move_whose_key_is_a_food_letter_eats_it_on_a_real_game():
    # The monk starts with oranges under h, the west move's key; EAT asks for a letter and that move answers it.
    env = make_env(seed=0, observation_keys=(*DEFAULT_OBSERVATION_KEYS, "inv_strs"))
    obs, _ = env.reset(seed=0)
    actions = env.unwrapped.actions

    def atoms_now() -> np.ndarray:
        return extract_atoms({key: value[None] for key, value in obs.items()})[0]

    def oranges() -> str:
        rows = [bytes(row).rstrip(b"\0").decode() for row in obs["inv_strs"]]
        return next(row for row in rows if "orange" in row)

    assert atoms_now()[atom_index("food_key_w")] == 1
    before = oranges()
    obs, *_ = env.step(actions.index(nethack.Command.EAT))
    assert atoms_now()[atom_index("msg_eat_prompt")] == 1
    obs, *_ = env.step(actions.index(nethack.CompassDirection.W))
    env.close()
    assert "orange is delicious" in bytes(obs["message"]).decode()
    assert int(oranges().split()[0]) == int(before.split()[0]) - 1


# on_stairs_down / on_stairs_up


@pytest.mark.parametrize(
    ("text", "down", "up"),
    [
        ("There is a staircase down here.", 1, 0),
        ("There is a ladder down here.", 1, 0),
        ("There is a staircase up here.", 0, 1),
        ("There is a ladder up here.", 0, 1),
        # "<" on the level-1 up staircase: the hero is on stairs, but not on a way down
        ("Beware, there will be no return!  Still climb? [yn] (n) n", 0, 1),
        ("There is a fountain here.", 0, 0),
    ],
)
def test_stairs_messages_tell_down_from_up_without_a_memory(text, down, up):
    atoms = atoms_of(message(text))
    assert (atoms[atom_index("on_stairs_down")], atoms[atom_index("on_stairs_up")]) == (down, up)


def test_what_the_hero_stands_on_comes_from_the_memory():
    # the hero hides the cell; the memory (MapMemory) remembers it, whatever the glyphs show now
    assert atoms_of(remember((0, 0, DNSTAIR)))[atom_index("on_stairs_down")] == 1
    assert atoms_of(remember((0, 0, DNSTAIR)))[atom_index("on_stairs_up")] == 0
    assert atoms_of(remember((0, 0, cmap("S_room"))))[atom_index("on_stairs_down")] == 0
    # a '>' remembered next to the player is not under it
    assert atoms_of(remember((0, 1, DNSTAIR)))[atom_index("on_stairs_down")] == 0
    for glyph in (DAGGER_GLYPH, FOOD_RATION_GLYPH):
        assert atoms_of(remember((0, 0, glyph)))[atom_index("item_here")] == 1
    assert atoms_of(remember((0, 0, cmap("S_room"))))[atom_index("item_here")] == 0
    # a '>' seen earlier and now out of view still counts as visible
    assert atoms_of(remember((FAR, -FAR, DNSTAIR)))[atom_index("stairs_down_visible")] == 1
    assert atoms_of(remember((FAR, -FAR, UPSTAIR)))[atom_index("stairs_down_visible")] == 0
    # the death observation (blstats zeroed) stands on nothing
    dead = blank_obs()
    remember((0, 0, DNSTAIR))(dead)
    dead["blstats"][:] = 0
    dead["blstats"][0, [nethack.NLE_BL_Y, nethack.NLE_BL_X]] = PLAYER_Y, PLAYER_X
    assert extract_atoms(dead)[0, atom_index("on_stairs_down")] == 0


def test_memory_keys_must_have_the_shape_of_the_glyphs():
    obs = blank_obs()
    remember()(obs)
    with pytest.raises(ValueError, match=r"obs\['map_memory'\] must have the shape of obs\['glyphs'\]"):
        extract_atoms({**obs, "map_memory": obs["map_memory"][0]})
    with pytest.raises(ValueError, match=r"obs\['visited'\] must have the shape of obs\['glyphs'\]"):
        extract_atoms({**obs, "visited": obs["visited"][:, :, :-1]})


# monster_<dir>


def test_directions_follow_nle_compass_directions():
    assert [name for name, _, _ in DIRECTIONS] == [d.name.lower() for d in nethack.CompassDirection]
    assert [(dy, dx) for _, dy, dx in DIRECTIONS] == [VI_KEY_MOVES[chr(d.value)] for d in nethack.CompassDirection]


@pytest.mark.parametrize(("name", "dy", "dx"), DIRECTIONS)
def test_monster_direction_names_exactly_the_cell_of_the_monster(name, dy, dx):
    monster_atoms = [f"monster_{other}" for other, _, _ in DIRECTIONS]
    atoms = atoms_of(cells((dy, dx, MONSTER_GLYPH), (2 * dy, 2 * dx, MONSTER_GLYPH)))
    assert [other for other in monster_atoms if atoms[atom_index(other)]] == [f"monster_{name}"]
    # a pet, a remembered invisible monster, an item there
    assert atoms_of(cells((dy, dx, nethack.GLYPH_INVISIBLE)))[atom_index(f"monster_{name}")] == 1
    for glyph in (PET_GLYPH, DAGGER_GLYPH):
        assert atoms_of(cells((dy, dx, glyph)))[atom_index(f"monster_{name}")] == 0


def test_monster_direction_does_not_wrap_around_the_map_edge():
    obs = blank_obs()
    obs["glyphs"][0, PLAYER_Y, PLAYER_X] = cmap("S_stone")
    obs["glyphs"][0, 0, 0] = PLAYER_GLYPH
    obs["blstats"][0, [nethack.NLE_BL_X, nethack.NLE_BL_Y]] = 0
    obs["glyphs"][0, -1, -1] = obs["glyphs"][0, -1, 0] = obs["glyphs"][0, 0, -1] = MONSTER_GLYPH  # the far corners
    obs["glyphs"][0, 1, 1] = MONSTER_GLYPH
    atoms = extract_atoms(obs)[0]
    assert {name for name, _, _ in DIRECTIONS if atoms[atom_index(f"monster_{name}")]} == {"se"}


# path_to_downstairs and path_<dir>

ROOM_GLYPH, CORRIDOR_GLYPH, DOORWAY_GLYPH = cmap("S_room"), cmap("S_corr"), cmap("S_ndoor")
OPEN_DOOR_GLYPH, CLOSED_DOOR_GLYPH = cmap("S_vodoor"), cmap("S_vcdoor")


def test_path_leads_east_to_a_downstairs_two_cells_east():
    atoms = atoms_of(room((0, 2, DNSTAIR)))
    assert path_atoms(atoms) == {"path_to_downstairs", "path_e"}
    # without the memory keys the same '>' on screen gives no path
    atoms = atoms_of(cells((0, 1, ROOM_GLYPH), (0, 2, DNSTAIR)))
    assert atoms[atom_index("stairs_down_visible")] == 1 and path_atoms(atoms) == set()


def test_path_goes_around_a_wall():
    # a wall from (-2, 1) to (1, 1) between the player and the '>' at (0, 2): around the south end
    wall = [(dy, 1, cmap("S_vwall")) for dy in (-3, -2, -1, 0, 1)]
    assert path_atoms(atoms_of(room(*wall, (0, 2, DNSTAIR)))) == {"path_to_downstairs", "path_s"}


def test_a_door_is_never_left_diagonally():
    # the player stands in an open door of a vertical wall; a room east, a '>' south-east
    glyphs = [(-1, 0, cmap("S_vwall")), (1, 0, cmap("S_vwall")), (0, -1, CORRIDOR_GLYPH), (0, 0, OPEN_DOOR_GLYPH)]
    glyphs += [(dy, dx, ROOM_GLYPH) for dy in (-1, 0, 1) for dx in (1, 2)]
    atoms = atoms_of(remember(*glyphs, (1, 1, DNSTAIR), visited=((0, 0),)))
    assert path_atoms(atoms) == {"path_to_downstairs", "path_e"}
    # a doorless doorway may be left diagonally
    atoms = atoms_of(remember(*glyphs, (0, 0, DOORWAY_GLYPH), (1, 1, DNSTAIR), visited=((0, 0),)))
    assert path_atoms(atoms) == {"path_to_downstairs", "path_se"}


def test_a_door_is_never_entered_diagonally():
    # the player in a room, a closed door north-west of it in a vertical wall, an unexplored corridor beyond
    glyphs = [(dy, dx, ROOM_GLYPH) for dy in (-1, 0, 1) for dx in (0, 1)]
    glyphs += [(0, -1, cmap("S_vwall")), (1, -1, cmap("S_vwall")), (-2, -1, cmap("S_vwall"))]
    glyphs += [(-1, -1, CLOSED_DOOR_GLYPH), (-1, -2, CORRIDOR_GLYPH)]
    atoms = atoms_of(remember(*glyphs, visited=((0, 0), (-1, -1))))  # the door was visited, the corridor not
    assert path_atoms(atoms) == {"path_n"}  # north, then west into the door
    atoms = atoms_of(remember(*glyphs, (-1, -1, DOORWAY_GLYPH), visited=((0, 0), (-1, -1))))
    assert path_atoms(atoms) == {"path_nw"}


def test_without_stairs_the_path_explores_the_nearest_unvisited_exit():
    # a doorway 3 cells east and a corridor 2 cells west; a '>' nowhere
    west, east = (0, -2, CORRIDOR_GLYPH), (0, 3, DOORWAY_GLYPH)
    line = [(0, dx, ROOM_GLYPH) for dx in (-1, 0, 1, 2)]
    assert path_atoms(atoms_of(remember(*line, west, east, visited=((0, 0),)))) == {"path_w"}
    assert path_atoms(atoms_of(remember(*line, west, east, visited=((0, 0), (0, -2))))) == {"path_e"}
    assert path_atoms(atoms_of(remember(*line, west, east, visited=((0, 0), (0, -2), (0, 3))))) == set()
    # a known '>' wins over a nearer exit; an unreachable one does not
    assert path_atoms(atoms_of(remember(*line, west, east, (0, 3, DNSTAIR), visited=((0, 0),)))) == {
        "path_to_downstairs",
        "path_e",
    }
    assert path_atoms(atoms_of(remember(*line, west, east, (5, 5, DNSTAIR), visited=((0, 0),)))) == {"path_w"}


def test_a_door_found_locked_is_neither_walked_through_nor_explored():
    # a closed door 2 cells east, an unexplored corridor beyond it, a corridor 3 cells west
    line = [(0, dx, ROOM_GLYPH) for dx in (-2, -1, 0, 1)]
    glyphs = [*line, (0, 2, CLOSED_DOOR_GLYPH), (0, 3, CORRIDOR_GLYPH), (0, -3, CORRIDOR_GLYPH)]
    assert path_atoms(atoms_of(remember(*glyphs, visited=((0, 0),)))) == {"path_e"}  # the door is the nearest exit
    assert path_atoms(atoms_of(remember(*glyphs, visited=((0, 0),), locked=((0, 2),)))) == {"path_w"}
    # nor is a '>' behind it reachable
    stairs = [*line, (0, 2, CLOSED_DOOR_GLYPH), (0, 3, DNSTAIR)]
    assert path_atoms(atoms_of(remember(*stairs, visited=((0, 0),)))) == {"path_to_downstairs", "path_e"}
    assert path_atoms(atoms_of(remember(*stairs, visited=((0, 0),), locked=((0, 2),)))) == set()


def test_traps_boulders_and_unseen_cells_are_not_walked_through():
    line = [(0, dx, ROOM_GLYPH) for dx in (-2, -1, 0, 1, 2)]
    for blocker in (cmap("S_bear_trap"), BOULDER_GLYPH, cmap("S_stone"), cmap("S_hwall"), cmap("S_pool")):
        atoms = atoms_of(remember(*line, (0, 1, blocker), (0, 2, DNSTAIR), visited=((0, 0),)))
        assert path_atoms(atoms) == set(), blocker
    # an object or corpse on the way is walked over
    atoms = atoms_of(remember(*line, (0, 1, DAGGER_GLYPH), (0, 2, DNSTAIR), visited=((0, 0),)))
    assert path_atoms(atoms) == {"path_to_downstairs", "path_e"}


def test_dead_player_has_no_path():
    obs = blank_obs()
    room((0, 2, DNSTAIR))(obs)
    obs["blstats"][:] = 0
    obs["blstats"][0, [nethack.NLE_BL_Y, nethack.NLE_BL_X]] = PLAYER_Y, PLAYER_X
    assert path_atoms(extract_atoms(obs)[0]) == set()


# An independent reference: a plain breadth-first search from the targets, under NetHack's rules.
WALKABLE_CLASSES = {
    GlyphClass.FLOOR,
    GlyphClass.CORRIDOR,
    GlyphClass.DOORWAY,
    GlyphClass.DOOR_OPEN,
    GlyphClass.DOOR_CLOSED,
    GlyphClass.STAIRS_UP,
    GlyphClass.STAIRS_DOWN,
    GlyphClass.OBJECT,
    GlyphClass.FOOD,
}
DOOR_CLASSES = {GlyphClass.DOOR_OPEN, GlyphClass.DOOR_CLOSED}
EXIT_CLASSES = {GlyphClass.DOORWAY, GlyphClass.DOOR_OPEN, GlyphClass.DOOR_CLOSED, GlyphClass.CORRIDOR}


def reference_path(memory: np.ndarray, visited: np.ndarray, player: tuple[int, int]) -> set[str]:
    """The path atoms that fire for one ``(21, 79)`` memory, by a textbook BFS; doors found locked are walls."""
    from collections import deque

    rows, cols = memory.shape
    cls = GLYPH_CLASS[memory]
    walkable = {
        (y, x)
        for y in range(rows)
        for x in range(cols)
        if cls[y, x] in WALKABLE_CLASSES and memory[y, x] != BOULDER_GLYPH and visited[y, x] != 2
    }
    walkable.add(player)
    door = {(y, x) for (y, x) in walkable if cls[y, x] in DOOR_CLASSES}

    def moves(cell):
        for name, dy, dx in DIRECTIONS:
            other = (cell[0] + dy, cell[1] + dx)
            if other in walkable and not (dy and dx and (cell in door or other in door)):
                yield name, other

    def first_step(targets):
        dist = {cell: 0 for cell in targets if cell in walkable}
        queue = deque(dist)
        while queue:
            cell = queue.popleft()
            for _, other in moves(cell):
                if other not in dist:
                    dist[other] = dist[cell] + 1
                    queue.append(other)
        options = [(dist[other], k, name) for k, (name, other) in enumerate(moves(player)) if other in dist]
        return min(options)[2] if options else None

    stairs = {(y, x) for (y, x) in zip(*np.nonzero(cls == GlyphClass.STAIRS_DOWN), strict=True)} - {player}
    frontier = {(y, x) for y, x in zip(*np.nonzero(np.isin(cls, list(EXIT_CLASSES)) & (visited == 0)), strict=True)}
    step = first_step(stairs) if stairs else None
    fired = {"path_to_downstairs"} if step else set()
    step = step or first_step(frontier)
    return fired | ({f"path_{step}"} if step else set())


MAP_GLYPHS = (
    [ROOM_GLYPH] * 6
    + [CORRIDOR_GLYPH] * 3
    + [cmap("S_hwall"), cmap("S_vwall"), cmap("S_stone"), cmap("S_stone")]
    + [DOORWAY_GLYPH, OPEN_DOOR_GLYPH, CLOSED_DOOR_GLYPH, UPSTAIR, cmap("S_bear_trap"), BOULDER_GLYPH]
    + [DAGGER_GLYPH, cmap("S_fountain")]
)


@st.composite
def remembered_maps(draw, rows=7, cols=11):
    """A random remembered window around the player (rock beyond it), up to two '>', random visited cells."""
    y0, x0 = PLAYER_Y - rows // 2, PLAYER_X - cols // 2
    memory = np.full(nethack.DUNGEON_SHAPE, cmap("S_stone"), dtype=np.int16)
    window = draw(st.lists(st.sampled_from(MAP_GLYPHS), min_size=rows * cols, max_size=rows * cols))
    memory[y0 : y0 + rows, x0 : x0 + cols] = np.array(window, dtype=np.int16).reshape(rows, cols)
    for y, x in draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1)), max_size=2)):
        memory[y0 + y, x0 + x] = DNSTAIR
    visited = np.zeros(nethack.DUNGEON_SHAPE, dtype=np.uint8)
    marks = draw(st.lists(st.sampled_from([0, 0, 1, 2]), min_size=rows * cols, max_size=rows * cols))
    visited[y0 : y0 + rows, x0 : x0 + cols] = np.array(marks, dtype=np.uint8).reshape(rows, cols)
    visited[PLAYER_Y, PLAYER_X] = 1
    return memory, visited


@given(maps=st.lists(remembered_maps(), min_size=1, max_size=4))
def test_path_atoms_match_a_reference_search(maps):
    batch = {key: np.repeat(value, len(maps), axis=0) for key, value in blank_obs().items()}
    batch["map_memory"] = np.stack([memory for memory, _ in maps])
    batch["visited"] = np.stack([visited for _, visited in maps])
    atoms = extract_atoms(batch)
    for row, (memory, visited) in enumerate(maps):
        assert path_atoms(atoms[row]) == reference_path(memory, visited, (PLAYER_Y, PLAYER_X)), row
        # a batch gives each row what it gives alone
        alone = extract_atoms({key: value[row : row + 1] for key, value in batch.items()})
        np.testing.assert_array_equal(atoms[row], alone[0])


def test_path_batch_equals_rows_one_at_a_time():
    mutations = [
        room((0, 2, DNSTAIR)),
        room((-3, -3, DNSTAIR), radius=3),
        room((0, 5, DNSTAIR), radius=2),
        remember((0, -1, ROOM_GLYPH), (0, -2, CORRIDOR_GLYPH), visited=((0, 0),)),
        remember(),
    ]
    singles = [blank_obs() for _ in mutations]
    for obs, mutation in zip(singles, mutations, strict=True):
        mutation(obs)
    batch = {key: np.concatenate([obs[key] for obs in singles]) for key in singles[0]}
    expected = np.concatenate([extract_atoms(obs) for obs in singles])
    np.testing.assert_array_equal(extract_atoms(batch), expected)
    assert [path_atoms(row) for row in expected] == [
        {"path_to_downstairs", "path_e"},
        {"path_to_downstairs", "path_nw"},
        set(),
        {"path_w"},
        set(),
    ]


# real games: stairs and following the path


def _batched(obs):
    return {key: value[None] for key, value in obs.items()}


def test_up_staircase_on_level_one_is_not_on_stairs_down():
    env = make_env(seed=0)
    env.reset()
    obs, *_ = env.step(env.unwrapped.actions.index(nethack.MiscDirection.UP))
    env.close()
    text = bytes(obs["message"]).split(b"\0", 1)[0].decode("latin-1")
    assert text.startswith("Beware, there will be no return!")
    atoms = extract_atoms(_batched(obs))[0]
    assert atoms[atom_index("on_stairs_down")] == 0
    assert atoms[atom_index("on_stairs_up")] == 1  # from the message: the hero never saw the cell bare
    assert obs["blstats"][nethack.NLE_BL_DEPTH] == 1


def test_following_the_path_atoms_reaches_the_down_stairs():
    """Step along path_<dir> from the start of a seeded game: it ends on the '>', and '>' goes down a level."""
    env = make_env(seed=4)
    obs, _ = env.reset()
    actions = env.unwrapped.actions
    move = {d.name.lower(): actions.index(d) for d in nethack.CompassDirection}
    toward_stairs = 0
    for _ in range(100):
        atoms = extract_atoms(_batched(obs))[0]
        if atoms[atom_index("on_stairs_down")]:
            break
        if atoms[atom_index("msg_prompt")]:
            obs, *_ = env.step(actions.index(nethack.MiscAction.MORE))
            continue
        steps = [name for name, _, _ in DIRECTIONS if atoms[atom_index(f"path_{name}")]]
        assert len(steps) == 1, "a path atom fires while there is something to explore"
        toward_stairs += int(atoms[atom_index("path_to_downstairs")])
        obs, _, terminated, truncated, _ = env.step(move[steps[0]])
        assert not (terminated or truncated)
    else:
        pytest.fail("the path atoms did not reach the down stairs in 100 steps")
    assert toward_stairs > 0  # the stairs came into view, and the path led to them
    depth = obs["blstats"][nethack.NLE_BL_DEPTH]
    obs, *_ = env.step(actions.index(nethack.MiscDirection.DOWN))
    env.close()
    assert obs["blstats"][nethack.NLE_BL_DEPTH] == depth + 1
    assert obs["visited"].sum() == 1  # a new level: the memory starts again


def test_a_locked_door_is_remembered_and_the_path_goes_elsewhere():
    """Seed 11: the path runs into a locked door within a few steps; MapMemory marks it and the path leaves it."""
    env = make_env(seed=11)
    obs, _ = env.reset()
    actions = env.unwrapped.actions
    move = {d.name.lower(): actions.index(d) for d in nethack.CompassDirection}
    offset = {name: (dy, dx) for name, dy, dx in DIRECTIONS}
    door = None
    for _ in range(200):
        atoms = extract_atoms(_batched(obs))[0]
        if atoms[atom_index("msg_prompt")]:
            obs, *_ = env.step(actions.index(nethack.MiscAction.MORE))
            continue
        steps = [name for name, _, _ in DIRECTIONS if atoms[atom_index(f"path_{name}")]]
        if not steps:
            break
        y, x = obs["blstats"][nethack.NLE_BL_Y], obs["blstats"][nethack.NLE_BL_X]
        target = (y + offset[steps[0]][0], x + offset[steps[0]][1])
        assert target != door, "the path leads into the door found locked"
        obs, *_ = env.step(move[steps[0]])
        if b"This door is locked" in bytes(obs["message"]):
            assert door is None, "a second locked door, or the same one again"
            door = target
            assert obs["visited"][door] == 2
            assert GLYPH_CLASS[obs["map_memory"][door]] == GlyphClass.DOOR_CLOSED
    env.close()
    assert door is not None
    assert (obs["visited"] == 2).sum() == 1 and obs["visited"][door] == 2


def test_navigation_cache_equals_the_search_on_a_real_rollout(monkeypatch):
    """NetHackAtoms searches only the rows whose map, visits, position or life changed, and equals extract_atoms."""
    from crossmoe.nethack import atoms as atoms_module
    from crossmoe.nethack.atoms import NetHackAtoms

    searched = []
    original = atoms_module._navigation

    def counting(memory, *args):
        searched.append(len(memory))
        return original(memory, *args)

    monkeypatch.setattr(atoms_module, "_navigation", counting)
    envs = make_vector_env(6, seed=4)
    obs, _ = envs.reset(seed=4)
    cached = NetHackAtoms()
    rng = np.random.default_rng(4)
    skipped = 0
    for step in range(60):
        if step == 40:  # a batch of another size starts afresh, and then goes on caching
            obs = {key: value[:4] for key, value in obs.items()}
        searched.clear()
        fast = cached(obs)
        searched_rows = sum(searched)
        searched.clear()
        np.testing.assert_array_equal(fast, extract_atoms(obs))
        skipped += len(obs["glyphs"]) - searched_rows
        if step == 40:
            assert searched_rows == 4
        obs, *_ = envs.step(rng.integers(0, envs.single_action_space.n, 6))
        obs = {key: value.copy() for key, value in obs.items()}
    envs.close()
    assert skipped > 60  # random play bumps into walls and answers prompts: many rows need no new search


def test_named_atoms_are_those_columns_of_extract_atoms_in_that_order(random_rollout):
    from crossmoe.nethack.atoms import NetHackAtoms

    _, obs = random_rollout
    names = ("msg_eat_prompt", "hp_full", "path_w", "food_key_w", "depth_1")
    np.testing.assert_array_equal(NetHackAtoms(names)(obs), extract_atoms(obs)[:, [atom_index(n) for n in names]])
    np.testing.assert_array_equal(NetHackAtoms(ATOMS)(obs), extract_atoms(obs))


def test_named_atoms_reject_unknown_names():
    from crossmoe.nethack.agent import load_hypergraph
    from crossmoe.nethack.atoms import NetHackAtoms, graph_atoms

    with pytest.raises(ValueError, match=r"names must be atoms of ATOMS, got unknown names \['hp_ful'\]"):
        NetHackAtoms(["hp_full", "hp_ful"])
    with pytest.raises(TypeError, match="names must be a sequence of atom names"):
        NetHackAtoms("hp_full")
    data = load_hypergraph().to_dict()
    data["conditions"][0]["name"] = "hit_points_critical"
    for operator in data["operators"]:
        operator["requires"] = ["hit_points_critical" if r == "hp_critical" else r for r in operator["requires"]]
    from crossmoe.hypergraph import Hypergraph

    with pytest.raises(ValueError, match=r"hypergraph's conditions must be atoms .* \['hit_points_critical'\]"):
        graph_atoms(Hypergraph.from_dict(data))
