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
from collections.abc import Sequence
from typing import Any

from .stats import welch

__all__ = ["check_target", "default_target", "higher_is_better", "time_to_target", "verdict"]

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


def _scale(metric: str) -> tuple[float, str]:
    """How a difference of the metric is written: accuracy in points, a loss as is."""
    return (100.0, "points") if metric == "accuracy" else (1.0, "loss")


def _better(diff: float, metric: str) -> bool:
    return diff > 0 if higher_is_better(metric) else diff < 0


def verdict(
    finals: Sequence[float | None],
    baseline_finals: Sequence[float | None],
    times: Sequence[float | None],
    baseline_times: Sequence[float | None],
    metric: str,
    budget: str = "time",
    *,
    void_speed: str | None = None,
) -> dict[str, Any]:
    """A method against the baseline at equal cost: both comparisons with their 95 % intervals, and a sentence.

    ``finals``: final test metrics per seed; ``times``: time to target per seed (None: not reached).
    ``budget``: what the runs had equal, ``"time"`` or ``"steps"`` (the sentence says which).
    ``void_speed``: why times cannot be compared (the sentence says it instead of any speed claim).
    """
    mine = [v for v in finals if v is not None]
    base = [v for v in baseline_finals if v is not None]
    accuracy = welch(mine, base)
    reached = [t for t in times if t is not None]
    base_reached = [t for t in baseline_times if t is not None]
    all_reached = bool(times) and len(reached) == len(times) and len(base_reached) == len(baseline_times)
    speed = {"diff": None, "low": None, "high": None, "p": None}
    if all_reached and min(reached + base_reached) > 0 and void_speed is None:
        speed = welch([math.log(t) for t in base_reached], [math.log(t) for t in reached])
    result = {"accuracy": accuracy, "speed": speed, "reached": len(reached), "runs": len(times)}
    if not mine or not base:
        result["text"] = "no finished runs to compare"
        return result
    at = "at equal time" if budget == "time" else "at equal steps"
    parts = []
    if speed["diff"] is not None and (speed["low"] > 0 or speed["high"] < 0):
        factor, low, high = (math.exp(speed[k]) for k in ("diff", "low", "high"))
        if speed["low"] > 0:
            parts.append(f"reaches the target {factor:.2f}x sooner [{low:.2f}, {high:.2f}]")
        else:
            parts.append(f"reaches the target {1 / factor:.2f}x later [{1 / high:.2f}, {1 / low:.2f}]")
    if not reached:
        parts.append(f"does not reach the target (0/{len(times)} seeds)")
    elif len(reached) < len(times):
        parts.append(f"reaches the target in {len(reached)}/{len(times)} seeds")
    if accuracy["diff"] is not None and (accuracy["low"] > 0 or accuracy["high"] < 0):
        scale, unit = _scale(metric)
        word = "better" if _better(accuracy["diff"], metric) else "worse"
        parts.append(
            f"{abs(accuracy['diff']) * scale:.2f} {unit} {word} {at} "
            f"[{accuracy['low'] * scale:+.2f}, {accuracy['high'] * scale:+.2f}]"
        )
    if accuracy["diff"] is None:  # one seed on a side: the differences, without an interval
        scale, unit = _scale(metric)
        diff = statistics.fmean(mine) - statistics.fmean(base)
        ratio = ""
        if reached and base_reached and void_speed is None:
            speed = statistics.fmean(base_reached) / statistics.fmean(reached)
            ratio = f", {speed:.2f}x the baseline's speed to target"
        parts.append(f"one seed, no interval: {diff * scale:+.2f} {unit} {at}{ratio}")
    elif not parts or all(p.startswith("reaches the target in") for p in parts):
        parts.append("no significant difference")
    if void_speed is not None:
        parts.append(void_speed)
    result["text"] = "; ".join(parts)
    return result
