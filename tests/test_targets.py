"""Time to target on hand-made curves, the default target, bad targets, and the verdict sentences."""

import math

import pytest

from layerwise.compare.targets import check_margin, check_target, default_target, margin_of, time_to_target, verdict


def _curve(*points, metric="accuracy"):
    return [{"seconds": s, f"test_{metric}": v} for s, v in points]


@pytest.mark.parametrize(
    ("points", "target", "expected"),
    [
        (((10, 0.5), (20, 0.7), (30, 0.9)), 0.8, 25.0),  # between the 2nd and 3rd evaluation
        (((10, 0.5), (20, 0.7), (30, 0.9)), 0.7, 20.0),  # exactly at an evaluation
        (((10, 0.85), (20, 0.9)), 0.8, 10.0),  # the first evaluation already reaches it: its time
        (((10, 0.5), (20, 0.82), (30, 0.78)), 0.8, 10 + 10 * 0.3 / 0.32),  # the first crossing counts
        (((10, 0.5), (20, 0.7)), 0.8, None),  # not reached
        (((10, 0.5), (20, math.nan), (30, 0.9)), 0.8, 30.0),  # no interpolation across a missing value
    ],
    ids=["between", "at-an-evaluation", "first-point", "first-crossing", "not-reached", "nan"],
)
def test_time_to_target_interpolates_between_evaluations(points, target, expected):
    result = time_to_target(_curve(*points), target, "accuracy")
    assert result == (None if expected is None else pytest.approx(expected))


def test_time_to_target_on_a_loss_goes_down():
    curve = _curve((10, 2.0), (20, 1.0), metric="loss")
    assert time_to_target(curve, 1.5, "loss") == pytest.approx(15.0)
    assert time_to_target(curve, 0.5, "loss") is None


def test_default_target_is_the_baseline_mean_minus_the_tolerance():
    assert default_target([0.80, 0.82], "accuracy") == pytest.approx(0.805)  # 0.5 points below
    assert default_target([0.80, 0.82], "accuracy", 2.0) == pytest.approx(0.79)
    assert default_target([2.0, 2.2], "loss") == pytest.approx(2.1 * 1.01)  # 1 % above a loss
    assert default_target([], "accuracy") is None and default_target([None], "accuracy") is None


@pytest.mark.parametrize(
    ("target", "metric", "match"),
    [
        (85, "accuracy", r"fraction in \(0, 1\]"),
        (0.0, "accuracy", "fraction"),
        (-1.0, "loss", ">= 0"),
        (math.inf, "loss", "finite"),
        ("0.8", "accuracy", "finite number"),
        (True, "accuracy", "finite number"),
    ],
    ids=["percent", "zero", "negative-loss", "inf", "string", "bool"],
)
def test_targets_outside_the_metric_range_are_refused(target, metric, match):
    with pytest.raises(ValueError, match=match):
        check_target(target, metric)


@pytest.mark.parametrize(
    ("margin", "metric", "match"),
    [
        (-0.5, "accuracy", r"--margin: a finite number > 0 \(accuracy points, or the loss's own units\), got -0.5"),
        (0, "accuracy", "got 0$"),
        (math.nan, "accuracy", "got nan"),
        (math.inf, "loss", "got inf"),
        ("0.5", "accuracy", "got '0.5'"),
        (True, "accuracy", "got True"),
        (100, "accuracy", r"--margin: accuracy points in \(0, 100\), e.g. 0.5 for half a point, got 100"),
        (150.0, "accuracy", r"in \(0, 100\)"),
    ],
    ids=["negative", "zero", "nan", "inf", "string", "bool", "a-whole-accuracy", "past-a-whole-accuracy"],
)
def test_margins_that_cannot_be_right_are_refused(margin, metric, match):
    with pytest.raises(ValueError, match=match):
        check_margin(margin, metric)


def test_a_margin_is_in_accuracy_points_or_the_losss_units():
    check_margin(None, "accuracy")
    check_margin(99.0, "accuracy")
    check_margin(150.0, "loss")  # a loss has no upper end
    assert margin_of("accuracy") == 0.005 and margin_of("accuracy", 2.0) == 0.02
    assert margin_of("loss") is None and margin_of("loss", 0.1) == 0.1


def test_verdict_says_equivalent_within_the_margin_with_toss_interval():
    base = [0.800, 0.810, 0.790, 0.805]
    close = [b + d for b, d in zip(base, (0.0004, -0.0002, 0.0001, 0.0003))]
    result = verdict(close, base, [None] * 4, [None] * 4, "accuracy", "steps")
    assert "equivalent at equal steps within ±0.50 points: +0.01 points [" in result["text"]
    assert result["text"].endswith("(paired t TOST)")
    assert "no significant difference" in verdict(close, base, [None] * 4, [None] * 4, "accuracy", margin=0.01)["text"]


