"""Kickstarting parts: the distillation loss, its weight's schedule and the teacher protocol."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from crossmoe.losses import distillation_loss
from crossmoe.schedule import DistillationSchedule
from crossmoe.teacher import Teacher, teacher_probs


def _teacher(batch: int, actions: int, seed: int = 0) -> torch.Tensor:
    """Random teacher distributions with some zero-probability actions, as a rule teacher has."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(batch, actions, generator=generator) * (torch.rand(batch, actions, generator=generator) > 0.4)
    probs[:, 0] += 0.1  # every row keeps some mass
    return probs / probs.sum(-1, keepdim=True)


def test_matches_torch_cross_entropy_and_kl_div():
    logits, teacher = torch.randn(6, 5, dtype=torch.float64), _teacher(6, 5).double()
    expected_ce = F.cross_entropy(logits, teacher)  # probability targets
    expected_kl = F.kl_div(F.log_softmax(logits, -1), teacher, reduction="batchmean")
    torch.testing.assert_close(distillation_loss(logits, teacher), expected_ce.float())
    torch.testing.assert_close(distillation_loss(logits, teacher, kind="kl"), expected_kl.float())


def test_kl_is_zero_where_the_student_agrees_and_both_kinds_share_the_gradient():
    teacher = _teacher(4, 7)
    assert distillation_loss(teacher.log(), teacher, kind="kl").abs() < 1e-6  # log(0) = -inf logits: still finite
    logits = torch.randn(4, 7, requires_grad=True)
    (grad_ce,) = torch.autograd.grad(distillation_loss(logits, teacher), logits)
    (grad_kl,) = torch.autograd.grad(distillation_loss(logits, teacher, kind="kl"), logits)
    torch.testing.assert_close(grad_ce, grad_kl)
    torch.testing.assert_close(grad_ce, (logits.softmax(-1) - teacher).detach() / 4)  # d CE / d logits


def test_the_mask_averages_over_the_kept_states_only():
    logits, teacher = torch.randn(2, 8, 4), _teacher(16, 4).view(2, 8, 4)
    mask = torch.rand(2, 8) > 0.5
    mask[0, 0] = True
    kept = distillation_loss(logits[mask], teacher[mask])
    torch.testing.assert_close(distillation_loss(logits, teacher, mask.float()), kept)


def test_the_loss_alone_drives_the_student_to_the_teacher_on_fixed_states():
    torch.manual_seed(0)
    states, teacher = torch.randn(32, 10), _teacher(32, 6)
    student = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.Tanh(), torch.nn.Linear(64, 6))
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    before = (student(states).softmax(-1) - teacher).abs().sum(-1).max()
    for _ in range(1500):
        optimizer.zero_grad()
        distillation_loss(student(states), teacher).backward()
        optimizer.step()
    total_variation = 0.5 * (student(states).softmax(-1) - teacher).abs().sum(-1)
    assert before > 0.5 and total_variation.max() < 0.03


def test_the_gradient_reaches_the_student_and_not_the_teacher():
    states = torch.randn(8, 5)
    student, teacher_net = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
    loss = distillation_loss(student(states), teacher_net(states).softmax(-1))
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher_net.weight.grad is None and teacher_net.bias.grad is None


def test_half_precision_logits_are_computed_in_float32():
    logits, teacher = torch.randn(3, 4), _teacher(3, 4)
    loss = distillation_loss(logits.half(), teacher)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, distillation_loss(logits.half().float(), teacher))


