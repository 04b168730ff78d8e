"""The MiniGrid agent's knowledge: missions as numbers, atoms, the graph, and its rules solving easy tasks."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

pytest.importorskip("minigrid")

from minigrid.core.actions import Actions
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from crossmoe.evaluation import evaluate
from crossmoe.hypergraph import env_actions
from crossmoe.minigrid import (
    ANY_COLOR,
    ATOMS,
    MINIGRID_ACTIONS,
    RuleAgent,
    Task,
    encode_mission,
    eval_domain,
    extract_atoms,
    load_hypergraph,
    make_env,
    make_policy,
    make_vector_env,
)

EMPTY, WALL, DOOR, KEY, BALL, BOX, GOAL = (
    OBJECT_TO_IDX[name] for name in ("empty", "wall", "door", "key", "ball", "box", "goal")
)
RED, BLUE = COLOR_TO_IDX["red"], COLOR_TO_IDX["blue"]
OPEN, CLOSED, LOCKED = STATE_TO_IDX["open"], STATE_TO_IDX["closed"], STATE_TO_IDX["locked"]


@pytest.mark.parametrize(
    ("mission", "expected"),
    [
        ("go to the red ball", (Task.GO_TO, BALL, RED)),
        ("get to the green goal square", (Task.GO_TO, GOAL, COLOR_TO_IDX["green"])),
        ("pick up a ball", (Task.PICK_UP, BALL, ANY_COLOR)),
        ("open a door in front of you", (Task.OPEN, DOOR, ANY_COLOR)),
        ("use the key to open the door and then get to the goal", (Task.GO_TO, GOAL, ANY_COLOR)),
        ("put the blue box next to the red key", (Task.OTHER, 0, ANY_COLOR)),
    ],
)
def test_a_mission_is_its_last_verb_and_the_object_and_colour_after_it(mission, expected):
    assert encode_mission(mission) == tuple(int(x) for x in expected)


def test_the_vector_env_batches_the_mission_as_numbers():
    envs = make_vector_env(3, seed=0, env_id="BabyAI-GoToRedBallNoDists-v0")
    obs, _ = envs.reset(seed=0)
    envs.close()
    assert obs["image"].shape == (3, 7, 7, 3) and obs["mission"].dtype == np.uint8
    np.testing.assert_array_equal(obs["mission"], [[Task.GO_TO, BALL, RED]] * 3)
    assert env_actions(envs) == list(MINIGRID_ACTIONS)


def blank(mission=(Task.GO_TO, BALL, RED)):
    """One agent in an empty, fully visible room."""
    image = np.zeros((1, 7, 7, 3), dtype=np.uint8)
    image[..., 0] = EMPTY
    return {"image": image, "mission": np.array([mission], dtype=np.uint8)}


def put(obs, x, y, obj, color=RED, state=0):
    obs["image"][0, x, y] = (obj, color, state)
    return obs


def fired(obs) -> set[str]:
    return {name for name, value in zip(ATOMS, extract_atoms(obs)[0], strict=True) if value}


def test_where_the_target_is():
    assert {"target_ahead", "target_visible"} <= fired(put(blank(), 3, 5, BALL))
    assert "target_straight" in fired(put(blank(), 3, 1, BALL))
    assert "target_straight" not in fired(put(put(blank(), 3, 1, BALL), 3, 3, WALL))  # a wall in the way
    assert "target_left" in fired(put(blank(), 0, 6, BALL)) and "target_right" in fired(put(blank(), 5, 6, BALL))
    farther = fired(put(blank(), 1, 2, BALL))
    assert "target_farther" in farther and not farther & {"target_left", "target_right", "target_straight"}
    assert "target_visible" not in fired(put(blank(), 3, 5, BALL, color=BLUE))  # the wrong colour
    assert "target_visible" in fired(put(blank((Task.PICK_UP, BALL, ANY_COLOR)), 3, 5, BALL, color=BLUE))


def test_the_cell_in_front_and_the_hands():
    assert {"front_passable", "front_empty", "hands_empty"} <= fired(blank())
    assert "front_empty" not in fired(put(blank(), 3, 5, DOOR, state=OPEN))  # passable, but nothing goes down there
    assert "front_wall" in fired(put(blank(), 3, 5, WALL))
    assert {"front_door_locked"} <= fired(put(blank(), 3, 5, DOOR, state=LOCKED))
    assert {"front_door_open", "front_passable"} <= fired(put(blank(), 3, 5, DOOR, state=OPEN))
    holding = put(put(blank(), 3, 6, KEY, color=BLUE), 3, 5, DOOR, color=BLUE, state=LOCKED)
    assert {"carrying_key", "key_fits_front_door"} <= fired(holding) and "hands_empty" not in fired(holding)
    assert "key_fits_front_door" not in fired(put(holding, 3, 5, DOOR, color=RED, state=LOCKED))
    # A key is sought with empty hands only, a shut door with a key in hand only.
    assert "key_visible" in fired(put(blank(), 1, 1, KEY))
    assert "key_visible" not in fired(put(put(blank(), 1, 1, KEY), 3, 6, BALL))
    assert "door_right" in fired(put(put(blank(), 6, 6, DOOR, state=CLOSED), 3, 6, KEY))
    assert "door_visible" not in fired(put(blank(), 6, 6, DOOR, state=CLOSED))


def test_front_and_hands_agree_with_the_env_itself():
    """Against MiniGrid's own state (front_pos, carrying), over random play in DoorKey."""
    env = make_env("MiniGrid-DoorKey-6x6-v0", seed=3)
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(3)
    names = ("front_empty", "front_wall", "front_door_locked", "front_pickable", "carrying_key")
    column = {name: ATOMS.index(name) for name in names}
    seen = dict.fromkeys(column, 0)
    for _ in range(400):
        atoms = extract_atoms({key: np.asarray(value)[None] for key, value in obs.items()})[0]
        base = env.unwrapped
        front = base.grid.get(*base.front_pos)
        truth = {
            "front_empty": front is None,
            "front_wall": front is not None and front.type == "wall",
            "front_door_locked": front is not None and front.type == "door" and front.is_locked,
            "front_pickable": front is not None and front.type in ("key", "ball", "box"),
            "carrying_key": base.carrying is not None and base.carrying.type == "key",
        }
        for name, index in column.items():
            assert bool(atoms[index]) == truth[name], name
            seen[name] += truth[name]
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(0, 6)))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    assert all(seen.values()), seen  # random play met each case


