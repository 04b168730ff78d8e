"""HypergraphEncoder (crossmoe.graph, needs torch-geometric); the data model is tested in test_hypergraph.py."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

import crossmoe
from crossmoe.graph import Hypergraph, HypergraphEncoder, OperatorSpec

EXPERTS = ("survival", "combat", "exploration", "general")


ENCODER_OPERATORS = {
    "o0": (("c0", "c1"), ("e0",)),
    "o1": (("c1", "c2"), ("e0", "e1")),
    "o2": (("c3", "c4"), ("e1",)),
    "o3": (("c4", "c5"), ("e2",)),
    "o4": (("c0", "c5"), ("e2", "e3")),
    "o5": ((), ("e3",)),
}


def _encoder_graph():
    specs = [
        OperatorSpec(name, requires=requires, produces=produces, expert=EXPERTS[i % 4])
        for i, (name, (requires, produces)) in enumerate(ENCODER_OPERATORS.items())
    ]
    return Hypergraph([f"c{i}" for i in range(6)], specs, ["e0", "e1", "e2", "e3"])


def _activations(batch, num_conditions, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, num_conditions, generator=g) < 0.5).to(dtype)


@pytest.mark.filterwarnings("ignore:a research:UserWarning")
def test_encoder_runs_on_the_real_research_graph(research_path):
    graph = Hypergraph.from_json(research_path)
    encoder = HypergraphEncoder(graph, 32)
    tokens, scores = encoder(_activations(3, graph.num_conditions))
    assert tokens.shape == (3, 279, 32) and scores.shape == (3, 279)
    assert torch.isfinite(tokens).all() and torch.isfinite(scores).all()


# --- HypergraphEncoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dim", "hidden_dim", "heads", "effect_passes"), [(16, None, 2, 1), (24, 8, 4, 2), (8, 6, 3, 0)]
)
def test_encoder_output_shapes(dim, hidden_dim, heads, effect_passes):
    encoder = HypergraphEncoder(_encoder_graph(), dim, hidden_dim=hidden_dim, heads=heads, effect_passes=effect_passes)
    tokens, scores = encoder(_activations(5, 6))
    assert tokens.shape == (5, 6, dim) and scores.shape == (5, 6)
    assert tokens.dtype == scores.dtype == torch.float32


def test_encoder_output_follows_each_samples_activations():
    encoder = HypergraphEncoder(_encoder_graph(), 16).eval()
    activations = torch.zeros(3, 6)
    tokens, scores = encoder(activations)
    changed = activations.clone()
    changed[1] = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    new_tokens, new_scores = encoder(changed)
    assert not torch.allclose(new_tokens[1], tokens[1])
    assert not torch.allclose(new_scores[1], scores[1])
    torch.testing.assert_close(new_tokens[[0, 2]], tokens[[0, 2]])
    torch.testing.assert_close(new_scores[[0, 2]], scores[[0, 2]])


def test_encoder_batch_independence():
    encoder = HypergraphEncoder(_encoder_graph(), 16, effect_passes=2).eval()
    activations = torch.rand(4, 6, generator=torch.Generator().manual_seed(3))
    alone_tokens, alone_scores = encoder(activations[:1])
    tokens, scores = encoder(activations)
    torch.testing.assert_close(tokens[:1], alone_tokens)
    torch.testing.assert_close(scores[:1], alone_scores)
    permutation = torch.tensor([2, 0, 3, 1])
    shuffled_tokens, shuffled_scores = encoder(activations[permutation])
    torch.testing.assert_close(shuffled_tokens, tokens[permutation])
    torch.testing.assert_close(shuffled_scores, scores[permutation])


def _union_reference(encoder, activations):
    """The encoder's definition, computed with torch-geometric itself: each pass one ``GATv2Conv`` call on the
    disjoint union of ``B`` copies of the graph, node states laid out ``(B * nodes, h)``."""
    graph = encoder.hypergraph
    num_c, num_o, num_e = graph.num_conditions, graph.num_operators, graph.num_effects
    batch, hidden = activations.shape[0], encoder.hidden_dim
    offsets = torch.arange(batch)[:, None]

    def union(edges, num_src, num_dst):
        return torch.stack([(edges[0] + offsets * num_src).reshape(-1), (edges[1] + offsets * num_dst).reshape(-1)])

    requires = union(graph.requires_index, num_c, num_o)
    produces = union(graph.produces_index, num_o, num_e)
    produced_by = union(graph.produces_index.flip(0), num_e, num_o)
    node, typ = encoder.node_embedding.weight, encoder.type_embedding.weight
    conditions = (node[:num_c] + typ[0]) + encoder.activation_proj(activations.unsqueeze(-1))
    operators = (node[num_c : num_c + num_o] + typ[1]).expand(batch, num_o, -1).reshape(-1, hidden)
    operators = operators + encoder.condition_to_operator((conditions.reshape(-1, hidden), operators), requires)
    if encoder.effect_passes:
        effects = (node[num_c + num_o : num_c + num_o + num_e] + typ[2]).expand(batch, num_e, -1).reshape(-1, hidden)
        for to_effect, to_operator in zip(encoder.operator_to_effect, encoder.effect_to_operator, strict=True):
            effects = effects + to_effect((operators, effects), produces)
            operators = operators + to_operator((effects, operators), produced_by)
    operators = encoder.norm(operators).reshape(batch, num_o, hidden)
    return encoder.to_tokens(operators), encoder.to_scores(operators).squeeze(-1)


@pytest.mark.parametrize(("heads", "effect_passes"), [(2, 1), (4, 2), (1, 0)])
@pytest.mark.parametrize("binary", [True, False])
def test_encoder_equals_gatv2conv_on_the_disjoint_union(heads, effect_passes, binary):
    """The dense passes and their shortcuts compute what torch-geometric's GATv2Conv computes: values and gradients."""
    torch.manual_seed(heads)
    encoder = HypergraphEncoder(_encoder_graph(), 16, hidden_dim=8, heads=heads, effect_passes=effect_passes)
    activations = _activations(9, 6, seed=heads) if binary else torch.rand(9, 6)
    activations = activations.requires_grad_(not binary)
    params = [activations] if not binary else []
    params += list(encoder.parameters())
    results = []
    for forward in (encoder, lambda a: _union_reference(encoder, a)):
        tokens, scores = forward(activations)
        loss = tokens.square().sum() + (scores * torch.arange(6)).sum()
        results.append((tokens, scores, torch.autograd.grad(loss, params, allow_unused=True)))
    (tokens, scores, grads), (expected_tokens, expected_scores, expected_grads) = results
    torch.testing.assert_close(tokens, expected_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-5)
    for grad, expected in zip(grads, expected_grads, strict=True):
        if expected is None:  # e.g. effect_passes=0 leaves the effect embeddings unused
            assert grad is None or not bool(grad.any())
        else:
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_encoder_equals_gatv2conv_on_the_nethack_graph_and_real_atoms(nethack_play):
    """Exact in float64 (values and gradients), and within float32 rounding in float32."""
    pytest.importorskip("nle")
    from crossmoe.nethack import extract_atoms, load_hypergraph

    rows, _, _ = nethack_play
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    atoms = torch.as_tensor(extract_atoms(batch), dtype=torch.float32)
    assert 0 < int(atoms.sum()) < atoms.numel()
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        torch.manual_seed(0)
        encoder = HypergraphEncoder(load_hypergraph(), 128).to(dtype)
        results = []
        for forward in (encoder, lambda a, encoder=encoder: _union_reference(encoder, a)):
            tokens, scores = forward(atoms.to(dtype))
            loss = tokens.square().mean() + scores.mean()
            results.append((tokens, scores, torch.autograd.grad(loss, list(encoder.parameters()))))
        (tokens, scores, grads), (expected_tokens, expected_scores, expected_grads) = results
        torch.testing.assert_close(tokens, expected_tokens, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(scores, expected_scores, rtol=tolerance, atol=tolerance)
        for (name, _), grad, expected in zip(encoder.named_parameters(), grads, expected_grads, strict=True):
            message = lambda m, name=name, dtype=dtype: f"{dtype} {name}: {m}"  # noqa: E731
            torch.testing.assert_close(grad, expected, rtol=10 * tolerance, atol=tolerance, msg=message)


def _reachable(condition, effect_passes):
    """Operators whose output can depend on ``condition``, walked by hand over ENCODER_OPERATORS."""
    reached = {op for op, (requires, _) in ENCODER_OPERATORS.items() if condition in requires}
    for _ in range(effect_passes):
        effects = {e for op in reached for e in ENCODER_OPERATORS[op][1]}
        reached |= {op for op, (_, produces) in ENCODER_OPERATORS.items() if effects & set(produces)}
    return reached


def test_reachability_helper_matches_hand_computed_sets():
    assert _reachable("c3", 0) == {"o2"}
    assert _reachable("c3", 1) == {"o1", "o2"}
    assert _reachable("c3", 2) == {"o0", "o1", "o2"}
    assert _reachable("c0", 1) == {"o0", "o1", "o4", "o3", "o5"}


@pytest.mark.parametrize("effect_passes", [0, 1, 2])
@pytest.mark.parametrize("condition", range(6))
def test_flipping_a_condition_changes_exactly_the_reachable_operators(effect_passes, condition):
    graph = _encoder_graph()
    encoder = HypergraphEncoder(graph, 16, effect_passes=effect_passes).eval()
    activations = _activations(2, 6, seed=condition)
    flipped = activations.clone()
    flipped[:, condition] = 1 - flipped[:, condition]
    tokens, scores = encoder(activations)
    new_tokens, new_scores = encoder(flipped)
    changed = (new_tokens - tokens).abs().amax(-1) > 1e-5  # (B, O)
    expected = torch.tensor([name in _reachable(f"c{condition}", effect_passes) for name in graph.operators])
    assert changed.tolist() == [expected.tolist()] * 2
    torch.testing.assert_close(new_scores[:, ~expected], scores[:, ~expected])


def test_every_encoder_parameter_gets_a_finite_nonzero_gradient():
    graph = _encoder_graph()
    encoder = HypergraphEncoder(graph, 16, effect_passes=1)
    activations = torch.cat([torch.ones(1, 6), _activations(7, 6, seed=1)])  # row 0 activates every operator
    tokens, scores = encoder(activations)
    weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(5))
    ((tokens * weights).sum() + scores.square().sum()).backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    node_rows = graph.num_conditions + graph.num_operators + graph.num_effects
    assert (encoder.node_embedding.weight.grad[:node_rows].abs().sum(-1) > 0).all()  # every node is wired in


