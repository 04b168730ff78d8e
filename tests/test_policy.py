import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Categorical

from crossmoe import AuxLossWeights, aux_loss
from crossmoe.encoders import BoxEncoder, HypergraphLogicEncoder, LearnedQueries, batch_size, obs_tensor
from crossmoe.graph import Hypergraph, OperatorSpec
from crossmoe.policy import CrossAttentionMoEPolicy, PolicyOutput

OBS_DIM, DIM, ACTIONS, EXPERTS, QUERIES = 6, 16, 5, 4, 3
CONDITIONS = ("hungry", "has_food", "monster_adjacent")
FUSIONS = ("cross_attention", "concat")
LOGICS = ("queries", "graph")


def _hypergraph():
    """One operator per expert; ``rest`` has no preconditions, so it is always applicable."""
    return Hypergraph(
        list(CONDITIONS),
        [
            OperatorSpec("eat", requires=("hungry", "has_food"), produces=("fed",), expert="survival"),
            OperatorSpec("fight", requires=("monster_adjacent", "hungry"), produces=("xp",), expert="combat"),
            OperatorSpec(
                "explore", requires=("has_food", "monster_adjacent"), produces=("xp", "fed"), expert="exploration"
            ),
            OperatorSpec("rest", produces=("fed",), expert="general"),
        ],
        ["fed", "xp"],
    )


def _atoms(obs):
    """Condition activations from the first features; works on numpy arrays and tensors alike."""
    return torch.as_tensor(obs["obs"])[:, : len(CONDITIONS)] > 0


def _policy(logic="graph", fusion="cross_attention", dim=DIM, atoms=_atoms, graph_kwargs=None, **kwargs):
    if logic == "graph":
        logic_encoder = HypergraphLogicEncoder(_hypergraph(), dim, atoms=atoms, **(graph_kwargs or {}))
    else:
        logic_encoder = LearnedQueries(QUERIES, dim)
    return CrossAttentionMoEPolicy(
        BoxEncoder(OBS_DIM, dim),
        logic_encoder,
        ACTIONS,
        dim=dim,
        fusion=fusion,
        router_hidden_dim=16,
        expert_hidden_dim=16,
        critic_hidden_dim=16,
        **kwargs,
    )


def _obs(batch=6, seed=0, dtype=torch.float32):
    return torch.randn(batch, OBS_DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_outputs_close(actual, expected):
    for name, a, e in zip(PolicyOutput._fields, actual, expected, strict=True):
        if e is None:
            assert a is None, name
        else:
            torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}")


def _select(output, index):
    """The outputs of the samples at ``index``; ``operator_to_expert`` has no batch dimension."""
    return PolicyOutput(
        *(
            None if value is None else value if name == "operator_to_expert" else value[index]
            for name, value in zip(PolicyOutput._fields, output, strict=True)
        )
    )


# --- shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("logic", LOGICS)
def test_policy_output_shapes(fusion, logic):
    policy = _policy(logic, fusion, num_heads=2)
    batch = 7
    out = policy(_obs(batch))
    assert isinstance(out, PolicyOutput)
    assert out.logits.shape == (batch, ACTIONS)
    assert out.value.shape == (batch,)
    assert out.router_weights.shape == out.router_logits.shape == (batch, EXPERTS)
    assert out.expert_logits.shape == (batch, EXPERTS, ACTIONS)
    assert out.expert_features.shape == (batch, EXPERTS, 16)
    assert out.context.shape == (batch, DIM)
    num_operators = 4 if logic == "graph" else QUERIES
    if fusion == "cross_attention":
        assert out.attention.shape == (batch, 2, num_operators, OBS_DIM)
    else:
        assert out.attention is None
    if logic == "graph":
        assert out.operator_scores.shape == (batch, 4)
        assert out.applicable.shape == (batch, 4) and out.applicable.dtype == torch.bool
        assert out.operator_to_expert.dtype == torch.long
        assert out.operator_to_expert.tolist() == [0, 1, 2, 3]
    else:
        assert out.operator_scores is None and out.applicable is None and out.operator_to_expert is None
    assert out.prior is None  # no knowledge pathway (tests/test_knowledge.py)


def test_policy_output_prior_and_state_default_to_none():
    """Code that builds a PolicyOutput from the eleven fields it had before the knowledge pathway keeps working."""
    assert PolicyOutput._fields[-2:] == ("prior", "state")
    out = PolicyOutput(*range(len(PolicyOutput._fields) - 2))
    assert out.prior is None and out.state is None and out.operator_to_expert == len(PolicyOutput._fields) - 3


