"""crossmoe.nethack.pictures: attention on the map, the usage plot, the episode page, examples/pictures.py."""

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("nle")

from nle import nethack

from crossmoe.nethack import NetHackVisualEncoder, make_env, make_policy
from crossmoe.nethack.glyphs import screen_symbol
from crossmoe.nethack.pictures import (
    MAP_SHAPE,
    EpisodeFrame,
    attention_to_map,
    draw_dungeon,
    episode_frames,
    plot_attention_maps,
    token_cells,
    top_applicable,
    write_episode_html,
)
from crossmoe.plots import plot_expert_usage
from crossmoe.training import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ROWS, COLS = MAP_SHAPE
FLOOR = nethack.GLYPH_CMAP_OFF + screen_symbol("S_room")
WALL = nethack.GLYPH_CMAP_OFF + screen_symbol("S_vwall")
POSITIONS = [(10, 40), (0, 0), (20, 78), (1, 77), (4, 4)]


def _encoder(crop_size=9, crop_patch=3):
    return NetHackVisualEncoder(16, crop_size=crop_size, crop_patch=crop_patch, cell_dim=4).eval()


def _obs(glyphs, y, x):
    blstats = torch.zeros(glyphs.shape[0], nethack.NLE_BLSTATS_SIZE, dtype=torch.long)
    blstats[:, nethack.NLE_BL_Y], blstats[:, nethack.NLE_BL_X] = y, x
    return {"glyphs": glyphs, "blstats": blstats, "message": torch.zeros(glyphs.shape[0], 256, dtype=torch.long)}


@pytest.mark.parametrize(("crop_size", "crop_patch"), [(9, 3), (9, 1), (5, 1)])
@pytest.mark.parametrize(("y", "x"), POSITIONS)
def test_token_cells_are_the_cells_each_encoder_token_reads(crop_size, crop_patch, y, x):
    # Independent reference: a wall put on one cell of a floor map changes exactly the tokens that read that cell.
    encoder = _encoder(crop_size, crop_patch)
    cells = np.flatnonzero(np.arange(ROWS * COLS) != y * COLS + x)  # the player's cell is drawn as the player
    glyphs = torch.full((len(cells) + 1, ROWS, COLS), FLOOR, dtype=torch.long)
    glyphs.view(len(cells) + 1, -1)[torch.arange(1, len(cells) + 1), torch.from_numpy(cells)] = WALL
    with torch.no_grad():
        tokens, _ = encoder(_obs(glyphs, y, x))
    changed = (tokens[1:] - tokens[:1]).abs().amax(-1) > 1e-6  # (cells, N)
    expected = token_cells(encoder, y, x).reshape(encoder.num_tokens, -1)[:, cells].T
    np.testing.assert_array_equal(changed.numpy(), expected)


def test_token_cells_by_hand():
    encoder = _encoder()
    cells = token_cells(encoder, 10, 40)
    assert cells.shape == (9 + 24 + 2, ROWS, COLS)
    expected = np.zeros((ROWS, COLS), dtype=bool)
    expected[6:9, 36:39] = True  # block 0: the window's top-left 3x3
    np.testing.assert_array_equal(cells[0], expected)
    expected[:] = False
    expected[9:12, 39:42] = True  # block 4: the player's neighbourhood
    np.testing.assert_array_equal(cells[4], expected)
    expected[:] = False
    expected[9:12, 42:45] = True  # block 5: right of the player
    np.testing.assert_array_equal(cells[5], expected)
    expected[:] = False
    expected[7:14, 40:50] = True  # coarse patch (1, 4) of 7x10 cells
    np.testing.assert_array_equal(cells[9 + 8 + 4], expected)
    expected[:] = False
    expected[14:21, 70:79] = True  # the last patch is cut by the map's right edge
    np.testing.assert_array_equal(cells[9 + 23], expected)
    assert not cells[-2:].any()  # blstats and message read no cell

    corner = token_cells(encoder, 0, 0)  # window rows and columns -4..4: off-map cells cover nothing
    assert corner[[0, 1, 2, 3, 6]].sum((-2, -1)).tolist() == [0, 0, 0, 0, 0]
    expected[:] = False
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(corner[4], expected)
    assert corner[8, 2:5, 2:5].all() and corner[8].sum() == 9
    # Broadcast positions give the per-position answers.
    both = token_cells(encoder, np.array([10, 0]), np.array([40, 0]))
    np.testing.assert_array_equal(both, np.stack([cells, corner]))