def test_a_batch_equals_its_rows():
    envs = make_vector_env(4, seed=1, env_id="MiniGrid-DoorKey-5x5-v0")
    obs, _ = envs.reset(seed=1)
    envs.close()
    rows = [extract_atoms({key: value[i : i + 1] for key, value in obs.items()}) for i in range(4)]
    np.testing.assert_array_equal(extract_atoms(obs), np.concatenate(rows))


def test_bad_observations_are_named():
    with pytest.raises(ValueError, match="obs is missing key 'mission'"):
        extract_atoms({"image": np.zeros((1, 7, 7, 3))})
    with pytest.raises(ValueError, match=r"obs\['image'\] must be \(B, 7, 7, 3\), got \(7, 7, 3\)"):
        extract_atoms({"image": np.zeros((7, 7, 3)), "mission": np.zeros((1, 3))})


def test_the_rules_put_a_key_down_beside_the_object_they_must_pick_up():
    """Hands full with a key and the box level on one side: drop the key in front, then turn to the box."""
    agent = RuleAgent(seed=0)
    holding = put(put(blank((Task.PICK_UP, BOX, RED)), 3, 6, KEY, color=BLUE), 1, 6, BOX)
    assert MINIGRID_ACTIONS[int(agent.act(holding)[0])] == "Actions.drop"
    emptied = put(put(blank((Task.PICK_UP, BOX, RED)), 3, 5, KEY, color=BLUE), 1, 6, BOX)  # the key, put down
    assert MINIGRID_ACTIONS[int(agent.act(emptied)[0])] == "Actions.left"  # to the box, not back to the key
    blocked = put(holding, 3, 5, WALL)  # nowhere to put the key: turn instead
    assert MINIGRID_ACTIONS[int(agent.act(blocked)[0])] != "Actions.drop"


def test_the_rules_unlock_the_door_then_swap_the_key_for_the_box():
    result = evaluate(RuleAgent(seed=0), "MiniGrid-UnlockPickup-v0", 40, num_envs=8, seed=123, domain=eval_domain())
    assert np.mean(np.asarray(result.returns) > 0) >= 0.8  # 0.9 measured; before the put-down operators, 0.0


def test_the_shipped_graph_names_the_atoms_and_minigrids_actions():
    with resources.as_file(resources.files("crossmoe.minigrid") / "hypergraph.json") as path:
        data = json.loads(path.read_text())
    assert [c["name"] for c in data["conditions"]] == list(ATOMS)
    names = {f"Actions.{action.name}" for action in Actions}
    assert all(set(op["actions"]) <= names for op in data["operators"])
    assert data["operators"][-1]["name"] == "turn_around" and data["operators"][-1]["requires"] == []  # a fallback
    graph = load_hypergraph()
    assert graph.applicable(np.zeros((1, len(ATOMS)), dtype=np.float32))[0, -1]


