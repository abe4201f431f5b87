"""Time to target and the one-line verdict of a method against the baseline.

The target is the baseline's final test metric (mean over the seeds of its first round) minus a
tolerance: 0.5 accuracy points, or 1 % for a loss. A run's time to target is the training wall-clock at which its test
curve first reaches the target, interpolated linearly between the two evaluations around the
crossing (when the first evaluation already reaches it, its time is taken: an upper bound). A run
that never reaches it counts as "not reached", never dropped.

Examples:
    >>> curve = [{"seconds": 10.0, "test_accuracy": 0.6}, {"seconds": 20.0, "test_accuracy": 0.8}]
    >>> round(time_to_target(curve, 0.7, "accuracy"), 6)
    15.0
    >>> time_to_target(curve, 0.9, "accuracy") is None
    True
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .measures import Budget, Metric, budget_of, metric_of
from .stats import (
    Comparison,
    Decision,
    Question,
    compare_seeds,
    compare_times,
    decide_fixed,
    log_ratios,
    paired,
    win_share,
)

__all__ = [
    "ALPHA",
    "check_margin",
    "check_target",
    "decision_label",
    "default_target",
    "margin_of",
    "speed_test",
    "time_to_target",
    "verdict",
    "verdict_questions",
    "verdict_tests",
]


def check_target(target: float | None, metric: Metric | str) -> None:
    """Refuse a target outside the metric's range: accuracy is a fraction in (0, 1], a loss is >= 0."""
    metric = metric_of(metric)
    if target is None:
        return
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise ValueError(f"--target: a finite number, got {target!r}")
    if metric.percent and not 0 < target <= 1:
        raise ValueError(f"--target: an accuracy is a fraction in (0, 1] (0.85 for 85 %), got {target!r}")
    if not metric.percent and target < 0:
        raise ValueError(f"--target: a loss target is >= 0, got {target!r}")


def check_margin(margin: float | None, metric: Metric | str) -> None:
    """Refuse an equivalence margin that cannot be right: it is a positive, finite number; for accuracy
    in points (0.5 is half a point), so below 100."""
    metric = metric_of(metric)
    if margin is None:
        return
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"--margin: a finite number > 0 (accuracy points, or the loss's own units), got {margin!r}")
    if metric.percent and margin >= 100:
        raise ValueError(f"--margin: accuracy points in (0, 100), e.g. 0.5 for half a point, got {margin!r}")


def margin_of(metric: Metric | str, margin: float | None = None) -> float | None:
    """The equivalence margin in the metric's stored units (accuracy is a fraction): ``margin`` as given
    (accuracy points, or the loss's units), else the metric's default (None: no equivalence question).

    >>> margin_of("accuracy"), margin_of("accuracy", 1.0), margin_of("loss"), margin_of("loss", 0.02)
    (0.005, 0.01, None, 0.02)
    """
    metric = metric_of(metric)
    margin = metric.margin if margin is None else margin
    if margin is None:
        return None
    return margin / metric.scale


def default_target(
    baseline_finals: Sequence[float], metric: Metric | str, tolerance: float | None = None
) -> float | None:
    """The baseline's mean final metric less ``tolerance`` (accuracy points, or percent of a loss;
    default: the metric's :attr:`~layerwise.compare.measures.Metric.tolerance`)."""
    metric = metric_of(metric)
    finals = [v for v in baseline_finals if v is not None]
    if not finals:
        return None
    tolerance = metric.tolerance if tolerance is None else tolerance
    mean = statistics.fmean(finals)
    return mean - tolerance / 100.0 if metric.higher_is_better else mean * (1.0 + tolerance / 100.0)


def time_to_target(curve: Sequence[dict[str, Any]], target: float, metric: Metric | str) -> float | None:
    """Training seconds at which ``curve`` first reaches ``target`` (None: never)."""
    metric = metric_of(metric)
    sign = 1.0 if metric.higher_is_better else -1.0
    previous = None
    for point in curve:
        value = point.get(f"test_{metric.name}")
        if value is None or not math.isfinite(value):
            previous = None
            continue
        if sign * (value - target) >= 0:
            if previous is None:
                return float(point["seconds"])
            t0, v0 = previous
            fraction = (target - v0) / (value - v0)
            return t0 + fraction * (float(point["seconds"]) - t0)
        previous = (float(point["seconds"]), value)
    return None


