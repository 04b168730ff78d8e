"""The NetHack agent from make_policy, on real NLE observations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nle")

from nle import nethack

from crossmoe.fusion import ConcatFusion
from crossmoe.hypergraph import Hypergraph
from crossmoe.knowledge import ApplicabilityPrior
from crossmoe.losses import AuxLossWeights, aux_loss
from crossmoe.nethack import (
    ATOMS,
    COMPASS,
    NetHackVisualEncoder,
    build_agent,
    extract_atoms,
    load_agent,
    load_hypergraph,
    make_baseline_policy,
    make_policy,
    make_vector_env,
)
from crossmoe.training import save_checkpoint

DIM = 32


@pytest.fixture(scope="module")
def envs():
    vec = make_vector_env(4, seed=3)
    yield vec
    vec.close()


@pytest.fixture(scope="module")
def real_obs(envs) -> dict[str, np.ndarray]:
    """24 observations of random play: 4 envs x 6 steps, copied because NLE reuses its arrays."""
    obs, _ = envs.reset(seed=3)
    rng = np.random.default_rng(3)
    steps = []
    for _ in range(6):
        obs, *_ = envs.step(rng.integers(0, envs.single_action_space.n, envs.num_envs))
        steps.append({key: value.copy() for key, value in obs.items()})
    return {key: np.concatenate([step[key] for step in steps]) for key in steps[0]}


def take(obs: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    return {key: value[index] for key, value in obs.items()}


@pytest.fixture
def policy(envs):
    torch.manual_seed(0)
    return make_policy(env=envs, dim=DIM).eval()


def test_action_count_comes_from_the_env(envs, policy):
    assert policy.action_dim == envs.single_action_space.n == 23
    # e.g. MiniHack-Room-5x5-v0's compass moves: the prior must know which actions they are
    compass = list(nethack.CompassDirection)
    assert make_policy(8, dim=DIM, action_set=compass).action_dim == 8
    assert make_policy(8, dim=DIM, knowledge=False).action_dim == 8
    with pytest.raises(
        ValueError, match=r"action_set must list the env's 8 actions \(pass action_set= or env=\), got 23"
    ):
        make_policy(8, dim=DIM)
    with pytest.raises(ValueError, match="action_dim"):
        make_policy(8, env=envs, dim=DIM)
    assert make_policy(dim=DIM).action_dim == 23  # neither: the NetHackScore-v0 agent


@pytest.mark.parametrize("fusion", ["cross_attention", "concat"])
def test_output_shapes_and_simplex(real_obs, fusion):
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM, fusion=fusion, alpha=1.5)
    graph = load_hypergraph()
    batch, num_ops = len(real_obs["glyphs"]), graph.num_operators
    out = policy(real_obs)
    assert out.logits.shape == (batch, 23)
    assert out.value.shape == (batch,)
    assert out.router_weights.shape == out.router_logits.shape == (batch, 4)
    assert out.expert_logits.shape == (batch, 4, 23)
    assert out.context.shape == (batch, DIM)
    assert out.operator_scores.shape == (batch, num_ops)
    assert out.applicable.dtype == torch.bool and out.applicable.shape == (batch, num_ops)
    torch.testing.assert_close(out.operator_to_expert, graph.operator_to_expert)
    weights = out.router_weights
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch))
    if fusion == "concat":
        assert out.attention is None and isinstance(policy.fusion, ConcatFusion)
    else:
        num_tokens = policy.visual_encoder.num_tokens
        heads = policy.fusion.attention.num_heads
        assert out.attention.shape == (batch, heads, num_ops, num_tokens)
        # The applicable operators' rows lie on the simplex; the others did not query (applicable_queries).
        rows = out.applicable[:, None, :].expand(-1, heads, -1).float()
        torch.testing.assert_close(out.attention.sum(-1), rows)
        assert 0 < int(out.applicable.sum()) < out.applicable.numel()


def test_applicable_is_the_symbolic_precondition_check(real_obs, policy):
    atoms = torch.as_tensor(extract_atoms(real_obs))
    out = policy(real_obs)
    assert torch.equal(out.applicable, load_hypergraph().applicable(atoms))
    assert bool(out.applicable.any(-1).all()), "every state should have an applicable operator"


def test_off_map_crop_cells_are_masked(real_obs):
    encoder = NetHackVisualEncoder(DIM)
    obs = take(real_obs, slice(0, 2))
    obs["blstats"] = obs["blstats"].copy()
    obs["blstats"][0, nethack.NLE_BL_X] = 0  # at the left edge: 4 crop columns lie off the map
    obs["blstats"][0, nethack.NLE_BL_Y] = 10
    obs["blstats"][1, nethack.NLE_BL_X] = 40
    obs["blstats"][1, nethack.NLE_BL_Y] = 10
    tokens, mask = encoder(obs)
    crop = mask[:, :81].reshape(2, 9, 9)
    assert not bool(crop[0, :, :4].any()) and bool(crop[0, :, 4:].all())
    assert bool(mask[1].all())
    assert tokens.shape == (2, encoder.num_tokens, DIM)


def test_crop_blocks_keep_cell_positions_and_mask_off_map_blocks(real_obs):
    torch.manual_seed(0)
    encoder = NetHackVisualEncoder(DIM, crop_patch=3)
    assert encoder.num_tokens == 9 + encoder.num_patches + 2
    obs = take(real_obs, slice(0, 2))
    obs["blstats"] = obs["blstats"].copy()
    obs["blstats"][:, nethack.NLE_BL_Y] = 10
    obs["blstats"][0, nethack.NLE_BL_X] = 0  # crop columns 0-3 off the map: block column 0 masked, 1 kept
    obs["blstats"][1, nethack.NLE_BL_X] = 40
    _, mask = encoder(obs)
    blocks = mask[:, :9].reshape(2, 3, 3)
    assert not bool(blocks[0, :, 0].any()) and bool(blocks[0, :, 1:].all()) and bool(mask[1].all())
    # swapping two cells inside the player's block changes that block's token: positions survive the pooling
    glyphs = obs["glyphs"].copy()
    x, y = 40, 10
    glyphs[1, y - 1, x - 1], glyphs[1, y + 1, x + 1] = nethack.GLYPH_CMAP_OFF, nethack.GLYPH_MON_OFF
    swapped = glyphs.copy()
    swapped[1, y - 1, x - 1], swapped[1, y + 1, x + 1] = glyphs[1, y + 1, x + 1], glyphs[1, y - 1, x - 1]
    first, _ = encoder({**obs, "glyphs": glyphs})
    second, _ = encoder({**obs, "glyphs": swapped})
    assert not torch.allclose(first[1, 4], second[1, 4])
    torch.testing.assert_close(first[1, :4], second[1, :4])


@pytest.mark.parametrize("fusion", ["cross_attention", "concat"])
def test_batch_independence(real_obs, fusion):
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM, fusion=fusion).eval()
    full = policy(real_obs)
    alone = policy(take(real_obs, slice(5, 6)))
    torch.testing.assert_close(alone.logits[0], full.logits[5], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone.value[0], full.value[5], rtol=1e-5, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(real_obs["glyphs"]))
    permuted = policy(take(real_obs, order))
    torch.testing.assert_close(permuted.logits, full.logits[torch.as_tensor(order)], rtol=1e-5, atol=1e-5)


def test_eval_determinism_and_numpy_torch_agree(real_obs, policy):
    first, second = policy(real_obs), policy(real_obs)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.value, second.value)
    as_torch = policy({key: torch.as_tensor(value) for key, value in real_obs.items()})
    torch.testing.assert_close(as_torch.logits, first.logits)


def test_precomputed_atoms_match(real_obs, policy):
    with_atoms = policy({**real_obs, "atoms": extract_atoms(real_obs)})
    torch.testing.assert_close(with_atoms.logits, policy(real_obs).logits)


@pytest.mark.parametrize("fusion", ["cross_attention", "concat"])
def test_deduplicated_logic_stream_matches_the_per_sample_path(real_obs, fusion):
    """Running the graph once per distinct atom set (and the attention's query side once per set) is exact."""
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM, fusion=fusion, alpha=1.5)
    obs = {**real_obs, "atoms": extract_atoms(real_obs)}
    logic = policy.logic_encoder(obs)
    assert logic.index is not None and logic.tokens.shape[0] < len(obs["atoms"])  # random play repeats atom sets
    fast = policy(obs)
    fast_grads = torch.autograd.grad(fast.logits.square().sum() + fast.value.sum(), list(policy.parameters()))
    policy.logic_encoder.deduplicate = False
    slow = policy(obs)
    assert policy.logic_encoder(obs).index is None
    slow_grads = torch.autograd.grad(slow.logits.square().sum() + slow.value.sum(), list(policy.parameters()))
    for name in ("logits", "value", "context", "router_weights", "operator_scores"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), rtol=1e-4, atol=1e-5)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("applicable_queries", [True, False])