@pytest.mark.parametrize("env_id", ["MiniGrid-Empty-8x8-v0", "BabyAI-GoToRedBallNoDists-v0", "MiniGrid-DoorKey-5x5-v0"])
def test_the_rules_solve_easy_tasks(env_id):
    result = evaluate(RuleAgent(seed=0), env_id, episodes=40, num_envs=8, seed=123, domain=eval_domain())
    success = np.mean(np.asarray(result.returns) > 0)
    assert success >= 0.95, (env_id, success)
    assert result.scores == result.returns  # MiniGrid has no in-game score: the return stands in


# the policies


@pytest.fixture(scope="module")
def real_obs():
    """16 observations of random play in DoorKey-5x5, 4 envs x 4 steps."""
    envs = make_vector_env(4, seed=5, env_id="MiniGrid-DoorKey-5x5-v0")
    obs, _ = envs.reset(seed=5)
    rng = np.random.default_rng(5)
    steps = []
    for _ in range(4):
        obs, *_ = envs.step(rng.integers(0, 7, 4))
        steps.append({key: value.copy() for key, value in obs.items()})
    envs.close()
    return {key: np.concatenate([step[key] for step in steps]) for key in steps[0]}


def test_cell_tokens_are_the_sum_of_their_embeddings_and_unseen_cells_are_masked(real_obs):
    """The encoder's one-matmul form against the plain lookups it replaces, values and gradients."""
    import torch

    from crossmoe.minigrid import MiniGridVisualEncoder

    torch.manual_seed(0)
    encoder = MiniGridVisualEncoder(16)
    tokens, mask = encoder(real_obs)
    cells = torch.as_tensor(real_obs["image"], dtype=torch.long).reshape(16, 49, 3)
    reference = (
        encoder.object_embedding(cells[..., 0])
        + encoder.color_embedding(cells[..., 1])
        + encoder.state_embedding(cells[..., 2])
        + encoder.position
    )
    torch.testing.assert_close(tokens[:, :49], reference)
    assert torch.equal(mask[:, :49], cells[..., 0] != OBJECT_TO_IDX["unseen"]) and bool(mask[:, 49].all())
    assert not bool(mask.all())  # the random walk's views do have unseen cells
    weight = torch.randn_like(tokens[:, :49])
    ours = torch.autograd.grad((tokens[:, :49] * weight).sum(), [encoder.object_embedding.weight])[0]
    expected = torch.autograd.grad((reference * weight).sum(), [encoder.object_embedding.weight])[0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)  # summed in another order


@pytest.mark.parametrize("fusion", ["cross_attention", "concat"])
def test_the_policy_reads_the_cells_and_the_atoms_and_adds_the_knowledge_prior(real_obs, fusion):
    import torch

    from crossmoe.minigrid import make_policy

    torch.manual_seed(0)
    policy = make_policy(dim=32, fusion=fusion).eval()
    out = policy(real_obs)
    assert out.logits.shape == (16, 7) and out.value.shape == (16,)
    graph = load_hypergraph()
    applicable = graph.applicable(extract_atoms(real_obs))
    assert torch.equal(out.applicable, applicable)
    # The prior votes only for actions of applicable operators: turn_around always applies, so left and right.
    votes = applicable.float() @ graph.action_mask(list(MINIGRID_ACTIONS)).float()
    assert torch.equal(out.prior != 0, votes > 0)
    policy.train()
    out = policy(real_obs)
    (out.logits.logsumexp(-1).mean() + out.value.square().mean()).backward()
    for name, param in policy.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name


