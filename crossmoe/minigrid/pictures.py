"""Pictures of a MiniGrid agent at work: where each operator looks on the 7x7 view, and the router's weights.

:func:`view_heat` lays the attention over
:class:`~crossmoe.minigrid.MiniGridVisualEncoder`'s tokens out as the view's
cells (and the share on the mission token); :func:`render_view` draws a view
as MiniGrid draws the agent's point of view; :func:`grid_frames` picks the top
applicable operators of each step of an episode; :func:`plot_grid_attention`
draws them. ``examples/minigrid_pictures.py`` is the command line. Needs
matplotlib (the ``examples`` extra); figures use matplotlib's object
interface, so importing this module neither changes the global backend nor
needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from crossmoe.plots import draw_router_weights, top_applicable

__all__ = [
    "VIEW",
    "GridFrame",
    "attention_on_target",
    "grid_frames",
    "plot_grid_attention",
    "render_view",
    "view_heat",
]

VIEW = 7
"""Side of MiniGrid's egocentric view: the agent at ``(x, y) = (3, 6)``, facing up."""


class GridFrame(NamedTuple):
    """One step of an episode as the pictures show it: the view, the top operators' attention, the router.

    Shapes (``k`` top operators, ``E`` experts):
        - image: ``(7, 7, 3)``, the observation's ``image`` (indexed ``[x, y]``)
        - heat: ``(k, 7, 7)``, each top operator's attention on the cells, mean over heads, indexed ``[y, x]``
          (rows up the view, as drawn); ``(0, 7, 7)`` for a fusion without attention
        - mission_share: ``(k,)``, each top operator's attention on the mission token
        - router_weights: ``(E,)``
    """

    step: int
    image: np.ndarray
    mission: str
    action: str
    reward: float
    router_weights: np.ndarray
    operators: tuple[str, ...]
    operator_experts: tuple[str, ...]
    operator_scores: tuple[float, ...]
    heat: np.ndarray
    mission_share: np.ndarray


def view_heat(attention: Any) -> tuple[np.ndarray, np.ndarray]:
    """Attention over the encoder's 50 tokens as heat on the view's cells, and the share on the mission token.

    Token ``x * 7 + y`` is view cell ``(x, y)``, token 49 the mission
    (:class:`~crossmoe.minigrid.MiniGridVisualEncoder`).

    Shapes: attention ``(..., 50)``; output ``heat (..., 7, 7)`` indexed ``[y, x]``, ``mission (...)``.
    """
    attention = np.asarray(attention, dtype=np.float64)
    if attention.shape[-1:] != (VIEW * VIEW + 1,):
        raise ValueError(
            f"attention must be (..., {VIEW * VIEW + 1}) over the view's cells and the mission, got {attention.shape}"
        )
    cells = attention[..., : VIEW * VIEW].reshape(*attention.shape[:-1], VIEW, VIEW)  # [x, y]
    return np.swapaxes(cells, -1, -2), attention[..., -1]


