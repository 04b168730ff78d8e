import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given
from hypothesis import strategies as st

from crossmoe import CausalGatedCrossAttention


def _inputs(batch=3, nq=5, nk=9, dim=16, context_dim=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, nq, dim, generator=g, dtype=dtype)
    context = torch.randn(batch, nk, context_dim or dim, generator=g, dtype=dtype)
    return query, context


def _random_mask(batch, nk, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, nk, generator=g) < 0.6
    mask[torch.arange(batch), torch.randint(nk, (batch,), generator=g)] = True
    return mask


def test_token_form_shapes():
    attn = CausalGatedCrossAttention(16, num_heads=4, context_dim=12)
    query, context = _inputs(context_dim=12)
    out, attention = attn(query, context, return_attention=True)
    assert out.shape == query.shape
    assert attention.shape == (3, 4, 5, 9)
    assert attn(query, context).shape == query.shape


def test_vector_form_is_one_token():
    attn = CausalGatedCrossAttention(16, num_heads=2)
    query, context = _inputs(nq=1, nk=1)
    out, attention = attn(query[:, 0], context[:, 0], return_attention=True)
    assert out.shape == (3, 16) and attention.shape == (3, 2, 1, 1)
    torch.testing.assert_close(out, attn(query, context)[:, 0])
    assert torch.all(attention == 1)
    mixed = attn(query[:, 0], context)  # vector query over context tokens
    torch.testing.assert_close(mixed, out)


@given(
    batch=st.integers(1, 4),
    nq=st.integers(1, 6),
    nk=st.integers(1, 20),
    topk=st.floats(0.05, 1.0),
    seed=st.integers(0, 1000),
)
def test_attention_rows_are_sparse_distributions_over_kept_keys(batch, nq, nk, topk, seed):
    attn = CausalGatedCrossAttention(8, num_heads=2, sparse_topk=topk)
    query, context = _inputs(batch, nq, nk, dim=8, seed=seed)
    mask = _random_mask(batch, nk, seed)
    _, attention = attn(query, context, mask, return_attention=True)
    torch.testing.assert_close(attention.sum(-1), torch.ones(batch, 2, nq))
    assert (attention >= 0).all()
    assert (attention.masked_select(~mask[:, None, None, :]) == 0).all()
    bound = torch.clamp(torch.ceil(topk * mask.sum(-1) - 1e-9), min=1)[:, None, None]
    assert ((attention > 0).sum(-1) <= bound).all()


@given(seed=st.integers(0, 1000), topk=st.sampled_from([0.2, 0.5, 1.0]))
def test_masked_context_tokens_cannot_change_the_output(seed, topk):
    attn = CausalGatedCrossAttention(8, num_heads=2, sparse_topk=topk)
    query, context = _inputs(2, 3, 10, dim=8, seed=seed)
    mask = _random_mask(2, 10, seed)
    scrambled = torch.where(mask[..., None], context, 100 * torch.randn_like(context))
    torch.testing.assert_close(attn(query, context, mask), attn(query, scrambled, mask))


def _sdpa_reference(attn, query, context, mask):
    query_normed, context_normed = attn.norm_query(query), attn.norm_context(context)
    q = rearrange(attn.to_q(query_normed), "b n (h d) -> b h n d", h=attn.num_heads)
    k = rearrange(attn.to_k(context_normed), "b m (h d) -> b h m d", h=attn.num_heads)
    v = rearrange(attn.to_v(context_normed), "b m (h d) -> b h m d", h=attn.num_heads)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    attended = rearrange(attended, "b h n d -> b n (h d)")
    return query + attn.to_out(torch.sigmoid(attn.to_gate(query_normed)) * attended)


def test_dense_attention_matches_scaled_dot_product_attention():
    attn = CausalGatedCrossAttention(16, num_heads=4, sparse_topk=1.0, context_dim=12).double()
    query, context = _inputs(context_dim=12, dtype=torch.float64)
    mask = _random_mask(3, 9, seed=1)
    torch.testing.assert_close(attn(query, context, mask), _sdpa_reference(attn, query, context, mask))