def test_context_is_the_layer_norm_of_the_pooled_fused_tokens(real_obs, applicable_queries):
    """The policy pools before the attention's output projection; check it against the direct definition.

    With ``applicable_queries`` an operator that does not apply adds nothing from the map: its fused token is
    its own token, ``t_o + b_out``.
    """
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM, applicable_queries=applicable_queries)
    obs = {**real_obs, "atoms": extract_atoms(real_obs)}
    logic = policy.logic_encoder(obs)
    visual, mask = policy.visual_encoder(obs)
    fusion = policy.fusion
    tokens = logic.per_sample_tokens()
    fused = fusion.attention(tokens, visual, mask)  # (B, O, D)
    if applicable_queries:
        fused = torch.where(logic.applicable.unsqueeze(-1), fused, tokens + fusion.attention.to_out.bias)
    pool = torch.softmax(fusion.pool_score(fused).squeeze(-1) + logic.scores, dim=1)
    expected = fusion.pool_norm((pool.unsqueeze(-1) * fused).sum(1))
    torch.testing.assert_close(policy(obs).context, expected, rtol=1e-4, atol=1e-5)


def test_every_parameter_gets_a_finite_gradient(real_obs):
    torch.manual_seed(0)
    # a random router init: with the uniform one (the default) the router's last layer is 0 and its first gets no
    # gradient until the last has moved (test_uniform_router_init_routes_every_state_evenly)
    policy = make_policy(23, dim=DIM, alpha=1.5, uniform_router_init=False)
    out = policy(real_obs)
    total, _ = aux_loss(out, AuxLossWeights(temporal=0.0))
    (out.logits.logsumexp(-1).mean() + out.value.square().mean() + total).backward()
    for name, param in policy.named_parameters():
        assert param.grad is not None, name
        assert bool(torch.isfinite(param.grad).all()), name
        assert float(param.grad.abs().sum()) > 0, name