def scale_of(metric: Metric | str) -> tuple[float, str]:
    """How a difference of the metric is written: accuracy in points, a loss as is (its
    :attr:`~layerwise.compare.measures.Metric.scale` and ``unit``)."""
    metric = metric_of(metric)
    return metric.scale, metric.unit


PerSeed = Mapping[int, float | None] | Sequence[float | None]
"""Values by seed: a mapping, or a sequence whose positions are the seeds 0, 1, ..."""

ALPHA = 0.05
"""The error rate of every verdict (after the correction over a table's methods)."""


def _by_seed(values: PerSeed) -> dict[int, float | None]:
    return dict(values) if isinstance(values, Mapping) else dict(enumerate(values))


def _times_by_seed(values: PerSeed) -> dict[int, float]:
    """Times to target by seed, a miss (None) infinite."""
    return {s: math.inf if t is None else t for s, t in _by_seed(values).items()}


def speed_test(times: PerSeed, baseline_times: PerSeed) -> Comparison | None:
    """Speed to target over seed pairs, ``diff`` = log(baseline time / method time) (> 0: sooner).

    Every pair reached: the paired t on log times. A miss on either side (None): Wilcoxon's
    signed-rank test on the log ratios, where a miss outranks every reached time, so a method that
    misses in most seeds never reads as faster (``docs/verdicts.md``). Seeds pair when both sides ran
    them. None: fewer than 2 seeds.
    """
    mine, base = _times_by_seed(times), _times_by_seed(baseline_times)
    if len(mine) < 2 or len(base) < 2 or min(list(mine.values()) + list(base.values())) <= 0:
        return None
    seeds = sorted(mine.keys() & base.keys())
    if len(seeds) >= 2 and all(math.isfinite(t) for s in seeds for t in (mine[s], base[s])):
        return paired([-math.log(mine[s]) for s in seeds], [-math.log(base[s]) for s in seeds])
    ranked = compare_times({s: mine[s] for s in seeds}, {s: base[s] for s in seeds}) if len(seeds) >= 2 else None
    ranked = ranked or compare_times(mine, base)

    def flip(value: float | None) -> float | None:
        return None if value is None else -value

    return replace(ranked, diff=flip(ranked.diff), low=flip(ranked.high), high=flip(ranked.low))


def verdict_tests(
    finals: PerSeed, baseline_finals: PerSeed, times: PerSeed, baseline_times: PerSeed, metric: Metric | str
) -> dict[str, Comparison | None]:
    """The two comparisons behind a verdict: ``accuracy`` (paired by seed, Welch when unpaired) and ``speed``."""
    return {
        "accuracy": compare_seeds(_by_seed(finals), _by_seed(baseline_finals), metric_of(metric).higher_is_better),
        "speed": speed_test(times, baseline_times),
    }


def verdict_questions(
    finals: PerSeed,
    baseline_finals: PerSeed,
    times: PerSeed,
    baseline_times: PerSeed,
    metric: Metric | str,
    margin: float | None = None,
    sequential: bool = False,
) -> dict[str, Question | None]:
    """The two questions the rules decide, on the seeds both sides finished, in seed order:
    ``accuracy``, the metric's differences (with the equivalence margin in the metric's units, see
    :func:`margin_of`); ``speed``, log(baseline time / method time), a miss infinite, by the paired t
    when every pair reached and no seeds are added, else by the signed rank. None: fewer than 2 pairs
    (a fixed number of seeds; the sequential rule waits for its first look instead), or a time <= 0.
    """
    metric = metric_of(metric)
    mine, base = _by_seed(finals), _by_seed(baseline_finals)
    shared = sorted(s for s in mine.keys() & base.keys() if mine[s] is not None and base[s] is not None)
    accuracy = Question(
        tuple(mine[s] - base[s] for s in shared), "t", metric.higher_is_better, margin_of(metric, margin)
    )
    my_times, base_times = _times_by_seed(times), _times_by_seed(baseline_times)
    timed = [s for s in shared if s in my_times and s in base_times]
    ratios = [-r for r in log_ratios({s: my_times[s] for s in timed}, {s: base_times[s] for s in timed})]
    statistic = "signed rank" if sequential or not all(map(math.isfinite, ratios)) else "t"
    speed = Question(tuple(ratios), statistic)
    positive = min([my_times[s] for s in timed] + [base_times[s] for s in timed], default=1.0) > 0
    least = 0 if sequential else 2
    return {
        "accuracy": accuracy if len(accuracy.diffs) >= least else None,
        "speed": speed if len(speed.diffs) >= least and positive else None,
    }


