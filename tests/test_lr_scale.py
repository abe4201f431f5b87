"""timm's layer decay (``lr_scale`` in the param groups) under layerwise's schedulers: applied, or refused."""

from __future__ import annotations

import math
from importlib.util import find_spec

import pytest
import torch

from _torchvision_stub import import_without_torchvision
from layerwise import Cosine, FreezeOut, HiDLR, LayerwiseLR, SecantLR, by_layer


def _timm():
    if find_spec("timm") is None:  # importorskip would import it, which needs the torchvision stand-ins
        pytest.skip("timm is in the dev extra")
    return import_without_torchvision("timm", "timm.optim", "timm.scheduler")


def _vit_groups(timm, timm_optim):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3)
    return timm_optim.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)


def test_layerwise_lr_applies_timms_lr_scale_as_timms_own_scheduler_does():
    timm, timm_optim, timm_scheduler = _timm()
    steps = 20
    theirs = torch.optim.AdamW(_vit_groups(timm, timm_optim), lr=1e-3)
    ours = torch.optim.AdamW(_vit_groups(timm, timm_optim), lr=1e-3)
    timm_sched = timm_scheduler.CosineLRScheduler(theirs, t_initial=steps, t_in_epochs=False)
    sched = LayerwiseLR(ours, steps, policy=Cosine())
    scales = sorted({g["lr_scale"] for g in ours.param_groups})
    assert len(scales) == 5 and scales[0] == pytest.approx(0.75**4)  # patch embedding .. head
    for step in range(steps):
        timm_sched.step_update(step)
        expected = [g["lr"] for g in theirs.param_groups]
        assert [g["lr"] for g in ours.param_groups] == pytest.approx(expected, rel=1e-12)
        assert sched.lr_at(step) == pytest.approx(expected, rel=1e-12)
        ours.step()  # no gradients: nothing moves
        sched.step()
    # the decay is really there: the first layer's group trains at 0.75**4 of the head's LR
    lrs = [g["lr"] / g["lr_scale"] for g in ours.param_groups]
    assert max(lrs) == pytest.approx(min(lrs), rel=1e-12)


def test_lr_scale_is_read_at_every_step_and_zero_scale_freezes_under_freezeout():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    part = by_layer(model, sample_input=torch.zeros(1, 4))
    groups = part.param_groups(lr=0.1)
    groups[0]["lr_scale"] = 0.0
    opt = torch.optim.SGD(groups, lr=0.1)
    freezeout = FreezeOut(model, opt, 10, t0=0.5)
    assert opt.param_groups[0]["lr"] == 0.0 and opt.param_groups[1]["lr"] > 0
    assert freezeout.scheduler.zero_from()[0] == 0
    opt.param_groups[1]["lr_scale"] = 0.5
    before = freezeout.scheduler.lr_at(1)[1]
    opt.param_groups[1]["lr_scale"] = 1.0
    assert freezeout.scheduler.lr_at(1)[1] == pytest.approx(2 * before)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "0.5"])
def test_a_bad_lr_scale_is_refused_naming_the_group(bad):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "name": "head", "lr_scale": bad}]
    opt = torch.optim.SGD(params, lr=0.1)
    with pytest.raises((ValueError, TypeError), match="param group 'head': lr_scale"):
        LayerwiseLR(opt, 10)
    assert opt.param_groups[0]["lr"] == 0.1  # nothing was changed


@pytest.mark.parametrize("technique", [HiDLR, SecantLR])
def test_techniques_that_find_their_lrs_refuse_lr_scale_with_the_fix(technique):
    timm, timm_optim, _ = _timm()
    base = torch.optim.SGD(_vit_groups(timm, timm_optim), lr=0.1)
    with pytest.raises(ValueError, match=r"lr_scale .* would be ignored: .*group\['lr'\] = lr \* group.pop"):
        technique(base)
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    wrapped = technique(plain)
    with pytest.raises(ValueError, match=r"lr_scale 0\.5"):
        wrapped.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.5})
    assert len(plain.param_groups) == 1
