"""Where one rollout step and one PPO update of ``examples/ppo_nethack.py`` spend their time.

Prints one JSON line per phase (milliseconds, medians of ``--rounds``):

* ``rollout_step``: one step of 16 ``NetHackScore-v0`` envs, split into the
  env step (NLE itself and the :class:`~crossmoe.nethack.MapMemory` wrapper),
  the atoms (the shortest-path BFS separately), the rest of
  ``policy.prepare`` and the compiled inference forward, as the example runs
  them with ``--compile rollout``;
* ``update_minibatch``: one minibatch of 512 samples (128 steps x 4 envs, the
  example's default) through the eager forward, stage by stage (visual
  stream, dedup, logic stream, fusion, router + experts + prior + critic),
  the PPO and auxiliary losses, the backward and the optimiser step;
* ``totals``: per rollout (128 steps) and per update (16 minibatches), the
  shares of each phase.

The observations come from random play. Usage:
``python benchmarks/profile_training.py [--policy moe|mlp] [--fusion cross_attention|concat]
[--no-applicable-queries] [--rounds 20]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import ppo_nethack  # noqa: E402

from crossmoe.encoders import LogicOutput, unique_rows  # noqa: E402
from crossmoe.functional import combine_experts  # noqa: E402
from crossmoe.losses import aux_loss  # noqa: E402
from crossmoe.nethack import atoms as atoms_module  # noqa: E402
from crossmoe.nethack import env as env_module  # noqa: E402
from crossmoe.nethack import make_vector_env, train_domain  # noqa: E402
from crossmoe.policy import ActorCriticOutput  # noqa: E402
from crossmoe.ppo import compile_agent, make_agent  # noqa: E402

NUM_ENVS, NUM_STEPS, MINIBATCH_ENVS = 16, 128, 4
TIMES: defaultdict[str, list[float]] = defaultdict(list)


@contextmanager
def timed(name: str):
    start = time.perf_counter()
    yield
    TIMES[name].append(time.perf_counter() - start)


def instrument(module, name: str, key: str) -> None:
    """Accumulate the time of ``module.name`` calls under ``key``."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        with timed(key):
            return original(*args, **kwargs)

    setattr(module, name, wrapper)


def median_ms(key: str, calls_per_sample: int = 1) -> float:
    values = TIMES[key]
    if calls_per_sample > 1:  # several calls per measured sample: sum them in groups
        values = [sum(values[i : i + calls_per_sample]) for i in range(0, len(values), calls_per_sample)]
    return round(statistics.median(values) * 1e3, 3) if values else 0.0


def profile_rollout(agent, envs, rounds: int) -> dict[str, float]:
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for name in list(TIMES):
        TIMES[name].clear()
    for step in range(rounds + 5):
        with timed("prepare"):
            prepared = agent.prepare(obs)
        with timed("forward"), torch.inference_mode():
            agent.get_action_and_value(prepared)
        with timed("env_step"):
            obs, *_ = envs.step(rng.integers(0, envs.single_action_space.n, NUM_ENVS))
        if step == 4:  # warm-up done
            for name in list(TIMES):
                TIMES[name].clear()
    env_step, memory = median_ms("env_step"), median_ms("map_memory", NUM_ENVS)
    atoms, bfs = median_ms("atoms"), median_ms("bfs")
    prepare, forward = median_ms("prepare"), median_ms("forward")
    return {
        "env_step_nle": round(env_step - memory, 3),
        "map_memory": memory,
        "atoms_without_bfs": round(atoms - bfs, 3),
        "atoms_bfs": bfs,
        "prepare_rest": round(prepare - atoms, 3),
        "policy_forward_compiled": forward,
        "total": round(env_step + prepare + forward, 3),
    }


def forward_stages(agent, obs) -> tuple:
    """``agent.forward_tensors(obs)`` stage by stage, timed."""
    if not hasattr(agent, "logic_encoder"):  # the mlp baseline
        with timed("visual"):
            hidden = agent.encode(obs)
        with timed("heads"):
            out = ActorCriticOutput(agent.actor(hidden), agent.critic(hidden).squeeze(-1), hidden)
        return out
    with timed("visual"):
        visual_tokens, visual_mask = agent.visual_encoder(obs)
    logic_encoder = agent.logic_encoder
    with timed("logic"):
        activations = logic_encoder.activations(obs)
        applicable = logic_encoder.hypergraph.applicable(activations)
        with timed("dedup"):
            distinct, index = unique_rows(activations)
        tokens, scores = logic_encoder.graph_encoder(distinct)
        logic = LogicOutput(tokens, scores.index_select(0, index), applicable, index)
    with timed("fusion"):
        context, attention = agent.fusion(visual_tokens, visual_mask, logic)
    with timed("heads"):
        routing = agent.router(context)
        expert_logits, expert_features = agent.experts(context, return_hidden=True)
        logits = combine_experts(routing.weights, expert_logits) + agent.knowledge(applicable)
        value = agent.critic(context).squeeze(-1)
    return logits, value, routing, expert_logits, expert_features, logic, attention


