"""compare/runner.py: a run described by a RunSpec, and the found-LR capability."""

from __future__ import annotations

import pytest
import torch

from blobs import blobs_task
from layerwise.compare.methods import resolve_settings
from layerwise.compare.runner import RunSpec, new_run, run, run_one
from layerwise.tasks import register_task
from layerwise.training import seeded_indices

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


def test_seed_s_of_two_methods_starts_from_the_same_weights_and_batches():
    task = blobs_task("paired-blobs")
    methods = ("baseline", "freezeout", "multirate")
    runs = {m: new_run(task, m, resolve_settings(m, {}), 20, "constant", seed=4) for m in methods}
    weights = {m: {k: v.clone() for k, v in model.state_dict().items()} for m, (model, _) in runs.items()}
    for method in ("freezeout", "multirate"):
        assert weights[method].keys() == weights["baseline"].keys()
        for key, value in weights["baseline"].items():
            torch.testing.assert_close(weights[method][key], value, rtol=0, atol=0)
    examples = len(task.load_data(None, False).train[1])
    first = [index for _, epoch, index in seeded_indices(examples, task.batch_size, seed=4, steps=20) if epoch == 0]
    again = [index for _, epoch, index in seeded_indices(examples, task.batch_size, seed=4, steps=5) if epoch == 0]
    for a, b in zip(first, again):
        assert torch.equal(a, b)