def test_applicable_is_the_hypergraphs_applicability_of_the_atoms():
    policy = _policy("graph")
    obs = _obs(32, seed=1)
    out = policy(obs)
    expected = _hypergraph().applicable(_atoms({"obs": obs}).float())
    assert torch.equal(out.applicable, expected)
    assert expected[:, -1].all() and not expected[:, 0].all()  # the table is not trivial


# --- routing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("logic", LOGICS)
def test_router_weights_lie_on_the_simplex_and_mix_the_experts(alpha, logic):
    policy = _policy(logic, alpha=alpha)
    out = policy(_obs(16, seed=2))
    assert (out.router_weights >= 0).all()
    torch.testing.assert_close(out.router_weights.sum(-1), torch.ones(16))
    torch.testing.assert_close(out.logits, torch.einsum("be,bea->ba", out.router_weights, out.expert_logits))
    if alpha == 1.0:
        assert (out.router_weights > 0).all()  # softmax never drops an expert


def test_router_alpha_set_after_construction_takes_effect():
    policy = _policy("queries", alpha=1.0)
    obs = _obs(16, seed=2)
    policy.router.alpha = 2.0
    out = policy(obs)
    torch.testing.assert_close(out.router_weights, policy.router(out.context).weights)
    torch.testing.assert_close(out.router_weights.sum(-1), torch.ones(16))


# --- batch independence and determinism --------------------------------------------------------------


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("logic", LOGICS)
def test_batch_independence(fusion, logic):
    policy = _policy(logic, fusion, alpha=2.0).eval()
    obs = _obs(5, seed=3)
    alone = policy(obs[:1])
    _assert_outputs_close(_select(policy(obs), slice(0, 1)), alone)
    other = obs.clone()
    other[1:] = _obs(4, seed=4)
    _assert_outputs_close(_select(policy(other), slice(0, 1)), alone)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    _assert_outputs_close(_select(policy(obs[permutation]), permutation.argsort()), policy(obs))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_eval_mode_is_deterministic(fusion):
    policy = _policy("graph", fusion, dropout=0.3, graph_kwargs={"dropout": 0.3})
    obs = _obs(8, seed=5)
    assert not torch.allclose(policy(obs).logits, policy(obs).logits)  # dropout acts in training
    policy.eval()
    _assert_outputs_close(policy(obs), policy(obs))
    action, *_ = policy.get_action_and_value(obs, deterministic=True)
    assert torch.equal(action, policy.get_action_and_value(obs, deterministic=True)[0])


# --- gradients ---------------------------------------------------------------------------------------


def _training_loss(output):
    alignment = 0.0 if output.operator_scores is None else AuxLossWeights.alignment
    total, _ = aux_loss(output, AuxLossWeights(temporal=0.0, alignment=alignment))
    return output.logits.logsumexp(-1).mean() + output.value.mean() + total


def _parameters_without_gradient(policy, output):
    _training_loss(output).backward()
    dead = []
    for name, parameter in policy.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
        # float64 makes a gradient that is zero in exact arithmetic come out near 1e-17, not 1e-9.
        if parameter.grad is None or parameter.grad.abs().max() < 1e-12:
            dead.append(name)
    return dead


# Both biases add one scalar to every operator's logit right before a softmax over operators,
# which is shift-invariant, so they cancel and can never train.
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("logic", LOGICS)
def test_every_parameter_gets_a_finite_nonzero_gradient(fusion, logic):
    # float64: a bias that cancels in a softmax over operators leaves a ~1e-9 float32 residue, 1e-17 in float64.
    # A random router init: the uniform one zeroes the router's last layer, which blocks its first layer's
    # gradient until the last layer has moved (test_uniform_router_init_starts_even_and_still_learns).
    policy = _policy(logic, fusion, uniform_router_init=False).double()
    obs = _obs(16, seed=6, dtype=torch.float64)
    assert _parameters_without_gradient(policy, policy(obs)) == []


@pytest.mark.parametrize("fusion", FUSIONS)
def test_actor_and_critic_both_train_the_shared_encoders(fusion):
    policy = _policy("graph", fusion)
    obs = _obs(8, seed=19)
    policy(obs).value.sum().backward()
    shared = (policy.visual_encoder.weight, policy.logic_encoder.graph_encoder.to_tokens.weight)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)
    assert next(policy.router.parameters()).grad is None  # the critic does not reach the router
    policy.zero_grad(set_to_none=True)
    policy(obs).logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)
    assert all(p.grad is None for p in policy.critic.parameters())


