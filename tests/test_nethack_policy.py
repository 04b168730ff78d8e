"""The NetHack agent from make_policy, on real NLE observations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nle")

from nle import nethack

from crossmoe.fusion import ConcatFusion
from crossmoe.losses import AuxLossWeights, aux_loss
from crossmoe.nethack import (
    ATOMS,
    NetHackVisualEncoder,
    extract_atoms,
    load_hypergraph,
    make_policy,
    make_vector_env,
)

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
    assert make_policy(8, dim=DIM).action_dim == 8  # e.g. MiniHack-Room-5x5-v0's compass moves
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
        torch.testing.assert_close(out.attention.sum(-1), torch.ones(batch, heads, num_ops))


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


def test_context_is_the_layer_norm_of_the_pooled_fused_tokens(real_obs, policy):
    """The policy pools before the attention's output projection; check it against the direct definition."""
    obs = {**real_obs, "atoms": extract_atoms(real_obs)}
    logic = policy.logic_encoder(obs)
    visual, mask = policy.visual_encoder(obs)
    fusion = policy.fusion
    fused = fusion.attention(logic.per_sample_tokens(), visual, mask)  # (B, O, D)
    pool = torch.softmax(fusion.pool_score(fused).squeeze(-1) + logic.scores, dim=1)
    expected = fusion.pool_norm((pool.unsqueeze(-1) * fused).sum(1))
    torch.testing.assert_close(policy(obs).context, expected, rtol=1e-4, atol=1e-5)


def test_every_parameter_gets_a_finite_gradient(real_obs):
    torch.manual_seed(0)
    policy = make_policy(23, dim=DIM, alpha=1.5)
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


def test_every_atom_reaches_the_logic_stream(real_obs, policy):
    atoms = extract_atoms(take(real_obs, slice(0, 1)))
    batch = np.repeat(atoms, len(atoms[0]) + 1, axis=0)
    batch[1:] = np.where(np.eye(len(atoms[0]), dtype=bool), 1.0 - batch[1:], batch[1:])  # row i + 1 flips atom i
    tokens = policy.logic_encoder({"atoms": batch}).per_sample_tokens()
    changed = (tokens[1:] - tokens[:1]).abs().amax(dim=(1, 2))
    assert bool((changed > 0).all()), [name for name, c in zip(ATOMS, changed, strict=True) if c == 0]


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