def test_valid_targets_pass():
    check_target(None, "accuracy")
    check_target(0.85, "accuracy")
    check_target(0.1, "loss")


def test_verdict_reports_a_significant_speed_up_with_its_interval():
    result = verdict([0.80, 0.81, 0.80], [0.80, 0.80, 0.81], [10.0, 11.0, 10.5], [20.0, 21.0, 19.5], "accuracy")
    assert result["text"].startswith("reaches the target 1.9")
    assert "x sooner [" in result["text"] and result["reached"] == 3


def test_verdict_reports_worse_accuracy_at_equal_time():
    result = verdict([0.70, 0.71, 0.705], [0.80, 0.81, 0.805], [None] * 3, [20.0, 21.0, 19.0], "accuracy")
    assert "does not reach the target (0/3 seeds)" in result["text"]
    assert "10.00 points worse at equal time [" in result["text"]


def test_verdict_under_a_steps_budget_says_equal_steps():
    result = verdict([0.70, 0.71, 0.705], [0.80, 0.81, 0.805], [None] * 3, [20.0, 21.0, 19.0], "accuracy", "steps")
    assert "10.00 points worse at equal steps [" in result["text"] and "equal time" not in result["text"]
    assert verdict([0.82], [0.80], [10.0], [20.0], "accuracy", "steps")["text"].startswith(
        "one seed, no interval: +2.00 points at equal steps"
    )


def test_verdict_without_a_difference_says_so():
    result = verdict([0.80, 0.82, 0.81], [0.81, 0.80, 0.82], [10.0, 30.0, 20.0], [20.0, 12.0, 25.0], "accuracy")
    assert result["text"].startswith("no significant difference: +0.00 points [")  # the difference, measured
    assert result["text"].endswith("(paired t)")


def test_verdict_with_one_seed_gives_the_differences_without_an_interval():
    result = verdict([0.82], [0.80], [10.0], [20.0], "accuracy")
    assert result["text"] == "one seed, no interval: +2.00 points at equal time, 2.00x the baseline's speed to target"


def test_verdict_counts_seeds_that_miss_the_target():
    result = verdict([0.80, 0.81, 0.80], [0.80, 0.80, 0.81], [10.0, None, 11.0], [20.0, 21.0, 19.5], "accuracy")
    assert result["reached"] == 2 and "reaches the target in 2/3 seeds" in result["text"]


def test_a_speed_bound_from_a_censored_miss_is_written_unbounded():
    from layerwise.compare.stats import Decision
    from layerwise.compare.targets import _speed_text

    speed = Decision("better", "signed rank", 10, 10, 2.6, None, 0.05, 0.05, math.log(1.18), math.log(1.02), 49.0)
    assert _speed_text(speed) == "reaches the target 1.18x sooner [1.02, inf] (wilcoxon, sequential, 10 pairs)"


def test_pairs_by_seed_decide_what_the_unpaired_test_cannot():
    # the baseline's seeds spread 5 points; the method is 4.5-5 points ahead in every seed
    base = [0.77, 0.80, 0.82]
    ahead = [b + d for b, d in zip(base, (0.045, 0.050, 0.048))]
    result = verdict(ahead, base, [None] * 3, [None] * 3, "accuracy", "steps")
    assert result["accuracy"].test == "paired t" and result["accuracy"].low > 0
    assert "4.77 points better at equal steps" in result["text"] and "P(better) 1.00" in result["text"]
    unpaired_seeds = dict(zip((0, 1, 2), ahead)), dict(zip((3, 4, 5), base))
    shuffled = verdict(*unpaired_seeds, [], [], "accuracy")
    assert shuffled["accuracy"].test == "welch" and shuffled["text"].startswith("not judged, the seeds do not pair")


def test_a_method_that_misses_in_two_of_three_seeds_never_reads_as_sooner():
    result = verdict([0.8] * 3, [0.8] * 3, [1.0, None, None], [80.0, 90.0, 85.0], "accuracy")
    assert "sooner" not in result["text"] and "reaches the target in 1/3 seeds" in result["text"]
    assert result["speed"].test == "wilcoxon" and result["speed"].diff < 0


def test_every_pair_reached_compares_log_times_paired():
    result = verdict([0.8] * 3, [0.8] * 3, [10.0, 11.0, 10.5], [20.0, 21.0, 19.5], "accuracy")
    assert result["speed"].test == "paired t" and math.exp(result["speed"].diff) > 1.8
    assert result["text"].startswith("reaches the target 1.9")
