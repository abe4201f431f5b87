"""Property-based tests (hypothesis): invariants over generated schedules, module trees and stopping
points, which hand-picked cases miss. Example counts stay small: the whole file takes seconds."""

from __future__ import annotations

import io

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import layerwise
from layerwise import LayerwiseLR, recipes
from resume_case import CASES, TOTAL, build, train

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _optimizer(groups: int) -> torch.optim.Optimizer:
    params = [{"params": [nn.Parameter(torch.zeros(1))], "name": f"g{i}", "depth": i} for i in range(groups)]
    return torch.optim.SGD(params, lr=0.1)


def _scheduler(recipe: str, policy: str, groups: int, total: int) -> LayerwiseLR:
    chosen = None if recipe in ("staggered", "freezeout") else recipes.make_policy(policy)
    return LayerwiseLR(_optimizer(groups), total, schedule=recipes.build(recipe, groups, policy=chosen))


schedules = st.tuples(
    st.sampled_from(list(recipes.RECIPES)),
    st.sampled_from(list(recipes.POLICIES)),
    st.integers(1, 6),
    st.integers(1, 40),
)


@FAST
@given(schedules, st.data())
def test_a_stepped_schedule_is_its_closed_form_finite_non_negative_and_resumes_anywhere(spec, data):
    total = spec[-1]
    straight = _scheduler(*spec)
    stop = data.draw(st.integers(0, total + 3), label="resume step")
    seen = []
    for step in range(total + 3):  # past the end the final values hold
        lrs = [g["lr"] for g in straight.optimizer.param_groups]
        assert lrs == straight.lr_at(step)
        assert all(v >= 0 and v == v and v != float("inf") for v in lrs)
        seen.append(lrs)
        if step == stop:
            saved = io.BytesIO()
            torch.save(straight.state_dict(), saved)
        straight.optimizer.step()
        straight.step()
    if stop < total + 3:
        resumed = _scheduler(*spec)
        saved.seek(0)
        resumed.load_state_dict(torch.load(saved, weights_only=True))
        for step in range(stop, total + 3):
            assert [g["lr"] for g in resumed.optimizer.param_groups] == seen[step]
            resumed.optimizer.step()
            resumed.step()


@st.composite
def module_trees(draw) -> tuple[nn.Module, int]:
    """A random chain of Linear layers, some nested in Sequentials, some frozen, maybe one tied pair."""
    width = draw(st.integers(2, 5))
    count = draw(st.integers(1, 6))
    layers = [nn.Linear(width, width, bias=draw(st.booleans())) for _ in range(count)]
    for layer in layers:
        if draw(st.booleans()) and draw(st.booleans()):
            layer.requires_grad_(False)
    if count >= 2 and draw(st.booleans()):
        layers[-1].weight = layers[0].weight  # tied: one parameter, two modules
    children: list[nn.Module] = []
    while layers:
        take = draw(st.integers(1, len(layers)))
        block, layers = layers[:take], layers[take:]
        children.append(nn.Sequential(*block) if take > 1 and draw(st.booleans()) else block[0])
        if len(block) > 1 and not isinstance(children[-1], nn.Sequential):
            children.extend(block[1:])
    return nn.Sequential(*children), width


@FAST
@given(module_trees())
def test_every_trainable_parameter_is_in_exactly_one_group_in_a_stable_order(tree):
    model, width = tree
    trainable = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]  # tied ones once
    if not trainable:
        return
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, width))
    grouped = [p for g in part for p in g.params]
    assert len(grouped) == len({id(p) for p in grouped}) == len(trainable)  # each once, tied ones too
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
    again = layerwise.by_layer(model, sample_input=torch.zeros(2, width))
    assert [g.param_names for g in again] == [g.param_names for g in part]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert set(part.excluded) == frozen


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CASES), st.integers(0, TOTAL))
def test_every_technique_state_round_trips_at_any_step(case, steps):
    model, opt, techniques = build(case)
    train(model, opt, techniques, 0, steps)
    states = {"opt": opt, **techniques}
    saved = io.BytesIO()
    torch.save({name: obj.state_dict() for name, obj in states.items()}, saved)
    fresh_model, fresh_opt, fresh_techniques = build(case)
    fresh_model.load_state_dict(model.state_dict())
    saved.seek(0)
    loaded = torch.load(saved, weights_only=True)
    fresh = {"opt": fresh_opt, **fresh_techniques}
    for name, obj in fresh.items():
        obj.load_state_dict(loaded[name])
    for name in states:  # loading what was saved gives back the same state
        _assert_same(fresh[name].state_dict(), states[name].state_dict())


def _assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b or (a != a and b != b)  # NaN equals NaN here
