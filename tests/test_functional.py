import math

import entmax as entmax_ref
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crossmoe.functional import ALPHA_SOFTMAX_TOL, combine_experts, entmax, sparse_topk_softmax, topk_support_size


def _rows(seed, rows=6, cols=5, scale=3.0, dtype=torch.float32):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


@given(seed=st.integers(0, 2**16), alpha=st.floats(1.0, 2.0))
def test_entmax_rows_lie_on_simplex(seed, alpha):
    p = entmax(_rows(seed), alpha=alpha)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("alpha", "reference"),
    [
        (1.0, lambda x: torch.softmax(x, -1)),
        (1.0 + ALPHA_SOFTMAX_TOL / 2, lambda x: torch.softmax(x, -1)),
        (1.5, lambda x: entmax_ref.entmax15(x, dim=-1)),
        (2.0, lambda x: entmax_ref.sparsemax(x, dim=-1)),
        (1.3, lambda x: entmax_ref.entmax_bisect(x, alpha=1.3, dim=-1)),
    ],
)
def test_entmax_dispatch_matches_reference(alpha, reference):
    x = _rows(1)
    torch.testing.assert_close(entmax(x, alpha=alpha), reference(x))


def test_entmax_alpha_one_is_softmax_not_bisect_uniform():
    # entmax_bisect(alpha=1) returns a uniform distribution; the dispatch must not.
    x = torch.tensor([[3.0, 0.0, -1.0]])
    assert not torch.allclose(entmax_ref.entmax_bisect(x, alpha=1.0), torch.softmax(x, -1))
    torch.testing.assert_close(entmax(x, alpha=1.0), torch.softmax(x, -1))


def test_entmax_is_continuous_across_the_softmax_dispatch():
    x = _rows(2, dtype=torch.float64)
    below = entmax(x, alpha=1.0 + 0.999 * ALPHA_SOFTMAX_TOL)
    above = entmax(x, alpha=1.0 + 1.001 * ALPHA_SOFTMAX_TOL)
    assert (below - above).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.0, 1.3, 1.5, 2.0])
def test_entmax_half_precision_runs_in_float32(dtype, alpha):
    x = _rows(3).to(dtype)
    p = entmax(x, alpha=alpha)
    assert p.dtype == torch.float32
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, entmax(x.float(), alpha=alpha))


@pytest.mark.parametrize("alpha", [0.5, 0.999, 2.01, float("nan")])
def test_entmax_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in \[1, 2\]"):
        entmax(_rows(0), alpha=alpha)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_entmax_gradcheck_float64(alpha):
    x = _rows(4, rows=3, cols=4, scale=1.0, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: entmax(t, alpha=alpha, n_iter=80), (x,), atol=1e-6)


def test_support_size_rounds_up_and_keeps_one():
    n = torch.tensor([1, 2, 3, 10, 96])
    torch.testing.assert_close(topk_support_size(n, 0.3), torch.tensor([1, 1, 1, 3, 29]))
    torch.testing.assert_close(topk_support_size(n, 1.0), n)


@st.composite
def _scores_and_mask(draw):
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # ties are common in practice (padding, repeated tokens)
        scores = scores.round()
    mask = torch.rand(rows, cols, generator=g) < draw(st.floats(0.2, 1.0))
    mask[torch.arange(rows), torch.randint(cols, (rows,), generator=g)] = True
    return scores, mask


@given(data=_scores_and_mask(), topk=st.floats(0.01, 1.0))
def test_sparse_topk_support_bound_and_masked_zero(data, topk):
    scores, mask = data
    weights = sparse_topk_softmax(scores, topk, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(scores.shape[0], dtype=scores.dtype))
    assert (weights[~mask] == 0).all()
    bound = torch.clamp(torch.ceil(topk * mask.sum(-1) - 1e-9), min=1)
    assert ((weights > 0).sum(-1) <= bound).all()


