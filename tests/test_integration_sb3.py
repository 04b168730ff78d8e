"""The Stable-Baselines3 integration: policy outputs, aux losses in the gradient, schedule, logging, save/load."""

import csv
import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("nle")

from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from crossmoe import AuxLossWeights, TemperatureAnnealingScheduler
from crossmoe.encoders import BoxEncoder, LearnedQueries
from crossmoe.integrations.common import build_policy, minibatch_aux_loss, restore_dtypes
from crossmoe.integrations.sb3 import CrossMoEPolicy, MoEPPO
from crossmoe.nethack import make_env
from crossmoe.schedule import KEEP_EXPERTS_ALIVE

SMALL = {"preset": "nethack", "dim": 32}


def _nethack_batch(play, steps=12):
    """Real NetHackScore-v0 observations (random play), stacked as SB3's buffer holds them: float32."""
    rows, space, _ = play
    stacked = {key: torch.as_tensor(np.stack([row[key] for row in rows[:steps]])) for key in rows[0]}
    return {key: value.float() for key, value in stacked.items()}, space


def _progress(folder):
    with open(folder / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_restore_dtypes_is_exact_for_nle_arrays(nethack_play):
    obs, space = _nethack_batch(nethack_play, steps=4)
    restored = restore_dtypes(obs, space)
    for key, value in restored.items():
        assert value.dtype == torch.from_numpy(np.empty(0, dtype=space[key].dtype)).dtype, key
        assert torch.equal(value.double(), obs[key].double()), key


def test_policy_matches_the_crossmoe_network_it_wraps(nethack_play):
    obs, space = _nethack_batch(nethack_play)
    policy = CrossMoEPolicy(space, spaces.Discrete(23), lambda _: 3e-4, **SMALL).eval()
    reference = policy.model(restore_dtypes(obs, space))
    actions = torch.arange(len(obs["glyphs"])) % 23
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    expected = torch.distributions.Categorical(logits=reference.logits)
    torch.testing.assert_close(values.squeeze(-1), reference.value)
    torch.testing.assert_close(log_prob, expected.log_prob(actions))
    torch.testing.assert_close(entropy, expected.entropy())
    torch.testing.assert_close(policy.predict_values(obs).squeeze(-1), reference.value)
    greedy, _, _ = policy(obs, deterministic=True)
    assert torch.equal(greedy, reference.logits.argmax(-1))


def test_aux_loss_reaches_the_gradient_once(nethack_play):
    """PPO's loss built from evaluate_actions' outputs gets exactly the weighted aux loss's gradient added."""
    obs, space = _nethack_batch(nethack_play)
    weights = AuxLossWeights(load_balance=1.0, alignment=0.5, diversity=0.3, temporal=0.01)
    actions = torch.arange(len(obs["glyphs"])) % 23
    advantages = torch.linspace(-1, 1, len(actions))

    policy = CrossMoEPolicy(space, spaces.Discrete(23), lambda _: 3e-4, **SMALL)
    policy.aux_weights = weights
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    # log_prob used twice, as SB3's loss does (ratio, and a no-grad KL estimate): the aux term still counts once.
    loss = -(advantages * log_prob.exp()).mean() - 0.01 * entropy.mean() + 0.5 * values.square().mean()
    with torch.no_grad():
        _ = (log_prob.exp() - 1 - log_prob).mean()
    loss.backward()
    got = {name: p.grad.clone() for name, p in policy.model.named_parameters() if p.grad is not None}

    policy.zero_grad()
    output = policy.model(restore_dtypes(obs, space))
    dist = torch.distributions.Categorical(logits=output.logits)
    total, _ = minibatch_aux_loss(output, weights)  # temporal left out
    reference = -(advantages * dist.log_prob(actions).exp()).mean() - 0.01 * dist.entropy().mean()
    (reference + 0.5 * output.value.square().mean() + total).backward()
    router = [name for name in got if name.startswith("router.")]
    assert router and any(got[name].abs().sum() > 0 for name in router)
    for name, parameter in policy.model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(got[name], parameter.grad, msg=name)


def test_no_aux_loss_without_weights_or_gradients(nethack_play):
    obs, space = _nethack_batch(nethack_play, steps=4)
    policy = CrossMoEPolicy(space, spaces.Discrete(23), lambda _: 3e-4, **SMALL)
    policy.aux_weights = AuxLossWeights()
    with torch.no_grad():
        policy.evaluate_actions(obs, torch.zeros(4, dtype=torch.long))
    assert not policy.aux_log


def test_learn_logs_aux_losses_and_follows_the_schedule(tmp_path):
    env = make_vec_env(lambda: make_env("NetHackScore-v0"), n_envs=2, seed=0)
    schedule = TemperatureAnnealingScheduler(0, 2048, 4096, "env_steps")
    model = MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, schedule=schedule, n_steps=256, batch_size=256, seed=0)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(2048)
    rows = _progress(tmp_path)
    env.close()
    assert model.num_timesteps == 2048
    last = rows[-1]
    for name in ("load_balance", "alignment", "diversity", "router_z", "orthogonality"):
        assert np.isfinite(float(last[f"train/aux/{name}"])), name
    assert "train/aux/temporal" not in last
    # SB3 writes a row before the update it belongs to runs, so the last row is the update of the rollout
    # that started at 1024 env steps; the last rollout started at 1536, and the router kept its alpha.
    assert float(last["train/routing_alpha"]) == pytest.approx(schedule(1024).alpha)
    state = schedule(1536)
    assert float(model.policy.model.router.alpha) == pytest.approx(state.alpha)
    assert float(model.policy.model.router.temperature) == pytest.approx(state.temperature)
    assert 1.0 < state.alpha < 2.0
    weights = [float(last[f"train/routing/weight/{name}"]) for name in model.policy.model.experts.names]
    assert sum(weights) == pytest.approx(1.0, abs=1e-4)


