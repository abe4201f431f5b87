"""compare/runner.py: a run described by a RunSpec, and the found-LR capability."""

from __future__ import annotations

import pytest

from blobs import blobs_task
from layerwise.compare.runner import RunSpec, run, run_one
from layerwise.tasks import register_task

TASK = register_task(blobs_task("runner-blobs"))


def _same(a: dict, b: dict) -> None:
    for record in (a, b):
        for timing in ("wall_clock_s", "load", "step_s"):
            record.pop(timing)
        for point in record["curve"]:
            point.pop("seconds")
    assert a == b


def test_run_one_is_the_run_of_its_spec():
    keywords = {"seed": 2, "steps": 12, "policy": "constant", "eval_points": 2}
    _same(run_one(TASK, "freezeout", {"t0": 0.5}, **keywords), run(TASK, RunSpec("freezeout", {"t0": 0.5}, **keywords)))


def test_a_found_lr_optimizer_records_its_stats_and_the_others_do_not():
    hidlr = run(TASK, RunSpec("hidlr", {"update_every": 4}, steps=8, eval_points=1))
    baseline = run(TASK, RunSpec("baseline", steps=8, eval_points=1))
    assert "forward_passes" in hidlr["found_lr_stats"] and "found_lr_stats" not in baseline


def test_a_spec_is_frozen():
    with pytest.raises(AttributeError):
        RunSpec("baseline").seed = 1  # type: ignore[misc]