def test_logic_stream_follows_the_atoms(real_obs, policy):
    atoms = extract_atoms(real_obs)
    flipped = atoms.copy()
    flipped[:, :] = 1.0 - flipped[:, :]
    base = policy({**real_obs, "atoms": atoms})
    changed = policy({**real_obs, "atoms": flipped})
    assert not torch.allclose(base.operator_scores, changed.operator_scores)
    assert not torch.allclose(base.context, changed.context)
    # one atom for one sample only changes that sample
    single = atoms.copy()
    single[0, 0] = 1.0 - single[0, 0]
    one = policy({**real_obs, "atoms": single})
    assert not torch.allclose(one.context[0], base.context[0])
    torch.testing.assert_close(one.context[1:], base.context[1:])


def test_an_atom_reaches_the_logic_stream_exactly_when_an_operator_requires_it(real_obs, policy):
    atoms = extract_atoms(take(real_obs, slice(0, 1)))
    batch = np.repeat(atoms, len(atoms[0]) + 1, axis=0)
    batch[1:] = np.where(np.eye(len(atoms[0]), dtype=bool), 1.0 - batch[1:], batch[1:])  # row i + 1 flips atom i
    tokens = policy.logic_encoder({"atoms": batch}).per_sample_tokens()
    changed = (tokens[1:] - tokens[:1]).abs().amax(dim=(1, 2))
    required = {atom for spec in load_hypergraph().specs for atom in spec.requires}
    reaching = {name for name, c in zip(ATOMS, changed, strict=True) if c > 0}
    assert reaching == required
    # the atoms no operator requires (see test_nethack_hypergraph_data.py::UNREAD_ATOMS)
    assert set(ATOMS) - required == {"depth_1", "stairs_down_visible", "on_stairs_up", "path_to_downstairs"}


def test_inference_mode_rollout_then_training_update(real_obs):
    # the graph encoder caches batched edge indices; a cache filled under inference_mode must not break backward
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM)
    with torch.inference_mode():
        policy(real_obs)
    out = policy(real_obs)
    (out.logits.sum() + out.value.sum()).backward()
    assert policy.logic_encoder.graph_encoder.to_tokens.weight.grad is not None