def test_sparse_attention_differs_from_dense_only_through_dropped_keys():
    dense = CausalGatedCrossAttention(16, num_heads=4, sparse_topk=1.0)
    sparse = CausalGatedCrossAttention(16, num_heads=4, sparse_topk=0.3)
    sparse.load_state_dict(dense.state_dict())
    query, context = _inputs()
    _, dense_attention = dense(query, context, return_attention=True)
    _, sparse_attention = sparse(query, context, return_attention=True)
    support = sparse_attention > 0
    renormalised = dense_attention * support / (dense_attention * support).sum(-1, keepdim=True)
    torch.testing.assert_close(sparse_attention, renormalised)


def test_batch_independence():
    attn = CausalGatedCrossAttention(16, sparse_topk=0.3)
    query, context = _inputs(batch=4)
    mask = _random_mask(4, 9, seed=2)
    reference = attn(query[:1], context[:1], mask[:1])
    other_query, other_context = _inputs(batch=4, seed=7)
    query[1:], context[1:] = other_query[1:], other_context[1:]
    mask[1:] = _random_mask(3, 9, seed=3)
    torch.testing.assert_close(attn(query, context, mask)[:1], reference)
    permutation = torch.tensor([2, 0, 3, 1])
    shuffled = attn(query[permutation], context[permutation], mask[permutation])
    torch.testing.assert_close(shuffled[1:2], reference)


def test_eval_mode_is_deterministic_and_dropout_acts_only_in_training():
    attn = CausalGatedCrossAttention(16, sparse_topk=1.0, dropout=0.5)
    query, context = _inputs()
    attn.eval()
    torch.testing.assert_close(attn(query, context), attn(query, context))
    attn.train()
    out_a, attention = attn(query, context, return_attention=True)
    out_b = attn(query, context)
    assert not torch.allclose(out_a, out_b)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4, 5))  # taken before dropout


@pytest.mark.parametrize("topk", [0.3, 1.0])
def test_every_parameter_gets_a_finite_nonzero_gradient_at_init(topk):
    attn = CausalGatedCrossAttention(16, sparse_topk=topk, context_dim=12)
    query, context = _inputs(context_dim=12)
    query.requires_grad_()
    attn(query, context, _random_mask(3, 9, seed=4)).square().sum().backward()
    for name, parameter in attn.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert torch.isfinite(query.grad).all()