def _rules_teacher(batch: int, actions: int, epsilon: float, seed: int = 0) -> torch.Tensor:
    """A softened rule teacher: uniform over a random non-empty set of actions, mixed with epsilon / A."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(batch, actions, generator=generator) > 0.6
    chosen[torch.arange(batch), torch.randint(actions, (batch,), generator=generator)] = True
    return (1 - epsilon) * chosen / chosen.sum(-1, keepdim=True) + epsilon / actions


def test_top_set_is_the_kl_of_the_bernoulli_one_of_the_teachers_top_actions_or_not():
    teacher = _rules_teacher(16, 7, epsilon=0.1)
    logits = torch.randn(16, 7, dtype=torch.float64)
    top = teacher >= teacher.amax(-1, keepdim=True) - 1e-6
    q = (teacher.double() * top).sum(-1)
    mass = (logits.softmax(-1) * top).sum(-1)
    bernoulli = torch.distributions.Bernoulli
    expected = torch.distributions.kl_divergence(bernoulli(probs=q), bernoulli(probs=mass)).mean()
    torch.testing.assert_close(distillation_loss(logits, teacher.double(), kind="top_set"), expected.float())


@given(st.integers(0, 10_000))
def test_top_set_ignores_how_the_student_splits_mass_among_the_top_actions(seed):
    teacher = _rules_teacher(8, 6, epsilon=0.1, seed=seed)
    logits = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed))
    top = teacher >= teacher.amax(-1, keepdim=True) - 1e-6
    shuffled = logits.clone()
    for row in range(8):  # a permutation of each row's logits inside its top set (a test, not a hot path)
        inside = top[row].nonzero().flatten()
        shuffled[row, inside] = logits[row, inside[torch.randperm(len(inside))]]
    same = distillation_loss(shuffled, teacher, kind="top_set")
    torch.testing.assert_close(same, distillation_loss(logits, teacher, kind="top_set"))


def test_top_set_is_cross_entropy_for_a_one_hot_teacher_and_zero_for_a_uniform_one():
    logits = torch.randn(5, 4)
    one_hot = F.one_hot(torch.tensor([0, 3, 1, 1, 2]), 4).float()
    torch.testing.assert_close(distillation_loss(logits, one_hot, kind="top_set"), distillation_loss(logits, one_hot))
    logits = torch.full((2, 4), float("-inf"))  # the other side of the partition is empty: no NaN
    logits[:, 1] = 0.0
    logits.requires_grad_(True)
    loss = distillation_loss(logits, torch.full((2, 4), 0.25), kind="top_set")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_top_set_leaves_the_choice_among_the_teachers_actions_to_the_rl_loss():
    # Hard rules allow actions 0-3 uniformly; a stand-in for the policy gradient prefers action 2.
    teacher = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0, 0.0]])
    mass_on_2 = {}
    for kind in ("kl", "top_set"):
        logits = torch.zeros(1, 6, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=0.05)
        for _ in range(1000):
            optimizer.zero_grad()
            rl = -0.5 * logits.log_softmax(-1)[0, 2]
            (3.0 * distillation_loss(logits, teacher, kind=kind) + rl).backward()
            optimizer.step()
        probs = logits.detach().softmax(-1)[0]
        assert probs[:4].sum() > 0.99  # both keep the student on the teacher's actions
        mass_on_2[kind] = probs[2].item()
    assert mass_on_2["top_set"] > 0.99 and mass_on_2["kl"] < 0.5  # kl holds it to the uniform split


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"teacher_probs": torch.full((3, 5), 0.2)}, "teacher_probs must have the shape"),
        ({"mask": torch.ones(4)}, "mask must have the leading shape"),
        ({"kind": "js"}, "kind must be one of"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    arguments = {"student_logits": torch.zeros(3, 4), "teacher_probs": torch.full((3, 4), 0.25), **kwargs}
    with pytest.raises(ValueError, match=match):
        distillation_loss(**arguments)


# the schedule


def test_constant_and_annealed_weights():
    constant = DistillationSchedule(3.0)
    assert [constant(step) for step in (0, 1e6, 1e9)] == [3.0, 3.0, 3.0]
    annealed = DistillationSchedule(2.0, anneal_start=100, anneal_end=300)
    assert [annealed(step) for step in (0, 99, 100, 200, 250, 300, 10_000)] == [2.0, 2.0, 2.0, 1.0, 0.5, 0.0, 0.0]
    assert DistillationSchedule(1.0, anneal_start=50, anneal_end=50)(50) == 0.0  # a step down
    anchored = DistillationSchedule(2.0, anneal_start=100, anneal_end=300, final_coef=0.5)
    assert [anchored(step) for step in (0, 100, 200, 300, 10_000)] == [2.0, 2.0, 1.25, 0.5, 0.5]


@given(
    coef=st.floats(0, 100),
    start=st.integers(0, 10**6),
    length=st.integers(0, 10**6),
    final_share=st.floats(0, 1),
    steps=st.lists(st.integers(0, 3 * 10**6), min_size=2, max_size=10),
)
def test_the_weight_never_rises_and_stays_in_range(coef, start, length, final_share, steps):
    final = coef * final_share
    schedule = DistillationSchedule(coef, anneal_start=start, anneal_end=start + length, final_coef=final)
    weights = [schedule(step) for step in sorted(steps)]
    assert all(final - 1e-9 <= w <= coef + 1e-9 for w in weights)
    assert all(later <= earlier for earlier, later in itertools.pairwise(weights))


def test_state_dict_round_trip_restores_the_same_weights():
    schedule = DistillationSchedule(1.5, anneal_start=10, anneal_end=20, final_coef=0.25)
    restored = DistillationSchedule(0.0)
    restored.load_state_dict(schedule.state_dict())
    assert [restored(s) for s in range(0, 25)] == [schedule(s) for s in range(0, 25)]
    assert repr(restored) == "DistillationSchedule(coef=1.5, anneal_start=10.0, anneal_end=20.0, final_coef=0.25)"
    # a checkpoint written before final_coef existed hands over to 0, as it did then
    restored.load_state_dict({"coef": 1.5, "anneal_start": 10, "anneal_end": 20})
    assert restored(20) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"coef": -1.0}, ValueError, "coef must be a finite number >= 0"),
        ({"coef": math.nan}, ValueError, "coef"),
        ({"coef": True}, TypeError, "coef must be a number"),
        ({"coef": 1.0, "anneal_start": 10}, ValueError, "anneal_start and anneal_end must be given together"),
        ({"coef": 1.0, "anneal_start": 10, "anneal_end": 5}, ValueError, "anneal_end must be >= anneal_start"),
        ({"coef": 1.0, "anneal_start": -1, "anneal_end": 5}, ValueError, "anneal_start must be"),
        ({"coef": 1.0, "final_coef": 0.5}, ValueError, "final_coef needs anneal_start and anneal_end"),
        ({"coef": 1.0, "anneal_start": 0, "anneal_end": 5, "final_coef": 2.0}, ValueError, "final_coef must be <="),
        ({"coef": 1.0, "anneal_start": 0, "anneal_end": 5, "final_coef": -0.1}, ValueError, "final_coef must be"),
    ],
)
def test_bad_schedules_are_refused_with_the_argument_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        DistillationSchedule(**kwargs)


def test_a_negative_step_is_refused():
    with pytest.raises(ValueError, match="step must be >= 0"):
        DistillationSchedule(1.0)(-1)


# the teacher protocol


class _Fixed:
    def __init__(self, probs):
        self.probs = probs

    def action_probs(self, obs):
        return self.probs


def test_teacher_probs_returns_float32_tensors_from_numpy_or_torch():
    probs = np.full((2, 4), 0.25)
    assert isinstance(_Fixed(probs), Teacher)
    out = teacher_probs(_Fixed(probs), {}, 4)
    assert out.dtype == torch.float32 and out.shape == (2, 4)
    torch.testing.assert_close(teacher_probs(_Fixed(torch.from_numpy(probs)), {}), out)


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.full((2, 3), 1 / 3), r"must return \(B, 4\)"),
        (np.full(4, 0.25), r"must return \(B, 4\)"),
        (np.full((2, 4), 0.3), "rows must sum to 1"),
        (np.array([[1.5, -0.5, 0, 0]]), "non-negative"),
        (np.array([[np.nan, 1, 0, 0]]), "finite"),
    ],
)
def test_teacher_probs_refuses_what_is_not_a_distribution(probs, match):
    with pytest.raises(ValueError, match=match):
        teacher_probs(_Fixed(probs), {}, 4)


def test_teacher_probs_needs_an_action_probs_method():
    with pytest.raises(TypeError, match="teacher must have an action_probs"):
        teacher_probs(object(), {})


def test_a_softened_teacher_mixes_in_uniform_play_and_refuses_a_bad_epsilon():
    from crossmoe.teacher import SoftenedTeacher

    hard = _Fixed(np.array([[0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]))
    soft = SoftenedTeacher(hard, epsilon=0.2)
    assert isinstance(soft, Teacher)
    expected = torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.45, 0.45, 0.05, 0.05]])
    torch.testing.assert_close(teacher_probs(soft, {}, 4), expected)
    torch.testing.assert_close(SoftenedTeacher(hard, 0.0).action_probs({}), teacher_probs(hard, {}))
    with pytest.raises(ValueError, match=r"epsilon must be a probability in \[0, 1\], got -0.1"):
        SoftenedTeacher(hard, -0.1)
    with pytest.raises(TypeError, match="teacher must have an action_probs"):
        SoftenedTeacher(object(), 0.1)
