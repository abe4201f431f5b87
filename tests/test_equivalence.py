"""Equivalence within a margin (paired TOST), the futility stop and the correction over both questions:
against a hand-worked example and scipy, and in simulation within their stated rates."""

import math

import numpy as np
import pytest

import layerwise.compare.stats as stats_module
from layerwise.compare.stats import FIRST_LOOK, Question, decide, decide_fixed, decide_rounds, tost

stats = pytest.importorskip("scipy.stats")

# Four seed pairs of accuracy differences (points): mean 0.125, sd sqrt(0.071875 / 3) = 0.15478.
DIFFS = [1.0, -2.0, 0.0, 1.5]
POINTS = [d / 10 for d in DIFFS]


def test_tost_against_a_hand_worked_example():
    # margin 0.5: t of mean >= -0.5 is (0.0125 + 0.5) / 0.07739 = 6.622, of mean <= 0.5 is -6.299;
    # with 3 degrees of freedom the larger one-sided p-value is P(T3 <= -6.299) = 0.00404
    result = tost(POINTS, margin=0.5)
    se = math.sqrt(0.071875 / 3) / 10 * 10 / 2  # sd 0.15478 over sqrt(4)
    assert se == pytest.approx(0.07739, abs=1e-5)
    assert result.diff == pytest.approx(0.0125) and result.p == pytest.approx(0.00404, abs=1e-5)
    assert result.p == pytest.approx(stats.t.cdf((0.0125 - 0.5) / se, 3))
    half = stats.t.isf(0.05, 3) * se  # the 90 % interval: [-0.1696, +0.1946]
    assert (result.low, result.high) == pytest.approx((0.0125 - half, 0.0125 + half))
    assert (round(result.low, 4), round(result.high, 4)) == (-0.1696, 0.1946)


@pytest.mark.parametrize("margin", [0.05, 0.2, 0.5])
def test_tost_is_two_one_sided_paired_t_tests_of_scipy(margin):
    method = np.array([0.812, 0.815, 0.809, 0.820, 0.811, 0.816])
    baseline = np.array([0.810, 0.818, 0.805, 0.817, 0.813, 0.812])
    lower = stats.ttest_rel(method, baseline - margin, alternative="greater").pvalue  # mean <= -margin
    upper = stats.ttest_rel(method, baseline + margin, alternative="less").pvalue  # mean >= margin
    result = tost(method - baseline, margin)
    assert result.p == pytest.approx(max(lower, upper))
    assert (result.p <= 0.05) == (-margin < result.low and result.high < margin)


def test_tost_refuses_what_it_cannot_test():
    with pytest.raises(ValueError, match="at least 2 differences and a margin > 0"):
        tost([0.1], margin=0.5)
    with pytest.raises(ValueError, match="margin > 0"):
        tost([0.1, 0.2], margin=0.0)


def test_a_fixed_design_decides_equivalence_by_tost_at_its_level():
    decided = decide_fixed({"m": Question(tuple(POINTS), margin=0.5)})["m"]
    assert decided.verdict == "equivalent" and decided.rule == "fixed"
    result = tost(POINTS, margin=0.5)
    assert (decided.low, decided.high) == pytest.approx((result.low, result.high))  # TOST's 90 % interval
    wide = decide_fixed({"m": Question(tuple(POINTS), margin=0.1)})["m"]
    assert wide.verdict == "undecided" and wide.low < 0 < wide.high  # its 95 % interval holds zero


def test_the_sequential_rule_claims_equivalence_when_tost_crosses_the_one_sided_boundary():
    level, critical = stats_module.boundary(10, sides=1)
    assert critical == pytest.approx(tuple(stats.t.isf(level, np.arange(2, 10))))
    assert [round(c, 2) for c in critical] == [5.9, 4.03, 3.39, 3.08, 2.89, 2.77, 2.69, 2.63]
    decision = decide([0.02, -0.01, 0.01, 0.0], n_max=10, margin=0.5)
    assert decision.verdict == "equivalent" and decision.look == 3
    mean, se = 0.02 / 3, stats.sem([0.02, -0.01, 0.01])
    assert (decision.low, decision.high) == pytest.approx((mean - critical[0] * se, mean + critical[0] * se))
    assert decision.low > -0.5 and decision.high < 0.5


def test_a_claim_prints_an_interval_that_agrees_with_it():
    rng = np.random.default_rng(7)
    for shift in (0.0, 0.6, 1.5):
        for diffs in shift + rng.standard_normal((60, 8)):
            decision = decide(diffs.tolist(), n_max=10, margin=0.5)
            if decision.verdict in ("better", "worse"):
                assert (decision.low > 0) == (decision.verdict == "better") and not decision.low <= 0 <= decision.high
            elif decision.verdict == "equivalent":
                assert decision.low > -0.5 and decision.high < 0.5
            else:
                assert decision.low < 0 < decision.high