def test_a_batch_is_its_rows(real_obs):
    import torch

    from crossmoe.minigrid import make_policy

    torch.manual_seed(0)
    policy = make_policy(dim=32).eval()
    whole = policy(real_obs).logits
    rows = torch.cat([policy({key: value[i : i + 1] for key, value in real_obs.items()}).logits for i in range(16)])
    torch.testing.assert_close(whole, rows, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "env_id", ["MiniGrid-DoorKey-5x5-v0", pytest.param("MiniGrid-UnlockPickup-v0", marks=pytest.mark.slow)]
)
def test_a_fresh_policy_on_the_rules_pathway_plays_like_the_rules(env_id):
    import torch

    from crossmoe.evaluation import PolicyAgent
    from crossmoe.knowledge import RulePrior

    torch.manual_seed(0)
    policy = make_policy(knowledge_pathway="rules")
    assert isinstance(policy.knowledge, RulePrior) and policy.knowledge.order.tolist() == RuleAgent().order.tolist()

    def play(
        agent, episodes=40
    ):  # cut at about 3x the rules' mean length (11 steps on DoorKey-5x5, 54 on UnlockPickup)
        steps = 40 if env_id == "MiniGrid-DoorKey-5x5-v0" else 150
        return evaluate(agent, env_id, episodes, 8, 123, max_episode_steps=steps, domain=eval_domain())

    untrained, rules = play(PolicyAgent(policy, seed=0)), play(RuleAgent(seed=0))
    plain = play(PolicyAgent(make_policy(), seed=0), episodes=16)  # every applicable operator votes, in no order
    assert np.mean(untrained.returns) >= 0.9 * np.mean(rules.returns), (untrained.returns, rules.returns)
    assert np.mean(untrained.returns) > np.mean(plain.returns) + 0.2
    with pytest.raises(ValueError, match="knowledge_pathway must be 'prior' or 'rules', got 'attention'"):
        make_policy(knowledge_pathway="attention")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(factory="make_policy"),
        dict(factory="make_policy", knowledge_pathway="rules"),
        dict(factory="make_baseline_policy", knowledge=True),
        dict(factory="make_baseline_policy"),
    ],
)
def test_agents_round_trip_through_a_checkpoint(real_obs, tmp_path, kwargs):
    import torch

    import crossmoe.minigrid as minigrid
    from crossmoe.training import save_checkpoint

    kwargs = dict(kwargs)
    factory = getattr(minigrid, kwargs.pop("factory"))
    torch.manual_seed(0)
    policy = factory(dim=32, **kwargs).eval()
    path = save_checkpoint(tmp_path / "agent.pt", {"policy_config": policy.config, "model": policy.state_dict()})
    agent = minigrid.load_agent(path)
    assert agent.config == policy.config
    torch.testing.assert_close(agent(real_obs).logits, policy(real_obs).logits)
    with pytest.raises(ValueError, match="factory 'make_policy'"):
        minigrid.build_agent({**policy.config, "factory": "make_policy"})  # NetHack's: not this module's


def test_the_flat_control_reads_the_atoms_as_features(real_obs):
    import torch

    from crossmoe.minigrid import make_baseline_policy

    torch.manual_seed(0)
    flat = make_baseline_policy(dim=32, knowledge=True).eval()
    assert flat.num_features == len(ATOMS)
    changed = dict(real_obs, atoms=1.0 - extract_atoms(real_obs))  # other atoms, same cells
    assert not torch.allclose(flat(changed).logits, flat(real_obs).logits)
    with pytest.raises(ValueError, match="pass knowledge=True"):
        make_baseline_policy(hypergraph=load_hypergraph())


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("MiniGrid-DoorKey-8x8-v0", {}),
        ("BabyAI-UnlockPickup-v0", {}),
        ("MiniGrid-KeyCorridorS3R3-v0", {}),
        ("MiniGrid-DoorKey-8x8-v0", {"see_through_walls": True}),
    ],
)
def test_the_fast_view_is_minigrids_own(env_id, kwargs):
    """make_env's observations equal MiniGrid's gen_obs on every step of random play, carried objects and
    open doors included; fast=False keeps MiniGrid's own."""
    from minigrid.minigrid_env import MiniGridEnv

    env = make_env(env_id, seed=3, **kwargs)
    base = env.unwrapped
    assert "gen_obs" in vars(base)  # the instance's own, in place of the class's
    rng = np.random.default_rng(3)
    carried, door_states = 0, set()
    for _ in range(2500):
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(0, 7)))
        np.testing.assert_array_equal(obs["image"], MiniGridEnv.gen_obs(base)["image"])
        carried += base.carrying is not None
        door_states |= set(obs["image"][obs["image"][..., 0] == OBJECT_TO_IDX["door"]][:, 2].tolist())
        if terminated or truncated:
            env.reset()
    # The random walk carried things and saw doors shut (which hide what is behind) and, in some envs, open.
    assert carried > 50 and {STATE_TO_IDX["closed"], STATE_TO_IDX["locked"]} & door_states
    if "KeyCorridor" in env_id:
        assert STATE_TO_IDX["open"] in door_states
    assert "gen_obs" not in vars(make_env(env_id, seed=3, fast=False, **kwargs).unwrapped)