def test_default_schedule_spans_the_first_learn_call():
    env = make_env("NetHackScore-v0")
    model = MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, n_steps=64, batch_size=64, n_epochs=1, seed=0)
    assert model.schedule is None
    model.learn(128)
    env.close()
    assert model.schedule.total == 128
    assert (model.schedule.warmup, model.schedule.transition) == (26, 77)
    assert model.schedule.coefficients == KEEP_EXPERTS_ALIVE


def test_save_load_round_trip_keeps_weights_schedule_and_counters(tmp_path):
    env = make_env("NetHackScore-v0", seed=0)
    schedule = TemperatureAnnealingScheduler(100, 150, 1000, "env_steps", coefficients={"finetune": {"alignment": 2}})
    weights = AuxLossWeights(load_balance=0.05)
    model = MoEPPO(
        CrossMoEPolicy, env, policy_kwargs=SMALL, schedule=schedule, aux_weights=weights, n_steps=64, batch_size=64
    )
    model.learn(128)
    model.save(tmp_path / "agent.zip")
    loaded = MoEPPO.load(tmp_path / "agent.zip", env=make_env("NetHackScore-v0", seed=1))
    assert loaded.schedule.state_dict() == schedule.state_dict()
    # A loaded model predicts at the routing of its step (the router's alpha is not a weight).
    assert float(loaded.policy.model.router.alpha) == pytest.approx(schedule(128).alpha)
    assert float(loaded.policy.model.router.temperature) == pytest.approx(schedule(128).temperature)
    assert loaded.aux_weights == weights
    assert loaded.num_timesteps == 128
    assert loaded.policy_kwargs["action_set"] == model.policy_kwargs["action_set"]
    for (key, a), (other, b) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items(), strict=True):
        assert key == other and torch.equal(a, b), key
    obs, _ = env.reset(seed=3)
    assert model.predict(obs, deterministic=True)[0] == loaded.predict(obs, deterministic=True)[0]
    loaded.learn(64, reset_num_timesteps=False)  # continues on the saved schedule, not a new one
    assert loaded.num_timesteps == 192
    assert loaded.schedule.state_dict() == schedule.state_dict()
    assert float(loaded.policy.model.router.alpha) == pytest.approx(schedule(128).alpha)
    env.close()