def test_eval_mode_is_deterministic_and_disables_dropout():
    graph = _encoder_graph()
    encoder = HypergraphEncoder(graph, 16, dropout=0.5)
    activations = _activations(4, 6, seed=2)
    encoder.train()
    assert not torch.allclose(encoder(activations)[0], encoder(activations)[0])
    encoder.eval()
    tokens, scores = encoder(activations)
    torch.testing.assert_close(encoder(activations), (tokens, scores), rtol=0, atol=0)
    without_dropout = HypergraphEncoder(graph, 16, dropout=0.0).eval()
    without_dropout.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(without_dropout(activations), (tokens, scores))


def test_edge_cache_serves_changing_batch_sizes():
    graph = _encoder_graph()
    encoder = HypergraphEncoder(graph, 16).eval()
    fresh = HypergraphEncoder(graph, 16).eval()
    fresh.load_state_dict(encoder.state_dict())
    for batch, seed in ((3, 0), (5, 1), (3, 2), (1, 3), (5, 4)):
        activations = _activations(batch, 6, seed=seed)
        tokens, scores = encoder(activations)
        per_sample = [fresh(activations[i : i + 1]) for i in range(batch)]
        torch.testing.assert_close(tokens, torch.cat([t for t, _ in per_sample]))
        torch.testing.assert_close(scores, torch.cat([s for _, s in per_sample]))