def test_state_dict_round_trip(real_obs, policy, tmp_path):
    torch.save(policy.state_dict(), tmp_path / "policy.pt")
    torch.manual_seed(123)  # a different initialisation, overwritten by the load
    restored = make_policy(23, dim=DIM).eval()
    restored.load_state_dict(torch.load(tmp_path / "policy.pt", weights_only=True))
    torch.testing.assert_close(restored(real_obs).logits, policy(real_obs).logits)


def test_get_action_and_value(real_obs, policy):
    action, log_prob, entropy, value = policy.get_action_and_value(real_obs)
    batch = len(real_obs["glyphs"])
    assert action.shape == log_prob.shape == entropy.shape == value.shape == (batch,)
    dist = torch.distributions.Categorical(logits=policy(real_obs).logits)
    torch.testing.assert_close(log_prob, dist.log_prob(action))
    greedy, *_ = policy.get_action_and_value(real_obs, deterministic=True)
    assert torch.equal(greedy, dist.probs.argmax(-1))
    torch.testing.assert_close(policy.get_value(real_obs), value)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda obs: obs.pop("glyphs"), "'glyphs'"),
        (
            lambda obs: obs.update(glyphs=obs["glyphs"][:, :, :78]),
            r"obs\['glyphs'\] must (have shape|be) \(B, 21, 79\)",
        ),
        (lambda obs: obs.update(blstats=obs["blstats"][:, :20]), r"obs\['blstats'\]"),
        (lambda obs: obs.update(message=obs["message"][0]), r"obs\['message'\]"),
    ],
)
def test_malformed_observation_raises(real_obs, policy, mutate, match):
    obs = dict(take(real_obs, slice(0, 4)))
    mutate(obs)
    with pytest.raises(ValueError, match=match):
        policy(obs)


def test_unknown_fusion_raises():
    with pytest.raises(ValueError, match="fusion must be one of"):
        make_policy(23, dim=DIM, fusion="sum")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_policy_takes_numpy_obs(real_obs):
    policy = make_policy(23, dim=DIM).to("cuda")
    out = policy(real_obs)
    assert out.logits.device.type == "cuda" and out.applicable.device.type == "cuda"


# the knowledge pathway


def _reference_prior(applicable: torch.Tensor, action_names: list[str], init: float = 1.0) -> torch.Tensor:
    """Each applicable operator votes ``init``, split evenly over its actions in the env's action set."""
    specs = load_hypergraph().specs
    prior = torch.zeros(applicable.shape[0], len(action_names))
    for b in range(applicable.shape[0]):
        for o, spec in enumerate(specs):
            used = [action_names.index(a) for a in spec.actions if a in action_names]
            if applicable[b, o] and used:
                for a in used:
                    prior[b, a] += init / len(used)
    return prior


def test_knowledge_prior_is_in_the_logits(real_obs, envs):
    torch.manual_seed(0)
    policy = make_policy(env=envs, dim=DIM).eval()
    names = [f"{type(a).__name__}.{a.name}" for a in envs.envs[0].unwrapped.actions]
    assert isinstance(policy.knowledge, ApplicabilityPrior)
    assert policy.config["knowledge"] is True and policy.config["prior_init"] == 1.0
    assert policy.config["action_set"] == names
    out = policy(real_obs)
    torch.testing.assert_close(out.prior, _reference_prior(out.applicable, names))
    mixture = torch.einsum("be,bea->ba", out.router_weights, out.expert_logits)
    torch.testing.assert_close(out.logits - out.prior, mixture, rtol=1e-5, atol=1e-6)
    # a hostile monster east makes attack_e applicable, which puts its whole vote on east
    atoms = extract_atoms(real_obs)
    without, with_monster = atoms.copy(), atoms.copy()
    without[:, ATOMS.index("monster_e")] = 0.0
    with_monster[:, ATOMS.index("monster_e")] = 1.0
    delta = policy({**real_obs, "atoms": with_monster}).prior - policy({**real_obs, "atoms": without}).prior
    expected = torch.zeros_like(delta)
    expected[:, names.index("CompassDirection.E")] = 1.0
    torch.testing.assert_close(delta, expected)


