"""A run resumed with the model and optimizer but not the freezing technique's state is refused, before
anything changes, naming the technique's ``load_state_dict``; resuming properly, a fresh optimizer and a
technique added to a trained optimizer on purpose (``fresh=True``) still work."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import layerwise
import resume_case
from layerwise import AutoFreeze, FreezeOut, Freezer, GradualUnfreezing
from layerwise.freezing import FreezeWhenZero

TECHNIQUES = {"unfreezing": "GradualUnfreezing", "freezeout": "FreezeOut", "muon": "FreezeOut"}


def first_half(case: str) -> dict:
    """Model, optimizer and technique states after the first half of ``case`` (tests/resume_case.py)."""
    model, opt, techniques = resume_case.build(case)
    resume_case.train(model, opt, techniques, 0, resume_case.HALF)
    state = {"model": model.state_dict(), "opt": opt.state_dict()}
    state.update({name: t.state_dict() for name, t in techniques.items()})
    return copy.deepcopy(state)


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def weights(model: nn.Module) -> list[torch.Tensor]:
    """The parameters (a refused step still ran its forward, which moves BatchNorm's statistics)."""
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("case", ["unfreezing", "freezeout", "muon", "peft-unfreezing"])
def test_resuming_without_the_techniques_state_is_refused_before_anything_changes(case):
    saved = first_half(case)
    model, opt, techniques = resume_case.build(case)
    (technique,) = techniques.values()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])  # the technique's state forgotten
    before, frozen = weights(model), technique.freezer.frozen
    name = TECHNIQUES[case.removeprefix("peft-")]
    with pytest.raises(ValueError, match=rf"^{name}: starts at step 0, but the optimizer .*{name}\.load_state_dict"):
        resume_case.train(model, opt, techniques, resume_case.HALF, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))  # nothing stepped
    assert technique.freezer.frozen == frozen


def test_the_message_says_how_many_steps_the_optimizer_took_and_offers_both_ways_out():
    saved = first_half("unfreezing")  # Adam: its state counts the steps
    _model, opt, techniques = resume_case.build("unfreezing")
    opt.load_state_dict(saved["opt"])
    with pytest.raises(ValueError) as caught:
        techniques["unfreezing"].step()  # the technique's own first step: refused too
    message = str(caught.value)
    assert f"the optimizer has taken {resume_case.HALF} steps" in message
    assert "build GradualUnfreezing before loading the optimizer's state_dict" in message
    assert "GradualUnfreezing.load_state_dict(...)" in message and "fresh=True" in message
    assert techniques["unfreezing"].step_count == 0


@pytest.mark.parametrize("case", ["unfreezing", "freezeout", "muon"])
def test_resuming_with_the_techniques_state_is_exact(case):
    saved = first_half(case)
    model, opt, techniques = resume_case.build(case)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    for name, technique in techniques.items():
        technique.load_state_dict(saved[name])
    resume_case.train(model, opt, techniques, resume_case.HALF, resume_case.HALF)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), resume_case.straight(case)))


def _plain(seed: int = 0):
    torch.manual_seed(seed)
    model = resume_case.Net()
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 1, 4, 4))
    return model, part


def _train(model, opt, steps: range, *techniques) -> None:
    model.train()
    for step in steps:
        resume_case.take_step(model, opt, *resume_case._batch(step))
        for technique in techniques:
            technique.step()


def test_freezeout_built_after_the_optimizer_loaded_resumes_exactly_once_its_state_is_loaded():
    def build():
        model, part = _plain()
        return model, torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)

    model, opt = build()
    freezeout = FreezeOut(model, opt, resume_case.TOTAL, t0=0.3, strategy="linear")
    _train(model, opt, range(resume_case.HALF), freezeout)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "fo": freezeout.state_dict()})
    _train(model, opt, range(resume_case.HALF, resume_case.TOTAL), freezeout)

    again, opt2 = build()
    again.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    resumed = FreezeOut(again, opt2, resume_case.TOTAL, t0=0.3, strategy="linear")  # after the optimizer
    resumed.load_state_dict(saved["fo"])
    _train(again, opt2, range(resume_case.HALF, resume_case.TOTAL), resumed)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), snapshot(again)))


