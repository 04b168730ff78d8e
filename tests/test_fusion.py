"""Fusion modules: the shipped ones against their definitions, and a user's own module inside the policy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crossmoe import AuxLossWeights, CrossAttentionMoEPolicy, aux_loss
from crossmoe.encoders import BoxEncoder, HypergraphLogicEncoder, LearnedQueries, LogicOutput
from crossmoe.fusion import ConcatFusion, CrossAttentionFusion, FusionOutput, make_fusion
from crossmoe.hypergraph import Hypergraph, OperatorSpec

DIM, B, N, OPS = 16, 6, 9, 5


def _streams(seed=0, distinct=3):
    generator = torch.Generator().manual_seed(seed)
    visual = torch.randn(B, N, DIM, generator=generator)
    mask = torch.rand(B, N, generator=generator) > 0.3
    mask[:, 0] = True
    tokens = torch.randn(distinct, OPS, DIM, generator=generator)
    index = torch.tensor([2, 0, 0, 1, 2, 1])
    scores = torch.randn(B, OPS, generator=generator)
    return visual, mask, tokens, index, scores


def test_cross_attention_fusion_equals_its_definition():
    """context = LN(sum_o p_o f_o), f = attention(tokens, visual), p = softmax(pool_score(f) + scores)."""
    fusion = CrossAttentionFusion(DIM, num_heads=2, sparse_topk=0.5, head_dim=4)
    visual, mask, tokens, index, scores = _streams()
    per_sample = tokens[index]
    context, attention = fusion(visual, mask, LogicOutput(per_sample, scores))
    fused, expected_attention = fusion.attention(per_sample, visual, mask, return_attention=True)
    pool = torch.softmax(fusion.pool_score(fused).squeeze(-1) + scores, dim=1)
    torch.testing.assert_close(context, fusion.pool_norm((pool.unsqueeze(-1) * fused).sum(1)))
    torch.testing.assert_close(attention, expected_attention)
    assert attention.shape == (B, 2, OPS, N)


def test_cross_attention_fusion_deduplicated_tokens_give_the_same_context_and_gradients():
    fusion = CrossAttentionFusion(DIM, num_heads=2, sparse_topk=0.5, head_dim=4)
    visual, mask, tokens, index, scores = _streams(seed=1)
    distinct = tokens.clone().requires_grad_(True)
    gathered = tokens[index].clone().requires_grad_(True)
    fast = fusion(visual, mask, LogicOutput(distinct, scores, None, index)).context
    fast_grads = torch.autograd.grad(fast.square().sum(), [distinct, *fusion.parameters()])
    slow = fusion(visual, mask, LogicOutput(gathered, scores)).context
    slow_grads = torch.autograd.grad(slow.square().sum(), [gathered, *fusion.parameters()])
    torch.testing.assert_close(fast, slow)
    # A distinct row's gradient is the sum over the samples that use it.
    torch.testing.assert_close(fast_grads[0], torch.zeros_like(tokens).index_add_(0, index, slow_grads[0]))
    for fast_grad, slow_grad in zip(fast_grads[1:], slow_grads[1:], strict=True):
        torch.testing.assert_close(fast_grad, slow_grad)


def _masked_reference(fusion, visual, mask, tokens, scores, applicable):
    """The applicable-only fusion written out: every operator attends, then the others' outputs are zeroed."""
    attn = fusion.attention
    gated, attention = attn.attend(*attn.project_query(tokens), *attn.project_context(visual), mask)
    gated = gated * applicable.unsqueeze(-1)
    attention = attention * applicable[:, None, :, None]
    fused = tokens + attn.to_out(gated)  # (B, O, D): t_o + W_out g_o + b_out
    pool = torch.softmax(fusion.pool_score(fused).squeeze(-1) + scores, dim=1)
    return fusion.pool_norm((pool.unsqueeze(-1) * fused).sum(1)), attention


def _applicability(index, seed=0):
    """Per-sample applicability that is a function of the token row (as the logic encoder's is)."""
    rows = torch.rand(3, OPS, generator=torch.Generator().manual_seed(seed)) > 0.5
    rows[0] = True  # a state in which every operator applies
    rows[1] = False  # and one in which none does
    return rows[index]


