"""The verdict statistics against scipy and hand-worked examples, and the sequential rule in simulation."""

import math
import statistics

import numpy as np
import pytest

from layerwise.compare.stats import (
    FIRST_LOOK,
    NORMAL_FROM,
    Question,
    boundary,
    compare_seeds,
    compare_times,
    decide,
    decide_all,
    detectable,
    holm,
    log_ratios,
    paired,
    pairs_needed,
    reach,
    sizing,
    welch,
    win_share,
)

stats = pytest.importorskip("scipy.stats")

METHOD = [0.851, 0.842, 0.861, 0.839, 0.855, 0.848, 0.850]
BASELINE = [0.801, 0.845, 0.790, 0.812, 0.830, 0.848, 0.805]  # seed 5 ties, seed 1 loses


def test_paired_difference_matches_scipy():
    result = paired(METHOD, BASELINE)
    diffs = np.subtract(METHOD, BASELINE)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    assert result.test == "paired t" and result.n == 7
    assert result.diff == pytest.approx(diffs.mean())
    assert (result.low, result.high) == pytest.approx((low, high))
    assert result.p == pytest.approx(stats.ttest_rel(METHOD, BASELINE).pvalue)
    boot = stats.bootstrap(
        (METHOD, BASELINE),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=2000,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert result.bootstrap == pytest.approx((boot.low, boot.high))
    assert result.wins == pytest.approx(5.5 / 7)  # 5 won, 1 tie (half), 1 lost


def test_bootstrap_interval_only_from_six_pairs():
    assert paired(METHOD[:5], BASELINE[:5]).bootstrap is None
    assert paired(METHOD[:6], BASELINE[:6]).bootstrap is not None


def test_win_share_interval_is_wilsons():
    share, low, high = win_share([1, 1, 1, -1, 0, 1, 1, 1])  # 6.5 of 8
    z = stats.norm.ppf(0.975)
    # Wilson's interval: the p with |share - p| = z * sqrt(p (1 - p) / n), the roots of a quadratic
    n = 8
    roots = np.roots([1 + z * z / n, -(2 * share + z * z / n), share * share])
    assert share == pytest.approx(6.5 / 8)
    assert (low, high) == pytest.approx(tuple(sorted(roots)))
    assert win_share([-1.0, -2.0], higher_is_better=False)[0] == 1.0  # a loss: lower wins


def test_compare_seeds_pairs_by_seed_and_falls_back_to_welch():
    method = {2: 0.86, 0: 0.85, 1: 0.84}
    baseline = {0: 0.80, 1: 0.81, 2: 0.80}
    by_seed = compare_seeds(method, baseline)
    assert by_seed == paired([0.85, 0.84, 0.86], [0.80, 0.81, 0.80])  # aligned by seed, not by order
    unpaired = compare_seeds(method, {5: 0.80, 6: 0.81, 7: 0.79})
    assert unpaired.test == "welch"
    assert unpaired.p == pytest.approx(welch([0.86, 0.85, 0.84], [0.80, 0.81, 0.79])["p"])
    unfinished = compare_seeds({0: 0.85, 1: None, 2: 0.86}, baseline)  # seed 1 never finished: 0 and 2 pair
    assert unfinished == paired([0.85, 0.86], [0.80, 0.80])
    fewer = compare_seeds({0: 0.85, 1: 0.84}, baseline)  # a method that stopped early pairs with seeds 0 and 1
    assert fewer == paired([0.85, 0.84], [0.80, 0.81])
    one_pair = compare_seeds({0: 0.85}, {0: 0.80})
    assert one_pair.test == "welch" and one_pair.diff is None


def test_a_miss_counts_as_infinite_time():
    assert reach([30.0, 10.0, math.inf]) == reach([30.0, 10.0, math.inf])
    assert reach([30.0, 10.0, math.inf]).median == 30.0  # the miss is the slowest run, not dropped
    assert reach([30.0, 10.0, 20.0, math.inf]).median == 25.0
    assert reach([30.0, 10.0, math.inf, math.inf]).median == math.inf  # half missed
    assert reach([10.0, math.inf, math.inf]) == reach([math.inf, 10.0, math.inf])
    assert (reach([10.0, math.inf, math.inf]).reached, reach([10.0, math.inf, math.inf]).runs) == (1, 3)


def test_a_method_missing_two_of_three_seeds_never_looks_faster():
    always = {0: 80.0, 1: 90.0, 2: 85.0}
    mostly_missed = {0: 1.0, 1: math.inf, 2: math.inf}  # 80 times faster once, then two misses
    speed = compare_times(mostly_missed, always)
    assert speed.test == "wilcoxon" and speed.diff == math.inf and speed.wins == pytest.approx(1 / 3)
    assert log_ratios(mostly_missed, always) == [pytest.approx(-math.log(80.0)), math.inf, math.inf]
    # the misses outrank the one win: the signed-rank sum leans to "slower", never to "sooner"
    assert speed.p == pytest.approx(stats.wilcoxon([-1.0, 9.0, 9.0]).pvalue)
    sequential = decide(log_ratios(mostly_missed, always), n_max=10, higher_is_better=False, statistic="signed rank")
    assert sequential.value > 0 and sequential.verdict != "better"
    assert reach(list(mostly_missed.values())).median > reach(list(always.values())).median


def test_times_of_runs_that_all_missed_tie():
    missed = dict.fromkeys(range(3), math.inf)
    speed = compare_times(missed, missed)
    assert (speed.diff, speed.p, speed.wins) == (0.0, 1.0, 0.5)


def test_times_are_compared_on_the_log_scale():
    method = {seed: 40.0 + seed for seed in range(8)}
    baseline = {seed: 2 * (40.0 + seed) for seed in range(8)}
    baseline[7] = math.inf  # the baseline missed once: the method wins that pair outright
    speed = compare_times(method, baseline)
    assert math.exp(-speed.diff) == pytest.approx(2.0)  # twice as fast in the median pair
    assert speed.wins == 1.0 and speed.p == pytest.approx(stats.wilcoxon([-1.0] * 8).pvalue)
    assert (speed.low, speed.high) == (-math.inf, pytest.approx(-math.log(2.0)))  # 8 pairs: 1st and 8th of 8
    unpaired = compare_times(method, {0: 90.0, 1: 80.0, 9: math.inf})
    assert unpaired.test == "mann-whitney" and unpaired.diff < 0


def test_holm_against_a_hand_worked_example():
    # p = 0.01, 0.04, 0.03, 0.005 (m = 4); ascending: 0.005, 0.01, 0.03, 0.04
    # multiplied by 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; running maximum: 0.02, 0.03, 0.06, 0.06
    result = holm([0.01, 0.04, 0.03, 0.005])
    assert result.p == pytest.approx((0.03, 0.06, 0.06, 0.02))
    assert result.decided == (True, False, False, True) and result.correction == "holm"
    untested = holm([0.01, None, 0.04])  # m = 2: 0.02, 0.04
    assert untested.p[0] == pytest.approx(0.02) and untested.p[2] == pytest.approx(0.04)
    assert untested.p[1] is None and untested.decided == (True, False, True)
    off = holm([0.01, 0.04, 0.03, 0.005], correct=False)
    assert off.p == (0.01, 0.04, 0.03, 0.005) and all(off.decided) and off.correction == "none"
    assert holm([0.9, 0.5]).p == (1.0, 1.0)  # 2 * 0.5 = 1.0; then max(1.0, 0.9): capped at 1, never decreasing


def test_boundary_is_pococks_constant_level():
    level, critical = boundary(FIRST_LOOK)
    assert level == 0.05 and critical == pytest.approx((stats.t.isf(0.025, 2),))  # one look: the plain test
    level, critical = boundary(10)
    assert 0.005 < level < 0.05 and len(critical) == 8
    assert critical == pytest.approx(tuple(stats.t.isf(level / 2, np.arange(2, 10))))
    assert boundary(10) is boundary(10)  # computed once


def test_decide_reads_every_look_and_the_sign():
    assert decide([1.1, 0.9, 1.0, 1.2], n_max=10).verdict == "better"
    assert decide([-1.1, -0.9, -1.0], n_max=10).verdict == "worse"
    loss = decide([-1.1, -0.9, -1.0], n_max=10, higher_is_better=False)
    assert loss.verdict == "better" and loss.look == 3
    assert decide([1.0, 1.1], n_max=10).verdict == "undecided"  # before the first look
    crossed_early = decide([1.1, 0.9, 1.0, -5.0, 3.0], n_max=10)
    assert crossed_early.verdict == "better" and crossed_early.look == 3  # a decision stays made
    assert decide([1.0, 1.0, 1.0], n_max=10, statistic="signed rank").verdict == "undecided"  # ranks need 7 seeds
    with pytest.raises(ValueError, match="at most n_max"):
        decide([0.1] * 11, n_max=10)


def test_decide_all_steps_down_like_holm():
    middle = (0.63 + np.array([0.5, -0.5] * 5)).tolist()  # crosses at alpha/2, not at alpha/3
    assert decide(middle, 10, 0.05 / 3).verdict == "undecided" and decide(middle, 10, 0.025).verdict == "better"
    null = Question(tuple([0.1, -0.1] * 5))
    table = {"other": null, "middle": Question(tuple(middle)), "null": null}
    alone = decide_all(table, n_max=10)  # nothing decided: alpha/3
    assert alone["middle"].verdict == "undecided" and alone["middle"].alpha == pytest.approx(0.05 / 3)
    stepped = decide_all({**table, "other": Question((1.0, 1.1, 0.9) * 3 + (1.0,))}, n_max=10)
    assert stepped["other"].alpha == pytest.approx(0.05 / 3)
    assert stepped["middle"].verdict == "better" and stepped["middle"].alpha == pytest.approx(0.025)
    assert stepped["null"].verdict == "undecided"
    uncorrected = decide_all(table, n_max=10, correct=False)
    assert uncorrected["middle"].verdict == "better" and uncorrected["middle"].alpha == 0.05


def _auto(diffs, n_max=10):
    """``--seeds auto:n_max`` for one method: 3 seeds, then one more per round while open (neither
    claimed nor futile)."""
    seeds = FIRST_LOOK
    while True:
        decision = decide(diffs[:seeds], n_max)
        if decision.verdict != "undecided" or seeds == n_max:
            return decision
        seeds += 1


def _seed_results(rng, runs, n_max, shift):
    """Per-seed accuracy points of a baseline and a method sharing each seed's noise (half the variance);
    the per-seed sd is drawn from the main job's range, 0.5 to 3 points."""
    sd = rng.uniform(0.5, 3.0, size=(runs, 1))
    shared = rng.standard_normal((runs, n_max)) * sd * math.sqrt(0.5)
    baseline = 80.0 + shared + rng.standard_normal((runs, n_max)) * sd * math.sqrt(0.5)
    method = 80.0 + shift * sd + shared + rng.standard_normal((runs, n_max)) * sd * math.sqrt(0.5)
    return method - baseline


def _auto_speed(diffs, n_max=10):
    seeds = FIRST_LOOK
    while True:
        decision = decide(diffs[:seeds], n_max, higher_is_better=False, statistic="signed rank")
        if decision.verdict != "undecided" or seeds == n_max:
            return decision
        seeds += 1


def test_the_signed_rank_rule_keeps_the_false_positive_rate_with_misses():
    # 1000 speed comparisons with no true difference: log times of the main job's spread, and a miss
    # (time past 60 % of the budget) on either side. Standard error at 5 %: 0.0069; 0.07 is three above.
    rng = np.random.default_rng(4)
    log_times = rng.normal(0.0, 0.3, size=(1000, 2, 10))
    times = np.where(log_times > 0.6, np.inf, np.exp(log_times))
    decided = np.mean([_auto_speed(log_ratios(dict(enumerate(m)), dict(enumerate(b)))).claimed for m, b in times])
    print(f"speed, false decided: {decided:.4f}")
    assert decided <= 0.07


def test_adding_seeds_until_decided_keeps_the_false_positive_rate():
    # 2000 comparisons with no true difference, each run to MAX = 10 seeds. At a true rate of 5 % the
    # share's standard error is sqrt(0.05 * 0.95 / 2000) = 0.0049: 0.065 is three of them above 5 %.
    # Repeated plain t tests at 5 % on 3..10 seeds would declare about 17 % (checked below).
    diffs = _seed_results(np.random.default_rng(1), 2000, 10, shift=0.0)
    decided = np.mean([_auto(row.tolist()).claimed for row in diffs])
    naive = np.mean([any(stats.ttest_1samp(row[:n], 0.0).pvalue < 0.05 for n in range(3, 11)) for row in diffs[:400]])
    print(f"false decided: {decided:.4f} (repeated plain t tests: {naive:.3f})")
    assert decided <= 0.065 and naive > 0.1


def test_holm_across_methods_keeps_the_familywise_rate():
    # 1000 tables of 3 methods with no true difference sharing one baseline: any decided method is a
    # false one. Standard error at 5 %: 0.0069; 0.07 is about three of them above.
    rng = np.random.default_rng(2)
    false = 0
    for _ in range(1000):
        diffs = {name: _seed_results(rng, 1, 10, 0.0)[0] for name in "abc"}
        seeds = FIRST_LOOK
        while True:
            decisions = decide_all({name: Question(tuple(d[:seeds])) for name, d in diffs.items()}, n_max=10)
            if all(d.verdict != "undecided" for d in decisions.values()) or seeds == 10:
                break
            seeds += 1
        false += any(d.claimed for d in decisions.values())
    print(f"family-wise false decided: {false / 1000:.4f}")
    assert false / 1000 <= 0.07


def test_a_one_sd_difference_is_decided_in_most_runs():
    diffs = _seed_results(np.random.default_rng(3), 1000, 10, shift=1.0)
    decisions = [_auto(row.tolist()) for row in diffs]
    better = np.mean([d.verdict == "better" for d in decisions])
    seeds = np.mean([d.pairs for d in decisions])
    print(f"1 SD: decided better in {better:.3f}, mean seeds {seeds:.2f}")
    assert better > 0.5 and not any(d.verdict == "worse" for d in decisions)


def test_detectable_difference_has_the_stated_power():
    effect = detectable(5, 2.0)
    critical = stats.t.isf(0.025, 4)
    power = stats.nct.sf(critical, 4, effect / 2.0 * math.sqrt(5)) + stats.nct.cdf(-critical, 4, effect / 2.0 * 5**0.5)
    assert power == pytest.approx(0.8, abs=1e-6)
    assert detectable(5, 2.0, alpha=0.01) > effect  # a stricter level needs a larger difference


@pytest.mark.parametrize(("diff", "sd"), [(1.0, 1.0), (0.5, 1.0), (-0.3, 2.0), (3.0, 1.0)])
def test_pairs_needed_is_the_smallest_with_80_percent_power(diff, sd):
    def power(n):
        critical, nc = stats.t.isf(0.025, n - 1), abs(diff) / sd * math.sqrt(n)
        return stats.nct.sf(critical, n - 1, nc) + stats.nct.cdf(-critical, n - 1, nc)

    n = pairs_needed(diff, sd)
    assert power(n) >= 0.8 and (n == 2 or power(n - 1) < 0.8)
    assert pairs_needed(0.0, 1.0) is None


def test_pairs_needed_takes_the_normal_closed_form_for_tiny_effects_without_overflow():
    z = statistics.NormalDist().inv_cdf
    closed = math.ceil(((z(0.975) + z(0.8)) / 0.003) ** 2)
    assert closed < NORMAL_FROM and pairs_needed(0.003, 1.0) == closed  # the search agrees where both run
    for effect in (1e-4, 1e-9, 1e-15):  # the doubling search would pass 2**63 pairs for the last ones
        assert pairs_needed(effect, 1.0) == math.ceil(((z(0.975) + z(0.8)) / effect) ** 2)


def test_sizing_calls_a_mean_within_rounding_of_zero_zero():
    diffs = [0.655 - 0.6575, 0.66 - 0.6525, 0.6575 - 0.6625]  # -0.25, +0.75, -0.5 points
    assert float(np.mean(diffs)) != 0.0
    assert sizing(diffs).needed is None and sizing(diffs).detectable is not None


def test_sizing_of_an_open_question():
    diffs = [0.4, -0.2, 0.6, 0.1]
    result = sizing(diffs)
    sd = float(np.std(diffs, ddof=1))
    assert result.pairs == 4
    assert result.detectable == pytest.approx(detectable(4, sd))
    assert result.needed == pairs_needed(float(np.mean(diffs)), sd)
    assert sizing([0.2, 0.2, 0.2]).needed is None  # no spread: nothing to size