def test_aux_loss_default_weights_ask_for_the_rollout_dones():
    # the temporal term needs (T, B, E) weights and dones; PolicyOutput's docstring says to disable it for one batch
    with pytest.raises(ValueError, match="dones"):
        aux_loss(_policy("graph")(_obs()), AuxLossWeights())


def test_aux_loss_reads_the_hypergraph_fields_of_a_policy_output():
    out = _policy("graph")(_obs(12, seed=7))
    total, parts = aux_loss(out, AuxLossWeights(temporal=0.0))
    assert set(parts) >= {"load_balance", "router_z", "diversity", "orthogonality", "alignment"}
    assert torch.isfinite(total) and total.requires_grad
    for name, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert parts["alignment"] >= 0
    ignoring_applicability, _ = aux_loss(out._replace(applicable=None), AuxLossWeights(temporal=0.0))
    assert not torch.allclose(total, ignoring_applicability)  # the applicable field is read


def test_aux_loss_on_a_queries_policy_needs_no_alignment():
    out = _policy("queries")(_obs())
    _, parts = aux_loss(out, AuxLossWeights(temporal=0.0, alignment=0.0))
    assert "alignment" not in parts
    with pytest.raises(ValueError, match="alignment"):
        aux_loss(out, AuxLossWeights(temporal=0.0))


# --- CleanRL interface -------------------------------------------------------------------------------


def test_get_action_and_value_samples_and_scores_actions():
    policy = _policy("graph")
    obs = _obs(64, seed=8)
    action, log_prob, entropy, value = policy.get_action_and_value(obs)
    out = policy(obs)
    for tensor in (action, log_prob, entropy, value):
        assert tensor.shape == (64,)
    assert action.dtype == torch.long and ((action >= 0) & (action < ACTIONS)).all()
    dist = Categorical(logits=out.logits)
    torch.testing.assert_close(log_prob, dist.log_prob(action))
    torch.testing.assert_close(entropy, dist.entropy())
    torch.testing.assert_close(value, out.value)


def test_get_action_and_value_scores_given_actions():
    policy = _policy("graph")
    obs = _obs(10, seed=9)
    given = torch.arange(10) % ACTIONS
    action, log_prob, _, _ = policy.get_action_and_value(obs, action=given)
    assert torch.equal(action, given)
    torch.testing.assert_close(log_prob, policy(obs).logits.log_softmax(-1).gather(1, given[:, None]).squeeze(1))
    from_numpy, numpy_log_prob, _, _ = policy.get_action_and_value(obs, action=given.numpy())
    assert torch.equal(from_numpy, given)
    torch.testing.assert_close(numpy_log_prob, log_prob)


def test_deterministic_action_is_the_argmax():
    policy = _policy("queries")
    with torch.no_grad():
        policy.experts.w2.mul_(100)  # spread the logits so the argmax is not a near tie
    obs = _obs(32, seed=10)
    action, log_prob, _, _ = policy.get_action_and_value(obs, deterministic=True)
    logits = policy(obs).logits
    assert torch.equal(action, logits.argmax(-1))
    assert len(set(action.tolist())) > 1
    torch.testing.assert_close(log_prob, logits.log_softmax(-1).amax(-1))


def test_return_output_appends_the_policy_output():
    policy = _policy("graph")
    obs = _obs(4, seed=11)
    result = policy.get_action_and_value(obs, return_output=True)
    assert len(result) == 5
    action, log_prob, _, value, out = result
    assert isinstance(out, PolicyOutput)
    torch.testing.assert_close(value, out.value)
    torch.testing.assert_close(log_prob, Categorical(logits=out.logits).log_prob(action))
    _assert_outputs_close(out, policy(obs))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_get_value_equals_the_forward_value(fusion):
    policy = _policy("graph", fusion)
    obs = _obs(9, seed=12)
    value = policy.get_value(obs)
    assert value.shape == (9,)
    torch.testing.assert_close(value, policy(obs).value)


# --- observation handling ----------------------------------------------------------------------------


@pytest.mark.parametrize("logic", LOGICS)
def test_bare_tensor_numpy_and_dict_observations_agree(logic):
    policy = _policy(logic)
    obs = _obs(6, seed=13)
    reference = policy({"obs": obs})
    _assert_outputs_close(policy(obs), reference)
    _assert_outputs_close(policy(obs.numpy()), reference)
    _assert_outputs_close(policy({"obs": obs.numpy()}), reference)
    _assert_outputs_close(policy(obs.double().numpy()), reference)  # float64 numpy, as gymnasium gives


