"""Time to target and the one-line verdict of a method against the baseline.

The target is the baseline's final test metric (mean over seeds) minus a tolerance: 0.5 accuracy
points, or 1 % for a loss. A run's time to target is the training wall-clock at which its test
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

from .stats import Comparison, compare_seeds, compare_times, paired

__all__ = [
    "ALPHA",
    "check_target",
    "default_target",
    "higher_is_better",
    "speed_test",
    "time_to_target",
    "verdict",
    "verdict_tests",
]

DEFAULT_TOLERANCE = {"accuracy": 0.5, "loss": 1.0}
"""Default tolerance below the baseline: accuracy points, or percent of a loss."""


def higher_is_better(metric: str) -> bool:
    return metric == "accuracy"


def check_target(target: float | None, metric: str) -> None:
    """Refuse a target outside the metric's range: accuracy is a fraction in (0, 1], a loss is >= 0."""
    if target is None:
        return
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise ValueError(f"--target: a finite number, got {target!r}")
    if metric == "accuracy" and not 0 < target <= 1:
        raise ValueError(f"--target: an accuracy is a fraction in (0, 1] (0.85 for 85 %), got {target!r}")
    if metric == "loss" and target < 0:
        raise ValueError(f"--target: a loss target is >= 0, got {target!r}")


def default_target(baseline_finals: Sequence[float], metric: str, tolerance: float | None = None) -> float | None:
    """The baseline's mean final metric minus ``tolerance`` (accuracy points, or percent of a loss)."""
    finals = [v for v in baseline_finals if v is not None]
    if not finals:
        return None
    tolerance = DEFAULT_TOLERANCE[metric] if tolerance is None else tolerance
    mean = statistics.fmean(finals)
    return mean - tolerance / 100.0 if higher_is_better(metric) else mean * (1.0 + tolerance / 100.0)