@pytest.mark.skipif(importlib.util.find_spec("minihack") is None, reason="needs the minihack extra")
def test_minihack_reads_the_env_actions_for_the_knowledge_pathway(tmp_path):
    env = make_vec_env(lambda: make_env("MiniHack-Room-5x5-v0"), n_envs=2, seed=0)
    model = MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, n_steps=256, batch_size=256, n_epochs=2, seed=0)
    names = model.policy_kwargs["action_set"]
    assert len(names) == env.action_space.n == 8
    mask = model.policy.model.knowledge.action_mask
    assert mask.shape[-1] == 8
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(2048)
    env.close()
    assert np.isfinite(float(_progress(tmp_path)[-1]["train/aux/alignment"]))


def test_own_encoders_train_on_cartpole():
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    kwargs = {"visual_encoder": BoxEncoder(4, 16), "logic_encoder": LearnedQueries(3, 16), "dim": 16}
    model = MoEPPO(CrossMoEPolicy, env, policy_kwargs=kwargs, n_steps=64, batch_size=32, n_epochs=1, seed=0)
    before = [p.detach().clone() for p in model.policy.model.router.parameters()]
    model.learn(128)
    env.close()
    after = list(model.policy.model.router.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_bad_input_is_named():
    obs_space = spaces.Box(-1, 1, (4,))
    with pytest.raises(ValueError, match=r"action_space must be gymnasium\.spaces\.Discrete"):
        CrossMoEPolicy(obs_space, spaces.Box(-1, 1, (2,)), lambda _: 1e-3, preset="nethack")
    with pytest.raises(ValueError, match="preset must be one of"):
        build_policy(spaces.Discrete(3), preset="atari")
    with pytest.raises(ValueError, match="give preset"):
        build_policy(spaces.Discrete(3), visual_encoder=BoxEncoder(4, 8))
    env = make_env("NetHackScore-v0")
    with pytest.raises(ValueError, match="policy must be CrossMoEPolicy"):
        MoEPPO("MultiInputPolicy", env)
    with pytest.raises(ValueError, match="schedule must be a TemperatureAnnealingScheduler"):
        MoEPPO(CrossMoEPolicy, env, schedule={"warmup": 1})
    env.close()


def test_atoms_are_computed_once_per_env_step_and_stored_with_the_observation(atoms_reads):
    """MoEPPO wraps its env in AtomsVecEnv: the rollout buffer holds the atoms, and no update recomputes them."""
    from crossmoe.integrations.sb3 import AtomsVecEnv
    from crossmoe.nethack import ATOMS, extract_atoms

    env = make_vec_env(lambda: make_env("NetHackScore-v0"), n_envs=2, seed=0)
    model = MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, n_steps=32, batch_size=32, n_epochs=2, seed=0)
    assert isinstance(model.env, AtomsVecEnv)
    assert model.observation_space["atoms"].shape == (len(ATOMS),)
    model.learn(64)
    assert atoms_reads and all(atoms_reads)  # every forward, rollout and update, read the stored atoms
    space = model.observation_space
    stored = {key: value.reshape(-1, *space[key].shape) for key, value in model.rollout_buffer.observations.items()}
    nle = {key: value.astype(space[key].dtype) for key, value in stored.items() if key != "atoms"}
    np.testing.assert_array_equal(stored["atoms"], extract_atoms(nle))
    env.close()


def test_predict_takes_the_env_s_own_observations_and_load_takes_an_unwrapped_env(tmp_path):
    env = make_env("NetHackScore-v0", seed=0)
    model = MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(32)
    obs, _ = env.reset(seed=5)
    action, _ = model.predict(obs, deterministic=True)
    with_atoms = model.env._with_atoms({key: value[None] for key, value in obs.items()})
    tensor, _ = model.policy.obs_to_tensor(with_atoms)
    assert int(action) == int(model.policy.model(tensor).logits.argmax(-1)[0])
    model.save(tmp_path / "agent.zip")
    loaded = MoEPPO.load(tmp_path / "agent.zip", env=make_env("NetHackScore-v0", seed=1))
    assert "atoms" in loaded.env.observation_space.spaces
    assert loaded.predict(obs, deterministic=True)[0] == action
    loaded.set_env(make_env("NetHackScore-v0", seed=2))
    loaded.learn(32, reset_num_timesteps=False)
    env.close()