def test_gradual_unfreezing_built_on_a_loaded_optimizer_is_refused_before_it_freezes():
    saved = first_half("unfreezing")
    model, part = _plain()
    opt = torch.optim.Adam(part.param_groups(lr=0.01))
    opt.load_state_dict(saved["opt"])
    held = [p for p in model.parameters() if p in opt.state]
    assert 0 < len(held) < len(list(model.parameters()))  # the checkpoint's frozen group holds none
    with pytest.raises(ValueError, match=r"^GradualUnfreezing: starts at step 0.*build GradualUnfreezing before"):
        GradualUnfreezing(Freezer(model, opt), every=3)
    assert all(p.requires_grad for p in model.parameters())
    assert [p for p in model.parameters() if p in opt.state] == held  # no state dropped


def trained(cls=torch.optim.SGD, **options):
    """A model and an optimizer that has taken 3 steps."""
    model, part = _plain()
    opt = cls(part.param_groups(lr=0.05), **(options or {"momentum": 0.9}))
    _train(model, opt, range(3))
    return model, opt


def add_freezeout(model, opt, **kwargs):
    return FreezeOut(model, opt, 6, t0=0.3, strategy="linear", **kwargs)


def add_unfreezing(model, opt, **kwargs):
    return GradualUnfreezing(Freezer(model, opt), every=2, **kwargs)


def add_freeze_when_zero(model, opt, **kwargs):
    return FreezeWhenZero(Freezer(model, opt), ["conv", "mid", "head"], [2, 4, None], **kwargs)


def add_autofreeze(model, opt, **kwargs):
    return AutoFreeze(model, opt, interval=1, **kwargs)


ADDED = {
    "FreezeOut": add_freezeout,
    "GradualUnfreezing": add_unfreezing,
    "FreezeWhenZero": add_freeze_when_zero,
    "AutoFreeze": add_autofreeze,
}


@pytest.mark.parametrize("name", ADDED)
def test_a_technique_added_to_a_trained_optimizer_needs_fresh(name):
    model, opt = trained()
    if name == "GradualUnfreezing":  # it freezes when built: refused at once
        with pytest.raises(ValueError, match=rf"^{name}: starts at step 0.*fresh=True"):
            ADDED[name](model, opt)
    else:
        technique = ADDED[name](model, opt)
        before = weights(model)
        with pytest.raises(ValueError, match=rf"^{name}: starts at step 0.*{name}\.load_state_dict.*fresh=True"):
            _train(model, opt, range(3, 4), technique)
        assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))

    model, opt = trained()
    technique = ADDED[name](model, opt, fresh=True)
    _train(model, opt, range(3, 7), technique)
    assert technique.freezer.frozen  # it froze something, on purpose, on a trained optimizer


@pytest.mark.parametrize("name", ADDED)
def test_a_fresh_optimizer_with_initial_state_is_not_taken_for_a_trained_one(name):
    """Adagrad fills its state (step 0) when built."""
    model, part = _plain()
    opt = torch.optim.Adagrad(part.param_groups(lr=0.05))
    assert opt.state
    technique = ADDED[name](model, opt)
    _train(model, opt, range(6), technique)


def test_fresh_must_be_a_bool():
    model, opt = trained()
    with pytest.raises(TypeError, match="fresh: expected True or False, got 1"):
        add_freezeout(model, opt, fresh=1)


def test_freeze_when_zero_resumes_exactly_from_its_state_dict():
    def build():
        model, part = _plain()
        opt = torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9)
        return model, opt, add_freeze_when_zero(model, opt)

    model, opt, rule = build()
    _train(model, opt, range(3), rule)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "rule": rule.state_dict()})
    _train(model, opt, range(3, 7), rule)

    again, opt2, resumed = build()
    again.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    resumed.load_state_dict(saved["rule"])
    assert resumed.step_count == 3 and resumed.freezer.frozen == ("conv",)
    _train(again, opt2, range(3, 7), resumed)
    assert resumed.freezer.frozen == rule.freezer.frozen == ("conv", "mid")
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), snapshot(again)))
    with pytest.raises(ValueError, match=r"state_dict: saved with frozen_at=\[2, 4, None\]"):
        FreezeWhenZero(Freezer(again, opt2), ["conv", "mid", "head"], [3, 4, None]).load_state_dict(saved["rule"])