def test_precomputed_atoms_give_the_same_output_as_the_atoms_function():
    policy = _policy("graph")
    obs = _obs(8, seed=14)
    reference = policy(obs)

    def refuse(_obs):
        raise AssertionError("the atoms function must not run when obs holds 'atoms'")

    precomputed = {"obs": obs, "atoms": _atoms({"obs": obs}).float().numpy()}
    _assert_outputs_close(policy(precomputed), reference)
    policy.logic_encoder.atoms = refuse
    _assert_outputs_close(policy(precomputed), reference)


def test_logic_stream_output_changes_when_the_atoms_change():
    policy = _policy("graph").eval()
    obs = _obs(8, seed=15)
    atoms = _atoms({"obs": obs}).float()
    out = policy({"obs": obs, "atoms": atoms})
    flipped = policy({"obs": obs, "atoms": 1 - atoms})
    assert not torch.allclose(out.context, flipped.context)
    assert not torch.allclose(out.operator_scores, flipped.operator_scores)


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fusion": "sum"}, r"fusion must be one of \('cross_attention', 'concat'\) or an nn.Module .*, got 'sum'"),
        ({"action_dim": 0}, "action_dim must be a positive integer, got 0"),
        ({"action_dim": 2.5}, r"action_dim must be an integer \(a positive integer\), got float 2.5"),
        ({"dim": 0}, "dim must be a positive integer, got 0"),
        ({"num_experts": 0}, "num_experts must be a positive integer, got 0"),
    ],
)
def test_constructor_errors(kwargs, match):
    arguments = {"action_dim": ACTIONS, "dim": DIM, **kwargs}
    error = TypeError if "got float" in match else ValueError
    with pytest.raises(error, match=match):
        CrossAttentionMoEPolicy(BoxEncoder(OBS_DIM, DIM), LearnedQueries(QUERIES, DIM), **arguments)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_encoders_of_the_wrong_width_are_rejected(fusion):
    wide_visual = CrossAttentionMoEPolicy(
        BoxEncoder(OBS_DIM, DIM + 1), LearnedQueries(QUERIES, DIM), ACTIONS, DIM, fusion=fusion
    )
    with pytest.raises(
        ValueError, match=rf"visual encoder must return tokens of shape \(B, N, {DIM}\).*got \(2, 6, 17\)"
    ):
        wide_visual(_obs(2))
    wide_logic = CrossAttentionMoEPolicy(
        BoxEncoder(OBS_DIM, DIM), LearnedQueries(QUERIES, DIM + 1), ACTIONS, DIM, fusion=fusion
    )
    with pytest.raises(
        ValueError, match=rf"logic encoder must return tokens of shape \(B, N, {DIM}\).*got \(2, 3, 17\)"
    ):
        wide_logic(_obs(2))


def test_obs_tensor_errors_name_the_key_and_shape():
    obs = {"obs": np.zeros((4, 2), dtype=np.float32)}
    with pytest.raises(ValueError, match=r"obs is missing key 'state'; got keys \['obs'\]"):
        obs_tensor(obs, "state")
    with pytest.raises(ValueError, match=r"obs\['obs'\] must have shape \(B, 3\), got \(4, 2\)"):
        obs_tensor(obs, "obs", shape=(None, 3))
    with pytest.raises(ValueError, match=r"obs\['obs'\] must have shape \(B, 2, 1\), got \(4, 2\)"):
        obs_tensor(obs, "obs", shape=(None, 2, 1))
    with pytest.raises(ValueError, match="obs must be a dict"):
        obs_tensor(np.zeros(3), "obs")
    tensor = obs_tensor(obs, "obs", dtype=torch.float64, shape=(None, 2))
    assert tensor.dtype == torch.float64 and tensor.shape == (4, 2)


def test_batch_size_reads_the_first_entry():
    assert batch_size({"a": np.zeros((7, 3)), "b": torch.zeros(2)}) == 7
    with pytest.raises(ValueError, match="non-empty dict"):
        batch_size({})
    with pytest.raises(ValueError, match="got a scalar for key 'a'"):
        batch_size({"a": 3.0})


