"""Symbolic condition atoms computed from batched NetHack observations.

An *atom* is a 0/1 predicate of one observation: ``hp_low``, ``monster_adjacent``,
``msg_locked`` and so on. :func:`extract_atoms` computes all of them at once for a
batch, vectorised in NumPy over the leading batch dimension ``B``; the columns
follow :data:`ATOMS`, which is also the list of condition nodes in the shipped
hypergraph (``hypergraph.json``).

Atoms read a single observation. The player's glyph hides the cell it stands
on, and the player's own cell is never counted as a monster or item. What the
hero stands on, and the navigation atoms, come from the map memory that
:class:`~crossmoe.nethack.MapMemory` adds to the observation (``map_memory``
and ``visited``, which :func:`~crossmoe.nethack.make_env` includes by default).
Without those keys ``on_stairs_down`` and ``on_stairs_up`` fall back to the
messages NetHack prints there, and the ``path_*`` atoms stay 0.

Eating: NetHack asks "What do you want to eat?" after ``EAT`` and waits for an
inventory letter. The tasks' actions type no letter of their own, but each move
types its key (``h`` is west), so ``food_key_<dir>`` says that a food item's
letter (``inv_letters``, which :func:`~crossmoe.nethack.make_env` includes by
default) is the key of the move in that direction; the monk starts with apples
or oranges under ``h``. The keys come from ``nle.nethack.CompassDirection``.
Without ``inv_letters`` these atoms stay 0.

Navigation (``path_to_downstairs`` and ``path_<dir>``): a breadth-first
distance field over the remembered walkable cells, computed for the whole
batch at once, gives the first step of a shortest path to the down staircase
when one is known and reachable; otherwise to the nearest unvisited doorway,
door or corridor cell (the frontier of a level). Doors are never entered or
left diagonally.

Shapes:
    - glyphs: ``(B, 21, 79)`` glyph ids
    - blstats: ``(B, 27)`` bottom-line statistics
    - message: ``(B, 256)`` uint8 bytes, zero padded
    - inv_oclasses: ``(B, 55)`` object class of each inventory slot
    - inv_letters (optional): ``(B, 55)`` letter of each inventory slot
    - output: ``(B, C)`` float32 with ``C = len(ATOMS)``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np
from nle import nethack

if TYPE_CHECKING:
    from crossmoe.hypergraph import Hypergraph

from crossmoe._checks import atom_columns
from crossmoe.nethack.glyphs import BOULDER_GLYPH, GLYPH_CLASS, PASSABLE_CLASSES, GlyphClass

__all__ = [
    "ATOMS",
    "ATOM_INDEX",
    "DIRECTIONS",
    "OBSERVATION_KEYS",
    "Hunger",
    "NetHackAtoms",
    "atom_index",
    "extract_atoms",
    "graph_atoms",
]


class Hunger(IntEnum):
    """Hunger state reported in ``blstats[NLE_BL_HUNGER]``.

    NetHack 3.6 ``include/hack.h``, ``enum hunger_state_types``; NLE does not export it.
    """

    SATIATED = 0
    NOT_HUNGRY = 1
    HUNGRY = 2
    WEAK = 3
    FAINTING = 4
    FAINTED = 5
    STARVED = 6


ATOMS: tuple[str, ...] = (
    # hit points, as a fraction of maximum hit points
    "hp_critical",
    "hp_low",
    "hp_medium",
    "hp_full",
    # hunger
    "satiated",
    "not_hungry",
    "hungry",
    "weak",
    # status conditions
    "confused",
    "stunned",
    "blind",
    "hallucinating",
    "ill",
    "in_mortal_danger",
    "levitating",
    # depth
    "depth_1",
    "depth_2_4",
    "depth_5_plus",
    # monsters
    "monster_adjacent",
    # a hostile monster (not a pet) on the neighbouring cell in that direction
    "monster_n",
    "monster_e",
    "monster_s",
    "monster_w",
    "monster_ne",
    "monster_se",
    "monster_sw",
    "monster_nw",
    "monster_visible",
    "no_monster_visible",
    "pet_adjacent",
    "multiple_monsters_adjacent",
    # items
    "item_adjacent",
    "food_adjacent",
    "item_visible",
    "item_here",
    # stairs
    "stairs_down_adjacent",
    "stairs_down_visible",
    "stairs_up_adjacent",
    "on_stairs_down",
    "on_stairs_up",
    # navigation: the first step of a shortest path to the down stairs, or else to the nearest unexplored exit
    "path_to_downstairs",
    "path_n",
    "path_e",
    "path_s",
    "path_w",
    "path_ne",
    "path_se",
    "path_sw",
    "path_nw",
    # doors and terrain
    "door_closed_adjacent",
    "door_open_adjacent",
    "in_corridor",
    "in_room",
    "dead_end",
    "trap_adjacent",
    "boulder_adjacent",
    "wall_adjacent",
    # inventory: any food, and food whose inventory letter is the key of the move in that direction, so
    # that the move answers EAT's "What do you want to eat?" (the monk's apples or oranges are ``h``: west)
    "has_food",
    "has_food_key",
    "food_key_n",
    "food_key_e",
    "food_key_s",
    "food_key_w",
    "food_key_ne",
    "food_key_se",
    "food_key_sw",
    "food_key_nw",
    # messages
    "msg_attacked",
    "msg_killed",
    "msg_locked",
    "msg_door_opened",
    "msg_prompt",
    "msg_hungry",
    "msg_nothing_to_eat",
    "msg_eat_prompt",
    "msg_eat_corpse_prompt",
    "msg_empty",
)
"""Names of the atoms, in column order of :func:`extract_atoms`."""

ATOM_INDEX: dict[str, int] = {name: index for index, name in enumerate(ATOMS)}
"""Column of each atom in the output of :func:`extract_atoms`."""

OBSERVATION_KEYS: tuple[str, ...] = ("glyphs", "blstats", "message", "inv_oclasses")
"""Observation keys :func:`extract_atoms` needs; it also reads ``inv_letters``, ``map_memory`` and ``visited``
when present."""

DIRECTIONS: tuple[tuple[str, int, int], ...] = (
    ("n", -1, 0),
    ("e", 0, 1),
    ("s", 1, 0),
    ("w", 0, -1),
    ("ne", -1, 1),
    ("se", 1, 1),
    ("sw", 1, -1),
    ("nw", -1, -1),
)
"""``(name, dy, dx)`` of the eight moves, in the order of ``nle.nethack.CompassDirection``."""

# The key each move types: an inventory item with that letter is what the move answers to an item prompt.
_DIRECTION_KEYS: tuple[tuple[str, int], ...] = tuple(
    (name, int(nethack.CompassDirection[name.upper()])) for name, _, _ in DIRECTIONS
)

_TRAILING_SHAPES: dict[str, tuple[int, ...]] = {
    "glyphs": tuple(nethack.DUNGEON_SHAPE),
    "blstats": (nethack.NLE_BLSTATS_SIZE,),
    "message": (nethack.NLE_MESSAGE_SIZE,),
    "inv_oclasses": (nethack.NLE_INVENTORY_SIZE,),
}

# Message substrings, as NetHack 3.6 prints them. A monster attacking the player
# reads "The jackal bites!" / "The goblin misses!", while pets fighting other
# monsters read "The kitten bites the jackal.", so the trailing "!" matters.
_MESSAGE_PATTERNS: dict[str, tuple[str, ...]] = {
    "item_here": (
        "You see here",
        "There are several objects here",
        "There are many objects here",
        "Things that are here",
        "here; eat it?",
    ),
    # Without a map memory: stepping onto stairs only prints a message when objects lie there too
    # ("There is a staircase down here."). On dungeon level 1, "<" on the up staircase asks
    # "Beware, there will be no return! Still climb?": that is the *up* staircase.
    "on_stairs_down": ("There is a staircase down", "There is a ladder down"),
    "on_stairs_up": ("There is a staircase up", "There is a ladder up", "Beware, there will be no return"),
    "msg_attacked": ("hits!", "bites!", "misses!", "stings!", "butts!", "kicks!", "touches you", "You are hit"),
    "msg_killed": ("You kill", "You destroy"),
    "msg_locked": ("This door is locked",),
    # "WHAMM!!" is printed when a kick fails to open a door, so it is not here.
    "msg_door_opened": ("The door opens", "crashes open", "shatters to pieces"),
    "msg_prompt": ("[yn", "What do you want", "In what direction"),
    "msg_hungry": (
        "You are beginning to feel hungry",
        "You only feel hungry now",
        "You are beginning to feel weak",
        "You feel weak now",
        "You faint from lack of food",
        "munchies",
    ),
    "msg_nothing_to_eat": ("You don't have anything to eat",),
    "msg_eat_prompt": ("What do you want to eat?",),
    # "There is a jackal corpse here; eat it? [ynq] (n)": `y` and `n` are the north-west and south-east keys.
    "msg_eat_corpse_prompt": ("here; eat it?",),
}
_ENCODED_PATTERNS: dict[str, tuple[np.ndarray, ...]] = {
    name: tuple(np.frombuffer(pattern.encode("ascii"), dtype=np.uint8) for pattern in patterns)
    for name, patterns in _MESSAGE_PATTERNS.items()
}

# 3x3 neighbourhood offsets, row-major; index 4 is the player's own cell.
_DY, _DX = (axis.ravel() for axis in np.meshgrid(np.arange(-1, 2), np.arange(-1, 2), indexing="ij"))
_NEIGHBOURS = np.flatnonzero((_DY != 0) | (_DX != 0))
# Doors cannot be entered or left diagonally, so door atoms only look at N, S, E and W.
_ORTHOGONAL = np.flatnonzero(np.abs(_DY) + np.abs(_DX) == 1)

_ILL_MASK = nethack.BL_MASK_FOODPOIS | nethack.BL_MASK_TERMILL
# Stoning, sliming and strangulation kill within a few turns unless cured.
_MORTAL_DANGER_MASK = nethack.BL_MASK_STONE | nethack.BL_MASK_SLIME | nethack.BL_MASK_STRNGL

_PASSABLE = np.zeros(len(GlyphClass), dtype=bool)  # GlyphClass -> walkable
_PASSABLE[list(PASSABLE_CLASSES)] = True
# Walkable for path finding, on remembered terrain: no traps, no unknown cells.
_WALKABLE = _PASSABLE.copy()
_WALKABLE[[GlyphClass.TRAP, GlyphClass.MONSTER, GlyphClass.PET]] = False
_DOOR = np.zeros(len(GlyphClass), dtype=bool)  # a door (open or closed) is never entered or left diagonally
_DOOR[[GlyphClass.DOOR_OPEN, GlyphClass.DOOR_CLOSED]] = True
_EXIT = _DOOR.copy()  # exploration targets, when not yet visited
_EXIT[[GlyphClass.DOORWAY, GlyphClass.CORRIDOR]] = True
_FAR = np.int16(10_000)  # farther than any path on a 21x79 map


def atom_index(name: str) -> int:
    """Column of atom ``name`` in the output of :func:`extract_atoms`."""
    try:
        return ATOM_INDEX[name]
    except KeyError:
        raise ValueError(f"unknown atom {name!r}; expected one of ATOMS") from None


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _validated_arrays(obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    batch_size: int | None = None
    for key, trailing in _TRAILING_SHAPES.items():
        if key not in obs:
            raise ValueError(f"obs is missing key {key!r}; extract_atoms needs the keys {OBSERVATION_KEYS}")
        array = _as_numpy(obs[key])
        expected = "(B, " + ", ".join(str(size) for size in trailing) + ")"
        if array.shape[1:] != trailing or array.ndim != len(trailing) + 1:
            hint = ""
            if array.shape == trailing:
                hint = "; extract_atoms requires batched observations, add a leading batch dimension"
            raise ValueError(f"obs[{key!r}] must be {expected}, got shape {tuple(array.shape)}{hint}")
        if batch_size is None:
            batch_size = array.shape[0]
        elif array.shape[0] != batch_size:
            raise ValueError(
                f"obs[{key!r}] has batch size {array.shape[0]}, but obs['glyphs'] has batch size {batch_size}"
            )
        arrays[key] = array
    return arrays


def _optional(obs: Mapping[str, Any], key: str, like: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """``obs[key]`` as an array of ``shape`` (that of ``obs[like]``), or None when absent."""
    if key not in obs:
        return None
    array = _as_numpy(obs[key])
    if array.shape != shape:
        raise ValueError(f"obs[{key!r}] must have the shape of obs[{like!r}] {shape}, got {tuple(array.shape)}")
    return array


def _contains_any(message: np.ndarray, patterns: tuple[np.ndarray, ...]) -> np.ndarray:
    """Whether each row of ``message`` ``(B, N)`` contains any of ``patterns``; returns ``(B,)`` bool."""
    found = np.zeros(message.shape[0], dtype=bool)
    width = message.shape[1]
    for pattern in patterns:
        length = len(pattern)
        if length > width:
            continue
        # Narrow the candidate start positions one pattern byte at a time.
        starts = message[:, : width - length + 1] == pattern[0]
        for offset in range(1, length):
            if not starts.any():
                break
            starts &= message[:, offset : width - length + 1 + offset] == pattern[offset]
        found |= starts.any(axis=1)
    return found


def _class_counts(cell_class: np.ndarray) -> np.ndarray:
    """Count each :class:`GlyphClass` per row of ``cell_class`` ``(B, N)``; returns ``(B, K)`` int64."""
    num_classes = len(GlyphClass)
    flat = cell_class + num_classes * np.arange(cell_class.shape[0])[:, None]
    return np.bincount(flat.ravel(), minlength=num_classes * cell_class.shape[0]).reshape(-1, num_classes)


def _message_atoms(message: np.ndarray) -> dict[str, np.ndarray]:
    message = message.astype(np.uint8, copy=False)
    nonblank = (message != 0) & (message != ord(" "))
    has_text = nonblank.any(axis=1)
    # Only scan up to the longest message in the batch; most messages are short or empty.
    width = int(np.flatnonzero(nonblank.any(axis=0)).max(initial=-1)) + 1
    text = message[:, :width]
    atoms = {name: _contains_any(text, patterns) for name, patterns in _ENCODED_PATTERNS.items()}
    if width:
        last_nonblank = width - 1 - np.argmax(nonblank[:, width - 1 :: -1], axis=1)
        atoms["msg_prompt"] |= has_text & (text[np.arange(len(text)), last_nonblank] == ord("?"))
    atoms["msg_empty"] = ~has_text
    return atoms


def _first_steps(
    target: np.ndarray, walkable: np.ndarray, door: np.ndarray, player_y: np.ndarray, player_x: np.ndarray
) -> np.ndarray:
    """The first step of a shortest path from the player to any target cell, as ``(B, 8)`` one-hot or all 0.

    A breadth-first distance field from the targets, relaxed for the whole
    batch at once over the 8-neighbourhood; moves into or out of a door cell
    must be orthogonal. Ties go to the first direction of :data:`DIRECTIONS`.
    All inputs are ``(B, H, W)`` bool except the ``(B,)`` player coordinates;
    the player's own cell counts as walkable.

    Layer ``k`` of the search is final after ``k`` rounds, so a row is done
    once its player has a distance (the neighbours one step nearer are final
    then, and later rounds only lower farther cells) or nothing in it changed.
    Done rows leave the batch a quarter at a time, so each round costs about
    the rows still searching.
    """
    batch, rows, cols = target.shape
    index = np.arange(batch)
    walkable = walkable.copy()
    walkable[index, player_y, player_x] = True
    # Penalties instead of masks: a maximum with _FAR blocks a cell, a maximum with 0 leaves it.
    door_far = np.pad(np.where(door, _FAR, np.int16(0)), ((0, 0), (1, 1), (1, 1)))
    wall_far = np.where(walkable, np.int16(0), _FAR)
    final = np.full((batch, rows + 2, cols + 2), _FAR, dtype=np.int16)
    final[:, 1:-1, 1:-1] = np.where(target & walkable, np.int16(0), _FAR)
    active = index
    padded, blocked, walls, ys, xs = final, door_far, wall_far, player_y + 1, player_x + 1
    for _ in range(rows * cols):
        inner = padded[:, 1:-1, 1:-1]
        # Orthogonal neighbours, from any cell; the full 3x3 (separable min), from cells that are not doors.
        nearest = np.minimum(
            np.minimum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]), np.minimum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:])
        )
        source = np.maximum(padded, blocked)
        across = np.minimum(np.minimum(source[:, :, :-2], source[:, :, 2:]), source[:, :, 1:-1])
        square = np.minimum(np.minimum(across[:, :-2], across[:, 2:]), across[:, 1:-1])
        np.minimum(nearest, np.maximum(square, blocked[:, 1:-1, 1:-1], out=square), out=nearest)  # not diagonally
        nearest += 1
        relaxed = np.maximum(np.minimum(inner, nearest, out=nearest), walls, out=nearest)
        # A row whose search stopped growing cannot reach its player.
        done = ~(relaxed != inner).reshape(len(active), -1).any(axis=1)
        inner[...] = relaxed
        done |= padded[np.arange(len(active)), ys, xs] < _FAR
        if done.all():
            final[active] = padded
            break
        if 4 * done.sum() >= len(active):  # more rounds on a done row change nothing it is read for
            final[active[done]] = padded[done]
            active, padded, blocked, walls, ys, xs = (x[~done] for x in (active, padded, blocked, walls, ys, xs))
    step_dist = np.empty((batch, len(DIRECTIONS)), dtype=np.int16)
    on_door = door[index, player_y, player_x]
    for k, (_, dy, dx) in enumerate(DIRECTIONS):
        y, x = player_y + 1 + dy, player_x + 1 + dx
        value = final[index, y, x]
        if dy and dx:
            value = np.where(on_door | (door_far[index, y, x] == _FAR), _FAR, value)
        step_dist[:, k] = value
    best = step_dist.argmin(axis=1)
    reachable = step_dist[index, best] < _FAR
    steps = np.zeros((batch, len(DIRECTIONS)), dtype=bool)
    steps[index[reachable], best[reachable]] = True
    return steps


def _navigation(
    memory: np.ndarray, visited: np.ndarray, player_y: np.ndarray, player_x: np.ndarray, alive: np.ndarray
) -> dict[str, np.ndarray]:
    """``path_to_downstairs`` and ``path_<dir>`` from the remembered map (see the module docstring)."""
    memory_class = GLYPH_CLASS[memory]
    walkable = _WALKABLE[memory_class] & (memory != BOULDER_GLYPH) & (visited != 2)  # 2: a locked door
    stairs = memory_class == GlyphClass.STAIRS_DOWN
    index = np.arange(len(memory))
    stairs[index, player_y, player_x] = False  # standing on them is on_stairs_down, not a path
    frontier = _EXIT[memory_class] & (visited == 0)
    known = stairs.any(axis=(1, 2))
    target = np.where(known[:, None, None], stairs, frontier)
    steps = _first_steps(target, walkable, _DOOR[memory_class], player_y, player_x) & alive[:, None]
    atoms = {"path_to_downstairs": known & steps.any(axis=1)}
    # No path to the stairs (say, behind an undiscovered door): explore instead.
    blocked = known & ~atoms["path_to_downstairs"] & alive
    if blocked.any():
        steps[blocked] = _first_steps(
            frontier[blocked], walkable[blocked], _DOOR[memory_class[blocked]], player_y[blocked], player_x[blocked]
        )
    atoms.update({f"path_{name}": steps[:, k] for k, (name, _, _) in enumerate(DIRECTIONS)})
    return atoms


class NetHackAtoms:
    """:func:`extract_atoms` that runs the shortest-path search only where it can have changed.

    The navigation atoms (``path_to_downstairs``, ``path_<dir>``) are a
    breadth-first search over the remembered map, the most expensive part of
    the atoms. They depend only on the remembered map, the visit marks, the
    hero's position and whether the hero is alive, so this callable keeps the
    last batch's inputs and navigation atoms, and searches again only in the
    rows where one of them changed: in a rollout, row ``i`` is env ``i``, and
    a step that does not move the hero or reveal a cell (a wall bumped, a
    prompt answered, a fight) needs no search. A batch of another size starts
    afresh. The result always equals :func:`extract_atoms` (each row's search
    is independent of the others'), or its ``names`` columns.

    Args:
        names: The atoms to return, in this order (a hypergraph's
            ``conditions``, so that a graph written for an earlier, shorter
            :data:`ATOMS` keeps its columns); ``None``: all of :data:`ATOMS`.

    Example:
        >>> atoms = NetHackAtoms()  # doctest: +SKIP
        >>> for _ in range(steps):  # doctest: +SKIP
        ...     activations = atoms(obs)  # == extract_atoms(obs)
        ...     obs, *_ = envs.step(policy(obs, activations))
    """

    def __init__(self, names: Sequence[str] | None = None) -> None:
        self.names, self._columns = atom_columns(names, ATOMS, "ATOMS")
        self._inputs: tuple[np.ndarray, ...] | None = None
        self._navigation: dict[str, np.ndarray] | None = None

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        atoms = extract_atoms(obs, navigation=self._cached_navigation)
        return atoms if self._columns is None else atoms[:, self._columns]

    def _cached_navigation(
        self, memory: np.ndarray, visited: np.ndarray, player_y: np.ndarray, player_x: np.ndarray, alive: np.ndarray
    ) -> dict[str, np.ndarray]:
        inputs = (memory, visited, player_y, player_x, alive)
        previous = self._inputs
        if previous is None or previous[0].shape != memory.shape:
            changed = np.ones(len(memory), dtype=bool)
        else:
            changed = np.zeros(len(memory), dtype=bool)
            for now, before in zip(inputs, previous, strict=True):
                changed |= (now != before).reshape(len(now), -1).any(axis=1)
        # extract_atoms only reads the arrays returned here, so the cache can hand out its own.
        if changed.all():
            navigation = _navigation(*inputs)
        elif changed.any():
            navigation = {name: value.copy() for name, value in self._navigation.items()}
            for name, value in _navigation(*(x[changed] for x in inputs)).items():
                navigation[name][changed] = value
        else:
            navigation = self._navigation
        self._inputs = tuple(np.array(x, copy=True) for x in inputs)  # NLE reuses its arrays
        self._navigation = navigation
        return navigation

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if self.names is None else f"{type(self).__name__}({len(self.names)} atoms)"


def extract_atoms(obs: Mapping[str, Any], *, navigation: Any = None) -> np.ndarray:
    """Compute the condition atoms of a batch of NetHack observations.

    Every atom is a predicate of one observation, vectorised over the batch.
    Neighbourhood atoms look at the 8 cells around the player (``*_adjacent``)
    or at the 4 orthogonal ones (door atoms: NetHack forbids diagonal moves
    through doorways). The player's own cell, at ``(blstats[NLE_BL_Y],
    blstats[NLE_BL_X])``, is never a monster or an item, even though the player
    is drawn with a monster glyph. On the death observation NLE zeroes
    ``blstats``; then the hit-point, hunger and depth atoms are all 0.

    Args:
        obs: mapping with batched ``glyphs``, ``blstats``, ``message`` and
            ``inv_oclasses`` (NumPy arrays or CPU tensors), and optionally the
            :class:`~crossmoe.nethack.MapMemory` keys ``map_memory`` and
            ``visited``; other keys are ignored.
        navigation: What computes the navigation atoms from ``(map_memory,
            visited, player_y, player_x, alive)``; ``None`` is the search
            itself (:class:`NetHackAtoms` passes its cache).

    Returns:
        ``(B, len(ATOMS))`` float32 array of 0/1 values, columns in :data:`ATOMS` order.

    Raises:
        ValueError: if a key is missing, an array is unbatched or has the wrong shape,
            or the batch sizes differ.
    """
    arrays = _validated_arrays(obs)
    blstats = arrays["blstats"].astype(np.int64, copy=False)
    batch = np.arange(blstats.shape[0])
    atoms: dict[str, np.ndarray] = {}

    hp = blstats[:, nethack.NLE_BL_HP]
    hp_max = blstats[:, nethack.NLE_BL_HPMAX]
    alive = hp_max > 0
    hp_fraction = hp / np.maximum(hp_max, 1)
    atoms["hp_critical"] = alive & (hp_fraction < 0.25)
    atoms["hp_low"] = alive & (hp_fraction >= 0.25) & (hp_fraction < 0.5)
    atoms["hp_medium"] = alive & (hp_fraction >= 0.5) & (hp_fraction < 1.0)
    atoms["hp_full"] = alive & (hp_fraction >= 1.0)

    hunger = blstats[:, nethack.NLE_BL_HUNGER]
    atoms["satiated"] = alive & (hunger == Hunger.SATIATED)
    atoms["not_hungry"] = alive & (hunger == Hunger.NOT_HUNGRY)
    atoms["hungry"] = alive & (hunger == Hunger.HUNGRY)
    atoms["weak"] = alive & (hunger >= Hunger.WEAK)

    condition = blstats[:, nethack.NLE_BL_CONDITION]
    atoms["confused"] = (condition & nethack.BL_MASK_CONF) != 0
    atoms["stunned"] = (condition & nethack.BL_MASK_STUN) != 0
    atoms["blind"] = (condition & nethack.BL_MASK_BLIND) != 0
    atoms["hallucinating"] = (condition & nethack.BL_MASK_HALLU) != 0
    atoms["ill"] = (condition & _ILL_MASK) != 0
    atoms["in_mortal_danger"] = (condition & _MORTAL_DANGER_MASK) != 0
    atoms["levitating"] = (condition & nethack.BL_MASK_LEV) != 0

    depth = blstats[:, nethack.NLE_BL_DEPTH]
    atoms["depth_1"] = depth == 1
    atoms["depth_2_4"] = (depth >= 2) & (depth <= 4)
    atoms["depth_5_plus"] = depth >= 5

    glyphs = arrays["glyphs"]
    rows, cols = glyphs.shape[1:]
    player_y = np.clip(blstats[:, nethack.NLE_BL_Y], 0, rows - 1)
    player_x = np.clip(blstats[:, nethack.NLE_BL_X], 0, cols - 1)
    # The 3x3 glyphs around the player, from a map padded with the no-glyph value (class STONE).
    padded = np.pad(glyphs, ((0, 0), (1, 1), (1, 1)), constant_values=nethack.MAX_GLYPH)
    window_glyphs = padded[batch[:, None], player_y[:, None] + 1 + _DY, player_x[:, None] + 1 + _DX]  # (B, 9)
    window = GLYPH_CLASS[window_glyphs]
    around = window[:, _NEIGHBOURS]  # (B, 8): the player's own cell is not among them
    orthogonal = window[:, _ORTHOGONAL]  # (B, 4)
    around_counts = _class_counts(around)  # (B, K) with K = len(GlyphClass)
    cell_class = GLYPH_CLASS[glyphs]
    cell_class[batch, player_y, player_x] = GlyphClass.STONE  # the player is drawn as a monster
    map_counts = _class_counts(cell_class.reshape(len(batch), rows * cols))

    def adjacent(*classes: GlyphClass) -> np.ndarray:
        return around_counts[:, list(classes)].any(axis=1)

    def visible(*classes: GlyphClass) -> np.ndarray:
        return map_counts[:, list(classes)].any(axis=1)

    monsters_around = around_counts[:, GlyphClass.MONSTER]
    atoms["monster_adjacent"] = monsters_around >= 1
    for name, dy, dx in DIRECTIONS:
        atoms[f"monster_{name}"] = (
            GLYPH_CLASS[padded[batch, player_y + 1 + dy, player_x + 1 + dx]] == GlyphClass.MONSTER
        )
    atoms["monster_visible"] = visible(GlyphClass.MONSTER)
    atoms["no_monster_visible"] = ~atoms["monster_visible"]
    atoms["pet_adjacent"] = adjacent(GlyphClass.PET)
    atoms["multiple_monsters_adjacent"] = monsters_around >= 2

    atoms["item_adjacent"] = adjacent(GlyphClass.OBJECT, GlyphClass.FOOD)
    atoms["food_adjacent"] = adjacent(GlyphClass.FOOD)
    atoms["item_visible"] = visible(GlyphClass.OBJECT, GlyphClass.FOOD)

    atoms["stairs_down_adjacent"] = adjacent(GlyphClass.STAIRS_DOWN)
    atoms["stairs_down_visible"] = visible(GlyphClass.STAIRS_DOWN)
    atoms["stairs_up_adjacent"] = adjacent(GlyphClass.STAIRS_UP)

    atoms["door_closed_adjacent"] = (orthogonal == GlyphClass.DOOR_CLOSED).any(axis=1)
    open_passage = (orthogonal == GlyphClass.DOOR_OPEN) | (orthogonal == GlyphClass.DOORWAY)
    atoms["door_open_adjacent"] = open_passage.any(axis=1)
    atoms["in_room"] = adjacent(GlyphClass.FLOOR)
    atoms["in_corridor"] = adjacent(GlyphClass.CORRIDOR) & ~atoms["in_room"]
    atoms["dead_end"] = atoms["in_corridor"] & (_PASSABLE[around].sum(axis=1) == 1)
    atoms["trap_adjacent"] = adjacent(GlyphClass.TRAP)
    atoms["boulder_adjacent"] = (window_glyphs[:, _NEIGHBOURS] == BOULDER_GLYPH).any(axis=1)
    atoms["wall_adjacent"] = adjacent(GlyphClass.WALL)

    food = arrays["inv_oclasses"] == nethack.FOOD_CLASS  # (B, 55)
    atoms["has_food"] = food.any(axis=1)
    letters = _optional(obs, "inv_letters", "inv_oclasses", food.shape)
    if letters is None:  # no letters, no food known to be typable
        letters = np.zeros(food.shape, dtype=np.uint8)
    for name, key in _DIRECTION_KEYS:
        atoms[f"food_key_{name}"] = (food & (letters == key)).any(axis=1)
    atoms["has_food_key"] = np.any([atoms[f"food_key_{name}"] for name, _ in _DIRECTION_KEYS], axis=0)

    atoms.update(_message_atoms(arrays["message"]))
    memory = _optional(obs, "map_memory", "glyphs", glyphs.shape)
    visited = _optional(obs, "visited", "glyphs", glyphs.shape)
    if memory is not None and visited is not None:
        under = GLYPH_CLASS[memory[batch, player_y, player_x]]  # what the hero stands on
        atoms["on_stairs_down"] |= alive & (under == GlyphClass.STAIRS_DOWN)
        atoms["on_stairs_up"] |= alive & (under == GlyphClass.STAIRS_UP)
        atoms["item_here"] |= alive & ((under == GlyphClass.OBJECT) | (under == GlyphClass.FOOD))
        atoms["stairs_down_visible"] |= (GLYPH_CLASS[memory] == GlyphClass.STAIRS_DOWN).any(axis=(1, 2))
        atoms.update((navigation or _navigation)(memory, visited, player_y, player_x, alive))
    else:
        atoms.update(
            dict.fromkeys(("path_to_downstairs", *(f"path_{name}" for name, _, _ in DIRECTIONS)), alive & False)
        )
    return np.stack([atoms[name] for name in ATOMS], axis=1).astype(np.float32)


def graph_atoms(hypergraph: Hypergraph) -> NetHackAtoms:
    """The atoms a NetHack graph's conditions name, in its order: a :class:`NetHackAtoms`.

    A graph may use any of :data:`ATOMS`, in any order, so a
    graph (or a checkpoint's graph) written before atoms were added keeps its
    columns.

    Raises:
        ValueError: if a condition of ``hypergraph`` is not an atom.
    """
    try:
        return NetHackAtoms(hypergraph.conditions)
    except ValueError as error:
        raise ValueError(f"hypergraph's conditions must be atoms of crossmoe.nethack.ATOMS: {error}") from None