def verdict(
    finals: PerSeed,
    baseline_finals: PerSeed,
    times: PerSeed,
    baseline_times: PerSeed,
    metric: Metric | str,
    budget: Budget | str = "time",
    *,
    void_speed: str | None = None,
    decisions: Mapping[str, Decision | None] | None = None,
    margin: float | None = None,
    tests: Mapping[str, Comparison | None] | None = None,
    questions: Mapping[str, Question | None] | None = None,
) -> dict[str, Any]:
    """A method against the baseline at equal cost: both comparisons and a sentence that gives each
    decision with the test that made it and that test's interval.

    ``finals``: final test metrics per seed; ``times``: time to target per seed (None: not reached).
    ``budget``: what the runs had equal, ``"time"`` or ``"steps"`` (the sentence says which).
    ``void_speed``: why times cannot be compared (the sentence says it instead of any speed claim).
    ``decisions``: each question's decision, after the table's correction or by the sequential rule
    (default: each question alone, at :data:`ALPHA`, on all its pairs). ``margin``: the equivalence
    margin (:func:`margin_of`). ``tests`` and ``questions``: :func:`verdict_tests` and
    :func:`verdict_questions` of these runs when the caller has them already (a table's summary).
    """
    metric, budget = metric_of(metric), budget_of(budget)
    tests = tests or verdict_tests(finals, baseline_finals, times, baseline_times, metric)
    questions = questions or verdict_questions(finals, baseline_finals, times, baseline_times, metric, margin)
    if decisions is None:
        asked = {name: q for name, q in questions.items() if q is not None and (name == "accuracy" or not void_speed)}
        decisions = decide_fixed(asked, ALPHA, correct=False)
    accuracy, speed = tests["accuracy"], tests["speed"] if void_speed is None else None
    mine = [v for v in _by_seed(finals).values() if v is not None]
    base = [v for v in _by_seed(baseline_finals).values() if v is not None]
    all_times = list(_by_seed(times).values())
    reached = [t for t in all_times if t is not None]
    result: dict[str, Any] = {"accuracy": accuracy, "speed": speed, "reached": len(reached), "runs": len(all_times)}
    if not mine or not base:
        result["text"] = "no finished runs to compare"
        return result
    on_accuracy, on_speed = decisions.get("accuracy"), None if void_speed else decisions.get("speed")
    parts = []
    if on_speed is not None and on_speed.claimed:
        parts.append(_speed_text(on_speed))
    if all_times and not reached:
        parts.append(f"does not reach the target (0/{len(all_times)} seeds)")
    elif len(reached) < len(all_times):
        parts.append(f"reaches the target in {len(reached)}/{len(all_times)} seeds")
    if accuracy.diff is None:  # one seed on a side: the differences, without an interval
        parts.append(_one_seed_text(mine, base, reached, _by_seed(baseline_times), metric, budget, void_speed))
    elif on_accuracy is None:
        parts.append(f"not judged, the seeds do not pair: {_difference_text(accuracy, metric)}")
    else:
        parts.append(_accuracy_text(on_accuracy, questions["accuracy"], metric, budget))
    if on_speed is not None and on_speed.verdict == "futile":
        parts.append(f"speed undecided, stopped at {on_speed.look} seeds ({_chance(on_speed)})")
    if void_speed is not None:
        parts.append(void_speed)
    result["text"] = "; ".join(parts)
    return result


def _chance(decision: Decision) -> str:
    """Why a question stopped for futility: its chance of a decision by the seed cap."""
    return f"futile: {100 * decision.power:.0f} % chance of a decision by the seed cap"


