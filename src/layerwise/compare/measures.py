"""What a comparison measures and holds equal: the test metric (its direction and how the report writes
it) and the budget (equal time, paced by a clock, or equal steps).

A task names its metric and a comparison its budget by a string; :func:`metric_of` and
:func:`budget_of` turn them into these values once, and the verdicts, tables and plots read their
attributes instead of comparing strings.

Examples:
    >>> accuracy = metric_of("accuracy")
    >>> accuracy.higher_is_better, accuracy.scale, accuracy.unit
    (True, 100.0, 'points')
    >>> metric_of("loss").scale, metric_of("loss").unit
    (1.0, 'loss')
    >>> budget_of("time").paced, budget_of("steps").equal
    (True, 'at equal steps')
"""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import one_of

__all__ = ["ACCURACY", "LOSS", "STEPS", "TIME", "Budget", "Metric", "budget_of", "metric_of"]


@dataclass(frozen=True)
class Metric:
    """A test metric as the comparison judges and writes it.

    ``percent``: stored as a fraction in (0, 1] and written in percent, so its differences, equivalence
    margins and target tolerances are in points (hundredths); else stored and written in its own
    units, a difference or margin in those units and a target tolerance in percent of the value.
    ``tolerance``: the default target tolerance below the baseline (points, or percent of a loss);
    ``margin``: the default equivalence margin as written (None: no equivalence question unless given).
    """

    name: str
    higher_is_better: bool
    percent: bool
    tolerance: float
    margin: float | None

    @property
    def scale(self) -> float:
        """A stored value or difference times this is as the report writes it."""
        return 100.0 if self.percent else 1.0

    @property
    def unit(self) -> str:
        """A difference's unit as the report writes it: ``points``, or the metric's own name."""
        return "points" if self.percent else self.name

    @property
    def spec(self) -> str:
        """The format of a value as the report writes it (after :attr:`scale`)."""
        return ".2f" if self.percent else ".4g"


@dataclass(frozen=True)
class Budget:
    """What every run of a comparison has equal: ``time`` (each run paced by its clock to the budget's
    seconds) or ``steps``; ``equal`` is how a verdict says it."""

    name: str
    paced: bool

    @property
    def equal(self) -> str:
        return f"at equal {self.name}"


ACCURACY = Metric("accuracy", higher_is_better=True, percent=True, tolerance=0.5, margin=0.5)
"""Accuracy: the target 0.5 points below the baseline, equivalent within 0.5 points (the same half point)."""

LOSS = Metric("loss", higher_is_better=False, percent=False, tolerance=1.0, margin=None)
"""A loss: the target 1 % above the baseline's, no equivalence question unless a margin is given."""

TIME = Budget("time", paced=True)
STEPS = Budget("steps", paced=False)

_METRICS = {metric.name: metric for metric in (ACCURACY, LOSS)}
_BUDGETS = {budget.name: budget for budget in (STEPS, TIME)}


def metric_of(metric: str | Metric) -> Metric:
    """The metric a task names (a :class:`Metric` as is); ValueError naming ``metric`` otherwise.

    >>> metric_of("perplexity")
    Traceback (most recent call last):
    ...
    ValueError: metric: must be one of ('accuracy', 'loss'), got 'perplexity'
    """
    if isinstance(metric, Metric):
        return metric
    return _METRICS[one_of("metric", metric, _METRICS)]


def budget_of(budget: str | Budget) -> Budget:
    """The budget a comparison names (a :class:`Budget` as is); ValueError naming ``budget`` otherwise."""
    if isinstance(budget, Budget):
        return budget
    return _BUDGETS[one_of("budget", budget, _BUDGETS)]