def test_a_signed_rank_claim_prints_its_own_interval():
    rng = np.random.default_rng(8)
    for shift in (0.0, 0.8):
        for diffs in shift + rng.standard_normal((40, 9)):
            ratios = np.where(diffs > 1.8, np.inf, diffs).tolist()  # a miss on the baseline's side
            decision = decide(ratios, n_max=10, statistic="signed rank")
            holds_zero = decision.low < 0 < decision.high
            assert holds_zero == (not decision.claimed), (ratios, decision)


def _seed_results(rng, runs, n_max, shift):
    """Accuracy differences in points, per-seed sd drawn in 0.5 to 3 points, half the variance shared."""
    sd = rng.uniform(0.5, 3.0, size=(runs, 1))
    shared = rng.standard_normal((runs, n_max)) * sd * math.sqrt(0.5)
    baseline = shared + rng.standard_normal((runs, n_max)) * sd * math.sqrt(0.5)
    return shift * sd + shared + rng.standard_normal((runs, n_max)) * sd * math.sqrt(0.5) - baseline


def _auto(diffs, margin=None, statistic="t", n_max=10):
    """``--seeds auto:n_max`` for one question: 3 seeds, then one more per round while it is open."""
    seeds = FIRST_LOOK
    while True:
        decision = decide(diffs[:seeds], n_max, margin=margin, statistic=statistic)
        if decision.verdict != "undecided" or seeds == n_max:
            return decision
        seeds += 1


def test_a_null_method_stops_early_for_futility_and_keeps_the_error_rate():
    # 2000 comparisons with no true difference, margin 0.5 points: a false claim is better or worse.
    # Standard error at 5 %: 0.0049, so 0.065 is three above. Without the futility stop every one of
    # them ran to 10 seeds (9.75 on average: a few are decided before); with it, about 4.
    diffs = _seed_results(np.random.default_rng(11), 2000, 10, 0.0)
    decisions = [_auto(row.tolist(), margin=0.5) for row in diffs]
    false = np.mean([d.verdict in ("better", "worse") for d in decisions])
    seeds = np.mean([d.pairs for d in decisions])
    futile = np.mean([d.verdict == "futile" for d in decisions])
    print(f"null: false {false:.4f}, futile {futile:.3f}, mean seeds {seeds:.2f}")
    assert false <= 0.065 and seeds < 5.0 and futile > 0.8


def test_the_futility_stop_costs_little_power():
    # 1000 comparisons at a true difference of 1 SD: decided better with and without the stop
    diffs = _seed_results(np.random.default_rng(3), 1000, 10, 1.0)
    stopped = np.mean([_auto(row.tolist()).verdict == "better" for row in diffs])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats_module, "FUTILITY", 0.0)
        unstopped = np.mean([_auto(row.tolist()).verdict == "better" for row in diffs])
    print(f"1 SD: better {stopped:.3f} with the futility stop, {unstopped:.3f} without")
    assert unstopped - 0.05 <= stopped <= unstopped and stopped > 0.5


def test_equivalence_at_the_margin_is_claimed_at_most_at_the_error_rate():
    # 2000 comparisons whose true difference is the margin itself (0.5 points), per-seed sd 0.1 to
    # 1 point (where equivalence can be reached): "equivalent" is the false claim; bound 5 % + 3 SE.
    rng = np.random.default_rng(12)
    sd = rng.uniform(0.1, 1.0, size=(2000, 1))
    decisions = [_auto(row.tolist(), margin=0.5) for row in 0.5 + sd * rng.standard_normal((2000, 10))]
    false = np.mean([d.verdict == "equivalent" for d in decisions])
    inside = [_auto(row.tolist(), margin=0.5) for row in sd[:500] * rng.standard_normal((500, 10))]
    power = np.mean([d.verdict == "equivalent" for d in inside])
    print(f"at the margin: equivalent {false:.4f}; at no difference: equivalent {power:.3f}")
    assert false <= 0.065 and power > 0.3


def _table(rng, methods=3, n_max=10):
    """One table under no true difference: both questions of each method, keyed (method, question).
    Accuracy as in the main job (margin 0.5 points); speed from log times of sd 0.3 with a miss past
    60 % above the budget's typical time, on either side."""
    sd = rng.uniform(0.5, 3.0)
    shared = rng.standard_normal(n_max) * sd * math.sqrt(0.5)
    baseline = shared + rng.standard_normal(n_max) * sd * math.sqrt(0.5)
    base_log = rng.normal(0.0, 0.3, n_max)
    questions = {}
    for name in "abcdefgh"[:methods]:
        accuracy = shared + rng.standard_normal(n_max) * sd * math.sqrt(0.5) - baseline
        log = rng.normal(0.0, 0.3, n_max)
        mine, base = np.where(log > 0.6, np.inf, log), np.where(base_log > 0.6, np.inf, base_log)
        with np.errstate(invalid="ignore"):
            speed = np.where(np.isinf(mine) & np.isinf(base), 0.0, base - mine)  # log(base time / method time)
        questions[(name, "accuracy")] = Question(tuple(accuracy), "t", True, 0.5)
        questions[(name, "speed")] = Question(tuple(speed), "signed rank")
    return questions