def decision_label(decision: Decision) -> str:
    """The test that made a decision, as a verdict names it: the test, the sequential rule with the pairs
    it read, the level after the correction when it is not 5 %.

    >>> from layerwise.compare.stats import decide
    >>> decision_label(decide([1.0, 1.2, 1.1, 0.9], n_max=10, alpha=0.025))
    'paired t, sequential, 3 pairs, 5 %/2'
    """
    parts = ["paired t" if decision.statistic == "t" else "wilcoxon"]
    if decision.verdict == "equivalent":
        parts[0] += " TOST"
    if decision.rule == "sequential":
        parts.append(f"sequential, {decision.look or decision.pairs} pairs")
    if not math.isclose(decision.alpha, ALPHA):
        parts.append(f"5 %/{round(ALPHA / decision.alpha)}")
    return ", ".join(parts)


def _speed_text(speed: Decision) -> str:
    """The speed claim: a factor sooner or later with its test's interval (unbounded where a side missed)."""
    if math.isinf(speed.diff):
        side = "reaches" if speed.diff > 0 else "misses"
        return f"{side} the target in most seeds where the other side does not ({decision_label(speed)})"
    bounds = [math.exp(max(-50.0, min(50.0, v))) for v in (speed.low, speed.high)]
    if speed.diff > 0:
        return (
            f"reaches the target {math.exp(speed.diff):.2f}x sooner [{_factor(bounds[0])}, {_factor(bounds[1])}] "
            f"({decision_label(speed)})"
        )
    return (
        f"reaches the target {math.exp(-speed.diff):.2f}x later [{_factor(1 / bounds[1])}, {_factor(1 / bounds[0])}] "
        f"({decision_label(speed)})"
    )


def _factor(value: float) -> str:
    """A bound of a speed factor; past 1000x it comes from a censored miss, so it is unbounded."""
    return "inf" if value > 1e3 else f"{value:.2f}"


def _accuracy_text(decision: Decision, question: Question | None, metric: Metric, budget: Budget) -> str:
    """The accuracy decision with the interval of its test: better or worse (with the share of pairs
    won), equivalent within the margin, or the measured difference of an open or futile question."""
    scale, unit, at = metric.scale, metric.unit, budget.equal
    if decision.low is None:
        return f"no significant difference: {decision.diff * scale:+.2f} {unit} ({decision.pairs} pairs, no look yet)"
    interval = f"[{decision.low * scale:+.2f}, {decision.high * scale:+.2f}]"
    if decision.verdict in ("better", "worse"):
        share = ""
        if question is not None:
            wins, low, high = win_share(question.diffs[: decision.look], metric.higher_is_better)
            share = f"; P(better) {wins:.2f} [{low:.2f}, {high:.2f}]"
        size = f"{abs(decision.diff) * scale:.2f} {unit}"
        return f"{size} {decision.verdict} {at} {interval} ({decision_label(decision)}{share})"
    measured = f"{decision.diff * scale:+.2f} {unit} {interval} ({decision_label(decision)})"
    if decision.verdict == "equivalent":
        return f"equivalent {at} within ±{question.margin * scale:.2f} {unit}: {measured}"
    if decision.verdict == "futile":
        return f"no significant difference, stopped at {decision.look} seeds ({_chance(decision)}): {measured}"
    return f"no significant difference: {measured}"


def _difference_text(accuracy: Comparison, metric: Metric) -> str:
    """An unjudged accuracy difference as measured: signed, with its 95 % interval and test."""
    scale, unit = metric.scale, metric.unit
    interval = f"[{accuracy.low * scale:+.2f}, {accuracy.high * scale:+.2f}]"
    return f"{accuracy.diff * scale:+.2f} {unit} {interval} ({accuracy.test})"


def _one_seed_text(
    mine: list[float],
    base: list[float],
    reached: list[float],
    baseline_times: Mapping[int, float | None],
    metric: Metric,
    budget: Budget,
    void_speed: str | None,
) -> str:
    scale, unit, at = metric.scale, metric.unit, budget.equal
    diff = statistics.fmean(mine) - statistics.fmean(base)
    base_reached = [t for t in baseline_times.values() if t is not None]
    ratio = ""
    if reached and base_reached and void_speed is None:
        ratio = f", {statistics.fmean(base_reached) / statistics.fmean(reached):.2f}x the baseline's speed to target"
    return f"one seed, no interval: {diff * scale:+.2f} {unit} {at}{ratio}"
