import math

import numpy as np
import pytest

from layerwise import schedules as S


def reference_one_cycle(p, peak, start, end):
    if p < peak:
        return start + (1 - start) * p / peak
    return 1 + (end - 1) * (p - peak) / (1 - peak)


def reference_clr(iteration, stepsize, low, high):
    # Smith, "Cyclical Learning Rates for Training Neural Networks", triangular policy
    cycle = math.floor(1 + iteration / (2 * stepsize))
    x = abs(iteration / stepsize - 2 * cycle + 1)
    return low + (high - low) * max(0.0, 1 - x)


@pytest.mark.parametrize("p", np.linspace(0, 1, 41).tolist())
def test_policies_match_reference_formulas(p):
    assert S.Constant(0.3)(p) == 0.3
    drops = sum(p >= m for m in (0.5, 0.75, 0.9))
    assert S.StepDrops()(p) == pytest.approx(0.1**drops)
    assert S.Linear(1.0, 0.2)(p) == pytest.approx(1.0 - 0.8 * p)
    assert S.Cosine()(p) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
    assert S.OneCycle(0.3, 0.04, 1e-4)(p) == pytest.approx(reference_one_cycle(p, 0.3, 0.04, 1e-4))
    total = 1000
    assert S.Triangular(0.1, 1.0, cycles=2)(p) == pytest.approx(reference_clr(p * total, total / 4, 0.1, 1.0))


def test_warmup_then_policy():
    w = S.Warmup(S.Cosine(), fraction=0.1)
    assert w(0.0) == 0.0
    assert w(0.05) == pytest.approx(0.5)
    assert w(0.1) == pytest.approx(1.0)
    assert w(0.55) == pytest.approx(S.Cosine()(0.5))


def test_smith_three_layer_example_over_100_epochs():
    rule = S.LinearInTime(start=(2.0, 1.0, 0.5), end=(0.5, 1.0, 2.0), windows=((0, 0.1), (0, 1), (0, 1)))
    at = {epoch: rule.multipliers(epoch / 100, 3).tolist() for epoch in (0, 5, 10, 50, 100)}
    assert at[0] == [2.0, 1.0, 0.5]
    assert at[5] == pytest.approx([1.25, 1.0, 0.575])
    assert at[10] == pytest.approx([0.5, 1.0, 0.65])
    assert at[50] == pytest.approx([0.5, 1.0, 1.25])  # layer 1 stays at 0.5 after its window
    assert at[100] == pytest.approx([0.5, 1.0, 2.0])


def test_instant_window_switches_at_its_point():
    rule = S.LinearInTime(start=(3.0,), end=(1.0,), windows=((0.5, 0.5),))
    assert rule.multipliers(0.4999, 1).tolist() == [3.0]
    assert rule.multipliers(0.5, 1).tolist() == [1.0]


def test_discriminative_ratios_and_fastai_slice():
    mults = S.Discriminative(2.6).multipliers(0.0, 4)
    assert mults[-1] == 1.0
    assert (mults[1:] / mults[:-1]) == pytest.approx([2.6] * 3)
    spaced = S.GeometricRange(1e-3, 1e-1).multipliers(0.5, 3)
    assert spaced.tolist() == pytest.approx([1e-3, 1e-2, 1e-1])


def test_depth_ramp_reverses_by_the_end():
    ramp = S.depth_ramp(5, first=1.5, last=0.5)
    assert ramp.multipliers(0.0, 5).tolist() == pytest.approx([1.5, 1.25, 1.0, 0.75, 0.5])
    assert ramp.multipliers(0.5, 5).tolist() == pytest.approx([1.0] * 5)
    assert ramp.multipliers(1.0, 5).tolist() == pytest.approx([0.5, 0.75, 1.0, 1.25, 1.5])


def test_staggered_peaks_at_epochs_10_to_30_of_50():
    schedule = S.LayerSchedule(S.Constant(), S.StaggeredOneCycle.spaced(5, 0.2, 0.6))
    table = schedule.table(50, 5)
    assert table.argmax(axis=1).tolist() == [10, 15, 20, 25, 30]
    # each group is exactly the scalar 1cycle with its own peak
    for g, peak in enumerate((0.2, 0.3, 0.4, 0.5, 0.6)):
        one = S.OneCycle(peak_at=peak)
        assert table[g] == pytest.approx([one(s / 50) for s in range(50)])
    cos = S.StaggeredOneCycle((0.25,), anneal="cos")
    assert cos.multipliers(0.6, 1).tolist() == pytest.approx([S.OneCycle(0.25, anneal="cos")(0.6)])


def test_independent_per_group_policies():
    schedule = S.LayerSchedule([S.Cosine(), S.Constant(0.5), S.Linear()])
    assert schedule.num_groups == 3
    assert schedule.factors(0.5, 3).tolist() == pytest.approx([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="3 groups"):
        schedule.check_groups(4)


def test_zero_from_reports_the_step_from_which_lr_stays_zero():
    schedule = S.LayerSchedule(
        S.Constant(), S.LinearInTime((1.0, 1.0, 1.0), (0.0, 0.5, 0.0), ((0, 0.5), (0, 1), (0, 1)))
    )
    assert schedule.zero_from(100, 3) == [50, None, None]  # group 2 reaches 0 only at p = 1
    drops = S.LayerSchedule(S.StepDrops((0.5, 0.9), factor=0.0))
    assert drops.zero_from(10, 2) == [5, 5]


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: S.Constant(-1.0), "value"),
        (lambda: S.Linear(float("nan"), 0.0), "start"),
        (lambda: S.Cosine(1.0, float("inf")), "end"),
        (lambda: S.StepDrops((0.5, 1.5)), "milestones"),
        (lambda: S.StepDrops((0.75, 0.5)), "milestones"),
        (lambda: S.OneCycle(peak_at=-0.1), "peak_at"),
        (lambda: S.OneCycle(anneal="exp"), "anneal"),
        (lambda: S.Triangular(cycles=0), "cycles"),
        (lambda: S.Warmup(S.Cosine(), fraction=1.0), "fraction"),
        (lambda: S.Discriminative(0.0), "ratio"),
        (lambda: S.GeometricRange(0.0, 1.0), "lo"),
        (lambda: S.LinearInTime((1, 1), (1, 1), ((0, 0.5), (0.2, 1.2))), "windows"),
        (lambda: S.LinearInTime((1, 1), (1, 1), ((0, 0.5), (0.6, 0.2))), "windows"),
        (lambda: S.LinearInTime((1, 1), (1,)), "start, end, windows"),
        (lambda: S.LinearInTime((1, -2), (1, 1)), "start"),
        (lambda: S.StaggeredOneCycle((0.2, 1.3)), "peaks"),
        (lambda: S.depth_ramp(0), "num_groups"),
        (lambda: S.LayerSchedule([S.Cosine()] * 2, S.LinearInTime((1, 1, 1), (1, 1, 1))), "policy, layers"),
    ],
)
def test_bad_values_name_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_wrong_types_are_type_errors():
    with pytest.raises(TypeError, match="value"):
        S.Constant("1")
    with pytest.raises(TypeError, match="policy"):
        S.LayerSchedule(policy=3.0)
    with pytest.raises(TypeError, match="layers"):
        S.LayerSchedule(layers="discriminative")


def test_the_old_depth_ramp_name_warns_and_builds_the_same_rule():
    with pytest.warns(DeprecationWarning, match="depth_ramp"):
        old = S.DepthRamp(4, first=2.0, last=0.5)
    assert old == S.depth_ramp(4, first=2.0, last=0.5)
