"""Coarse map-cell categories for NetHack glyph ids.

NetHack draws every map cell as one of ``nethack.MAX_GLYPH`` glyph ids: a
monster, a pet, an object, a piece of terrain (a *cmap* symbol), a zap, an
explosion and so on. For the symbolic atoms we only need a handful of
categories, so :data:`GLYPH_CLASS` maps every glyph id to a :class:`GlyphClass`
once, at import time, and :func:`glyph_class` is a single vectorised lookup.

All offsets and object classes come from :mod:`nle.nethack`. NLE 1.3.0 does not
expose the ``S_*`` cmap indices, so :data:`SCREEN_SYMBOLS` restates NetHack's
``enum screen_symbols`` in order; its entries are checked against NLE's own
``symdef`` explanations in the tests.

The player is drawn with a monster glyph (its role or polymorph form), so the
table classifies the player's own cell as :attr:`GlyphClass.MONSTER`. The table
cannot know where the player stands: consumers must mask the cell at
``(blstats[NLE_BL_Y], blstats[NLE_BL_X])``, as :func:`crossmoe.nethack.atoms.extract_atoms` does.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from nle import nethack

__all__ = [
    "BOULDER_GLYPH",
    "GLYPH_CLASS",
    "PASSABLE_CLASSES",
    "SCREEN_SYMBOLS",
    "GlyphClass",
    "glyph_class",
    "screen_symbol",
]


class GlyphClass(IntEnum):
    """Map-cell category of a glyph. The order is stable: encoders may embed it."""

    STONE = 0
    """Unexplored or solid stone, and the no-glyph pad value."""
    WALL = 1
    """Any wall or wall corner."""
    FLOOR = 2
    """Lit or remembered-dark floor of a room."""
    CORRIDOR = 3
    """Lit or dark corridor."""
    DOORWAY = 4
    """Doorless or broken doorway."""
    DOOR_OPEN = 5
    DOOR_CLOSED = 6
    STAIRS_UP = 7
    """Up staircase or up ladder."""
    STAIRS_DOWN = 8
    """Down staircase or down ladder."""
    TRAP = 9
    FEATURE = 10
    """Fountain, altar, sink, throne, grave, tree, iron bars, water, lava, ice, drawbridge, air, cloud."""
    OBJECT = 11
    """Any object that is not food, including statues and boulders."""
    FOOD = 12
    """Food-class objects and corpses."""
    MONSTER = 13
    """Seen, detected, ridden or remembered-invisible monster (and the player's own cell)."""
    PET = 14
    OTHER = 15
    """Warnings, zaps, explosions, swallow borders and other transient effects."""


# NetHack 3.6 `include/rm.h`, `enum screen_symbols`, in declaration order. NLE 1.3.0
# does not export these indices, so the position in this tuple is the cmap index.
SCREEN_SYMBOLS: tuple[str, ...] = (
    "S_stone", "S_vwall", "S_hwall", "S_tlcorn", "S_trcorn", "S_blcorn", "S_brcorn", "S_crwall",
    "S_tuwall", "S_tdwall", "S_tlwall", "S_trwall", "S_ndoor", "S_vodoor", "S_hodoor", "S_vcdoor",
    "S_hcdoor", "S_bars", "S_tree", "S_room", "S_darkroom", "S_corr", "S_litcorr", "S_upstair",
    "S_dnstair", "S_upladder", "S_dnladder", "S_altar", "S_grave", "S_throne", "S_sink", "S_fountain",
    "S_pool", "S_ice", "S_lava", "S_vodbridge", "S_hodbridge", "S_vcdbridge", "S_hcdbridge", "S_air",
    "S_cloud", "S_water", "S_arrow_trap", "S_dart_trap", "S_falling_rock_trap", "S_squeaky_board",
    "S_bear_trap", "S_land_mine", "S_rolling_boulder_trap", "S_sleeping_gas_trap", "S_rust_trap",
    "S_fire_trap", "S_pit", "S_spiked_pit", "S_hole", "S_trap_door", "S_teleportation_trap",
    "S_level_teleporter", "S_magic_portal", "S_web", "S_statue_trap", "S_magic_trap",
    "S_anti_magic_trap", "S_polymorph_trap", "S_vibrating_square", "S_vbeam", "S_hbeam", "S_lslant",
    "S_rslant", "S_digbeam", "S_flashbeam", "S_boomleft", "S_boomright", "S_ss1", "S_ss2", "S_ss3",
    "S_ss4", "S_poisoncloud", "S_goodpos", "S_sw_tl", "S_sw_tc", "S_sw_tr", "S_sw_ml", "S_sw_mr",
    "S_sw_bl", "S_sw_bc", "S_sw_br", "S_explode1", "S_explode2", "S_explode3", "S_explode4",
    "S_explode5", "S_explode6", "S_explode7", "S_explode8", "S_explode9",
)  # fmt: skip
_SCREEN_SYMBOL_INDEX = {name: index for index, name in enumerate(SCREEN_SYMBOLS)}
if len(SCREEN_SYMBOLS) != nethack.MAXPCHARS:
    raise ImportError(f"SCREEN_SYMBOLS has {len(SCREEN_SYMBOLS)} entries, nle has MAXPCHARS={nethack.MAXPCHARS}")


def screen_symbol(name: str) -> int:
    """Return the cmap index of a NetHack screen symbol, e.g. ``screen_symbol("S_vcdoor")``."""
    try:
        return _SCREEN_SYMBOL_INDEX[name]
    except KeyError:
        raise ValueError(f"unknown screen symbol {name!r}; expected one of SCREEN_SYMBOLS") from None


def _symbol_range(first: str, last: str) -> range:
    return range(screen_symbol(first), screen_symbol(last) + 1)


_CMAP_CLASS: dict[int, GlyphClass] = {screen_symbol("S_stone"): GlyphClass.STONE}
_CMAP_CLASS.update(dict.fromkeys(_symbol_range("S_vwall", "S_trwall"), GlyphClass.WALL))
_CMAP_CLASS.update(
    {
        screen_symbol("S_ndoor"): GlyphClass.DOORWAY,
        screen_symbol("S_vodoor"): GlyphClass.DOOR_OPEN,
        screen_symbol("S_hodoor"): GlyphClass.DOOR_OPEN,
        screen_symbol("S_vcdoor"): GlyphClass.DOOR_CLOSED,
        screen_symbol("S_hcdoor"): GlyphClass.DOOR_CLOSED,
        screen_symbol("S_room"): GlyphClass.FLOOR,
        screen_symbol("S_darkroom"): GlyphClass.FLOOR,
        screen_symbol("S_corr"): GlyphClass.CORRIDOR,
        screen_symbol("S_litcorr"): GlyphClass.CORRIDOR,
        screen_symbol("S_upstair"): GlyphClass.STAIRS_UP,
        screen_symbol("S_upladder"): GlyphClass.STAIRS_UP,
        screen_symbol("S_dnstair"): GlyphClass.STAIRS_DOWN,
        screen_symbol("S_dnladder"): GlyphClass.STAIRS_DOWN,
        screen_symbol("S_vibrating_square"): GlyphClass.TRAP,
    }
)
_CMAP_CLASS.update(dict.fromkeys((screen_symbol("S_bars"), screen_symbol("S_tree")), GlyphClass.FEATURE))
_CMAP_CLASS.update(dict.fromkeys(_symbol_range("S_altar", "S_water"), GlyphClass.FEATURE))
_CMAP_CLASS.update(dict.fromkeys(_symbol_range("S_arrow_trap", "S_polymorph_trap"), GlyphClass.TRAP))

PASSABLE_CLASSES: tuple[GlyphClass, ...] = (
    GlyphClass.FLOOR,
    GlyphClass.CORRIDOR,
    GlyphClass.DOORWAY,
    GlyphClass.DOOR_OPEN,
    GlyphClass.DOOR_CLOSED,
    GlyphClass.STAIRS_UP,
    GlyphClass.STAIRS_DOWN,
    GlyphClass.TRAP,
    GlyphClass.OBJECT,
    GlyphClass.FOOD,
    GlyphClass.MONSTER,
    GlyphClass.PET,
)
"""Classes whose cell can be walked onto or through (after opening a door, or once a monster moves).

Objects, monsters and traps hide the terrain below them, which is almost always
floor or corridor. Features are left out because water and lava are not walkable.
"""


def _find_object(name: str) -> int:
    for index in range(nethack.NUM_OBJECTS):
        if nethack.OBJ_NAME(nethack.objclass(index)) == name:
            return index
    raise ImportError(f"nle has no object named {name!r}")


BOULDER_GLYPH: int = nethack.GLYPH_OBJ_OFF + _find_object("boulder")
"""Glyph id of a boulder, which NetHack draws as an object."""


def _build_glyph_class_table() -> np.ndarray:
    glyphs = np.arange(nethack.MAX_GLYPH, dtype=np.int32)
    table = np.full(nethack.MAX_GLYPH + 1, GlyphClass.OTHER, dtype=np.uint8)

    cmap_to_class = np.full(nethack.MAXPCHARS, GlyphClass.OTHER, dtype=np.uint8)
    for cmap_index, cell_class in _CMAP_CLASS.items():
        cmap_to_class[cmap_index] = cell_class
    is_cmap = nethack.glyph_is_cmap(glyphs)
    table[:-1][is_cmap] = cmap_to_class[nethack.glyph_to_cmap(glyphs[is_cmap])]

    # Corpses (the body glyphs) are FOOD_CLASS objects; statues and boulders are ROCK_CLASS.
    object_is_food = np.array(
        [ord(nethack.objclass(index).oc_class) == nethack.FOOD_CLASS for index in range(nethack.NUM_OBJECTS)]
    )
    is_object = nethack.glyph_is_object(glyphs)
    table[:-1][is_object] = np.where(
        object_is_food[nethack.glyph_to_obj(glyphs[is_object])], GlyphClass.FOOD, GlyphClass.OBJECT
    )

    is_monster = nethack.glyph_is_monster(glyphs) | nethack.glyph_is_invisible(glyphs)
    table[:-1][is_monster] = GlyphClass.MONSTER
    # glyph_is_monster also accepts pets, so pets are assigned last.
    table[:-1][nethack.glyph_is_pet(glyphs)] = GlyphClass.PET
    table[nethack.MAX_GLYPH] = GlyphClass.STONE
    table.setflags(write=False)
    return table


GLYPH_CLASS: np.ndarray = _build_glyph_class_table()
"""``(MAX_GLYPH + 1,)`` uint8 table: glyph id → :class:`GlyphClass`. ``MAX_GLYPH`` (no glyph) maps to STONE."""


def glyph_class(glyphs: np.ndarray) -> np.ndarray:
    """Map glyph ids of any shape to :class:`GlyphClass` values (uint8, same shape).

    The player's own cell comes back as ``MONSTER``; mask it with the player's
    position from ``blstats`` where that matters.

    Raises:
        ValueError: if a glyph id lies outside ``[0, MAX_GLYPH]``.
    """
    glyphs = np.asarray(glyphs)
    if glyphs.size and (glyphs.min() < 0 or glyphs.max() > nethack.MAX_GLYPH):
        raise ValueError(
            f"glyphs must lie in [0, MAX_GLYPH={nethack.MAX_GLYPH}], got range [{glyphs.min()}, {glyphs.max()}]"
        )
    return GLYPH_CLASS[glyphs]
