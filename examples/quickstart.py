"""Compose the crossmoe modules and train them briefly on a synthetic task.

Operator tokens (the symbolic side) query map tokens (the visual side) through
the sparse gated cross-attention; the pooled context is routed over four
semantic experts whose action logits are mixed by the router weights. The
routing schedule moves from softmax to sparsemax while the model fits a
synthetic target, and the diagnostics show the routing becoming sparse.

Run with ``python examples/quickstart.py`` (``make demo``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmoe import (
    AuxLossWeights,
    CausalGatedCrossAttention,
    SemanticExpertBank,
    SparsemaxRouter,
    TemperatureAnnealingScheduler,
    aux_loss,
)
from crossmoe.diagnostics import moe_diagnostics
from crossmoe.functional import combine_experts

BATCH, OPERATORS, MAP_TOKENS, DIM, ACTIONS, UPDATES = 64, 8, 32, 64, 23, 150


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    attention = CausalGatedCrossAttention(DIM, num_heads=4, sparse_topk=0.3)
    router = SparsemaxRouter(DIM, num_experts=4)
    experts = SemanticExpertBank(DIM, ACTIONS, num_experts=4)
    modules = torch.nn.ModuleList([attention, router, experts])
    optimizer = torch.optim.Adam(modules.parameters(), lr=3e-3)
    schedule = TemperatureAnnealingScheduler.from_fractions(UPDATES, unit="updates")

    # A synthetic task: the right action is fixed by which map token carries a marker.
    operator_tokens = torch.randn(BATCH, OPERATORS, DIM)
    map_tokens = torch.randn(BATCH, MAP_TOKENS, DIM)
    marker = torch.randint(MAP_TOKENS, (BATCH,))
    map_tokens[torch.arange(BATCH), marker] += 3.0
    target_action = marker % ACTIONS
    map_mask = torch.rand(BATCH, MAP_TOKENS) > 0.1
    map_mask[torch.arange(BATCH), marker] = True

    print(
        f"{'update':>6} {'phase':>10} {'alpha':>5} {'temp':>5} {'loss':>6} {'acc':>5} "
        f"{'H(route)':>8} {'dead':>4} {'attn0':>5}  usage"
    )
    for update in range(UPDATES + 1):
        state = schedule(update)
        state.apply(modules)
        fused, attn_weights = attention(operator_tokens, map_tokens, map_mask, return_attention=True)
        context = fused.mean(dim=1)  # (B, D)
        route = router(context)
        expert_logits, expert_features = experts(context, return_hidden=True)
        logits = combine_experts(route.weights, expert_logits)  # (B, A)
        task_loss = F.cross_entropy(logits, target_action)
        aux_total, parts = aux_loss(
            {
                "router_logits": route.logits,
                "router_weights": route.weights,
                "expert_logits": expert_logits,
                "expert_features": expert_features,
            },
            AuxLossWeights(alignment=0.0, temporal=0.0).scaled(state.coefficients),
        )
        optimizer.zero_grad()
        (task_loss + aux_total).backward()
        optimizer.step()

        if update % 25 == 0:
            stats = moe_diagnostics(route.weights, attn_weights, context, map_mask, names=experts.names)
            accuracy = (logits.argmax(-1) == target_action).float().mean().item()
            usage = " ".join(f"{name[:4]}={stats[f'usage/{name}']:.2f}" for name in experts.names)
            print(
                f"{update:>6} {state.phase:>10} {state.alpha:>5.2f} {state.temperature:>5.2f} "
                f"{task_loss.item():>6.3f} {accuracy:>5.2f} {stats['routing_entropy']:>8.3f} "
                f"{stats['dead_experts']:>4.0f} {stats['attention_sparsity']:>5.2f}  {usage}"
            )
    print("aux parts (unweighted):", {name: round(value.item(), 4) for name, value in parts.items()})
    print(f"context norm {stats['context_norm']:.2f}; attention keeps <= 30% of the kept map tokens per row")


if __name__ == "__main__":
    main()