# kickstarting


@pytest.mark.parametrize("kind", ["cross_entropy", "top_set"])
def test_the_teacher_loss_reaches_the_gradient_once(nethack_play, kind):
    """With a teacher weight, PPO's loss from evaluate_actions gains exactly coef x distillation_loss's gradient."""
    from crossmoe.integrations.sb3 import TEACHER_KEY
    from crossmoe.losses import distillation_loss

    obs, space = _nethack_batch(nethack_play)
    teacher = torch.softmax(torch.randn(len(obs["glyphs"]), 23), -1)
    obs[TEACHER_KEY] = teacher
    space = spaces.Dict({**space.spaces, TEACHER_KEY: spaces.Box(0.0, 1.0, (23,), np.float32)})
    actions = torch.arange(len(teacher)) % 23
    policy = CrossMoEPolicy(space, spaces.Discrete(23), lambda _: 3e-4, **SMALL)
    policy.teacher_coef, policy.teacher_loss = 2.5, kind
    values, log_prob, _ = policy.evaluate_actions(obs, actions)
    (log_prob.exp().mean() + values.square().mean()).backward()
    got = {name: p.grad.clone() for name, p in policy.model.named_parameters() if p.grad is not None}

    policy.zero_grad()
    output = policy.model(restore_dtypes(obs, space))
    log_prob = torch.distributions.Categorical(logits=output.logits).log_prob(actions)
    distill = distillation_loss(output.logits, teacher, kind=kind)
    (log_prob.exp().mean() + output.value.square().mean() + 2.5 * distill).backward()
    for name, parameter in policy.model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(got[name], parameter.grad, msg=name)
    assert policy.aux_log["teacher/distill_loss"]