def test_without_knowledge_the_policy_is_the_expert_mixture(real_obs):
    torch.manual_seed(0)
    plain = make_policy(23, dim=DIM, knowledge=False).eval()
    torch.manual_seed(0)
    silent = make_policy(23, dim=DIM, prior_init=0.0).eval()  # a prior that starts at 0
    assert plain.knowledge is None and plain.config["knowledge"] is False
    out = plain(real_obs)
    assert out.prior is None
    mixture = torch.einsum("be,bea->ba", out.router_weights, out.expert_logits)
    torch.testing.assert_close(out.logits, mixture, rtol=1e-5, atol=1e-6)
    # the prior adds no randomness to the build: the same seed gives the same network, prior aside
    silent_out = silent(real_obs)
    assert bool((silent_out.prior == 0).all())
    torch.testing.assert_close(silent_out.logits, out.logits)


def test_prior_init_scales_the_prior(real_obs):
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM, prior_init=2.5)
    out = policy(real_obs)
    names = policy.config["action_set"]
    torch.testing.assert_close(out.prior, _reference_prior(out.applicable, names, init=2.5))


def test_action_set_is_read_from_the_env_and_matches_the_graph_by_name(envs):
    from crossmoe.nethack import make_env

    env = make_env(seed=0)
    names = [f"{type(a).__name__}.{a.name}" for a in env.unwrapped.actions]
    for source in (env, envs):
        assert make_policy(env=source, dim=DIM).config["action_set"] == names
    env.close()
    # an action set in another order moves the prior's columns with it
    shuffled = list(reversed(names))
    policy = make_policy(23, dim=DIM, action_set=shuffled)
    mask = load_hypergraph().action_mask(names)
    torch.testing.assert_close(policy.knowledge.action_mask, mask.flip(1).float())


def test_knowledge_agent_round_trips_through_a_checkpoint(real_obs, tmp_path):
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM, prior_init=0.5)
    with torch.no_grad():
        policy.knowledge.weight.mul_(3.0).add_(0.25 * policy.knowledge.action_mask)  # as if trained
    path = save_checkpoint(tmp_path / "agent.pt", {"policy_config": policy.config, "model": policy.state_dict()})
    agent = load_agent(path)
    assert isinstance(agent.knowledge, ApplicabilityPrior) and agent.config == policy.config
    torch.testing.assert_close(agent.knowledge.weight, policy.knowledge.weight)
    torch.testing.assert_close(agent(real_obs).logits, policy.eval()(real_obs).logits)
    torch.manual_seed(1)
    plain = make_policy(23, dim=DIM, knowledge=False)
    path = save_checkpoint(tmp_path / "plain.pt", {"policy_config": plain.config, "model": plain.state_dict()})
    assert load_agent(path).knowledge is None


def test_a_checkpoint_from_before_the_knowledge_pathway_still_loads(real_obs):
    """Its config has no ``knowledge`` key and its weights no prior: it is rebuilt without one."""
    torch.manual_seed(0)
    old = make_policy(23, dim=DIM, knowledge=False).eval()
    config = {key: value for key, value in old.config.items() if key not in ("knowledge", "prior_init", "action_set")}
    agent = build_agent(config)
    assert agent.knowledge is None
    agent.load_state_dict(old.state_dict())
    torch.testing.assert_close(agent.eval()(real_obs).logits, old(real_obs).logits)


def test_a_checkpoint_from_before_applicable_queries_still_computes_what_it_learned(real_obs):
    """Its config has no ``applicable_queries`` key: every operator read the map, and it is rebuilt that way."""
    torch.manual_seed(0)
    old = make_policy(23, dim=DIM, applicable_queries=False).eval()
    config = {key: value for key, value in old.config.items() if key not in ("applicable_queries", "max_queries")}
    agent = build_agent(config)
    assert not agent.fusion.applicable_queries
    agent.load_state_dict(old.state_dict())
    out = agent.eval()(real_obs)
    torch.testing.assert_close(out.logits, old(real_obs).logits)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones_like(out.attention.sum(-1)))
    assert make_policy(23, dim=DIM).fusion.applicable_queries  # new agents query with the applicable operators


EATING_ATOMS = {"has_food_key", "msg_eat_prompt", "msg_eat_corpse_prompt", *(f"food_key_{d.lower()}" for d in COMPASS)}