def test_encoder_accepts_other_activation_dtypes():
    encoder = HypergraphEncoder(_encoder_graph(), 16).eval()
    activations = _activations(3, 6)
    reference = encoder(activations)
    torch.testing.assert_close(encoder(activations.double()), reference)
    torch.testing.assert_close(encoder(activations.bool()), reference)


def test_encoder_rejects_wrong_activation_shape():
    encoder = HypergraphEncoder(_encoder_graph(), 16)
    with pytest.raises(ValueError, match=r"activations must be \(B, C\) with C=6, got shape \(2, 5\)"):
        encoder(torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"got shape \(6,\)"):
        encoder(torch.ones(6))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 16, "hidden_dim": 10, "heads": 3}, "hidden_dim must be divisible by heads=3, got 10"),
        ({"dim": 0}, "dim must be a positive integer, got 0"),
        ({"dim": 16, "hidden_dim": 0}, "hidden_dim must be a positive integer, got 0"),
        ({"dim": 16, "heads": 0}, "heads must be a positive integer, got 0"),
        ({"dim": 16, "effect_passes": -1}, "effect_passes must be >= 0, got -1"),
    ],
)
def test_encoder_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HypergraphEncoder(_encoder_graph(), **kwargs)


def test_effect_passes_need_produces_edges():
    graph = Hypergraph(["a", "b"], [OperatorSpec("x", requires=("a", "b"))], ["unused"])
    with pytest.raises(ValueError, match="effect_passes must be 0 for a hypergraph without produces edges"):
        HypergraphEncoder(graph, 8)
    tokens, scores = HypergraphEncoder(graph, 8, effect_passes=0)(torch.ones(2, 2))
    assert tokens.shape == (2, 1, 8) and scores.shape == (2, 1)


