"""Bad arguments to the public constructors get a TypeError or ValueError that names the argument.

Never an AttributeError, an IndexError or an error from inside torch, and never a silently different model.
"""

from __future__ import annotations

import pytest

from crossmoe import CausalGatedCrossAttention, SemanticExpertBank, SparsemaxRouter

CASES = [
    (lambda: CausalGatedCrossAttention(2.5), TypeError, "dim"),
    (lambda: CausalGatedCrossAttention("64"), TypeError, "dim"),
    (lambda: CausalGatedCrossAttention(8, 1.5), TypeError, "num_heads"),
    (lambda: CausalGatedCrossAttention(8, 2, head_dim=2.5), TypeError, "head_dim"),
    (lambda: CausalGatedCrossAttention(8, 2, "0.3"), TypeError, "sparse_topk"),
    (lambda: CausalGatedCrossAttention(8, 2, dropout=None), TypeError, "dropout"),
    (lambda: SparsemaxRouter(2.5, 4), TypeError, "dim"),
    (lambda: SparsemaxRouter(8, 2.5), TypeError, "num_experts"),
    (lambda: SparsemaxRouter(8, 4, hidden_dim=-1), ValueError, "hidden_dim"),
    (lambda: SemanticExpertBank(2.5, 3), TypeError, "dim"),
    (lambda: SemanticExpertBank(8, 3, 2.5), TypeError, "num_experts"),
    (lambda: SemanticExpertBank(8, 3, hidden_dim=True), TypeError, "hidden_dim"),
]


def _nethack_cases():
    pytest.importorskip("nle")
    from crossmoe.graph import HypergraphEncoder
    from crossmoe.nethack import NetHackVisualEncoder, load_hypergraph, make_baseline_policy, make_policy

    return [
        (lambda: make_policy(action_dim=23.7), TypeError, "action_dim"),
        (lambda: make_policy(action_dim="23"), TypeError, "action_dim"),
        (lambda: make_policy(dim=2.5), TypeError, "dim"),
        (lambda: make_policy(num_heads=1.5), TypeError, "num_heads"),
        (lambda: make_policy(crop_patch=2.5), TypeError, "crop_patch"),
        (lambda: make_policy(hypergraph="graph.json"), TypeError, "hypergraph"),
        (lambda: make_policy(hypergraph={"format": "crossmoe.hypergraph"}), TypeError, "hypergraph"),
        (lambda: make_baseline_policy(action_dim=23.7), TypeError, "action_dim"),
        (lambda: make_baseline_policy(dim=2.5), TypeError, "dim"),
        (lambda: make_baseline_policy(hidden_dim=0), ValueError, "hidden_dim"),
        (lambda: NetHackVisualEncoder(64, patch=(7.0, 10)), TypeError, "patch"),
        (lambda: HypergraphEncoder(load_hypergraph(), 2.5), TypeError, "dim"),
        (lambda: HypergraphEncoder({}, 8), TypeError, "hypergraph"),
        (lambda: HypergraphEncoder(load_hypergraph(), 8, effect_passes=0.5), TypeError, "effect_passes"),
    ]


@pytest.mark.parametrize(("build", "error", "argument"), CASES)
def test_module_constructors_name_the_bad_argument(build, error, argument):
    with pytest.raises(error, match=rf"^{argument} must be"):
        build()


def test_nethack_factories_name_the_bad_argument():
    for build, error, argument in _nethack_cases():
        with pytest.raises(error, match=rf"^{argument} must be"):
            build()


def test_integer_arguments_accept_numpy_integers():
    np = pytest.importorskip("numpy")
    bank = SemanticExpertBank(np.int64(8), np.int32(3), np.int64(2), hidden_dim=np.int16(4))
    assert (bank.dim, bank.out_dim, bank.num_experts, bank.hidden_dim) == (8, 3, 2, 4)
    assert all(type(value) is int for value in (bank.dim, bank.out_dim, bank.num_experts, bank.hidden_dim))
