import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" is stable on a loaded 2-core machine: no deadline, a bounded number of
# examples, and derandomised so a run is reproducible. "dev" explores more.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def research_path():
    """The real research-format graph (``{nodes, edges}``) in ``shared/fixtures`` beside the project."""
    path = Path(__file__).resolve().parents[1].parent / "shared/fixtures/tedg_hypergraph_gat_structure.json"
    if not path.exists():
        pytest.skip(f"research fixture not found at {path}")
    return path


@pytest.fixture(scope="session")
def research_file(research_path):
    """The parsed JSON of :func:`research_path`."""
    return json.loads(research_path.read_text())


@pytest.fixture(scope="session")
def nethack_play():
    """Twelve steps of seeded random play on NetHackScore-v0: ``(observations, observation_space, actions)``.

    Each observation is a dict of copies (NLE reuses its arrays from step to step).
    """
    pytest.importorskip("nle")
    from crossmoe.nethack import make_env

    env = make_env("NetHackScore-v0", seed=0)
    obs, _ = env.reset(seed=0)
    rows = []
    rng = np.random.default_rng(0)
    for _ in range(12):
        rows.append({key: np.array(value) for key, value in obs.items()})
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            obs, _ = env.reset()
    space, actions = env.observation_space, tuple(env.unwrapped.actions)
    env.close()
    return rows, space, actions


@pytest.fixture
def atoms_reads(monkeypatch):
    """A list that records, for every logic-encoder forward, whether the observation carried its atoms."""
    from crossmoe.encoders import HypergraphLogicEncoder

    reads = []
    original = HypergraphLogicEncoder.activations

    def recording(self, obs):
        reads.append(self.key in obs)
        return original(self, obs)

    monkeypatch.setattr(HypergraphLogicEncoder, "activations", recording)
    return reads


@pytest.fixture
def broken_compiler(monkeypatch):
    """``ActorCriticBase.compile`` with a backend that fails, as inductor does on a machine without a C++ compiler."""
    import torch

    from crossmoe.policy import ActorCriticBase

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here")

    compile_policy = ActorCriticBase.compile
    monkeypatch.setattr(
        ActorCriticBase,
        "compile",
        lambda self, *args, **kwargs: compile_policy(self, **{**kwargs, "backend": broken_backend}),
    )
    torch._dynamo.reset()
