"""Pictures of the MiniGrid agent: attention laid out on the view, the view drawn as MiniGrid draws it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("minigrid")
pytest.importorskip("matplotlib")

import torch

from crossmoe.minigrid import ATOMS, RuleAgent, extract_atoms, load_hypergraph, make_env, make_policy, target_cells
from crossmoe.minigrid.pictures import (
    VIEW,
    attention_on_target,
    grid_frames,
    plot_grid_attention,
    render_view,
    view_heat,
)


def test_a_tokens_attention_lands_on_its_cell():
    """Token x * 7 + y is view cell (x, y), drawn at row y, column x; token 49 is the mission."""
    attention = np.zeros((2, 50))
    attention[0, 2 * VIEW + 5] = 0.75  # cell (x=2, y=5)
    attention[0, 49] = 0.25
    attention[1, 3 * VIEW + 6] = 1.0  # the agent's own cell
    heat, mission = view_heat(attention)
    assert heat.shape == (2, VIEW, VIEW)
    assert heat[0, 5, 2] == 0.75 and heat[0].sum() == 0.75 and mission[0] == 0.25
    assert heat[1, 6, 3] == 1.0 and mission[1] == 0.0
    with pytest.raises(ValueError, match=r"attention must be \(\.\.\., 50\)"):
        view_heat(np.zeros((2, 49)))


def test_the_view_is_drawn_as_minigrid_draws_the_agents_point_of_view():
    """Against MiniGrid's own get_pov_render, over an episode of the rules: a key fetched, a door unlocked."""
    env = make_env("MiniGrid-UnlockPickup-v0", seed=2)
    obs, _ = env.reset(seed=2)
    rules = RuleAgent(seed=0)
    carried = 0
    for _ in range(60):
        np.testing.assert_array_equal(render_view(obs["image"], 8), env.unwrapped.get_pov_render(8))
        carried += env.unwrapped.carrying is not None
        obs, _, terminated, truncated, _ = env.step(int(rules.act({k: np.asarray(v)[None] for k, v in obs.items()})[0]))
        if terminated or truncated:
            break
    env.close()
    assert carried  # the rules held the key in some of the views
    with pytest.raises(ValueError, match=r"image must be one \(7, 7, 3\) view"):
        render_view(np.zeros((1, 7, 7, 3)))