def profile_update(agent, batch: dict, rounds: int, args) -> dict[str, float]:
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-5, eps=1e-5)
    size = NUM_STEPS * MINIBATCH_ENVS
    actions = torch.randint(0, agent.action_dim, (size,))
    old_logprob, advantages, returns = torch.randn(size) - 3, torch.randn(size), torch.randn(size)
    boundary = torch.zeros(NUM_STEPS, MINIBATCH_ENVS, dtype=torch.bool)
    moe = hasattr(agent, "logic_encoder")
    for name in list(TIMES):
        TIMES[name].clear()
    for step in range(rounds + 2):
        with timed("forward"):
            out = forward_stages(agent, batch)
        with timed("losses"):
            logits, value = out[0], out[1]
            dist = torch.distributions.Categorical(logits=logits)
            ratio = (dist.log_prob(actions) - old_logprob).exp()
            pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2)).mean()
            loss = pg + 0.5 * ((value - returns) ** 2).mean() - 0.01 * dist.entropy().mean()
            if moe:
                _, _, routing, expert_logits, expert_features, logic, _ = out
                shaped = {
                    "router_logits": routing.logits,
                    "router_weights": routing.weights,
                    "expert_logits": expert_logits,
                    "expert_features": expert_features,
                    "operator_scores": logic.scores,
                    "applicable": logic.applicable,
                }
                shaped = {k: v.unflatten(0, (NUM_STEPS, MINIBATCH_ENVS)) for k, v in shaped.items()}
                shaped["operator_to_expert"] = agent.logic_encoder.operator_to_expert
                total_aux, _ = aux_loss(shaped, args.aux, dones=boundary)
                loss = loss + total_aux
        with timed("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with timed("optimiser"):
            torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
            optimizer.step()
        if step == 1:
            for name in list(TIMES):
                TIMES[name].clear()
    stages = ("visual", "dedup", "logic", "fusion", "heads")
    record = {name: median_ms(name) for name in stages}
    record["logic"] = round(record["logic"] - record["dedup"], 3)
    record.update({name: median_ms(name) for name in ("losses", "backward", "optimiser")})
    record["total"] = round(median_ms("forward") + sum(record[k] for k in ("losses", "backward", "optimiser")), 3)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", choices=("moe", "mlp"), default="moe")
    parser.add_argument("--fusion", choices=("cross_attention", "concat"), default="cross_attention")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", choices=("off", "rollout"), default="rollout")
    parser.add_argument("--no-applicable-queries", dest="applicable_queries", action="store_false")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    torch.manual_seed(0)
    instrument(env_module.MapMemory, "_observe", "map_memory")
    instrument(atoms_module, "_navigation", "bfs")
    instrument(atoms_module.NetHackAtoms, "__call__", "atoms")  # what the agent's logic encoder calls
    args = ppo_nethack.Args(
        policy=cli.policy,
        fusion=cli.fusion,
        compile=cli.compile,
        applicable_queries=cli.applicable_queries,
        progress=False,
        plots=False,
    )
    envs = make_vector_env(NUM_ENVS, seed=0)
    agent = make_agent(args, envs, train_domain())
    if cli.compile == "rollout":
        agent = compile_agent(agent, args, envs, train_domain())

    rollout = profile_rollout(agent, envs, cli.rounds * 5)
    # A minibatch of real observations: 128 steps of 4 envs, prepared as the rollout buffer stores them.
    obs, _ = envs.reset(seed=1)
    rng = np.random.default_rng(1)
    steps = []
    for _ in range(NUM_STEPS * MINIBATCH_ENVS // NUM_ENVS):
        steps.append(agent.prepare(obs))
        obs, *_ = envs.step(rng.integers(0, envs.single_action_space.n, NUM_ENVS))
    batch = {key: torch.cat([s[key] for s in steps]) for key in steps[0] if isinstance(steps[0][key], torch.Tensor)}
    update = profile_update(agent, batch, cli.rounds, args)
    envs.close()
    moe = cli.policy == "moe"
    config = {
        "policy": cli.policy,
        "fusion": cli.fusion if moe else None,
        "applicable_queries": cli.applicable_queries if moe and cli.fusion == "cross_attention" else None,
        "threads": cli.threads,
    }
    print(json.dumps({"profile": "rollout_step", **config, "B": NUM_ENVS, "ms": rollout}))
    print(json.dumps({"profile": "update_minibatch", **config, "B": NUM_STEPS * MINIBATCH_ENVS, "ms": update}))
    per_rollout = rollout["total"] * NUM_STEPS / 1e3
    per_update = update["total"] * 16 / 1e3
    print(
        json.dumps(
            {
                "profile": "totals",
                **config,
                "rollout_s": round(per_rollout, 3),
                "update_s": round(per_update, 3),
                "env_steps_per_s": round(NUM_ENVS * NUM_STEPS / (per_rollout + per_update), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