def test_encoder_gradcheck_float64():
    graph = Hypergraph(
        ["a", "b", "c"],
        [
            OperatorSpec("x", ("a", "b"), ("e",)),
            OperatorSpec("y", ("b", "c"), ("e", "f")),
            OperatorSpec("z", (), ("f",)),
        ],
        ["e", "f"],
    )
    encoder = HypergraphEncoder(graph, 4, hidden_dim=4, heads=2).double()
    activations = torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    activations.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: encoder(a), (activations,))


def test_empty_batch_gives_empty_outputs():
    graph = Hypergraph(["a", "b"], [OperatorSpec("x", requires=("a",), produces=("e",))], ["e"])
    tokens, scores = HypergraphEncoder(graph, 8)(torch.zeros(0, 2))
    assert tokens.shape == (0, 1, 8) and scores.shape == (0, 1)


def test_encoder_copies_compute_the_same():
    encoder = HypergraphEncoder(_encoder_graph(), 16).eval()
    activations = _activations(4, 6)
    torch.testing.assert_close(copy.deepcopy(encoder)(activations), encoder(activations))


# --- the package without torch-geometric ---------------------------------------------------------------


_WITHOUT_TORCH_GEOMETRIC = """
import sys

sys.modules["torch_geometric"] = None  # what an environment without torch-geometric looks like to `import`

import torch
import crossmoe
from crossmoe.encoders import HypergraphLogicEncoder

assert "crossmoe.graph" not in sys.modules
graph = crossmoe.Hypergraph(["a", "b"], [crossmoe.OperatorSpec("x", requires=("a",))])
print("applicable", graph.applicable(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist())
attention = crossmoe.CausalGatedCrossAttention(8, num_heads=2)
print("attention", tuple(attention(torch.randn(2, 3, 8), torch.randn(2, 5, 8)).shape))
for attempt in (
    "import crossmoe.graph",
    "from crossmoe.graph import Hypergraph",
    "crossmoe.HypergraphEncoder",
    "crossmoe.graph",
    "HypergraphLogicEncoder(graph, 8)",
):
    try:
        exec(attempt)
    except ImportError as error:
        print("ImportError", repr(attempt), error)
    else:
        print("imported", repr(attempt))
"""


def test_import_crossmoe_works_without_torch_geometric_and_graph_says_how_to_install_it():
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH_GEOMETRIC], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "applicable [[True], [False]]"
    assert lines[1] == "attention (2, 3, 8)"
    assert len(lines) == 7
    for line in lines[2:]:
        assert line.startswith("ImportError"), line
        assert "pip install torch-geometric" in line, line


def test_lazy_names_are_the_graph_module_and_its_encoder():
    assert crossmoe.graph is sys.modules["crossmoe.graph"]
    assert crossmoe.HypergraphEncoder is HypergraphEncoder
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        crossmoe.NoSuchThing  # noqa: B018
