import io

import entmax as entmax_ref
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from crossmoe import AuxLossWeights, RoutingState, SparsemaxRouter, TemperatureAnnealingScheduler


@st.composite
def schedules(draw, min_transition_length=0):
    warmup = draw(st.integers(0, 500))
    transition = warmup + draw(st.integers(min_transition_length, 500))
    total = transition + draw(st.integers(0, 500))
    start_temperature = draw(st.floats(0.05, 5.0))
    end_temperature = start_temperature * draw(st.floats(0.01, 1.0))
    final_temperature = draw(st.none() | st.floats(0.01, 1.0).map(lambda r: end_temperature * r))
    return TemperatureAnnealingScheduler(
        warmup,
        transition,
        total,
        start_temperature=start_temperature,
        end_temperature=end_temperature,
        final_temperature=final_temperature,
    )


def test_defaults_follow_the_episode_recipe():
    scheduler = TemperatureAnnealingScheduler()
    assert (scheduler.warmup, scheduler.transition, scheduler.total, scheduler.unit) == (1000, 3000, 5000, "episodes")
    assert (scheduler.start_temperature, scheduler.end_temperature) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("step", "phase"),
    [
        (0, "warmup"),
        (999, "warmup"),
        (999.5, "warmup"),
        (1000, "transition"),
        (2999, "transition"),
        (3000, "finetune"),
        (5000, "finetune"),
        (10**7, "finetune"),
    ],
)
def test_phases_are_half_open_intervals(step, phase):
    scheduler = TemperatureAnnealingScheduler()
    assert scheduler.phase(step) == phase
    assert scheduler(step).phase == phase


@given(step=st.floats(0, 999.999))
def test_warmup_is_softmax_at_start_temperature(step):
    state = TemperatureAnnealingScheduler(start_temperature=1.7)(step)
    assert state.alpha == 1.0
    assert state.temperature == 1.7


@given(step=st.floats(3000, 1e6))
def test_finetune_is_sparsemax_at_end_temperature(step):
    state = TemperatureAnnealingScheduler(end_temperature=0.3)(step)
    assert state.alpha == 2.0
    assert state.temperature == 0.3


def test_transition_midpoint_is_halfway_in_alpha_and_temperature():
    state = TemperatureAnnealingScheduler(start_temperature=1.0, end_temperature=0.5)(2000)
    assert state.alpha == pytest.approx(1.5)
    assert state.temperature == pytest.approx(0.75)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.6, 0.9])
def test_transition_follows_the_documented_smoothstep(fraction):
    scheduler = TemperatureAnnealingScheduler(start_temperature=2.0, end_temperature=0.5)
    smooth = 3 * fraction**2 - 2 * fraction**3
    state = scheduler(1000 + 2000 * fraction)
    assert state.alpha == pytest.approx(1.0 + smooth)
    assert state.temperature == pytest.approx(2.0 - 1.5 * smooth)


def test_transition_has_zero_slope_at_both_phase_ends():
    scheduler = TemperatureAnnealingScheduler()
    fraction = 1e-3
    step = fraction * (scheduler.transition - scheduler.warmup)
    assert (scheduler(scheduler.warmup + step).alpha - 1.0) / fraction < 1e-2
    assert (2.0 - scheduler(scheduler.transition - step).alpha) / fraction < 1e-2
    assert (1.0 - scheduler(scheduler.warmup + step).temperature) / fraction < 1e-2


def test_transition_alpha_rises_strictly_between_one_and_two():
    scheduler = TemperatureAnnealingScheduler()
    alphas = [scheduler(step).alpha for step in range(1001, 3000, 50)]
    assert all(1.0 < alpha < 2.0 for alpha in alphas)
    assert alphas == sorted(alphas) and len(set(alphas)) == len(alphas)


@given(scheduler=schedules(), steps=st.lists(st.floats(0, 2000), min_size=2, max_size=2))
def test_alpha_is_non_decreasing_and_temperature_non_increasing(scheduler, steps):
    early, late = sorted(steps)
    before, after = scheduler(early), scheduler(late)
    assert before.alpha <= after.alpha
    assert before.temperature >= after.temperature
    assert 1.0 <= before.alpha <= 2.0 and before.temperature > 0