def played(env_id: str, seed: int, actions: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The observations before each of ``actions``, stacked."""
    env = make_env(env_id, seed=seed)
    obs, _ = env.reset(seed=seed)
    steps = []
    for action in actions:
        steps.append({key: np.array(value) for key, value in obs.items()})
        obs, *_ = env.step(action)
    env.close()
    return {key: np.stack([step[key] for step in steps]) for key in steps[0]}


@pytest.fixture(scope="module")
def episode():
    return played("MiniGrid-UnlockPickup-v0", 4, (1, 2, 2, 0, 2, 3, 1, 2))


def test_frames_show_the_applicable_operators_of_highest_score_and_where_they_look(episode, tmp_path):
    torch.manual_seed(0)
    policy = make_policy(dim=32).eval()
    with torch.inference_mode():
        output = policy(episode)
    steps = len(episode["image"])
    frames = grid_frames(policy, episode, output, ["left"] * steps, np.zeros(steps), ["pick up"] * steps, top_k=2)
    graph = load_hypergraph()
    applicable = graph.applicable(extract_atoms(episode)).numpy()
    scores = output.operator_scores.numpy()
    for t, frame in enumerate(frames):
        shown = [graph.operators.index(name) for name in frame.operators]
        assert all(applicable[t, shown]) and len(shown) == min(2, applicable[t].sum())
        others = applicable[t] & ~np.isin(np.arange(len(graph.operators)), shown)
        assert all(scores[t, shown].min() >= scores[t, others])
        # Each shown operator's attention (mean over heads) is a distribution over the seen cells and the mission.
        np.testing.assert_allclose(frame.heat.sum((1, 2)) + frame.mission_share, 1.0, rtol=1e-5)
        unseen = (episode["image"][t, ..., 0] == 0).T  # [y, x], as the heat
        assert not frame.heat[:, unseen].any()
    path = plot_grid_attention(frames[:3], tmp_path / "attention.png", expert_names=policy.experts.names, title="t")
    assert path.stat().st_size > 10_000


@pytest.fixture(scope="module")
def among_distractors():
    """8 steps of turning and walking in GoToLocal: the named object among 7 others, in and out of view."""
    return played("BabyAI-GoToLocal-v0", 0, (0, 0, 0, 2, 1, 1, 2, 0))


def test_attention_on_the_target_is_the_attention_on_the_cells_behind_target_visible(among_distractors):
    episode = among_distractors
    torch.manual_seed(0)
    policy = make_policy(dim=32).eval()
    with torch.inference_mode():
        output = policy(episode)
    share, uniform = attention_on_target(output.attention, episode)
    cells = target_cells(episode)  # (T, 7, 7) [x, y]
    visible = extract_atoms(episode)[:, ATOMS.index("target_visible")] == 1
    np.testing.assert_array_equal(cells.any((1, 2)), visible)  # the cells are the atom's
    assert visible.any() and not visible.all()  # the object comes into view and goes out of it
    np.testing.assert_array_equal(np.isnan(uniform), ~visible)
    attention = output.attention.numpy().mean(1)  # (T, O, 50)
    for t in np.nonzero(visible)[0]:
        x, y = np.nonzero(cells[t])
        np.testing.assert_allclose(share[t], attention[t][:, x * VIEW + y].sum(-1), rtol=1e-6)
        seen = (episode["image"][t, ..., 0] != 0).sum()
        assert uniform[t] == pytest.approx(len(x) / (seen + 1))  # + the mission token
    # Attention that looks only at the target puts all of itself there.
    one_hot = np.zeros((1, 1, 1, 50))
    t = int(np.nonzero(visible)[0][0])
    x, y = np.nonzero(cells[t])
    one_hot[0, 0, 0, x[0] * VIEW + y[0]] = 1.0
    single = {key: value[t : t + 1] for key, value in episode.items()}
    assert attention_on_target(one_hot, single)[0][0, 0] == 1.0
    with pytest.raises(ValueError, match=r"attention must be \(B, H, O, 50\)"):
        attention_on_target(np.zeros((1, 1, 50)), single)


def test_the_concat_fusion_has_frames_without_heat(episode, tmp_path):
    policy = make_policy(dim=32, fusion="concat").eval()
    with torch.inference_mode():
        output = policy(episode)
    frames = grid_frames(policy, episode, output, ["left"] * 8, np.zeros(8), ["m"] * 8)
    assert all(frame.heat.shape[0] == 0 and frame.operators for frame in frames)
    assert plot_grid_attention(frames[:1], tmp_path / "a.png", expert_names=policy.experts.names, title="t").is_file()
    with pytest.raises(ValueError, match="frames must hold at least one GridFrame"):
        plot_grid_attention([], tmp_path / "b.png", expert_names=policy.experts.names, title="t")


def test_the_script_draws_an_untrained_agent_and_refuses_a_checkpoint_without_experts(tmp_path):
    from example_scripts import load_example

    from crossmoe.minigrid import make_baseline_policy
    from crossmoe.training import save_checkpoint

    module = load_example("minigrid_pictures")
    paths = module.main(
        module.Args(out=str(tmp_path), steps=6, states=2, target_steps=40, env_id="BabyAI-GoToLocal-v0")
    )
    assert paths == [tmp_path / "attention.png", tmp_path / "target_attention.json"]
    table = json.loads(paths[1].read_text())
    assert table["steps"] == 40 and table["operators"]  # some operator applied with the object in view
    assert all(0 <= row["share_on_target"] <= 1 and row["states"] > 0 for row in table["operators"])
    baseline = make_baseline_policy(dim=32)
    checkpoint = save_checkpoint(
        tmp_path / "mlp.pt", {"policy_config": baseline.config, "model": baseline.state_dict()}
    )
    with pytest.raises(ValueError, match="checkpoint must hold a MoE agent"):
        module.main(module.Args(checkpoint=str(checkpoint), out=str(tmp_path)))
    with pytest.raises(ValueError, match="steps, states and top_k must be >= 1 and target_steps >= 0"):
        module.main(module.Args(out=str(tmp_path), steps=0))