@pytest.mark.parametrize("deduplicated", [False, True])
@pytest.mark.parametrize("static_width", [False, True])
def test_applicable_queries_equal_the_masked_computation(monkeypatch, deduplicated, static_width):
    """Only applicable operators query: context, attention and gradients equal the masked full computation.

    ``static_width`` runs the compiled graph's layout (a fixed number of gathered slots, padding masked) in eager
    mode, by making the fusion believe it is being compiled.
    """
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(DIM, num_heads=2, sparse_topk=0.5, head_dim=4, applicable_queries=True)
    visual, mask, tokens, index, scores = _streams(seed=3)
    applicable = _applicability(index)
    if static_width:
        fusion.max_queries = OPS
        monkeypatch.setattr("crossmoe.fusion.is_compiling", lambda: True)
    per_sample = tokens[index].clone().requires_grad_(True)
    logic = LogicOutput(tokens.clone().requires_grad_(True), scores, applicable, index)
    if not deduplicated:
        logic = LogicOutput(per_sample, scores, applicable)
    context, attention = fusion(visual, mask, logic)
    params = list(fusion.parameters())
    grads = torch.autograd.grad(context.square().sum(), [logic.tokens, *params])
    monkeypatch.undo()
    reference_tokens = tokens[index].clone().requires_grad_(True)
    expected, expected_attention = _masked_reference(fusion, visual, mask, reference_tokens, scores, applicable)
    expected_grads = torch.autograd.grad(expected.square().sum(), [reference_tokens, *params])
    torch.testing.assert_close(context, expected)
    torch.testing.assert_close(attention, expected_attention)
    token_grad = grads[0]
    if deduplicated:
        expected_grads = (torch.zeros_like(tokens).index_add_(0, index, expected_grads[0]), *expected_grads[1:])
    torch.testing.assert_close(token_grad, expected_grads[0])
    for grad, expected_grad in zip(grads[1:], expected_grads[1:], strict=True):
        torch.testing.assert_close(grad, expected_grad)


def test_applicable_queries_with_nothing_applicable_is_the_token_pool():
    fusion = CrossAttentionFusion(DIM, num_heads=2, head_dim=4, applicable_queries=True)
    visual, mask, tokens, index, scores = _streams(seed=4)
    none = torch.zeros(B, OPS, dtype=torch.bool)
    context, attention = fusion(visual, mask, LogicOutput(tokens, scores, none, index))
    fused = tokens[index] + fusion.attention.to_out.bias
    pool = torch.softmax(fusion.pool_score(fused).squeeze(-1) + scores, dim=1)
    torch.testing.assert_close(context, fusion.pool_norm((pool.unsqueeze(-1) * fused).sum(1)))
    assert attention.shape == (B, 2, OPS, N) and not bool(attention.any())


def test_applicable_queries_without_applicability_falls_back_to_every_operator():
    fusion = CrossAttentionFusion(DIM, num_heads=2, head_dim=4, applicable_queries=True)
    visual, mask, tokens, index, scores = _streams(seed=5)
    everything = CrossAttentionFusion(DIM, num_heads=2, head_dim=4)
    everything.load_state_dict(fusion.state_dict())
    logic = LogicOutput(tokens, scores, None, index)
    torch.testing.assert_close(fusion(visual, mask, logic).context, everything(visual, mask, logic).context)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"applicable_queries": 1}, TypeError, "applicable_queries must be a bool, got int"),
        ({"max_queries": 0}, ValueError, "max_queries must be a positive integer or None, got 0"),
        ({"max_queries": 2.5}, ValueError, "max_queries must be a positive integer or None, got 2.5"),
        ({"max_queries": True}, ValueError, "max_queries must be a positive integer or None, got True"),
    ],
)
def test_applicable_queries_options_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        CrossAttentionFusion(DIM, num_heads=2, **kwargs)


def test_concat_fusion_equals_its_definition():
    fusion = ConcatFusion(DIM)
    visual, mask, tokens, index, scores = _streams(seed=2)
    context, attention = fusion(visual, mask, LogicOutput(tokens, scores, None, index))
    visual_mean = torch.stack([visual[b][mask[b]].mean(0) for b in range(B)])
    logic_pool = (torch.softmax(scores, 1).unsqueeze(-1) * tokens[index]).sum(1)
    torch.testing.assert_close(context, fusion.proj(torch.cat([logic_pool, visual_mean], -1)))
    assert attention is None
    unscored, _ = fusion(visual, None, LogicOutput(tokens[index]))
    torch.testing.assert_close(unscored, fusion.proj(torch.cat([tokens[index].mean(1), visual.mean(1)], -1)))