def test_a_rules_teacher_is_computed_once_per_env_step_and_pulls_the_policy(tmp_path, monkeypatch):
    from crossmoe.integrations.sb3 import TEACHER_KEY, TeacherVecEnv
    from crossmoe.nethack import RuleAgent
    from crossmoe.schedule import DistillationSchedule

    calls = []
    action_probs = RuleAgent.action_probs

    def spy(self, obs):
        calls.append(len(obs["blstats"]))
        assert "atoms" in obs  # the atoms AtomsVecEnv stored, not computed again
        return action_probs(self, obs)

    monkeypatch.setattr(RuleAgent, "action_probs", spy)
    env = make_vec_env(lambda: make_env("NetHackScore-v0"), n_envs=2, seed=0)
    schedule = DistillationSchedule(20.0)
    model = MoEPPO(
        CrossMoEPolicy, env, policy_kwargs=SMALL, teacher="rules", teacher_schedule=schedule,
        n_steps=64, batch_size=64, n_epochs=4, learning_rate=1e-3, seed=0,
    )  # fmt: skip
    assert isinstance(model.env, TeacherVecEnv)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(640)
    assert calls == [2] * (1 + 640 // 2)  # the first reset, then one call per step of the 2 envs; none in 4 epochs
    rows = _progress(tmp_path)
    assert float(rows[-1]["train/teacher_coef"]) == 20.0
    distill = [float(row["train/teacher/distill_loss"]) for row in rows if row.get("train/teacher/distill_loss")]
    assert distill[-1] < distill[0] - 0.2, distill
    stored = model.rollout_buffer.observations[TEACHER_KEY].reshape(-1, 23)
    np.testing.assert_allclose(stored.sum(-1), 1.0, rtol=1e-5)
    model.save(tmp_path / "agent.zip")
    loaded = MoEPPO.load(tmp_path / "agent.zip", env=make_env("NetHackScore-v0", seed=1))
    assert loaded.teacher_name == "rules" and loaded.teacher_coef() == 20.0
    assert isinstance(loaded.env, TeacherVecEnv)
    env.close()


def test_a_softened_teacher_is_the_rules_mixed_with_uniform_play_and_survives_save(tmp_path):
    from crossmoe.integrations.sb3 import TEACHER_KEY, TeacherVecEnv
    from crossmoe.nethack import RuleAgent
    from crossmoe.teacher import SoftenedTeacher

    env = make_vec_env(lambda: make_env("NetHackScore-v0"), n_envs=2, seed=0)
    model = MoEPPO(
        CrossMoEPolicy, env, policy_kwargs=SMALL, teacher="rules", teacher_epsilon=0.1, n_steps=8, batch_size=16, seed=0
    )
    assert isinstance(model.env, TeacherVecEnv) and isinstance(model.env.teacher, SoftenedTeacher)
    obs = model.env.reset()
    rules = RuleAgent().action_probs(obs)
    np.testing.assert_allclose(obs[TEACHER_KEY], 0.9 * rules + 0.1 / 23, rtol=1e-6)
    model.save(tmp_path / "agent.zip")
    loaded = MoEPPO.load(tmp_path / "agent.zip", env=make_env("NetHackScore-v0", seed=1))
    assert loaded.teacher_epsilon == 0.1 and loaded.env.teacher.epsilon == 0.1
    env.close()


def test_bad_teacher_arguments_are_named():
    from crossmoe.integrations.sb3 import TeacherVecEnv

    env = make_env("NetHackScore-v0")
    with pytest.raises(ValueError, match="teacher must be one of"):
        MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, teacher="oracle")
    with pytest.raises(ValueError, match="teacher_schedule must be a DistillationSchedule"):
        MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, teacher="rules", teacher_schedule=3.0)
    with pytest.raises(ValueError, match="teacher_loss must be one of"):
        MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, teacher="rules", teacher_loss="js")
    with pytest.raises(ValueError, match=r"teacher_epsilon must be a probability in \[0, 1\], got 1.5"):
        MoEPPO(CrossMoEPolicy, env, policy_kwargs=SMALL, teacher="rules", teacher_epsilon=1.5)
    env.close()
    vec = make_vec_env(lambda: make_env("NetHackScore-v0"), n_envs=1, seed=0)
    with pytest.raises(TypeError, match="teacher must have an action_probs"):
        TeacherVecEnv(vec, teacher=object())
    vec.close()


def test_the_rules_pathway_starts_sb3_as_the_rules_and_survives_save_load(tmp_path):
    """``knowledge_pathway="rules"`` reaches the SB3 policy through ``policy_kwargs``: on the observations its
    env gives (atoms computed once per env step), a fresh policy puts most of its mass on the rule agent's
    actions, and a saved model loads with the same pathway."""
    from crossmoe.knowledge import RulePrior
    from crossmoe.nethack import RuleAgent

    env = make_vec_env(lambda: make_env("NetHackScore-v0"), n_envs=2, seed=0)
    kwargs = {**SMALL, "knowledge_pathway": "rules"}
    model = MoEPPO(CrossMoEPolicy, env, policy_kwargs=kwargs, n_steps=64, batch_size=64, n_epochs=1, seed=0)
    assert isinstance(model.policy.model.knowledge, RulePrior)
    rules = RuleAgent(model.policy_kwargs["action_set"])
    obs, rows = model.env.reset(), []
    for step in range(20):
        rows.append(obs)
        obs, *_ = model.env.step(np.array([step % 23, (3 * step) % 23]))
    batch = {key: np.concatenate([row[key] for row in rows]) for key in rows[0]}
    allowed = rules.action_probs(batch) > 0
    with torch.no_grad():
        probs = model.policy.get_distribution(model.policy.obs_to_tensor(batch)[0]).distribution.probs.numpy()
    mass = (probs * allowed).sum(1)
    assert (mass > 0.85).all(), mass  # e^5 / (e^5 + 22) at least, as in the network on its own

    model.learn(128)
    model.save(tmp_path / "agent.zip")
    loaded = MoEPPO.load(tmp_path / "agent.zip", env=make_vec_env(lambda: make_env("NetHackScore-v0"), n_envs=1))
    assert isinstance(loaded.policy.model.knowledge, RulePrior)
    env.close()
