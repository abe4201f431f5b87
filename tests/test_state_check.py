"""Resuming from the wrong checkpoint fails clearly and loads nothing; freezing checks what it is given."""

import copy

import pytest
import torch

import layerwise
from layerwise import Freezer, HiDLR, Multirate
from resume_case import CASES, build, train


def _stateful(case, partition="layers", steps=3):
    """(model, optimizer, the object whose state_dict holds the technique) after a few steps."""
    model, opt, techniques = build(case, partition)
    train(model, opt, techniques, 0, steps)
    holder = next(iter(techniques.values())) if techniques else opt
    return model, opt, holder


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _snapshot(model, opt, holder):
    return copy.deepcopy(
        {
            "model": model.state_dict(),
            "grad": [p.requires_grad for p in model.parameters()],
            "opt": opt.state_dict(),
            "lrs": [g["lr"] for g in opt.param_groups],
            "holder": holder.state_dict(),
        }
    )


TECHNIQUE = {
    "llr": "LayerwiseLR",
    "freezeout": "FreezeOut",
    "unfreezing": "GradualUnfreezing",
    "multirate": "Multirate",
    "hidlr": "HiDLR",
    "random-subsets": "RandomSubsetMultirate",
    "secant": "SecantLR",
    "lisa": "LISA",
    "tempbalance": "TempBalance",
}


TECHNIQUES = [c for c in CASES if c != "muon"]  # the muon case's technique is FreezeOut (over the Muon split)


@pytest.mark.parametrize("target", TECHNIQUES)
def test_a_checkpoint_of_another_technique_is_refused_and_nothing_is_loaded(target):
    model, opt, holder = _stateful(target, steps=4)
    before = _snapshot(model, opt, holder)
    for source in TECHNIQUES:
        if source == target:
            continue
        saved = _stateful(source)[2].state_dict()
        with pytest.raises(ValueError, match=f"written by {TECHNIQUE[source]}; this is a {TECHNIQUE[target]}"):
            holder.load_state_dict(saved)
        assert _same(_snapshot(model, opt, holder), before), source


@pytest.mark.parametrize("case", [c for c in CASES if c != "random-subsets"])
def test_a_checkpoint_of_another_partition_is_refused_naming_the_groups(case):
    model, opt, holder = _stateful(case, steps=4)
    before = _snapshot(model, opt, holder)
    saved = _stateful(case, partition="coarse")[2].state_dict()
    with pytest.raises(ValueError, match=r"saved for groups \[.*'features'.*\], this .* has \[.*'conv'"):
        holder.load_state_dict(saved)
    assert _same(_snapshot(model, opt, holder), before)


def test_a_checkpoint_with_other_settings_is_refused_naming_the_setting():
    model, opt, holder = _stateful("freezeout")
    saved = holder.state_dict()
    other = layerwise.FreezeOut(model, opt, 14, t0=0.5, strategy="linear")
    with pytest.raises(ValueError, match=r"saved with t0=0\.3, this FreezeOut has t0=0\.5"):
        other.load_state_dict(saved)
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 1, 4, 4))
    multirate = Multirate.from_partition(part, fast=["head"], lr=0.3, k=5, momentum=0.9)
    with pytest.raises(ValueError, match=r"saved with periods=\[1, 3\], this Multirate has periods=\[1, 5\]"):
        multirate.load_state_dict(_stateful("multirate")[2].state_dict())


def test_a_base_optimizer_of_another_kind_is_refused():
    model, _, holder = _stateful("hidlr")
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 1, 4, 4))
    sgd_based = HiDLR(torch.optim.SGD(part.param_groups(lr=0.01)), update_every=2, model=model)
    with pytest.raises(ValueError, match="saved with base='AdamW', this HiDLR has base='SGD'"):
        sgd_based.load_state_dict(holder.state_dict())


def test_something_that_is_not_a_state_dict_is_a_type_error():
    _, _, holder = _stateful("freezeout")
    with pytest.raises(TypeError, match="state_dict: expected a dict written by FreezeOut"):
        holder.load_state_dict([1, 2])
    plain = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1).state_dict()
    with pytest.raises(ValueError, match="no 'technique' entry"):
        holder.load_state_dict(plain)


def test_freezer_refuses_an_optimizer_of_another_model_such_as_a_ddp_copys_inner_module():
    model, opt, _ = build("llr")
    replica = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"none of its parameters is model's \(Net\)"):
        Freezer(replica, opt)
    with pytest.raises(ValueError, match="none of its parameters"):
        layerwise.FreezeOut(replica, opt, 10)
    assert all(p.requires_grad for p in model.parameters())


def test_freezing_a_parameter_names_its_group_or_says_it_is_in_none():
    model, opt, _ = build("llr")
    opt.param_groups.pop()  # the head is no longer trained by this optimizer
    freezer = Freezer(model, opt)
    with pytest.raises(TypeError, match=r"parameter 'mid\.weight' is in group 'mid'"):
        freezer.freeze(model.mid.weight)
    with pytest.raises(TypeError, match=r"parameter 'head\.weight' is in no param group"):
        freezer.freeze(model.head.weight)
    with pytest.raises(ValueError, match=r"no group named \['conv.bias'\].*'conv.bias' is in group 'conv'"):
        freezer.freeze("conv.bias")
    assert freezer.frozen == () and all(p.requires_grad for p in model.parameters())


def _corrupt(case, change):
    """A state with the right identity but a broken inner part: refused, nothing loaded."""
    model, opt, holder = _stateful(case, steps=4)
    before = _snapshot(model, opt, holder)
    saved = copy.deepcopy(_stateful(case, steps=2)[2].state_dict())
    change(saved)
    with pytest.raises(ValueError) as error:
        holder.load_state_dict(saved)
    assert _same(_snapshot(model, opt, holder), before)
    return str(error.value)


def test_a_state_with_the_right_identity_but_a_broken_inner_part_loads_nothing():
    def unknown_frozen(s):
        s["freezer"]["frozen"] = ["nope"]

    def scheduler_of_other_length(s):
        s["scheduler"]["settings"]["total_steps"] = 99

    def one_part_short(s):
        s["parts"] = s["parts"][:1]

    def base_of_other_size(s):
        s["base"]["param_groups"][0]["params"] = []

    def lost_rates(s):
        del s["hidlr"]["eta"]

    def lost_secant_sums(s):
        del s["secant"]["sums"]

    assert "no group named ['nope']" in _corrupt("freezeout", unknown_frozen)
    assert "total_steps=99" in _corrupt("freezeout", scheduler_of_other_length)
    assert "1 parts saved, this Multirate has 2" in _corrupt("multirate", one_part_short)
    assert "saved param groups hold [0" in _corrupt("hidlr", base_of_other_size)
    assert "missing ['eta']" in _corrupt("hidlr", lost_rates)
    assert "missing ['sums']" in _corrupt("secant", lost_secant_sums)
    assert "missing ['steps']" in _corrupt("unfreezing", lambda s: s.pop("steps"))


def test_freezer_accepts_parameters_outside_the_model_beside_the_models_own():
    model, opt, _ = build("llr")
    temperature = torch.nn.Parameter(torch.ones(()))  # e.g. a learnable loss temperature
    opt.add_param_group({"params": [temperature], "name": "temperature"})
    freezer = Freezer(model, opt)
    freezer.freeze("temperature", "conv")
    assert not temperature.requires_grad and not model.conv.weight.requires_grad