def test_attention_to_map_conserves_the_attention_on_map_tokens():
    encoder = _encoder()
    rng = np.random.default_rng(0)
    y, x = np.array(POSITIONS).T  # (P,)
    attention = rng.dirichlet(np.ones(encoder.num_tokens), size=(len(y), 3))  # (P, O, N)
    heat = attention_to_map(attention, encoder, y[:, None], x[:, None])
    assert heat.shape == (len(y), 3, ROWS, COLS)
    covers = token_cells(encoder, y, x).any((-2, -1))  # (P, N): blstats, message, wholly off-map blocks do not
    np.testing.assert_allclose(heat.sum((-2, -1)), (attention * covers[:, None]).sum(-1), rtol=1e-12)
    assert (heat.sum((-2, -1)) < 1 - 1e-3).all()  # the blstats and message tokens' share is not drawn
    for p in range(len(y)):  # the batch equals one position at a time
        np.testing.assert_allclose(heat[p, 1], attention_to_map(attention[p, 1], encoder, y[p], x[p]))


def test_attention_to_map_spreads_a_token_evenly_over_its_cells():
    encoder = _encoder()
    one_hot = np.eye(encoder.num_tokens)
    heat = attention_to_map(one_hot, encoder, 0, 0)  # a player in the corner
    expected = np.zeros((ROWS, COLS))
    expected[0:2, 0:2] = 1 / 4  # block 4 keeps its weight on its 4 cells inside the map
    np.testing.assert_allclose(heat[4], expected)
    assert heat[0].sum() == 0  # a block wholly off the map has nowhere to go
    expected[:] = 0
    expected[0:7, 70:79] = 1 / 63
    np.testing.assert_allclose(heat[9 + 7], expected)
    assert not heat[-2:].any()
    with pytest.raises(ValueError, match="attention must be"):
        attention_to_map(np.ones(encoder.num_tokens - 1), encoder, 0, 0)


def test_top_applicable_orders_by_score_and_pads():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.1]])
    applicable = np.array([[True, False, True, True], [False, False, True, False]])
    np.testing.assert_array_equal(top_applicable(scores, applicable, 3), [[3, 2, 0], [2, -1, -1]])


