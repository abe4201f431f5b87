"""Smith's thread, the rest: per-group minima and maxima of staggered 1cycles, input-first gradual
unfreezing, and soft freezing (FreezeOut's LRs without leaving the backward pass)."""

import pytest
import torch

import layerwise
from blobs import blobs_task
from layerwise import Freezer, GradualUnfreezing, StaggeredOneCycle
from layerwise.compare.methods import Build, build_setup, method_snippet, resolve_settings
from layerwise.compare.runner import run_one

TASK = blobs_task("smith-blobs", regime="fine-tuning")


def test_staggered_one_cycles_with_per_group_minima_and_maxima_follow_the_closed_form():
    rule = StaggeredOneCycle((0.2, 0.5), highs=(1.5, 0.5), lows=(0.1, 0.05), end=0.01)
    assert rule.multipliers(0.0, 2).tolist() == pytest.approx([0.1, 0.05])  # each starts at its minimum
    assert rule.multipliers(0.2, 2)[0] == pytest.approx(1.5) and rule.multipliers(0.5, 2)[1] == pytest.approx(0.5)
    assert rule.multipliers(0.1, 2)[0] == pytest.approx(0.1 + (1.5 - 0.1) * 0.5)  # halfway up, linear
    assert rule.multipliers(1.0, 2).tolist() == pytest.approx([0.015, 0.005])  # ends at end x its maximum
    plain = StaggeredOneCycle((0.2, 0.5))
    for p in (0.0, 0.1, 0.3, 0.9):  # without highs and lows: the old cycles
        expected = [layerwise.OneCycle(peak, 0.04, 4e-6)(p) for peak in (0.2, 0.5)]
        assert plain.multipliers(p, 2).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"highs: one value per group \(2\)"):
        StaggeredOneCycle((0.2, 0.5), highs=(1.0,))
    with pytest.raises(ValueError, match="first_high, last_high: give both or neither"):
        StaggeredOneCycle.spaced(3, first_high=1.5)


def test_input_first_gradual_unfreezing_trains_from_the_input_and_resumes():
    model = TASK.make_model()
    part = TASK.partition_of(model)
    opt = torch.optim.SGD(part.param_groups(lr=0.1))
    unfreezing = GradualUnfreezing(Freezer(model, opt), every=2, order="input-first")
    seen = []
    for _ in range(5):
        seen.append(sorted(unfreezing.freezer.frozen))
        unfreezing.step()
    assert seen == [["2", "4"], ["2", "4"], ["4"], ["4"], []]  # the head last
    other = TASK.make_model()
    again = GradualUnfreezing(Freezer(other, torch.optim.SGD(TASK.partition_of(other).param_groups(lr=0.1))), every=2)
    with pytest.raises(ValueError, match="order"):
        again.load_state_dict(unfreezing.state_dict())  # a head-first unfreezing refuses an input-first state
    with pytest.raises(ValueError, match="order: must be one of"):
        GradualUnfreezing(Freezer(model, opt), every=2, order="random")


def test_compare_gradual_unfreezing_takes_the_order_setting():
    model = TASK.make_model()
    build = Build(TASK, model, TASK.partition_of(model), 16, "cosine")
    settings = resolve_settings("gradual-unfreezing", {"order": "input-first"})
    setup = build_setup(build, "gradual-unfreezing", settings)
    assert sorted(setup.freezer.frozen) == ["2", "4"]
    assert "order='input-first'" in method_snippet(build, "gradual-unfreezing", settings)


def test_soft_freezing_has_freezeouts_learning_rates_and_freezes_nothing():
    hard = run_one(TASK, "freezeout", {"t0": 0.5}, seed=0, policy="constant", eval_points=1)
    soft = run_one(TASK, "freezeout-soft", {"t0": 0.5}, seed=0, policy="constant", eval_points=1)
    assert soft["lr"].keys() == hard["lr"].keys()
    for group, lrs in hard["lr"].items():  # the same per-group LRs at every step
        assert soft["lr"][group] == pytest.approx(lrs), group
    assert any(at is not None for at in hard["frozen_at"]) and not any(soft.get("frozen_at") or [])
    model = TASK.make_model()
    build = Build(TASK, model, TASK.partition_of(model), 16, "constant")
    setup = build_setup(build, "freezeout-soft", resolve_settings("freezeout-soft", {"t0": 0.5}))
    assert setup.freezer is None
