"""Condition atoms of batched MiniGrid observations, vectorised in NumPy over the batch.

The agent sees a 7x7 egocentric grid, ``image[b, x, y] = (object, colour,
state)``, in which it stands at ``(3, 6)`` facing up (decreasing ``y``): the
cell in front of it is ``(3, 5)``, and its own cell shows what it carries.
The mission is :class:`~crossmoe.minigrid.MissionCode`'s ``(task, object,
colour)``. Three *things* are looked for: the mission's ``target`` (its
object, of its colour when it names one), a ``key`` (while the agent's hands
are empty) and a closed or locked ``door`` (while it carries a key). For each,
``<thing>_ahead`` (in front), ``<thing>_straight`` (further up the column in
front, with nothing in the way), ``<thing>_left`` and ``<thing>_right``
(level with the agent, on that side: a turn brings it into the column),
``<thing>_farther`` (in a row ahead, off the column: a step forward draws
level with it) and ``<thing>_visible``.

Shapes:
    - image: ``(B, 7, 7, 3)`` uint8
    - mission: ``(B, 3)`` uint8
    - output: ``(B, C)`` float32 with ``C = len(ATOMS)``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from minigrid.core.constants import OBJECT_TO_IDX, STATE_TO_IDX

from crossmoe._checks import atom_columns
from crossmoe.minigrid.env import ANY_COLOR, Task

__all__ = ["ATOMS", "OBSERVATION_KEYS", "THINGS", "MiniGridAtoms", "extract_atoms", "target_cells"]

THINGS: tuple[str, ...] = ("target", "key", "door")
"""What the agent looks for: the mission's object, a key (hands empty) and a shut door (holding a key)."""

ATOMS: tuple[str, ...] = (
    # the mission
    "task_go_to",
    "task_pick_up",
    "task_open",
    # the cell in front
    "front_passable",
    "front_empty",
    "front_wall",
    "front_door_open",
    "front_door_closed",
    "front_door_locked",
    "front_pickable",
    "front_lava",
    # hands
    "hands_empty",
    "carrying_key",
    "carrying_target",
    "key_fits_front_door",
    # where the things are
    *(f"{thing}_{where}" for thing in THINGS for where in ("ahead", "straight", "left", "right", "farther", "visible")),
)
"""Names of the atoms, in column order of :func:`extract_atoms`."""

OBSERVATION_KEYS: tuple[str, ...] = ("image", "mission")
"""Observation keys :func:`extract_atoms` reads."""

AGENT_X, AGENT_Y = 3, 6  # where the agent stands in its own view
_PASSABLE = np.zeros(256, dtype=bool)
_PASSABLE[[OBJECT_TO_IDX[name] for name in ("empty", "floor", "goal")]] = True
_PICKABLE = np.zeros(256, dtype=bool)
_PICKABLE[[OBJECT_TO_IDX[name] for name in ("key", "ball", "box")]] = True
_DOOR, _KEY, _WALL, _LAVA, _EMPTY = (OBJECT_TO_IDX[name] for name in ("door", "key", "wall", "lava", "empty"))
_OPEN, _CLOSED, _LOCKED = (STATE_TO_IDX[name] for name in ("open", "closed", "locked"))