def test_gate_scales_the_attended_update():
    attn = CausalGatedCrossAttention(16, head_dim=2).double()
    query, context = _inputs(dtype=torch.float64)

    def update(gate_bias: float) -> torch.Tensor:
        with torch.no_grad():
            attn.to_gate.weight.zero_()
            attn.to_gate.bias.fill_(gate_bias)
        return attn(query, context) - query - attn.to_out.bias

    torch.testing.assert_close(update(-math.inf), torch.zeros_like(query))  # closed: nothing is added
    torch.testing.assert_close(update(0.0), 0.5 * update(math.inf))  # the gate scales the attended values


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "num_heads": 4}, "num_heads must be a positive divisor of dim=10"),
        ({"dim": 0}, "dim must be a positive integer"),
        ({"dim": 8, "sparse_topk": 0.0}, r"sparse_topk must lie in \(0, 1\]"),
        ({"dim": 8, "sparse_topk": 1.5}, r"sparse_topk must lie in \(0, 1\]"),
        ({"dim": 8, "dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"dim": 8, "context_dim": -1}, "context_dim must be a positive integer"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CausalGatedCrossAttention(**kwargs)


def test_forward_errors_name_argument_expected_and_given():
    attn = CausalGatedCrossAttention(16, context_dim=12)
    query, context = _inputs(context_dim=12)
    with pytest.raises(ValueError, match=r"query must be \(B, Nq, 16\) or \(B, 16\), got \(3, 5, 15\)"):
        attn(query[..., :15], context)
    with pytest.raises(ValueError, match=r"query must be .* got \(3, 1, 5, 16\)"):
        attn(query[:, None], context)
    with pytest.raises(ValueError, match=r"context must be \(B, Nk, 12\) or \(B, 12\), got \(3, 9, 16\)"):
        attn(query, torch.randn(3, 9, 16))
    with pytest.raises(ValueError, match="context batch size must match query batch size 3, got 2"):
        attn(query, context[:2])
    with pytest.raises(ValueError, match=r"context_mask must be \(B, Nk\)=\(3, 9\), got \(3, 8\)"):
        attn(query, context, torch.ones(3, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"context_mask must be \(B, Nk\)=\(3, 1\)"):
        attn(query, context[:, 0], torch.ones(3, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="context_mask must be a bool tensor"):
        attn(query, context, torch.ones(3, 9))
    with pytest.raises(ValueError, match=r"context must hold at least one token \(Nk >= 1\), got \(3, 0, 12\)"):
        attn(query, context[:, :0])
    empty = torch.ones(3, 9, dtype=torch.bool)
    empty[1] = False
    with pytest.raises(ValueError, match=r"context_mask keeps no key for samples \[1\]"):
        attn(query, context, empty)


def test_stages_compose_to_forward():
    """forward is query + to_out(attend(project_query, project_context)); a caller may run the stages itself."""
    attn = CausalGatedCrossAttention(16, num_heads=4, head_dim=3, context_dim=12)
    query, context = torch.randn(3, 5, 16), torch.randn(3, 9, 12)
    mask = _random_mask(3, 9, seed=2)
    gated, attention = attn.attend(*attn.project_query(query), *attn.project_context(context), mask)
    assert gated.shape == (3, 5, 12) and attention.shape == (3, 4, 5, 9)
    out, expected_attention = attn(query, context, mask, return_attention=True)
    torch.testing.assert_close(query + attn.to_out(gated), out)
    torch.testing.assert_close(attention, expected_attention)


@pytest.mark.parametrize("sparse_topk", [0.3, 1.0])
def test_attending_the_unprojected_context_equals_projecting_it(sparse_topk):
    """attend_context moves to_k and to_v to the query side: the same outputs and gradients as attend."""
    torch.manual_seed(0)
    attn = CausalGatedCrossAttention(16, num_heads=2, head_dim=4, context_dim=12, sparse_topk=sparse_topk)
    query, context = torch.randn(3, 2, 16), torch.randn(3, 20, 12, requires_grad=True)
    mask = _random_mask(3, 20, seed=4)
    outputs = []
    for stage in ("projected", "context_first"):
        q, gate = attn.project_query(query)
        if stage == "projected":
            gated, attention = attn.attend(q, gate, *attn.project_context(context), mask)
        else:
            gated, attention = attn.attend_context(q, gate, context, mask)
        weights = torch.linspace(-1, 1, gated.numel()).view_as(gated)
        grads = torch.autograd.grad((gated * weights).sum(), [context, attn.to_k.weight, attn.to_v.weight])
        outputs.append((gated, attention, *grads))
    for projected, context_first in zip(*outputs, strict=True):
        torch.testing.assert_close(context_first, projected, rtol=1e-5, atol=1e-6)
    assert bool((outputs[0][1][~mask[:, None, None, :].expand_as(outputs[0][1])] == 0).all())


def test_the_cheaper_order_is_chosen_by_counting_multiply_adds():
    attn = CausalGatedCrossAttention(64, num_heads=2, head_dim=16)
    # 2 H Nq Dc (hd + Nk) against 2 H Nk hd (Dc + Nq): 3 queries over 50 tokens favour the context first...
    assert attn.context_first_is_cheaper(3, 50)
    # ...16 queries over 50 tokens, or as many queries as tokens, the projected keys and values.
    assert not attn.context_first_is_cheaper(16, 50) and not attn.context_first_is_cheaper(50, 50)