def test_both_questions_of_a_null_table_keep_the_familywise_rate():
    # 400 tables of 3 methods, nothing true: any claim of better, worse, sooner or later is false.
    # Standard error at 5 %: 0.011; 0.083 is three above. Holm per question alone reached 7.5 %.
    rng = np.random.default_rng(13)
    tables = [decide_rounds(_table(rng), 10) for _ in range(400)]
    false = np.mean([any(d.verdict in ("better", "worse") for d in t.values()) for t in tables])
    runs = np.mean([_runs(t) for t in tables])
    print(f"null tables: any false claim {false:.4f}, runs {runs:.1f} of 40")
    assert false <= 0.083 and runs < 26


def _runs(decisions):
    """The runs a table used: every method's seeds and the baseline's (as many as the longest)."""
    seeds = {}
    for (name, _), d in decisions.items():
        seeds[name] = max(seeds.get(name, 0), d.pairs)
    return sum(seeds.values()) + max(seeds.values())


def test_a_method_decided_on_accuracy_and_futile_on_speed_stops():
    clear = tuple(1.0 + 0.01 * k for k in range(10))  # 1 point better, steady: decided at the first look
    flat = (0.1, -0.1, 0.05, 0.0, -0.05, 0.1, -0.1, 0.05, 0.0, -0.05)  # speed: no trend at all
    decisions = decide_rounds({("m", "accuracy"): Question(clear), ("m", "speed"): Question(flat, "signed rank")}, 10)
    accuracy, speed = decisions[("m", "accuracy")], decisions[("m", "speed")]
    assert accuracy.verdict == "better" and accuracy.look == FIRST_LOOK
    assert speed.verdict == "futile" and speed.pairs == FIRST_LOOK  # the method stopped: no seed for speed alone
    assert speed.power < stats_module.FUTILITY


def test_a_futility_stop_is_final_when_the_level_rises():
    # a question stopped for futility stays stopped: a claim elsewhere raises its level, yet it gets no seed
    strong = Question(tuple(2.0 + 0.01 * k for k in range(10)))
    weak = Question((0.3, -0.4, 0.2, 0.1, 0.9, 1.1, 1.0, 0.8, 1.2, 0.9))
    decisions = decide_rounds({("s", "accuracy"): strong, ("w", "accuracy"): weak}, 10)
    assert decisions[("s", "accuracy")].verdict == "better"
    assert decisions[("w", "accuracy")].verdict == "futile" and decisions[("w", "accuracy")].pairs == FIRST_LOOK


def test_shaffers_count_keeps_a_margin_question_in_the_family_after_its_claim():
    clear = Question(tuple(1.0 + 0.01 * k for k in range(6)), margin=0.5)
    middle = Question((1.3, 0.0, 1.1, 0.2, 1.0, 0.3))  # paired t 2.91 on 5 degrees of freedom: p 0.033
    decided = decide_fixed({"clear": clear, "middle": middle})
    assert decided["clear"].verdict == "better" and decided["clear"].alpha == pytest.approx(0.025)
    # clear's "at least the margin apart" may still be true: middle stays at 5 %/2, not 5 %
    assert decided["middle"].verdict == "undecided" and decided["middle"].alpha == pytest.approx(0.025)
    without = decide_fixed({"clear": Question(clear.diffs), "middle": middle})
    assert without["middle"].verdict == "better" and without["middle"].alpha == 0.05  # Holm steps down


def test_wilcoxon_is_exact_where_a_method_missed_every_seed():
    # before scipy 1.15, ties made wilcoxon use the normal approximation: p = 0.046 instead of 0.125
    assert stats_module._signed_rank_p([math.inf] * 4) == pytest.approx(0.125)
    decided = decide_fixed({"m": Question((-math.inf,) * 4, "signed rank")})["m"]
    assert decided.verdict == "undecided"


def test_stored_seeds_past_the_cap_are_read_up_to_it():
    questions = {("m", "accuracy"): Question((0.3, -0.2, 0.1, 0.2, -0.1, 0.0, 0.1, -0.3, 0.2, 0.1, 0.4, 0.5))}
    decision = decide_rounds(questions, 10)[("m", "accuracy")]  # 12 stored pairs, auto:10
    assert decision.pairs <= 10