def time_to_target(curve: Sequence[dict[str, Any]], target: float, metric: str) -> float | None:
    """Training seconds at which ``curve`` first reaches ``target`` (None: never)."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    previous = None
    for point in curve:
        value = point.get(f"test_{metric}")
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


def scale_of(metric: str) -> tuple[float, str]:
    """How a difference of the metric is written: accuracy in points, a loss as is."""
    return (100.0, "points") if metric == "accuracy" else (1.0, "loss")


def _better(diff: float, metric: str) -> bool:
    return diff > 0 if higher_is_better(metric) else diff < 0


PerSeed = Mapping[int, float | None] | Sequence[float | None]
"""Values by seed: a mapping, or a sequence whose positions are the seeds 0, 1, ..."""

ALPHA = 0.05
"""The error rate of every verdict (after the correction over a table's methods)."""


def _by_seed(values: PerSeed) -> dict[int, float | None]:
    return dict(values) if isinstance(values, Mapping) else dict(enumerate(values))


def speed_test(times: PerSeed, baseline_times: PerSeed) -> Comparison | None:
    """Speed to target over seed pairs, ``diff`` = log(baseline time / method time) (> 0: sooner).

    Every pair reached: the paired t on log times. A miss on either side (None): Wilcoxon's
    signed-rank test on the log ratios, where a miss outranks every reached time, so a method that
    misses in most seeds never reads as faster (``docs/verdicts.md``). None: fewer than 2 seeds.
    """
    mine = {s: math.inf if t is None else t for s, t in _by_seed(times).items()}
    base = {s: math.inf if t is None else t for s, t in _by_seed(baseline_times).items()}
    if len(mine) < 2 or len(base) < 2 or min(list(mine.values()) + list(base.values())) <= 0:
        return None
    if mine.keys() == base.keys() and all(map(math.isfinite, [*mine.values(), *base.values()])):
        seeds = sorted(mine)
        return paired([-math.log(mine[s]) for s in seeds], [-math.log(base[s]) for s in seeds])
    ranked = compare_times(mine, base)

    def flip(value: float | None) -> float | None:
        return None if value is None else -value

    return replace(ranked, diff=flip(ranked.diff), low=flip(ranked.high), high=flip(ranked.low))


def verdict_tests(
    finals: PerSeed, baseline_finals: PerSeed, times: PerSeed, baseline_times: PerSeed, metric: str
) -> dict[str, Comparison | None]:
    """The two comparisons behind a verdict: ``accuracy`` (paired by seed, Welch when unpaired) and ``speed``."""
    return {
        "accuracy": compare_seeds(_by_seed(finals), _by_seed(baseline_finals), higher_is_better(metric)),
        "speed": speed_test(times, baseline_times),
    }


def verdict(
    finals: PerSeed,
    baseline_finals: PerSeed,
    times: PerSeed,
    baseline_times: PerSeed,
    metric: str,
    budget: str = "time",
    *,
    void_speed: str | None = None,
    decided: Mapping[str, bool | None] | None = None,
) -> dict[str, Any]:
    """A method against the baseline at equal cost: both comparisons with their 95 % intervals, and a sentence.

    ``finals``: final test metrics per seed; ``times``: time to target per seed (None: not reached).
    ``budget``: what the runs had equal, ``"time"`` or ``"steps"`` (the sentence says which).
    ``void_speed``: why times cannot be compared (the sentence says it instead of any speed claim).
    ``decided``: whether ``accuracy`` and ``speed`` are decided after the table's correction or by the
    sequential rule (default: each comparison's own p-value at most :data:`ALPHA`).
    """
    tests = verdict_tests(finals, baseline_finals, times, baseline_times, metric)
    accuracy, speed = tests["accuracy"], tests["speed"] if void_speed is None else None
    decided = decided or {}
    mine = [v for v in _by_seed(finals).values() if v is not None]
    base = [v for v in _by_seed(baseline_finals).values() if v is not None]
    all_times = list(_by_seed(times).values())
    reached = [t for t in all_times if t is not None]
    result: dict[str, Any] = {"accuracy": accuracy, "speed": speed, "reached": len(reached), "runs": len(all_times)}
    if not mine or not base:
        result["text"] = "no finished runs to compare"
        return result

    def claimed(name: str, test: Comparison | None) -> bool:
        if test is None or test.diff is None:
            return False
        return bool(decided[name]) if name in decided else test.p is not None and test.p <= ALPHA

    parts = []
    if claimed("speed", speed):
        parts.append(_speed_text(speed))
    if all_times and not reached:
        parts.append(f"does not reach the target (0/{len(all_times)} seeds)")
    elif len(reached) < len(all_times):
        parts.append(f"reaches the target in {len(reached)}/{len(all_times)} seeds")
    if claimed("accuracy", accuracy):
        parts.append(_accuracy_text(accuracy, metric, budget))
    if accuracy.diff is None:  # one seed on a side: the differences, without an interval
        parts.append(_one_seed_text(mine, base, reached, _by_seed(baseline_times), metric, budget, void_speed))
    elif not parts or all(p.startswith("reaches the target in") for p in parts):
        parts.append(f"no significant difference: {_difference_text(accuracy, metric)}")
    if void_speed is not None:
        parts.append(void_speed)
    result["text"] = "; ".join(parts)
    return result


def _speed_text(speed: Comparison) -> str:
    """The speed claim: a factor sooner or later with its interval (capped where a side missed)."""
    if math.isinf(speed.diff):
        side = "reaches" if speed.diff > 0 else "misses"
        return f"{side} the target in most seeds where the other side does not ({speed.test})"
    bounds = [] if speed.low is None else [math.exp(max(-50.0, min(50.0, v))) for v in (speed.low, speed.high)]
    if speed.diff > 0:
        interval = f" [{_factor(bounds[0])}, {_factor(bounds[1])}]" if bounds else ""
        return f"reaches the target {math.exp(speed.diff):.2f}x sooner{interval} ({speed.test})"
    interval = f" [{_factor(1 / bounds[1])}, {_factor(1 / bounds[0])}]" if bounds else ""
    return f"reaches the target {math.exp(-speed.diff):.2f}x later{interval} ({speed.test})"


def _factor(value: float) -> str:
    """A bound of a speed factor; past 1000x it comes from a censored miss, so it is unbounded."""
    return "inf" if value > 1e3 else f"{value:.2f}"


def _accuracy_text(accuracy: Comparison, metric: str, budget: str) -> str:
    scale, unit = scale_of(metric)
    word = "better" if _better(accuracy.diff, metric) else "worse"
    at = "at equal time" if budget == "time" else "at equal steps"
    interval = f"[{accuracy.low * scale:+.2f}, {accuracy.high * scale:+.2f}]"
    share = ""
    if accuracy.wins is not None:
        share = f"; P(better) {accuracy.wins:.2f} [{accuracy.wins_low:.2f}, {accuracy.wins_high:.2f}]"
    return f"{abs(accuracy.diff) * scale:.2f} {unit} {word} {at} {interval} ({accuracy.test}{share})"


def _difference_text(accuracy: Comparison, metric: str) -> str:
    """An undecided accuracy difference as measured: signed, with its 95 % interval and test."""
    scale, unit = scale_of(metric)
    interval = f"[{accuracy.low * scale:+.2f}, {accuracy.high * scale:+.2f}]"
    return f"{accuracy.diff * scale:+.2f} {unit} {interval} ({accuracy.test})"


def _one_seed_text(
    mine: list[float],
    base: list[float],
    reached: list[float],
    baseline_times: Mapping[int, float | None],
    metric: str,
    budget: str,
    void_speed: str | None,
) -> str:
    scale, unit = scale_of(metric)
    at = "at equal time" if budget == "time" else "at equal steps"
    diff = statistics.fmean(mine) - statistics.fmean(base)
    base_reached = [t for t in baseline_times.values() if t is not None]
    ratio = ""
    if reached and base_reached and void_speed is None:
        ratio = f", {statistics.fmean(base_reached) / statistics.fmean(reached):.2f}x the baseline's speed to target"
    return f"one seed, no interval: {diff * scale:+.2f} {unit} {at}{ratio}"
