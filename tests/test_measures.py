"""The metric and the budget as values: direction, how the report writes them, and the names refused."""

import dataclasses

import pytest

from layerwise.compare.measures import ACCURACY, LOSS, STEPS, TIME, Budget, Metric, budget_of, metric_of
from layerwise.compare.targets import margin_of, scale_of
from layerwise.tasks.base import METRICS


@pytest.mark.parametrize(
    ("name", "higher", "scale", "unit", "spec", "percent"),
    [("accuracy", True, 100.0, "points", ".2f", True), ("loss", False, 1.0, "loss", ".4g", False)],
)
def test_each_metric_carries_its_direction_and_scale(name, higher, scale, unit, spec, percent):
    metric = metric_of(name)
    assert isinstance(metric, Metric) and metric.name == name
    assert (metric.higher_is_better, metric.scale, metric.unit, metric.spec, metric.percent) == (
        higher,
        scale,
        unit,
        spec,
        percent,
    )
    assert scale_of(name) == (scale, unit)
    assert metric_of(metric) is metric


def test_margins_and_tolerances_are_points_for_accuracy_and_a_losss_own_units_or_percent():
    # accuracy: margin and tolerance in points (hundredths of the stored fraction)
    assert (ACCURACY.margin, ACCURACY.tolerance) == (0.5, 0.5)
    assert margin_of(ACCURACY) == 0.005 and margin_of(ACCURACY, 2.0) == 0.02
    # a loss: no default margin, a given one in its own units; its tolerance is percent of the loss
    assert (LOSS.margin, LOSS.tolerance) == (None, 1.0)
    assert margin_of(LOSS) is None and margin_of(LOSS, 0.02) == 0.02


def test_every_task_metric_has_a_value():
    assert {metric_of(name).name for name in METRICS} == set(METRICS)


def test_budgets_say_whether_runs_are_paced_by_a_clock():
    assert budget_of("time") is TIME and TIME.paced and TIME.equal == "at equal time"
    assert budget_of("steps") is STEPS and not STEPS.paced and STEPS.equal == "at equal steps"
    assert budget_of(TIME) is TIME and isinstance(TIME, Budget)


@pytest.mark.parametrize(
    ("lookup", "argument", "accepted", "name"),
    [
        (metric_of, "metric", "('accuracy', 'loss')", "perplexity"),
        (budget_of, "budget", "('steps', 'time')", "epochs"),
        (metric_of, "metric", "('accuracy', 'loss')", None),
    ],
)
def test_an_unknown_name_is_refused_naming_the_argument_and_what_it_accepts(lookup, argument, accepted, name):
    with pytest.raises(ValueError) as error:
        lookup(name)
    assert str(error.value) == f"{argument}: must be one of {accepted}, got {name!r}"


def test_the_values_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ACCURACY.higher_is_better = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TIME.paced = False  # type: ignore[misc]