@given(scheduler=schedules(min_transition_length=1))
def test_schedule_is_continuous_at_phase_boundaries(scheduler):
    epsilon = 1e-7
    boundaries = [scheduler.transition, scheduler.total] + ([scheduler.warmup] if scheduler.warmup > 0 else [])
    for boundary in boundaries:
        before, at = scheduler(boundary - epsilon), scheduler(boundary)
        assert before.alpha == pytest.approx(at.alpha, rel=1e-6, abs=1e-6)
        assert before.temperature == pytest.approx(at.temperature, rel=1e-6, abs=1e-6)


def test_schedule_is_a_pure_function_of_step():
    scheduler = TemperatureAnnealingScheduler(coefficients={"warmup": {"load_balance": 2.0}})
    first = scheduler(2500)
    assert scheduler(10) == scheduler(10)
    scheduler(10).coefficients["load_balance"] = 100.0
    assert scheduler(10).coefficients == {"load_balance": 2.0}
    assert scheduler(2500) == first


def test_state_dict_round_trip_into_default_instance_reproduces_every_value():
    configured = TemperatureAnnealingScheduler(
        warmup=37,
        transition=120,
        total=400,
        unit="updates",
        start_temperature=2.0,
        end_temperature=0.3,
        final_temperature=0.1,
        coefficients={"warmup": {"load_balance": 3.0}, "finetune": {"alignment": 0.5, "entropy": 2.0}},
    )
    buffer = io.BytesIO()
    torch.save(configured.state_dict(), buffer)
    buffer.seek(0)
    restored = TemperatureAnnealingScheduler()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict() == configured.state_dict()
    for step in range(600):
        assert restored(step) == configured(step), step
    assert restored(119.5) == configured(119.5)


def test_load_state_dict_validates_the_configuration():
    state = TemperatureAnnealingScheduler().state_dict()
    state["transition"] = 10
    with pytest.raises(ValueError, match="transition"):
        TemperatureAnnealingScheduler().load_state_dict(state)


def test_from_fractions_scales_the_recipe_to_any_budget():
    scheduler = TemperatureAnnealingScheduler.from_fractions(10_000)
    assert (scheduler.warmup, scheduler.transition, scheduler.total, scheduler.unit) == (
        2000,
        6000,
        10_000,
        "env_steps",
    )
    recipe = TemperatureAnnealingScheduler.from_fractions(5000, unit="episodes")
    assert recipe.state_dict() == TemperatureAnnealingScheduler().state_dict()
    custom = TemperatureAnnealingScheduler.from_fractions(1000, warmup=0.1, transition=0.5, end_temperature=0.25)
    assert (custom.warmup, custom.transition, custom.end_temperature) == (100, 500, 0.25)
    assert custom(750).temperature == 0.25


@pytest.mark.parametrize(("warmup", "transition"), [(-0.1, 0.5), (0.6, 0.2), (0.2, 1.5)])
def test_from_fractions_rejects_fractions_out_of_order(warmup, transition):
    with pytest.raises(ValueError, match="fractions"):
        TemperatureAnnealingScheduler.from_fractions(1000, warmup=warmup, transition=transition)


def test_final_temperature_decays_linearly_over_finetune():
    scheduler = TemperatureAnnealingScheduler(end_temperature=0.5, final_temperature=0.1)
    assert scheduler(3000).temperature == pytest.approx(0.5)
    assert scheduler(4000).temperature == pytest.approx(0.3)
    assert scheduler(5000).temperature == pytest.approx(0.1)
    assert scheduler(9000).temperature == pytest.approx(0.1)
    assert TemperatureAnnealingScheduler(end_temperature=0.5)(4000).temperature == 0.5


def test_progress_is_fraction_of_total_clipped():
    scheduler = TemperatureAnnealingScheduler()
    assert scheduler.progress(2500) == pytest.approx(0.5)
    assert scheduler.progress(0) == 0.0
    assert scheduler.progress(8000) == 1.0


def test_per_phase_coefficients_come_back_in_routing_state():
    multipliers = {"warmup": {"load_balance": 4.0}, "finetune": {"alignment": 0.5, "entropy": 2.0}}
    scheduler = TemperatureAnnealingScheduler(coefficients=multipliers)
    assert scheduler(0).coefficients == {"load_balance": 4.0}
    assert scheduler(2000).coefficients == {}
    assert scheduler(3000).coefficients == {"alignment": 0.5, "entropy": 2.0}
    scaled = AuxLossWeights(alignment=0.05, entropy=0.01).scaled(scheduler(4000).coefficients)
    assert (scaled.alignment, scaled.entropy) == (pytest.approx(0.025), pytest.approx(0.02))


