"""Pictures of a NetHack agent at work: attention on the dungeon, router weights, an episode as HTML or GIF.

:func:`attention_to_map` spreads each visual token's attention over the map
cells it covers; :func:`plot_attention_maps` draws the top operators'
attention on the dungeon; :func:`write_episode_html` and
:func:`write_episode_gif` render an episode with the tty screen, the attention
overlay and the router's weights per step. ``examples/pictures.py`` is the
command line. Needs matplotlib (the ``examples`` extra); figures use
matplotlib's object interface, so importing this module neither changes the
global backend nor needs a display.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, PowerNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from crossmoe.plots import draw_router_weights, top_applicable

__all__ = [
    "MAP_SHAPE",
    "EpisodeFrame",
    "attention_to_map",
    "draw_dungeon",
    "episode_frames",
    "plot_attention_maps",
    "token_cells",
    "top_applicable",
    "write_episode_gif",
    "write_episode_html",
]


MAP_SHAPE = (21, 79)
"""Rows and columns of the NetHack map (``nle.nethack.DUNGEON_SHAPE``); row ``y`` is tty row ``y + 1``."""

_TTY_COLORS = (  # NetHack's 16 tty colours (CLR_BLACK .. CLR_WHITE), as a dark terminal shows them
    "#5a5a8c", "#d33", "#3a3", "#b8860b", "#45d", "#c3c", "#3aa", "#bbb",
    "#777", "#f80", "#5f5", "#ff5", "#77f", "#f5f", "#5ff", "#fff",
)  # fmt: skip
_DEFAULT_COLOR = 7  # NetHack's CLR_GRAY, the colour of plain text
_HEAT_LEVELS = 8


class EpisodeFrame(NamedTuple):
    """One step of an episode as the pictures show it: the screen, the attention, the router and the action.

    Shapes (``k`` top operators, ``E`` experts):
        - screen, colors: ``(24, 80)``, NLE's ``tty_chars`` and ``tty_colors``
        - heat: ``(k, 21, 79)``, the attention of each top operator spread over the map (:func:`attention_to_map`)
        - router_weights: ``(E,)``
    """

    step: int
    screen: np.ndarray
    colors: np.ndarray
    player: tuple[int, int]
    action: str
    reward: float
    router_weights: np.ndarray
    operators: tuple[str, ...]
    operator_experts: tuple[str, ...]
    operator_scores: tuple[float, ...]
    heat: np.ndarray
    message: str


def token_cells(encoder: Any, y: Any, x: Any, map_shape: tuple[int, int] = MAP_SHAPE) -> np.ndarray:
    """Which map cells each visual token of a :class:`~crossmoe.nethack.NetHackVisualEncoder` covers.

    The tokens come in the encoder's order: ``num_crop_tokens`` blocks of
    ``crop_patch x crop_patch`` cells of the ``crop_size`` window centred on
    the player (block-major, blocks row by row; window cells beyond the map
    edge cover nothing), then the ``num_patches`` coarse patches of
    ``encoder.patch`` cells (row by row), then the blstats and message tokens,
    which cover no cell.

    Args:
        encoder: The visual encoder (its ``crop_size``, ``crop_patch``,
            ``patch``, ``num_crop_tokens``, ``num_patches`` and ``num_tokens``).
        y, x: The player's map row and column (``blstats[NLE_BL_Y]``,
            ``blstats[NLE_BL_X]``), integers or arrays of one broadcast shape ``S``.
        map_shape: ``(R, C)`` of the map.

    Returns:
        ``(*S, N, R, C)`` bool.
    """
    y, x = np.broadcast_arrays(np.asarray(y, dtype=np.int64), np.asarray(x, dtype=np.int64))
    rows, cols = map_shape
    size, block = encoder.crop_size, encoder.crop_patch
    side = size // block
    patch_rows, patch_cols = encoder.patch
    grid_cols = -(-cols // patch_cols)
    num_crop, num_patches = encoder.num_crop_tokens, encoder.num_patches
    if num_crop != side**2 or num_patches != -(-rows // patch_rows) * grid_cols:
        raise ValueError(
            f"encoder must have (crop_size // crop_patch)**2={side**2} crop tokens and one per patch of a "
            f"{map_shape} map, got {num_crop} and {num_patches}"
        )
    cells = np.zeros((y.size, encoder.num_tokens, rows * cols), dtype=bool)
    # Window cells in block-major order: block row, block column, then the cell within the block.
    block_row, block_col, cell_row, cell_col = np.meshgrid(
        *(np.arange(n) for n in (side, side, block, block)), indexing="ij"
    )
    cell_y = y.reshape(-1, 1) + (block_row * block + cell_row).reshape(-1) - size // 2  # (L, size**2)
    cell_x = x.reshape(-1, 1) + (block_col * block + cell_col).reshape(-1) - size // 2
    on_map = (cell_y >= 0) & (cell_y < rows) & (cell_x >= 0) & (cell_x < cols)
    sample, cell = np.nonzero(on_map)
    cells[sample, cell // block**2, cell_y[sample, cell] * cols + cell_x[sample, cell]] = True
    patch_id = (np.arange(rows)[:, None] // patch_rows) * grid_cols + np.arange(cols)[None, :] // patch_cols
    cells[:, num_crop : num_crop + num_patches] = patch_id.reshape(1, -1) == np.arange(num_patches)[:, None]
    return cells.reshape(*y.shape, encoder.num_tokens, rows, cols)


def attention_to_map(
    attention: Any, encoder: Any, y: Any, x: Any, map_shape: tuple[int, int] = MAP_SHAPE
) -> np.ndarray:
    """Attention over visual tokens as heat on the map: each token's weight spread evenly over its cells.

    A crop block cut by the map edge spreads its weight over its cells on
    the map only, so the heat of the map sums to the attention on the tokens
    that cover a cell (all but blstats, message and crop blocks wholly off the map).

    Args:
        attention: ``(..., N)`` weights over the visual tokens, e.g. one row
            ``output.attention[b, h, o]`` of :class:`~crossmoe.policy.PolicyOutput`.
        encoder, map_shape: As in :func:`token_cells`.
        y, x: The player's position, broadcastable to ``attention.shape[:-1]``
            (for ``(B, O, N)`` attention pass ``y[:, None]``).

    Returns:
        ``(..., R, C)`` float heat.
    """
    attention = np.asarray(attention, dtype=np.float64)
    if attention.shape[-1:] != (encoder.num_tokens,):
        raise ValueError(f"attention must be (..., N={encoder.num_tokens}), got {attention.shape}")
    cells = token_cells(encoder, y, x, map_shape)  # (*S, N, R, C)
    cells = cells.reshape(*cells.shape[:-2], -1).astype(np.float64)
    share = attention / np.maximum(cells.sum(-1), 1.0)  # weight per covered cell of each token
    heat = (share[..., None, :] @ cells)[..., 0, :]  # (..., 1, N) @ (*S, N, R*C), broadcast over leading dims
    return heat.reshape(*heat.shape[:-1], *map_shape)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _message(message: np.ndarray) -> str:
    return bytes(np.asarray(message, dtype=np.uint8)).split(b"\0", 1)[0].decode("latin-1").strip()


def episode_frames(
    policy: Any,
    obs: Mapping[str, Any],
    output: Any,
    actions: Sequence[str],
    rewards: Any,
    *,
    top_k: int = 3,
    first_step: int = 0,
) -> list[EpisodeFrame]:
    """The frames of ``T`` consecutive steps from the observations and the policy's output on them.

    Args:
        policy: A NetHack :class:`~crossmoe.policy.CrossAttentionMoEPolicy`
            (``visual_encoder``, ``logic_encoder.hypergraph``, ``experts.names``).
        obs: The ``T`` observations, numpy arrays with a leading ``T``: ``tty_chars``,
            ``tty_colors``, ``blstats`` and ``message``.
        output: ``policy(obs)``, a :class:`~crossmoe.policy.PolicyOutput`. With no
            attention (the ``"concat"`` fusion) the frames have no heat.
        actions: The name of the action taken at each step.
        rewards: ``(T,)`` rewards.
        top_k: Operators per frame: the applicable ones of highest score.
        first_step: Step number of the first observation.
    """
    from nle import nethack  # the nethack extra; the run plots above do not need it

    blstats = np.asarray(obs["blstats"])
    y, x = blstats[:, nethack.NLE_BL_Y], blstats[:, nethack.NLE_BL_X]
    top = top_applicable(_numpy(output.operator_scores), _numpy(output.applicable), top_k)  # (T, k)
    if output.attention is None:
        heat = np.zeros((len(top), 0, *MAP_SHAPE))
    else:
        attention = _numpy(output.attention).mean(1)  # (T, O, N): mean over the heads
        rows = np.take_along_axis(attention, np.maximum(top, 0)[..., None], 1)  # (T, k, N)
        heat = attention_to_map(rows, policy.visual_encoder, y[:, None], x[:, None])
        heat[top < 0] = 0.0
    operators = policy.logic_encoder.hypergraph.operators
    experts = policy.experts.names
    operator_expert = _numpy(output.operator_to_expert)
    scores, weights, rewards = _numpy(output.operator_scores), _numpy(output.router_weights), np.asarray(rewards)
    frames = []
    for t, ops in enumerate(top):
        ops = ops[ops >= 0]
        frames.append(
            EpisodeFrame(
                step=first_step + t,
                screen=np.asarray(obs["tty_chars"][t]),
                colors=np.asarray(obs["tty_colors"][t]),
                player=(int(y[t]), int(x[t])),
                action=str(actions[t]),
                reward=float(rewards[t]),
                router_weights=weights[t].astype(np.float64),
                operators=tuple(operators[o] for o in ops),
                operator_experts=tuple(experts[operator_expert[o]] for o in ops),
                operator_scores=tuple(float(scores[t, o]) for o in ops),
                heat=heat[t, : len(ops)],
                message=_message(obs["message"][t]),
            )
        )
    return frames


def draw_dungeon(
    ax: Axes,
    screen: np.ndarray,
    heat: np.ndarray | None = None,
    *,
    player: tuple[int, int] | None = None,
    crop_size: int | None = None,
    norm: Normalize | None = None,
    cmap: str = "YlOrRd",
    fontsize: float = 6.0,
) -> AxesImage | None:
    """Draw the map rows of a tty screen as characters, over ``heat`` when given.

    Args:
        screen: ``(24, 80)`` tty characters (rows 1-21 are the map) or the ``(21, 79)`` map itself.
        heat: ``(21, 79)`` heat drawn under the characters.
        player: ``(y, x)`` map cell of the player, outlined; with ``crop_size``
            the egocentric window is outlined too.
    """
    chars = screen[1 : 1 + MAP_SHAPE[0], : MAP_SHAPE[1]] if screen.shape != MAP_SHAPE else screen
    image = None
    if heat is not None:
        image = ax.imshow(heat, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
    for row, col in zip(*np.nonzero(chars != ord(" ")), strict=True):
        ax.text(col, row, chr(chars[row, col]), ha="center", va="center", fontsize=fontsize, family="monospace")
    if player is not None:
        y, x = player
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="tab:blue", lw=1.0))
        if crop_size:
            r = crop_size // 2
            window = Rectangle((x - r - 0.5, y - r - 0.5), crop_size, crop_size, fill=False, edgecolor="tab:blue")
            ax.add_patch(window)
    ax.set(xlim=(-0.5, MAP_SHAPE[1] - 0.5), ylim=(MAP_SHAPE[0] - 0.5, -0.5), xticks=[], yticks=[])
    return image


def plot_attention_maps(
    frames: Sequence[EpisodeFrame],
    path: Path,
    *,
    expert_names: Sequence[str],
    title: str,
    crop_size: int | None = None,
) -> Path:
    """A grid: one row per frame, one map per top operator with its attention as heat, and the router weights."""
    if not frames:
        raise ValueError("frames must hold at least one EpisodeFrame, got none")
    top_k = max(1, max(len(frame.operators) for frame in frames))
    vmax = max([float(frame.heat.max()) for frame in frames if frame.heat.size] or [1.0])
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)  # square root: the coarse patches' faint heat stays visible
    fig = Figure(figsize=(6.4 * top_k + 2.2, 2.9 * len(frames) + 1.2), layout="constrained")
    axes = fig.subplots(len(frames), top_k + 1, width_ratios=[6.4] * top_k + [1.6], squeeze=False)
    image = None
    for row, frame in zip(axes, frames, strict=True):
        for slot, ax in enumerate(row[:top_k]):
            if slot >= len(frame.operators):
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no further applicable operator", ha="center", va="center", transform=ax.transAxes)
                continue
            heat = frame.heat[slot] if frame.heat.size else None
            drawn = draw_dungeon(ax, frame.screen, heat, player=frame.player, crop_size=crop_size, norm=norm)
            image = image if drawn is None else drawn
            on_map = f", {heat.sum():.0%} on the map" if heat is not None else ""
            ax.set_title(
                f"{frame.operators[slot]}  [{frame.operator_experts[slot]}]\nscore {frame.operator_scores[slot]:.2f}"
                f"{on_map}",
                fontsize=8,
            )
        row[0].set_ylabel(f"step {frame.step}\n{frame.action}", fontsize=8)
        row[0].set_xlabel(frame.message.replace("$", r"\$"), fontsize=7, loc="left")  # "$" starts mathtext
        draw_router_weights(row[-1], frame.router_weights, expert_names)
    if image is not None:
        fig.colorbar(
            image,
            ax=axes[:, :top_k],
            location="bottom",
            shrink=0.4,
            aspect=40,
            label="attention per cell (mean over heads)",
        )
    fig.suptitle(title)
    fig.savefig(path, dpi=130)
    return path


def _screen_html(screen: np.ndarray, colors: np.ndarray, heat: np.ndarray | None, vmax: float) -> str:
    """The tty screen as one ``<pre>``: runs of cells that share a colour and a heat level in one span."""
    level = np.zeros(screen.shape, dtype=np.int64)
    if heat is not None and vmax > 0:
        scaled = np.ceil(np.sqrt(np.clip(heat / vmax, 0.0, 1.0)) * _HEAT_LEVELS).astype(np.int64)
        level[1 : 1 + MAP_SHAPE[0], : MAP_SHAPE[1]] = scaled
    colors = np.where(screen == ord(" "), _DEFAULT_COLOR, np.asarray(colors, dtype=np.int64) & 15)  # longer runs
    style = colors * (_HEAT_LEVELS + 1) + level
    lines = []
    for chars, keys in zip(screen, style, strict=True):
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)]
        spans = []
        for start, end in zip(starts, ends, strict=True):
            color, heat_level = divmod(int(keys[start]), _HEAT_LEVELS + 1)
            text = html.escape(bytes(chars[start:end]).decode("latin-1"))
            classes = " ".join([f"c{color}"] * (color != _DEFAULT_COLOR) + [f"h{heat_level}"] * (heat_level > 0))
            spans.append(f'<span class="{classes}">{text}</span>' if classes else text)
        lines.append("".join(spans))
    return '<pre class="screen">' + "\n".join(lines) + "</pre>"


_PAGE_STYLE = """
body{font-family:system-ui,sans-serif;background:#fafafa;color:#222;margin:1.5em}
.controls{margin:1em 0;display:flex;gap:.5em;align-items:center}
.controls input{width:40em}
.step{display:none;gap:1.5em;align-items:flex-start}
.step.current{display:flex}
pre.screen{background:#000;color:#bbb;padding:.6em;font-size:12px;line-height:1.15;margin:0}
.side{min-width:22em;font-size:14px}
.bar{display:flex;align-items:center;gap:.4em;margin:.15em 0}
.bar .name{width:7em}
.bar .track{width:12em;height:.8em;background:#ddd}
.bar .fill{height:100%}
.side ol{padding-left:1.4em;margin:.3em 0}
"""

_PAGE_SCRIPT = """
const steps = document.querySelectorAll('.step');
const slider = document.getElementById('slider');
const label = document.getElementById('label');
let timer = null;
function show(i) {
  i = Math.max(0, Math.min(steps.length - 1, i));
  steps.forEach((s, j) => s.classList.toggle('current', j === i));
  slider.value = i; label.textContent = `${i + 1} / ${steps.length}`;
}
slider.oninput = () => show(+slider.value);
document.getElementById('prev').onclick = () => show(+slider.value - 1);
document.getElementById('next').onclick = () => show(+slider.value + 1);
document.getElementById('play').onclick = () => {
  if (timer) { clearInterval(timer); timer = null; return; }
  timer = setInterval(() => { if (+slider.value >= steps.length - 1) { clearInterval(timer); timer = null; }
                              else show(+slider.value + 1); }, 400);
};
document.addEventListener('keydown', e => { if (e.key === 'ArrowLeft') show(+slider.value - 1);
                                            if (e.key === 'ArrowRight') show(+slider.value + 1); });
show(0);
"""


def write_episode_html(
    frames: Sequence[EpisodeFrame], path: Path, *, expert_names: Sequence[str], title: str, subtitle: str = ""
) -> Path:
    """A self-contained HTML page of an episode: a slider over the steps, each with the tty screen, the attention
    of its top operator as coloured cells, the router weights as bars and the action taken.

    Without JavaScript all steps show, one after another.
    """
    if not frames:
        raise ValueError("frames must hold at least one EpisodeFrame, got none")
    vmax = max([float(frame.heat[0].max()) for frame in frames if len(frame.heat)] or [0.0])
    css = _PAGE_STYLE + "".join(f".c{i}{{color:{color}}}\n" for i, color in enumerate(_TTY_COLORS))
    css += "".join(
        f".h{level}{{background:rgba(255,80,0,{0.9 * level / _HEAT_LEVELS:.3f})}}\n"
        for level in range(1, _HEAT_LEVELS + 1)
    )
    steps = []
    for index, frame in enumerate(frames):
        heat = frame.heat[0] if len(frame.heat) else None
        bars = "".join(
            f'<div class="bar"><span class="name">{html.escape(name)}</span><span class="track">'
            f'<span class="fill" style="display:block;width:{100 * weight:.1f}%;background:{_css_color(i)}"></span>'
            f"</span><span>{weight:.2f}</span></div>"
            for i, (name, weight) in enumerate(zip(expert_names, frame.router_weights, strict=True))
        )
        operators = "".join(
            f"<li>{html.escape(name)} <small>[{html.escape(expert)}] score {score:.2f}</small></li>"
            for name, expert, score in zip(frame.operators, frame.operator_experts, frame.operator_scores, strict=True)
        )
        overlay = (
            f"heat: what <b>{html.escape(frame.operators[0])}</b> attends to"
            if heat is not None
            else "no attention overlay"
        )
        steps.append(
            f'<div class="step" data-step="{frame.step}" id="step-{index}">'
            f"{_screen_html(frame.screen, frame.colors, heat, vmax)}"
            f'<div class="side"><h3>step {frame.step}</h3>'
            f"<p>action <b>{html.escape(frame.action)}</b>, reward {frame.reward:+.2f}</p>"
            f"<h4>router weights</h4>{bars}"
            f"<h4>top applicable operators</h4><ol>{operators or '<li>none applicable</li>'}</ol>"
            f"<p>{overlay}</p></div></div>"
        )
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{css}</style><noscript><style>.step{{display:flex;margin-bottom:2em}}</style></noscript></head>\n"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
        '<div class="controls"><button id="prev">&#9664;</button>'
        f'<input type="range" id="slider" min="0" max="{len(frames) - 1}" value="0">'
        '<button id="next">&#9654;</button><button id="play">play / pause</button><span id="label"></span></div>\n'
        + "\n".join(steps)
        + f"\n<script>{_PAGE_SCRIPT}</script></body></html>\n"
    )
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def _css_color(index: int) -> str:
    return to_hex(f"C{index}")


def write_episode_gif(
    frames: Sequence[EpisodeFrame],
    path: Path,
    *,
    expert_names: Sequence[str],
    title: str,
    crop_size: int | None = None,
    fps: float = 4.0,
) -> Path:
    """An animated GIF of an episode (needs pillow): the map with its top operator's attention, and the router."""
    from matplotlib.animation import PillowWriter

    if not frames:
        raise ValueError("frames must hold at least one EpisodeFrame, got none")
    vmax = max([float(frame.heat[0].max()) for frame in frames if len(frame.heat)] or [1.0])
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    fig = Figure(figsize=(9.5, 2.9), layout="constrained")
    map_ax, router_ax = fig.subplots(1, 2, width_ratios=[6, 1.4])
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi=90):
        for frame in frames:
            map_ax.clear()
            router_ax.clear()
            heat = frame.heat[0] if len(frame.heat) else None
            draw_dungeon(map_ax, frame.screen, heat, player=frame.player, crop_size=crop_size, norm=norm)
            reads = f"heat: {frame.operators[0]} [{frame.operator_experts[0]}]" if heat is not None else "no attention"
            map_ax.set_title(f"step {frame.step}: {frame.action}   {reads}", fontsize=8)
            draw_router_weights(router_ax, frame.router_weights, expert_names)
            fig.suptitle(title, fontsize=9)
            writer.grab_frame()
    return Path(path)