def attention_on_target(attention: Any, obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """How much of each operator's attention lands on the mission's object, against what uniform attention gives.

    The question behind the cross-attention: does an operator such as
    ``approach_target`` find the one cell that matters among the 49?

    Args:
        attention: ``(B, H, O, 50)``, :class:`~crossmoe.policy.PolicyOutput`'s ``attention``.
        obs: The ``B`` observations (``image`` and ``mission``).

    Returns:
        ``share (B, O)``: the attention (mean over heads) on the cells of
        :func:`~crossmoe.minigrid.target_cells`, and ``uniform (B,)``: the share
        that attention spread evenly over the seen tokens (the seen cells and
        the mission) would put there. Both are NaN where no target is in view.
        A non-applicable operator's row is 0 (it does not attend).
    """
    from crossmoe.minigrid.atoms import target_cells

    attention = _numpy(attention).astype(np.float64)
    if attention.ndim != 4 or attention.shape[-1] != VIEW * VIEW + 1:
        raise ValueError(f"attention must be (B, H, O, {VIEW * VIEW + 1}), got {attention.shape}")
    target = target_cells(obs).reshape(len(attention), -1)  # (B, 49), token order x * 7 + y
    seen = np.asarray(obs["image"])[..., 0].reshape(len(attention), -1) != 0  # unseen cells are masked tokens
    share = attention.mean(1)[..., : VIEW * VIEW] @ target[..., None].astype(np.float64)  # (B, O, 1)
    uniform = target.sum(1) / (seen.sum(1) + 1.0)
    visible = target.any(1)
    return np.where(visible[:, None], share[..., 0], np.nan), np.where(visible, uniform, np.nan)


def render_view(image: Any, tile_size: int = 16) -> np.ndarray:
    """The RGB picture of a 7x7 view as MiniGrid draws the agent's point of view (``get_pov_render``).

    Returns:
        ``(7 * tile_size, 7 * tile_size, 3)`` uint8: the agent at the bottom middle facing up, seen cells lit.
    """
    from minigrid.core.grid import Grid

    image = np.asarray(image)
    if image.shape != (VIEW, VIEW, 3):
        raise ValueError(f"image must be one (7, 7, 3) view, got {image.shape}")
    grid, visible = Grid.decode(image.astype(np.uint8))
    return grid.render(tile_size, agent_pos=(VIEW // 2, VIEW - 1), agent_dir=3, highlight_mask=visible)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def grid_frames(
    policy: Any,
    obs: dict[str, Any],
    output: Any,
    actions: Sequence[str],
    rewards: Any,
    missions: Sequence[str],
    *,
    top_k: int = 3,
) -> list[GridFrame]:
    """The frames of ``T`` consecutive steps from the observations and the policy's output on them.

    Args:
        policy: A MiniGrid :class:`~crossmoe.policy.CrossAttentionMoEPolicy`
            (:func:`~crossmoe.minigrid.make_policy`).
        obs: The ``T`` observations, numpy arrays with a leading ``T`` (``image`` at least).
        output: ``policy(obs)``; with no attention (the ``"concat"`` fusion) the frames have no heat.
        actions, rewards, missions: Per step, the action's name, the reward and the mission string.
        top_k: Operators per frame: the applicable ones of highest score.
    """
    top = top_applicable(_numpy(output.operator_scores), _numpy(output.applicable), top_k)  # (T, k)
    if output.attention is None:
        heat, share = np.zeros((len(top), 0, VIEW, VIEW)), np.zeros((len(top), 0))
    else:
        attention = _numpy(output.attention).mean(1)  # (T, O, 50): mean over the heads
        heat, share = view_heat(np.take_along_axis(attention, np.maximum(top, 0)[..., None], 1))  # (T, k, ...)
    operators, experts = policy.logic_encoder.hypergraph.operators, policy.experts.names
    operator_expert = _numpy(output.operator_to_expert)
    scores, weights = _numpy(output.operator_scores), _numpy(output.router_weights)
    frames = []
    for t, ops in enumerate(top):
        ops = ops[ops >= 0]
        frames.append(
            GridFrame(
                step=t,
                image=np.asarray(obs["image"][t]),
                mission=str(missions[t]),
                action=str(actions[t]),
                reward=float(np.asarray(rewards)[t]),
                router_weights=weights[t].astype(np.float64),
                operators=tuple(operators[o] for o in ops),
                operator_experts=tuple(experts[operator_expert[o]] for o in ops),
                operator_scores=tuple(float(scores[t, o]) for o in ops),
                heat=heat[t, : len(ops)],
                mission_share=share[t, : len(ops)],
            )
        )
    return frames


def plot_grid_attention(
    frames: Sequence[GridFrame], path: str | Path, *, expert_names: Sequence[str], title: str, tile_size: int = 16
) -> Path:
    """One row per frame: the view under each top operator's attention, then the router weights."""
    if not frames:
        raise ValueError("frames must hold at least one GridFrame, got none")
    top_k = max(1, max(len(frame.operators) for frame in frames))
    vmax = max([float(frame.heat.max()) for frame in frames if frame.heat.size] or [1.0])
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    fig = Figure(figsize=(2.6 * top_k + 2.0, 2.9 * len(frames) + 1.0), layout="constrained")
    axes = fig.subplots(len(frames), top_k + 1, width_ratios=[2.6] * top_k + [1.6], squeeze=False)
    extent = (-0.5, VIEW - 0.5, VIEW - 0.5, -0.5)
    image = None
    for row, frame in zip(axes, frames, strict=True):
        picture = render_view(frame.image, tile_size)
        for slot, ax in enumerate(row[:top_k]):
            ax.set(xticks=[], yticks=[])
            if slot >= len(frame.operators):
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no further\napplicable operator", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.imshow(picture, extent=extent)
            on_mission = ""
            if frame.heat.size:
                heat = np.ma.masked_equal(frame.heat[slot], 0.0)  # masked (unseen) cells stay as drawn
                image = ax.imshow(heat, cmap="magma", norm=norm, alpha=0.6, extent=extent)
                on_mission = f", mission {frame.mission_share[slot]:.0%}"
            ax.set_title(
                f"{frame.operators[slot]}\n[{frame.operator_experts[slot]}] score {frame.operator_scores[slot]:.2f}"
                f"{on_mission}",
                fontsize=7,
            )
        row[0].set_ylabel(f"step {frame.step}: {frame.action}", fontsize=8)
        row[0].set_xlabel(frame.mission, fontsize=7, loc="left")
        draw_router_weights(row[-1], frame.router_weights, expert_names)
    if image is not None:
        fig.colorbar(
            image,
            ax=axes[:, :top_k],
            location="bottom",
            shrink=0.5,
            aspect=30,
            label="attention per cell (mean over heads)",
            ticks=vmax * np.array([0.0, 1 / 16, 1 / 4, 9 / 16, 1.0]),  # evenly spaced under the square root
            format="%.3f",
        )
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