def graph_before_eating() -> Hypergraph:
    """The shipped graph as it was before the eating atoms: 66 conditions, no operator that reads them."""
    data = load_hypergraph().to_dict()
    data["conditions"] = [c for c in data["conditions"] if c["name"] not in EATING_ATOMS]
    data["operators"] = [o for o in data["operators"] if not EATING_ATOMS & set(o["requires"])]
    data["operators"] = [o for o in data["operators"] if not o["name"].startswith("eat_typable")]
    return Hypergraph.from_dict(data)


@pytest.mark.parametrize("factory", ["make_policy", "make_baseline_policy"])
def test_an_agent_of_a_graph_from_before_new_atoms_reads_its_own_atoms(real_obs, tmp_path, factory):
    """A checkpoint stores its graph; the atoms it was trained on are found by name, whatever ATOMS gained since."""
    old = graph_before_eating()
    assert old.num_conditions == 66 and len(ATOMS) > 66
    torch.manual_seed(0)
    if factory == "make_policy":
        policy = make_policy(23, dim=DIM, hypergraph=old).eval()
    else:
        policy = make_baseline_policy(23, dim=DIM, hypergraph=old, knowledge=True).eval()
    columns = [ATOMS.index(name) for name in old.conditions]
    obs = dict(real_obs)
    reference = policy({**obs, "atoms": extract_atoms(obs)[:, columns]})
    torch.testing.assert_close(policy(obs).logits, reference.logits)
    path = save_checkpoint(tmp_path / "old.pt", {"policy_config": policy.config, "model": policy.state_dict()})
    torch.testing.assert_close(load_agent(path)(obs).logits, reference.logits)


def test_the_rules_without_eating_choose_alike_on_the_old_graph_and_the_shipped_one(real_obs):
    from crossmoe.nethack.rules import NO_EATING_PRIORITY, RuleAgent

    old = RuleAgent(hypergraph=graph_before_eating(), priority=NO_EATING_PRIORITY, seed=5)
    new = RuleAgent(priority=NO_EATING_PRIORITY, seed=5)
    old_ops, old_actions = old.select(real_obs)
    new_ops, new_actions = new.select(real_obs)
    np.testing.assert_array_equal(old_actions, new_actions)
    assert [old.hypergraph.operators[o] for o in old_ops] == [new.hypergraph.operators[o] for o in new_ops]


def test_uniform_router_init_routes_every_state_evenly(real_obs):
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM, alpha=2.0)  # sparsemax, which a random init leaves with exact zeros
    out = policy(real_obs)
    torch.testing.assert_close(out.router_weights, torch.full_like(out.router_weights, 0.25))
    torch.manual_seed(0)
    random_init = make_policy(23, dim=DIM, alpha=2.0, uniform_router_init=False)
    assert not torch.allclose(random_init(real_obs).router_weights, out.router_weights)


def test_visual_encoder_shows_the_glyph_under_the_player(real_obs):
    """With MapMemory's keys the player's crop cell embeds the remembered glyph under the hero, nothing else changes."""
    from crossmoe.nethack.env import MEMORY_KEYS

    torch.manual_seed(0)
    encoder = NetHackVisualEncoder(DIM, crop_patch=1).eval()
    obs = take(real_obs, slice(0, 6))
    assert set(MEMORY_KEYS) <= set(obs)  # make_vector_env adds the memory by default
    plain = {key: value for key, value in obs.items() if key not in MEMORY_KEYS}
    rows = np.arange(6)
    y, x = obs["blstats"][:, nethack.NLE_BL_Y], obs["blstats"][:, nethack.NLE_BL_X]
    swapped = {**plain, "glyphs": plain["glyphs"].copy()}
    swapped["glyphs"][rows, y, x] = obs["map_memory"][rows, y, x]
    assert not np.array_equal(swapped["glyphs"], plain["glyphs"])
    with torch.no_grad():
        remembered, _ = encoder(obs)
        without, _ = encoder(plain)
        by_hand, _ = encoder(swapped)
    crop = encoder.crop_size**2
    player = encoder.player_cell
    # the crop is what the glyphs would give with the player's cell showing the remembered glyph
    torch.testing.assert_close(remembered[:, :crop], by_hand[:, :crop])
    # only the player's cell differs from the encoding without memory; the map and status tokens do not
    others = [i for i in range(remembered.shape[1]) if i != player]
    torch.testing.assert_close(remembered[:, others], without[:, others])
    assert not torch.allclose(remembered[:, player], without[:, player])


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_action_set_is_read_through_vector_wrappers(vectorization):
    """The PPO example wraps its vector env (RecordEpisodeStatistics): the prior still gets the env's own actions."""
    pytest.importorskip("minihack")
    import gymnasium as gym

    from crossmoe.nethack import make_vector_env

    envs = gym.wrappers.vector.RecordEpisodeStatistics(
        make_vector_env(2, 0, "MiniHack-Room-5x5-v0", vectorization=vectorization)
    )
    try:
        policy = make_policy(env=envs, dim=32)
    finally:
        envs.close()
    compass = [f"CompassDirection.{d}" for d in ("N", "E", "S", "W", "NE", "SE", "SW", "NW")]
    assert policy.config["action_set"] == compass
    assert policy.knowledge.action_mask.shape[1] == 8