def test_box_encoder_errors():
    encoder = BoxEncoder(OBS_DIM, DIM, key="state")
    with pytest.raises(ValueError, match=r"obs is missing key 'state'"):
        encoder({"obs": _obs()})
    with pytest.raises(ValueError, match=rf"obs\['state'\] must have {OBS_DIM} features, got shape \(3, 5\)"):
        encoder({"state": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="obs_dim and dim must be positive integers"):
        BoxEncoder(0, DIM)
    tokens, mask = encoder({"state": torch.zeros(3, 2, 3)})  # trailing dims are flattened
    assert tokens.shape == (3, OBS_DIM, DIM) and mask is None


def test_hypergraph_logic_encoder_errors():
    encoder = HypergraphLogicEncoder(_hypergraph(), DIM)
    with pytest.raises(ValueError, match="obs is missing key 'atoms' and no atoms function was given"):
        encoder({"obs": _obs()})
    with pytest.raises(ValueError, match=r"condition activations must be \(B, C\) with C=3, got shape \(2, 4\)"):
        encoder({"atoms": torch.zeros(2, 4)})
    too_wide = HypergraphLogicEncoder(_hypergraph(), DIM, atoms=lambda obs: torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"C=3, got shape \(2, 5\)"):
        too_wide({"obs": _obs(2)})
    policy = _policy("graph", atoms=None)
    with pytest.raises(ValueError, match="atoms"):
        policy(_obs())


# --- end to end --------------------------------------------------------------------------------------


def test_policy_learns_a_supervised_target():
    torch.manual_seed(0)
    policy = CrossAttentionMoEPolicy(
        BoxEncoder(OBS_DIM, DIM), LearnedQueries(2, DIM), 3, dim=DIM, router_hidden_dim=32, expert_hidden_dim=32
    )
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    train, test = _obs(512, seed=16), _obs(512, seed=17)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(policy(train).logits, train[:, :3].argmax(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (policy(test).logits.argmax(-1) == test[:, :3].argmax(-1)).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("logic", LOGICS)
def test_cuda_policy_accepts_numpy_observations(logic):
    policy = _policy(logic)
    obs = _obs(5, seed=18)
    reference = policy(obs)
    policy = policy.to("cuda")
    out = policy(obs.numpy())
    assert out.logits.device.type == "cuda"
    torch.testing.assert_close(out.logits.cpu(), reference.logits, atol=1e-4, rtol=1e-4)
    action, log_prob, entropy, value = policy.get_action_and_value(obs.numpy(), action=np.zeros(5, dtype=np.int64))
    assert all(t.device.type == "cuda" for t in (action, log_prob, entropy, value))


@pytest.mark.parametrize("columns", [5, 48, 62, 63])
def test_unique_rows_gathers_back_to_its_input(columns):
    from crossmoe.encoders import unique_rows

    generator = torch.Generator().manual_seed(columns)
    x = (torch.rand(40, columns, generator=generator) > 0.5).float()[torch.randint(0, 40, (100,), generator=generator)]
    distinct, index = unique_rows(x)
    assert torch.equal(distinct[index], x)
    assert len(distinct) == len(torch.unique(x, dim=0))  # each distinct row once
    soft = x * 0.5  # not 0/1: the general path
    distinct, index = unique_rows(soft)
    assert torch.equal(distinct[index], soft) and len(distinct) == len(torch.unique(soft, dim=0))


def test_prepare_observation_converts_numpy_and_runs_the_encoder_hooks_in_order():
    from crossmoe.encoders import prepare_observation

    calls = []

    class Hooked(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def prepare(self, obs):
            calls.append((self.name, sorted(obs)))
            return {**obs, self.name: np.ones(2)}

    raw = {"x": np.arange(3), "scalar": np.float32(2.0), "label": "kept as is"}
    prepared = prepare_observation(raw, (Hooked("a"), torch.nn.Linear(1, 1), Hooked("b")), "cpu")
    assert calls == [("a", ["label", "scalar", "x"]), ("b", ["a", "label", "scalar", "x"])]
    assert sorted(raw) == ["label", "scalar", "x"]  # the caller's dict is not changed
    assert torch.equal(prepared["x"], torch.arange(3)) and prepared["scalar"].dim() == 0
    assert isinstance(prepared["a"], torch.Tensor) and prepared["label"] == "kept as is"
    bare = prepare_observation(np.zeros((2, 3)), (), None)
    assert list(bare) == ["obs"] and isinstance(bare["obs"], torch.Tensor)


def test_compile_inference_only_uses_the_graph_without_gradients_only():
    """policy.compile(inference_only=True): the rollout runs the compiled graph, the update the eager one."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    policy = _policy()
    obs = _obs()
    eager = policy(obs)
    policy.compile(backend=counting_backend, inference_only=True)
    with torch.no_grad():
        compiled = policy(obs)
    assert len(graphs) == 1
    _assert_outputs_close(compiled, eager)
    out = policy(obs)  # gradients on: eager
    assert len(graphs) == 1 and out.logits.requires_grad


def test_a_copy_of_a_compiled_policy_runs_its_own_weights():
    import copy
    import pickle

    torch._dynamo.reset()
    policy = _policy()
    policy.compile(backend="eager")
    obs = _obs()
    original = policy(obs).logits.detach()
    clone = copy.deepcopy(policy)
    with torch.no_grad():
        for param in clone.experts.parameters():
            param.add_(0.5)
    assert not torch.allclose(clone(obs).logits, original)
    torch.testing.assert_close(policy(obs).logits, original)
    restored = pickle.loads(pickle.dumps(policy))
    assert restored._compiled_forward is not None
    torch.testing.assert_close(restored(obs).logits, original)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_uniform_router_init_starts_even_and_still_learns(alpha):
    policy = _policy(alpha=alpha)
    obs = _obs(16, seed=30)
    out = policy(obs)
    torch.testing.assert_close(out.router_weights, torch.full((16, EXPERTS), 1 / EXPERTS))
    assert bool((out.router_logits == 0).all())
    random_init = _policy(alpha=alpha, uniform_router_init=False)(obs)
    assert not torch.allclose(random_init.router_weights, out.router_weights)
    # the first step moves the last layer; from then on the gradient reaches the first layer too
    optimizer = torch.optim.Adam(policy.router.parameters(), lr=1e-2)
    target = torch.tensor([0, 1, 2, 3]).repeat(4)
    for step in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(policy(obs).router_weights.clamp_min(1e-9).log(), target)
        loss.backward()
        first = policy.router.net[0].weight.grad
        assert (first.abs().max() > 0) == (step > 0)
        optimizer.step()
    assert not torch.allclose(policy(obs).router_weights, out.router_weights)


@given(
    rows=st.integers(0, 40),
    columns=st.sampled_from([62, 63, 66, 124, 125, 200]),
    distinct=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_unique_rows_of_wide_binary_rows_match_torch_unique(rows, columns, distinct, seed):
    """Rows wider than one 62-bit key (the NetHack atoms are 66) are packed in chunks; torch.unique(dim=0) agrees."""
    from crossmoe.encoders import unique_rows

    generator = torch.Generator().manual_seed(seed)
    pool = (torch.rand(distinct, columns, generator=generator) > 0.5).float()
    if distinct > 1:
        pool[1] = pool[0]
        pool[1, -1] = 1.0 - pool[0, -1]  # rows that differ only in the last chunk's last column
    x = pool[torch.randint(0, distinct, (rows,), generator=generator)]
    unique, index = unique_rows(x)
    expected, expected_index = torch.unique(x, dim=0, return_inverse=True)
    assert torch.equal(unique[index], x) and index.shape == (rows,) and unique.dtype == x.dtype
    # the same distinct rows, in some order, each once
    order = [row.tolist() for row in unique]
    assert sorted(order) == [row.tolist() for row in expected] and len(set(map(tuple, order))) == len(order)
    # two inputs share an index exactly when torch.unique gives them one
    assert torch.equal(
        index.unsqueeze(0) == index.unsqueeze(1), expected_index.unsqueeze(0) == expected_index.unsqueeze(1)
    )


def test_a_static_query_cap_needs_a_logic_encoder_that_reports_applicability():
    """max_queries is only safe when the policy can check a batch against it before running the compiled graph."""
    with pytest.raises(
        ValueError, match=r"max_queries needs a logic encoder with applicable_operators.*LearnedQueries"
    ):
        CrossAttentionMoEPolicy(
            BoxEncoder(4, 8),
            LearnedQueries(3, 8),
            action_dim=5,
            dim=8,
            num_heads=2,
            applicable_queries=True,
            max_queries=2,
        )
    # Without a cap (or without applicable_queries) any logic encoder works.
    CrossAttentionMoEPolicy(BoxEncoder(4, 8), LearnedQueries(3, 8), action_dim=5, dim=8, num_heads=2, max_queries=2)
    CrossAttentionMoEPolicy(
        BoxEncoder(4, 8), LearnedQueries(3, 8), action_dim=5, dim=8, num_heads=2, applicable_queries=True
    )