def _validated(obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for key, trailing in (("image", (7, 7, 3)), ("mission", (3,))):
        if key not in obs:
            raise ValueError(f"obs is missing key {key!r}; extract_atoms needs the keys {OBSERVATION_KEYS}")
        value = obs[key]
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if array.shape[1:] != trailing or array.ndim != len(trailing) + 1:
            raise ValueError(f"obs[{key!r}] must be (B, {', '.join(map(str, trailing))}), got {tuple(array.shape)}")
        arrays.append(array.astype(np.int64))
    if len(arrays[0]) != len(arrays[1]):
        raise ValueError(
            f"obs['image'] and obs['mission'] must have one batch size, got {len(arrays[0])}, {len(arrays[1])}"
        )
    return arrays[0], arrays[1]


def _places(found: np.ndarray, passable: np.ndarray) -> dict[str, np.ndarray]:
    """``ahead``, ``straight``, ``left``, ``right``, ``farther`` and ``visible`` of a ``(B, 7, 7)`` mask of cells."""
    ahead = found[:, AGENT_X, AGENT_Y - 1]
    # Up the column in front, the nearest non-passable cell must be the thing itself.
    column = found[:, AGENT_X, : AGENT_Y - 1][:, ::-1]  # (B, 5), nearest first
    clear = passable[:, AGENT_X, : AGENT_Y - 1][:, ::-1]
    blocked_before = np.cumsum(~clear, axis=1) - (~clear)  # obstacles strictly nearer than each cell
    straight = (column & (blocked_before == 0)).any(axis=1) & ~ahead
    return {
        "ahead": ahead,
        "straight": straight,
        "left": found[:, :AGENT_X, AGENT_Y].any(axis=1),
        "right": found[:, AGENT_X + 1 :, AGENT_Y].any(axis=1),
        "farther": np.delete(found[:, :, :AGENT_Y], AGENT_X, axis=1).any(axis=(1, 2)),
        "visible": found.any(axis=(1, 2)),
    }


def _target_cells(objects: np.ndarray, colors: np.ndarray, wanted: np.ndarray, wanted_color: np.ndarray) -> np.ndarray:
    """``(B, 7, 7)`` cells that hold the mission's object, of its colour when it names one (none without an object)."""
    color_ok = (wanted_color[:, None, None] == ANY_COLOR) | (colors == wanted_color[:, None, None])
    return (objects == wanted[:, None, None]) & color_ok & (wanted[:, None, None] > 0)


def target_cells(obs: Mapping[str, Any]) -> np.ndarray:
    """Where the mission's object lies in each view: ``(B, 7, 7)`` bool, indexed ``[b, x, y]`` like ``image``.

    The cells behind ``target_visible``: the mission's object, of its colour when it names one; never the
    agent's own cell (which shows what it carries).
    """
    image, mission = _validated(obs)
    cells = _target_cells(image[..., 0], image[..., 1], mission[:, 1], mission[:, 2])
    cells[:, AGENT_X, AGENT_Y] = False
    return cells


def extract_atoms(obs: Mapping[str, Any]) -> np.ndarray:
    """Compute the condition atoms of a batch of MiniGrid observations (see the module docstring).

    Returns:
        ``(B, len(ATOMS))`` float32 array of 0/1 values, columns in :data:`ATOMS` order.

    Raises:
        ValueError: if a key is missing, an array is unbatched or has the wrong shape, or the batch sizes differ.
    """
    image, mission = _validated(obs)
    objects, colors, states = image[..., 0], image[..., 1], image[..., 2]  # (B, 7, 7)
    task, wanted, wanted_color = mission[:, 0], mission[:, 1], mission[:, 2]
    atoms: dict[str, np.ndarray] = {
        "task_go_to": task == Task.GO_TO,
        "task_pick_up": task == Task.PICK_UP,
        "task_open": task == Task.OPEN,
    }
    front, front_color, front_state = (a[:, AGENT_X, AGENT_Y - 1] for a in (objects, colors, states))
    door = front == _DOOR
    atoms["front_passable"] = _PASSABLE[front] | (door & (front_state == _OPEN))
    atoms["front_empty"] = front == _EMPTY
    atoms["front_wall"] = front == _WALL
    atoms["front_door_open"] = door & (front_state == _OPEN)
    atoms["front_door_closed"] = door & (front_state == _CLOSED)
    atoms["front_door_locked"] = door & (front_state == _LOCKED)
    atoms["front_pickable"] = _PICKABLE[front]
    atoms["front_lava"] = front == _LAVA
    held, held_color = objects[:, AGENT_X, AGENT_Y], colors[:, AGENT_X, AGENT_Y]
    atoms["hands_empty"] = ~_PICKABLE[held]
    atoms["carrying_key"] = held == _KEY
    colour_ok = (wanted_color == ANY_COLOR) | (held_color == wanted_color)
    atoms["carrying_target"] = _PICKABLE[held] & (held == wanted) & colour_ok
    atoms["key_fits_front_door"] = atoms["carrying_key"] & door & (held_color == front_color)

    view = np.ones(objects.shape, dtype=bool)
    view[:, AGENT_X, AGENT_Y] = False  # the agent's own cell shows what it carries, not a thing to find
    passable = _PASSABLE[objects] | ((objects == _DOOR) & (states == _OPEN))
    found = {
        "target": _target_cells(objects, colors, wanted, wanted_color) & view,
        "key": (objects == _KEY) & atoms["hands_empty"][:, None, None] & view,
        "door": (objects == _DOOR) & (states != _OPEN) & atoms["carrying_key"][:, None, None] & view,
    }
    for thing, mask in found.items():
        for where, value in _places(mask, passable).items():
            atoms[f"{thing}_{where}"] = value
    return np.stack([atoms[name] for name in ATOMS], axis=1).astype(np.float32)


class MiniGridAtoms:
    """:func:`extract_atoms`, or its ``names`` columns in that order (a graph's conditions); picklable.

    Raises:
        ValueError: if a name is not an atom of :data:`ATOMS`.
    """

    def __init__(self, names: Sequence[str] | None = None) -> None:
        self.names, self._columns = atom_columns(names, ATOMS, "crossmoe.minigrid.ATOMS")

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        atoms = extract_atoms(obs)
        return atoms if self._columns is None else atoms[:, self._columns]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if self.names is None else f"{type(self).__name__}({len(self.names)} atoms)"