def test_an_env_that_does_not_list_its_actions_needs_an_action_set():
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"action_set must be given: the env .* does not list its NLE actions"):
        make_policy(env=env, dim=32)
    policy = make_policy(env=env, dim=32, action_set=["MiscAction.MORE", "Command.SEARCH"])
    assert policy.action_dim == 2


# the flat-features control: make_baseline_policy(knowledge=True)


def test_flat_control_reads_the_atoms_and_adds_the_same_prior(real_obs, envs):
    from crossmoe.graph import HypergraphEncoder
    from crossmoe.nethack import make_baseline_policy
    from crossmoe.routing import SparsemaxRouter

    torch.manual_seed(0)
    flat = make_baseline_policy(env=envs, dim=DIM, knowledge=True).eval()
    names = [f"{type(a).__name__}.{a.name}" for a in envs.envs[0].unwrapped.actions]
    assert not any(isinstance(m, (HypergraphEncoder, SparsemaxRouter, ConcatFusion)) for m in flat.modules())
    assert flat.config["knowledge"] is True and flat.config["action_set"] == names
    out = flat(real_obs)
    atoms = extract_atoms(real_obs)
    torch.testing.assert_close(out.applicable, load_hypergraph().applicable(atoms))
    torch.testing.assert_close(out.prior, _reference_prior(out.applicable, names))
    # the atoms are an input of the trunk: flipping one changes the policy beyond the prior
    flipped = atoms.copy()
    flipped[:, ATOMS.index("hp_low")] = 1.0 - flipped[:, ATOMS.index("hp_low")]
    changed = flat({**real_obs, "atoms": flipped})
    assert not torch.allclose(changed.logits - changed.prior, out.logits - out.prior)
    torch.testing.assert_close(changed.prior, _reference_prior(changed.applicable, names))


def test_flat_control_round_trips_through_its_config_and_the_plain_baseline_is_unchanged(real_obs, envs):
    from crossmoe.nethack import make_baseline_policy

    flat = make_baseline_policy(env=envs, dim=DIM, knowledge=True).eval()
    rebuilt = build_agent(flat.config).eval()
    rebuilt.load_state_dict(flat.state_dict())
    torch.testing.assert_close(rebuilt(real_obs).logits, flat(real_obs).logits)
    plain = make_baseline_policy(env=envs, dim=DIM)
    assert plain.features is None and plain.knowledge is None and "knowledge" not in plain.config
    assert plain(real_obs).prior is None and plain.trunk[0].in_features == plain.num_tokens * DIM


def test_flat_control_rejects_bad_arguments(envs):
    from crossmoe import ActorCritic
    from crossmoe.nethack import make_baseline_policy

    with pytest.raises(TypeError, match="knowledge must be a bool"):
        make_baseline_policy(knowledge="yes")
    with pytest.raises(ValueError, match="pass knowledge=True"):
        make_baseline_policy(hypergraph=load_hypergraph())
    with pytest.raises(TypeError, match="hypergraph must be a crossmoe Hypergraph"):
        make_baseline_policy(knowledge=True, hypergraph={"nodes": []})
    with pytest.raises(ValueError, match="knowledge needs features"):
        ActorCritic(NetHackVisualEncoder(DIM), 23, knowledge=ApplicabilityPrior(torch.ones(2, 23, dtype=torch.bool)))