def _write_metrics(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_usage_plot_from_a_hand_made_metrics_file(tmp_path):
    experts = ("survival", "combat", "exploration", "general")
    rows = []
    for update in range(1, 6):
        weights = np.array([update, 1.0, 2.0, 3.0]) / (update + 6.0)
        row = {"global_step": 1000 * update, "phase": "warmup" if update < 3 else "finetune"}
        row.update({f"weight/{name}": w for name, w in zip(experts, weights, strict=True)})
        row.update({f"usage/{name}": float(i == update % 4) for i, name in enumerate(experts)})
        rows.append(row)
    _write_metrics(tmp_path / "metrics.jsonl", rows)
    path = plot_expert_usage(read_metrics(tmp_path / "metrics.jsonl"), tmp_path / "usage.png")
    assert path == tmp_path / "usage.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    usage_only = [{key: value for key, value in row.items() if not key.startswith("weight/")} for row in rows]
    assert plot_expert_usage(usage_only, tmp_path / "old.png").is_file()  # runs before weight/ was logged
    assert plot_expert_usage([{"global_step": 1, "episodic_return": 0.0}], tmp_path / "mlp.png") is None
    assert not (tmp_path / "mlp.png").exists()


class _Screens(HTMLParser):
    """Each step's ``<pre>`` back as characters with, per character, its heat class (0 when none)."""

    def __init__(self):
        super().__init__()
        self.screens, self.heat, self._classes, self._in_pre = [], [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "pre":
            self._in_pre = True
            self.screens.append("")
            self.heat.append([])
        elif tag == "span":
            self._classes.append(dict(attrs).get("class", ""))

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_pre = False
        elif tag == "span":
            self._classes.pop()

    def handle_data(self, data):
        if self._in_pre:
            levels = [int(c[1:]) for c in " ".join(self._classes).split() if c.startswith("h")]
            self.screens[-1] += data
            self.heat[-1] += [max(levels, default=0)] * len(data)


def _frames(steps):
    rng = np.random.default_rng(0)
    frames = []
    for t in range(steps):
        screen = np.full((24, 80), ord(" "), dtype=np.uint8)
        screen[0, :12] = np.frombuffer(b"You see <&>.", dtype=np.uint8)  # must come back unescaped
        screen[1 + 5, 10 + t] = ord("@")
        screen[3, 20:30] = ord("-")
        colors = rng.integers(0, 16, size=(24, 80)).astype(np.int8)
        heat = np.zeros((2, ROWS, COLS))
        heat[0, 5, 10 + t] = 0.5  # the hottest cell: the player's
        heat[0, 5, 11 + t] = 0.5 / 64  # a sixty-fourth: a square-root scale puts it at 1/8
        frames.append(
            EpisodeFrame(
                step=t,
                screen=screen,
                colors=colors,
                player=(5, 10 + t),
                action="CompassDirection.E",
                reward=0.0,
                router_weights=np.array([0.1, 0.2, 0.3, 0.4]),
                operators=("explore_room", "fight_<adjacent>"),
                operator_experts=("exploration", "combat"),
                operator_scores=(0.9, 0.4),
                heat=heat,
                message="",
            )
        )
    return frames


def test_draw_dungeon_puts_each_character_on_its_cell():
    from matplotlib.figure import Figure

    screen = np.full((24, 80), ord(" "), dtype=np.uint8)
    screen[0, :5] = np.frombuffer(b"Hello", dtype=np.uint8)  # the message line is not part of the map
    screen[1, 0], screen[21, 78], screen[5, 40] = ord("a"), ord("@"), ord("$")
    heat = np.random.default_rng(0).random((ROWS, COLS))
    ax = Figure().subplots()
    image = draw_dungeon(ax, screen, heat, player=(20, 78), crop_size=9)
    assert {(tuple(text.get_position()), text.get_text()) for text in ax.texts} == {
        ((0, 0), "a"),
        ((78, 20), "@"),
        ((40, 4), "$"),
    }
    np.testing.assert_array_equal(image.get_array(), heat)
    assert draw_dungeon(Figure().subplots(), screen[1:22, :79]) is None  # the bare map, no heat


def test_attention_maps_figure_with_missing_operators_and_odd_messages(tmp_path):
    frames = _frames(3)
    frames[1] = frames[1]._replace(operators=(), operator_experts=(), operator_scores=(), heat=frames[1].heat[:0])
    frames[2] = frames[2]._replace(message="odd: $^$", heat=frames[2].heat[:0])  # no attention
    path = plot_attention_maps(frames, tmp_path / "attention.png", expert_names=("a", "b", "c", "d"), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_episode_html_has_each_step_with_its_screen_heat_and_names(tmp_path):
    frames = _frames(4)
    experts = ("survival", "combat", "exploration", "general")
    path = write_episode_html(frames, tmp_path / "episode.html", expert_names=experts, title="test <episode>")
    page = path.read_text(encoding="utf-8")
    assert page.count('<div class="step"') == 4
    for name in ("explore_room", "fight_&lt;adjacent&gt;", *experts, "CompassDirection.E"):
        assert name in page
    assert "test &lt;episode&gt;" in page and "<script>" in page
    parsed = _Screens()
    parsed.feed(page)
    assert len(parsed.screens) == 4
    for frame, text, heat in zip(frames, parsed.screens, parsed.heat, strict=True):
        assert text == "\n".join(bytes(row).decode("latin-1") for row in frame.screen)  # every character, in place
        heat = np.array([*heat, 0]).reshape(24, 81)[:, :80]  # 80 characters and a newline per row
        expected = np.zeros((24, 80), dtype=int)
        y, x = frame.player
        expected[1 + y, x], expected[1 + y, x + 1] = 8, 1  # rows 1-21 of the screen are the map
        np.testing.assert_array_equal(heat, expected)
    with pytest.raises(ValueError, match="frames"):
        write_episode_html([], tmp_path / "empty.html", expert_names=experts, title="")


def test_episode_frames_of_a_policy():
    env = make_env(observation_keys=("glyphs", "blstats", "message", "inv_oclasses", "tty_chars", "tty_colors"), seed=3)
    policy = make_policy(env=env, dim=32).eval()
    obs, _ = env.reset(seed=3)
    steps = [{key: np.array(value) for key, value in obs.items()}]
    obs, *_ = env.step(1)
    steps.append({key: np.array(value) for key, value in obs.items()})
    env.close()
    stacked = {key: np.stack([step[key] for step in steps]) for key in steps[0]}
    with torch.inference_mode():
        output = policy(stacked)
    frames = episode_frames(policy, stacked, output, ["a", "b"], [0.0, 1.0], top_k=3, first_step=5)
    operators = policy.logic_encoder.hypergraph.operators
    attention = output.attention.mean(1).numpy()
    for t, frame in enumerate(frames):
        assert frame.step == 5 + t and frame.action == "ab"[t]
        assert frame.player == (
            int(stacked["blstats"][t, nethack.NLE_BL_Y]),
            int(stacked["blstats"][t, nethack.NLE_BL_X]),
        )
        index = [operators.index(name) for name in frame.operators]
        assert 1 <= len(index) <= 3 and output.applicable[t, index].all()
        assert list(frame.operator_scores) == sorted(frame.operator_scores, reverse=True)
        unchosen = np.setdiff1d(np.flatnonzero(output.applicable[t].numpy()), index)
        assert (output.operator_scores[t, unchosen].numpy() <= min(frame.operator_scores) + 1e-6).all()
        np.testing.assert_allclose(
            frame.heat, attention_to_map(attention[t, index], policy.visual_encoder, *frame.player), rtol=1e-6
        )
        np.testing.assert_allclose(frame.router_weights, output.router_weights[t].numpy(), rtol=1e-6)


def test_pictures_script_end_to_end_on_an_untrained_agent(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write_metrics(
        run_dir / "metrics.jsonl",
        [{"global_step": 100 * i, "usage/a": 0.5, "usage/b": 0.5, "weight/a": 0.4, "weight/b": 0.6} for i in (1, 2)],
    )
    out = tmp_path / "pictures"
    result = subprocess.run(
        [
            *(sys.executable, str(ROOT / "examples" / "pictures.py"), "--out", str(out), "--run-dir", str(run_dir)),
            *("--steps", "3", "--states", "2", "--top-k", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = {"attention.png", "episode.html", "episode.gif", "expert_usage.png"}
    assert {Path(line).name for line in result.stdout.split()} == names
    assert {path.name for path in out.iterdir()} == names
    page = (out / "episode.html").read_text(encoding="utf-8")
    assert page.count('<div class="step"') == 3 and "untrained agent" in page
    from PIL import Image

    with Image.open(out / "episode.gif") as gif:
        assert gif.n_frames == 3
