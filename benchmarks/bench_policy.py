"""Benchmark the NetHack policy on a batch of real observations and print one JSON line per measurement.

* policy: ``make_policy`` at batch 256, inference and forward+backward samples/s
  (targets >= 5,000 and >= 3,000), for ``fusion="cross_attention"`` and
  ``"concat"`` at the same width (target: cross-attention <= 1.25x concat).
  The timed call starts from the numpy observation dict, so it includes atom
  extraction and the numpy -> torch conversion.
* components: atoms, visual encoder, logic encoder and each fusion module,
  alone (inference), and the two fusion modules alone, forward+backward.
* graph_layout: the graph encoder at batch 256 (``HypergraphEncoder``: the
  ``GATv2Conv`` algebra on per-sample node tensors with the graph's one edge
  list) against ``DenseGATConv`` over the dense ``(B, N, F)`` graph.

Usage: ``python benchmarks/bench_policy.py [--threads 2] [--rounds 7] [--dim 128]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import emit, time_interleaved
from torch import nn
from torch_geometric.nn import DenseGATConv

from crossmoe.graph import HypergraphEncoder
from crossmoe.nethack import extract_atoms, load_hypergraph, make_policy, make_vector_env

BATCH = 256


def real_observations(batch: int, num_envs: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """``batch`` observations from random play, ``num_envs`` episodes side by side."""
    envs = make_vector_env(num_envs, seed=seed)
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(batch // num_envs):
        obs, *_ = envs.step(rng.integers(0, envs.single_action_space.n, num_envs))
        steps.append({key: value.copy() for key, value in obs.items()})  # NLE reuses its arrays
    envs.close()
    return {key: np.concatenate([step[key] for step in steps]) for key in steps[0]}


def fwd_bwd(policy: nn.Module, obs) -> callable:
    def step():
        policy.zero_grad(set_to_none=True)
        out = policy(obs)
        (out.logits.logsumexp(-1).mean() + out.value.square().mean()).backward()

    return step


def bench_policy(obs, dim: int, rounds: int, **policy_kwargs) -> None:
    torch.manual_seed(0)
    policies = {
        fusion: make_policy(23, dim=dim, fusion=fusion, **policy_kwargs) for fusion in ("cross_attention", "concat")
    }
    for policy in policies.values():
        # The whole search on every call: NetHackAtoms would reuse it, since the timed batch never changes.
        policy.logic_encoder.atoms = extract_atoms
    train = time_interleaved({name: fwd_bwd(p, obs) for name, p in policies.items()}, rounds=rounds)
    with torch.inference_mode():
        infer = time_interleaved({name: (lambda p=p: p(obs)) for name, p in policies.items()}, rounds=rounds)
    for name, policy in policies.items():
        emit(
            {
                "bench": "policy",
                "fusion": name,
                "config": policy_kwargs,
                "shape": {
                    "B": BATCH,
                    "D": dim,
                    "N_visual": policy.visual_encoder.num_tokens,
                    "O": policy.logic_encoder.hypergraph.num_operators,
                },
                "params": sum(p.numel() for p in policy.parameters()),
                "inference_samples_per_s": round(BATCH / infer[name]),
                "fwd_bwd_samples_per_s": round(BATCH / train[name]),
                "inference_ms": round(infer[name] * 1e3, 2),
                "fwd_bwd_ms": round(train[name] * 1e3, 2),
                "target_inference_min": 5000,
                "target_fwd_bwd_min": 3000,
            }
        )
    emit(
        {
            "bench": "fusion_cost",
            "config": policy_kwargs,
            "cross_attention_over_concat_fwd_bwd": round(train["cross_attention"] / train["concat"], 3),
            "cross_attention_over_concat_inference": round(infer["cross_attention"] / infer["concat"], 3),
            "target_ratio_max": 1.25,
        }
    )

    policy, concat = policies["cross_attention"], policies["concat"]
    prepared = policy.prepare(obs)  # tensors, with the atoms
    with torch.no_grad():
        tokens, mask = policy.visual_encoder(prepared)
        logic = policy.logic_encoder(prepared)  # distinct token rows and the index of each sample
        context = policy.fusion(tokens, mask, logic).context
    parts = {
        "atoms": lambda: extract_atoms(obs),
        "visual_encoder": lambda: policy.visual_encoder(prepared),
        "logic_encoder": lambda: policy.logic_encoder(prepared),
        "fusion_cross_attention": lambda: policy.fusion(tokens, mask, logic),
        "fusion_concat": lambda: concat.fusion(tokens, mask, logic),
        "router_experts_critic": lambda: (policy.router(context), policy.experts(context), policy.critic(context)),
        "policy_precomputed_atoms": lambda: policy(prepared),
    }
    with torch.inference_mode():
        times = time_interleaved(parts, rounds=rounds)
    emit({"bench": "policy_components_inference", "B": BATCH, "ms": {k: round(v * 1e3, 2) for k, v in times.items()}})

    def fusion_step(fusion):
        visual, operator_tokens = tokens.clone().requires_grad_(), logic.tokens.clone().requires_grad_()

        def run():
            fusion.zero_grad(set_to_none=True)
            out = fusion(visual, mask, logic._replace(tokens=operator_tokens))
            out.context.square().sum().backward()

        return run

    fusions = {"cross_attention": fusion_step(policy.fusion), "concat": fusion_step(concat.fusion)}
    times = time_interleaved(fusions, rounds=rounds)
    emit(
        {
            "bench": "fusion_modules_fwd_bwd",
            "B": BATCH,
            "ms": {k: round(v * 1e3, 2) for k, v in times.items()},
            "note": "the fusion modules alone; the policy-level ratio above includes the shared encoders",
        }
    )


class DenseGraphLayout(nn.Module):
    """The alternative layout: DenseGATConv passes over the whole graph as a dense (B, N, F) batch."""

    def __init__(self, graph, hidden: int, heads: int, passes: int) -> None:
        super().__init__()
        num_c, num_o = graph.num_conditions, graph.num_operators
        self.num_c, self.num_o = num_c, num_o
        n = num_c + num_o + graph.num_effects
        adj = torch.zeros(n, n)
        cond, op = graph.requires_index
        adj[num_c + op, cond] = 1.0  # row = receiver
        op, eff = graph.produces_index
        adj[num_c + num_o + eff, num_c + op] = 1.0
        adj[num_c + op, num_c + num_o + eff] = 1.0
        self.register_buffer("adj", adj)
        self.nodes = nn.Parameter(torch.randn(n, hidden) * 0.1)
        self.activation_proj = nn.Linear(1, hidden)
        self.convs = nn.ModuleList(DenseGATConv(hidden, hidden // heads, heads=heads) for _ in range(passes))
        self.out = nn.Linear(hidden, hidden)

    def forward(self, activations):
        x = self.nodes.expand(activations.shape[0], -1, -1).clone()
        x[:, : self.num_c] += self.activation_proj(activations.unsqueeze(-1))
        for conv in self.convs:
            x = x + conv(x, self.adj)
        return self.out(x[:, self.num_c : self.num_c + self.num_o])


def bench_graph_layout(obs, rounds: int) -> None:
    graph = load_hypergraph()
    activations = torch.as_tensor(extract_atoms(obs))
    hidden, heads = 64, 2
    encoder = HypergraphEncoder(graph, hidden, hidden_dim=hidden, heads=heads, effect_passes=1)
    dense = DenseGraphLayout(graph, hidden, heads, passes=2)  # two dense passes reach operators from effects too

    def step(module):
        def run():
            module.zero_grad(set_to_none=True)
            out = module(activations)
            (out[0] if isinstance(out, tuple) else out).sum().backward()

        return run

    times = time_interleaved({"hypergraph_encoder": step(encoder), "dense_gat": step(dense)}, rounds=rounds)
    emit(
        {
            "bench": "graph_layout_fwd_bwd",
            "shape": {"B": BATCH, "C": graph.num_conditions, "O": graph.num_operators, "E": graph.num_effects},
            "hidden": hidden,
            "heads": heads,
            "ms": {name: round(t * 1e3, 2) for name, t in times.items()},
            "dense_over_encoder": round(times["dense_gat"] / times["hypergraph_encoder"], 2),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--crop-patch", type=int, default=3, help="crop cells pooled per token side (1 or 3)")
    parser.add_argument("--sparse-topk", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    obs = real_observations(BATCH)
    bench_policy(obs, args.dim, args.rounds, crop_patch=args.crop_patch, sparse_topk=args.sparse_topk)
    bench_graph_layout(obs, args.rounds)


if __name__ == "__main__":
    main()