def _module_with_routers():
    return nn.ModuleDict(
        {
            "router": SparsemaxRouter(8, 4, alpha=1.5),
            "head": nn.Sequential(nn.Linear(8, 8), SparsemaxRouter(8, 3, hidden_dim=0, alpha=1.3, temperature=2.0)),
            "critic": nn.Linear(8, 1),
        }
    )


def test_apply_sets_alpha_and_temperature_on_every_router():
    module = _module_with_routers()
    state = RoutingState("transition", 1.25, 0.8, {})
    assert state.apply(module) == 2
    routers = [child for child in module.modules() if isinstance(child, SparsemaxRouter)]
    assert [(router.alpha, router.temperature) for router in routers] == [(1.25, 0.8), (1.25, 0.8)]
    assert state.apply(nn.Linear(3, 3)) == 0


@pytest.mark.parametrize(
    ("step", "reference"),
    [
        (0, lambda z: torch.softmax(z, dim=-1)),
        (999, lambda z: torch.softmax(z, dim=-1)),
        (2000, lambda z: entmax_ref.entmax15(z, dim=-1)),
        (3000, lambda z: entmax_ref.sparsemax(z, dim=-1)),
        (4500, lambda z: entmax_ref.sparsemax(z, dim=-1)),
    ],
)
def test_schedule_drives_the_router(step, reference):
    scheduler = TemperatureAnnealingScheduler(start_temperature=1.5, end_temperature=0.4, final_temperature=0.2)
    module = _module_with_routers()
    state = scheduler(step)
    state.apply(module)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step)) * 2
    for router in (module["router"], module["head"][1]):
        out = router(x)
        torch.testing.assert_close(out.weights, reference(out.logits / state.temperature))


def test_sparsemax_phase_gives_exact_zeros_and_warmup_does_not():
    scheduler = TemperatureAnnealingScheduler(end_temperature=0.1)
    router = SparsemaxRouter(8, 6, hidden_dim=0)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)) * 3
    scheduler(0).apply(router)
    assert (router(x).weights > 0).all()
    scheduler(3000).apply(router)
    assert (router(x).weights == 0).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup": 2000, "transition": 1000}, "transition must be >= warmup"),
        ({"transition": 6000}, "total must be >= transition"),
        ({"warmup": -1}, "warmup must be >= 0"),
        ({"unit": "steps"}, "unit must be one of"),
        ({"start_temperature": 0.0}, "start_temperature must be"),
        ({"start_temperature": float("inf")}, "start_temperature must be"),
        ({"end_temperature": -0.5}, "end_temperature must be"),
        ({"end_temperature": float("nan")}, "end_temperature must be"),
        ({"final_temperature": 0.0}, "final_temperature must be"),
        ({"coefficients": {"pretrain": {"alignment": 1.0}}}, "coefficients keys must be phases"),
        ({"coefficients": {"warmup": {"balance": 1.0}}}, r"coefficients\['warmup'\] must name aux losses"),
        ({"coefficients": {"warmup": {"alignment": float("nan")}}}, "multipliers must be finite"),
        ({"warmup": float("nan")}, "warmup must be a finite step count, got nan"),
        ({"total": float("inf")}, "total must be a finite step count"),
    ],
)
def test_scheduler_rejects_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperatureAnnealingScheduler(**kwargs)


@pytest.mark.parametrize("step", [-1, -1e-9, float("nan")])
def test_scheduler_rejects_negative_step(step):
    scheduler = TemperatureAnnealingScheduler()
    with pytest.raises(ValueError, match="step must be >= 0"):
        scheduler(step)
    with pytest.raises(ValueError, match="step must be >= 0"):
        scheduler.phase(step)


def test_tensor_steps_give_plain_float_states():
    state = TemperatureAnnealingScheduler(10, 20, 30)(torch.tensor(15))
    assert type(state.alpha) is float and type(state.temperature) is float
    assert state.alpha == TemperatureAnnealingScheduler(10, 20, 30)(15).alpha