def test_cross_attention_fusion_rejects_a_mask_that_keeps_nothing():
    fusion = CrossAttentionFusion(DIM, num_heads=2)
    visual, mask, tokens, index, scores = _streams()
    mask[3] = False
    with pytest.raises(ValueError, match=r"visual_mask keeps no key for samples \[3\]"):
        fusion(visual, mask, LogicOutput(tokens, scores, None, index))


class MeanFusion(nn.Module):
    """A user's fusion: mean of each stream, concatenated and projected; no attention maps."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, visual_tokens, visual_mask, logic):
        return FusionOutput(self.proj(torch.cat([visual_tokens.mean(1), logic.per_sample_tokens().mean(1)], -1)))


def test_make_fusion_resolves_names_and_passes_modules_through():
    assert isinstance(make_fusion("cross_attention", DIM, num_heads=2), CrossAttentionFusion)
    assert isinstance(make_fusion("concat", DIM), ConcatFusion)
    module = MeanFusion(DIM)
    assert make_fusion(module, DIM) is module
    with pytest.raises(ValueError, match=r"fusion must be one of \('cross_attention', 'concat'\).*got 'dot'"):
        make_fusion("dot", DIM)


def test_a_custom_fusion_module_trains_with_ppo_and_every_aux_loss():
    """A user's module plugs in unchanged: the PPO surrogate and all 8 aux losses backpropagate into it."""
    torch.manual_seed(0)
    fusion = MeanFusion(DIM)
    graph = Hypergraph(
        ["a", "b"],
        [
            OperatorSpec(name, requires=req, expert=expert)
            for name, req, expert in [
                ("s", ("a",), "survival"),
                ("c", ("b",), "combat"),
                ("e", ("a", "b"), "exploration"),
                ("g", (), "general"),
            ]
        ],
    )
    logic = HypergraphLogicEncoder(
        graph, DIM, atoms=lambda obs: torch.as_tensor(obs["obs"])[:, :2] > 0, effect_passes=0
    )
    policy = CrossAttentionMoEPolicy(BoxEncoder(4, DIM), logic, action_dim=5, dim=DIM, fusion=fusion)
    assert policy.fusion is fusion
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    steps, envs = 4, 3
    obs = torch.randn(steps * envs, 4)
    with torch.no_grad():
        action, old_log_prob, _, _ = policy.get_action_and_value(obs)
    before = [p.detach().clone() for p in fusion.parameters()]
    _, log_prob, entropy, value, output = policy.get_action_and_value(obs, action, return_output=True)
    assert output.attention is None
    advantages = torch.randn(steps * envs)
    ratio = (log_prob - old_log_prob).exp()
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2)).mean()
    shaped = {
        name: getattr(output, name).unflatten(0, (steps, envs))
        for name in (
            "router_logits",
            "router_weights",
            "expert_logits",
            "expert_features",
            "operator_scores",
            "applicable",
        )
    }
    shaped["operator_to_expert"] = output.operator_to_expert
    total_aux, parts = aux_loss(shaped, AuxLossWeights(), dones=torch.zeros(steps, envs, dtype=torch.bool))
    assert len(parts) == 8 and all(bool(torch.isfinite(value)) for value in parts.values())
    loss = pg_loss - 0.01 * entropy.mean() + 0.5 * value.square().mean() + total_aux
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in fusion.parameters())
    optimizer.step()
    assert all(not torch.equal(b, a) for b, a in zip(before, fusion.parameters(), strict=True))
    assert bool(torch.isfinite(loss))


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (
            lambda context: context,
            r"fusion must return FusionOutput\(context \(B, D\), attention or None\), got Tensor",
        ),
        (lambda context: (context, None, None), r"got tuple of length 3"),
        (
            lambda context: FusionOutput(context[:, :-1]),
            r"fusion must return a context of shape \(B, D\)=\(6, 16\), got \(6, 15\)",
        ),
    ],
)
def test_a_fusion_that_breaks_the_convention_gets_a_clear_error(returned, match):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = MeanFusion(DIM)

        def forward(self, visual_tokens, visual_mask, logic):
            return returned(self.inner(visual_tokens, visual_mask, logic).context)

    policy = CrossAttentionMoEPolicy(BoxEncoder(4, DIM), LearnedQueries(3, DIM), action_dim=5, dim=DIM, fusion=Broken())
    with pytest.raises(ValueError, match=match):
        policy(torch.randn(B, 4))
