"""Benchmark the core modules on CPU and print one JSON line per measurement.

* attention: CausalGatedCrossAttention (sparse top-k 0.3) forward+backward vs
  dense ``nn.MultiheadAttention`` at B=256, Nq=32, Nk=96, D=256 (target <= 1.5x);
* router: SparsemaxRouter at alpha 1, 1.3, 1.5 and 2 relative to softmax;
* experts: SemanticExpertBank vs a Python loop over 4 separate MLPs (target >= 1.5x faster).

Usage: ``python benchmarks/bench_modules.py [--threads 2] [--rounds 7]``
"""

from __future__ import annotations

import argparse

import torch
from _timing import emit, time_interleaved
from torch import nn

from crossmoe import CausalGatedCrossAttention, SemanticExpertBank, SparsemaxRouter


def _fwd_bwd(module: nn.Module, *inputs: torch.Tensor, **kwargs):
    def step():
        module.zero_grad(set_to_none=True)
        out = module(*inputs, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()

    return step


def bench_attention(rounds: int) -> None:
    batch, nq, nk, dim, heads = 256, 32, 96, 256, 4
    query, context = torch.randn(batch, nq, dim), torch.randn(batch, nk, dim)
    ours = CausalGatedCrossAttention(dim, num_heads=heads, sparse_topk=0.3)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    times = time_interleaved(
        {
            "crossmoe": _fwd_bwd(ours, query, context),
            "mha": _fwd_bwd(mha, query, context, context, need_weights=False),
        },
        rounds=rounds,
        number=2,
    )
    with torch.inference_mode():
        infer = time_interleaved(
            {"crossmoe": lambda: ours(query, context), "mha": lambda: mha(query, context, context, need_weights=False)},
            rounds=rounds,
            number=2,
        )
    emit(
        {
            "bench": "attention_fwd_bwd",
            "shape": {"B": batch, "Nq": nq, "Nk": nk, "D": dim, "H": heads, "sparse_topk": 0.3},
            "crossmoe_ms": round(times["crossmoe"] * 1e3, 2),
            "mha_dense_ms": round(times["mha"] * 1e3, 2),
            "ratio": round(times["crossmoe"] / times["mha"], 3),
            "inference_ratio": round(infer["crossmoe"] / infer["mha"], 3),
            "target_ratio_max": 1.5,
        }
    )


def bench_router(rounds: int) -> None:
    batch, dim, experts = 256, 256, 4
    x = torch.randn(batch, dim)
    router = SparsemaxRouter(dim, experts)

    def run(alpha: float):
        def step():
            router.alpha = alpha
            router.zero_grad(set_to_none=True)
            out = router(x)
            (out.weights * out.logits).sum().backward()

        return step

    alphas = (1.0, 1.3, 1.5, 2.0)
    times = time_interleaved({str(a): run(a) for a in alphas}, rounds=rounds, number=20)
    emit(
        {
            "bench": "router_fwd_bwd",
            "shape": {"B": batch, "D": dim, "E": experts},
            "ms": {f"alpha={a}": round(times[str(a)] * 1e3, 3) for a in alphas},
            "relative_to_softmax": {f"alpha={a}": round(times[str(a)] / times["1.0"], 2) for a in alphas},
        }
    )


class _LoopedExperts(nn.Module):
    """The baseline: one nn.Sequential per expert, called in a Python loop."""

    def __init__(self, dim: int, out_dim: int, num_experts: int, hidden_dim: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
            for _ in range(num_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)


def bench_experts(rounds: int) -> None:
    """B=256 is the update minibatch; B=16 and 64 are rollout-sized forward passes."""
    dim, hidden, actions, experts = 256, 128, 23, 4
    bank = SemanticExpertBank(dim, actions, num_experts=experts, hidden_dim=hidden)
    looped = _LoopedExperts(dim, actions, experts, hidden)
    for batch in (16, 64, 256):
        x = torch.randn(batch, dim)
        times = time_interleaved({"bank": _fwd_bwd(bank, x), "loop": _fwd_bwd(looped, x)}, rounds=rounds, number=20)
        with torch.inference_mode():
            infer = time_interleaved(
                {"bank": lambda x=x: bank(x), "loop": lambda x=x: looped(x)}, rounds=rounds, number=20
            )
        emit(
            {
                "bench": "expert_bank",
                "shape": {"B": batch, "D": dim, "F": hidden, "A": actions, "E": experts},
                "fwd_bwd_bank_ms": round(times["bank"] * 1e3, 3),
                "fwd_bwd_python_loop_ms": round(times["loop"] * 1e3, 3),
                "fwd_bwd_speedup": round(times["loop"] / times["bank"], 2),
                "inference_speedup": round(infer["loop"] / infer["bank"], 2),
                "target_speedup_min": 1.5,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bench_attention(args.rounds)
    bench_router(args.rounds)
    bench_experts(args.rounds)


if __name__ == "__main__":
    main()