@given(data=_scores_and_mask(), topk=st.floats(0.01, 1.0))
def test_sparse_topk_keeps_the_largest_scores(data, topk):
    scores, mask = data
    weights = sparse_topk_softmax(scores, topk, mask)
    for row in range(scores.shape[0]):
        kept = weights[row] > 0
        if (~kept & mask[row]).any():
            assert scores[row][kept].min() >= scores[row][~kept & mask[row]].max()


@given(data=_scores_and_mask())
def test_sparse_topk_dense_is_masked_softmax(data):
    scores, mask = data
    expected = torch.softmax(scores.masked_fill(~mask, -math.inf), -1)
    torch.testing.assert_close(sparse_topk_softmax(scores, 1.0, mask), expected)


def test_sparse_topk_without_mask_matches_renormalised_softmax():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0]])
    expected = torch.softmax(torch.tensor([4.0, 3.0]), -1)
    weights = sparse_topk_softmax(scores, 0.4)  # k = 2
    torch.testing.assert_close(weights[0, [0, 2]], expected)
    assert (weights[0, [1, 3, 4]] == 0).all()


def test_sparse_topk_respects_dim():
    scores = _rows(5, rows=4, cols=7)
    torch.testing.assert_close(sparse_topk_softmax(scores, 0.5, dim=0), sparse_topk_softmax(scores.T, 0.5).T)


def test_sparse_topk_masked_keys_get_no_gradient():
    scores = _rows(6, dtype=torch.float64).requires_grad_()
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, 0] = False
    (sparse_topk_softmax(scores, 0.6, mask) * torch.randn(6, 5, dtype=torch.float64)).sum().backward()
    assert (scores.grad[:, 0] == 0).all()


def test_sparse_topk_gradcheck_float64():
    scores = torch.tensor([[2.0, -1.0, 0.5, 1.5, -0.3], [0.1, 0.9, -2.0, 0.4, 1.1]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, True], [True, True, True, True, True]])
    assert torch.autograd.gradcheck(lambda s: sparse_topk_softmax(s, 0.5, mask), (scores.requires_grad_(),))


def test_sparse_topk_errors():
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"topk must lie in \(0, 1\]"):
        sparse_topk_softmax(scores, 0.0)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        sparse_topk_softmax(scores, 0.5, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask must be broadcastable to scores \(2, 3\), got \(2, 2\)"):
        sparse_topk_softmax(scores, 0.5, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask keeps no entry in rows \[\[1\]\]"):
        sparse_topk_softmax(scores, 0.5, torch.tensor([[True, False, False], [False, False, False]]))


def test_combine_experts_is_weighted_sum():
    weights = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    outputs = torch.arange(12.0).reshape(2, 2, 3)
    expected = torch.stack([0.25 * outputs[0, 0] + 0.75 * outputs[0, 1], outputs[1, 0]])
    torch.testing.assert_close(combine_experts(weights, outputs), expected)
    with pytest.raises(ValueError, match=r"router_weights must be \(B, E\)"):
        combine_experts(weights[:, :1], outputs)


@pytest.mark.parametrize("topk", [0.1, 0.3, 0.5, 0.99, 1.0])
def test_sparse_topk_softmax_traced_for_compile_matches_eager(topk):
    """Under torch.compile the support has a static size cut at each row's k: the same weights and gradients."""
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(5, 2, 4, 12, generator=generator, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(5, 1, 1, 12, generator=generator) > 0.4
    mask[..., 0] = True
    traced = torch.compile(sparse_topk_softmax, backend="aot_eager", fullgraph=True)
    for row_mask in (mask, None, torch.ones_like(mask)):
        expected = sparse_topk_softmax(scores, topk, row_mask)
        weights = traced(scores, topk, row_mask)
        torch.testing.assert_close(weights, expected)
        grad = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
        (expected_grad,) = torch.autograd.grad(expected, scores, grad)
        (traced_grad,) = torch.autograd.grad(weights, scores, grad)
        torch.testing.assert_close(traced_grad, expected_grad)
