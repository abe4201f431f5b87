"""PyTorch's scheduler and optimizer contracts, checked for every technique.

* The standard loop (``loss.backward(); optimizer.step(); scheduler.step()``) raises no call-order
  warning, for our schedulers and for a torch scheduler on top of each wrapping optimizer.
* A param group whose ``lr`` is a tensor is scheduled in place (as torch's own tests require), and
  TempBalance scales it in place and writes it back.
"""

import warnings

import pytest
import torch
from torch import nn

import layerwise
from layerwise.param_groups import ForeignLRWarning


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def _part(model):
    return layerwise.by_layer(model, sample_input=torch.zeros(1, 4))


def _sgd(model, lr=0.1):
    return torch.optim.SGD(_part(model).param_groups(lr=lr), lr=lr, momentum=0.9)


def _lisa(model):
    """LISA sampling 1 of the first two layers every 2 steps, under the global policy (LISA acts from opt's hooks)."""
    opt = _sgd(model)
    layerwise.LISA(model, opt, gamma=1, period=2, always_on=["4"])
    return opt, layerwise.LayerwiseLR(opt, 6, policy=layerwise.Cosine())


def _tempbalance(model, scheduler):
    """TempBalance's multipliers (recomputed every 2 steps) on the LRs ``scheduler`` sets."""
    opt = _sgd(model)
    layerwise.TempBalance(opt, every=2, min_eigs=2)
    return opt, scheduler(opt)


def _schedulers():
    return {
        "LayerwiseLR": lambda model: (opt := _sgd(model), layerwise.LayerwiseLR(opt, 6, policy=layerwise.Cosine())),
        "FreezeOut": lambda model: (opt := _sgd(model), layerwise.FreezeOut(model, opt, 6)),
        "HiDLR + StepLR": lambda model: (
            opt := layerwise.HiDLR(_sgd(model), update_every=2),
            torch.optim.lr_scheduler.StepLR(opt, 2),
        ),
        "SecantLR + StepLR": lambda model: (
            opt := layerwise.SecantLR(_sgd(model), mode="line"),
            torch.optim.lr_scheduler.StepLR(opt, 2),
        ),
        "Multirate + StepLR": lambda model: (
            opt := layerwise.Multirate.from_partition(_part(model), fast=["4"], lr=0.1, k=2, model=model),
            torch.optim.lr_scheduler.StepLR(opt, 2),
        ),
        "Multirate + LayerwiseLR": lambda model: (
            opt := layerwise.Multirate.from_partition(_part(model), fast=["4"], lr=0.1, k=2, model=model),
            layerwise.LayerwiseLR(opt, 6, policy=layerwise.Cosine()),
        ),
        "RandomSubsetMultirate + StepLR": lambda model: (
            opt := layerwise.RandomSubsetMultirate(
                model.parameters(), lr=0.1, k=2, probabilities={model[0].weight: 0.5}
            ),
            torch.optim.lr_scheduler.StepLR(opt, 2),
        ),
        "LISA + LayerwiseLR": _lisa,
        "TempBalance + StepLR": lambda model: _tempbalance(model, lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2)),
        "TempBalance + LayerwiseLR": lambda model: _tempbalance(
            model, lambda opt: layerwise.LayerwiseLR(opt, 6, policy=layerwise.Cosine())
        ),
    }


@pytest.mark.parametrize("name", list(_schedulers()))
def test_the_standard_loop_raises_no_call_order_warning(name):
    model = _model()
    opt, sched = _schedulers()[name](model)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Detected call of `lr_scheduler.step()`..." would raise
        warnings.simplefilter("ignore", ForeignLRWarning)  # a StepLR beside HiDLR/SecantLR is warned of on purpose
        for _ in range(6):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            if isinstance(opt, layerwise.HiDLR):
                opt.step(lambda: nn.functional.cross_entropy(model(x), y))
            else:
                opt.step()
            sched.step()


def test_a_tensor_lr_is_scheduled_in_place():
    model = _model()
    groups = _part(model).param_groups(lr=0.1)
    groups[1]["lr"] = torch.tensor(0.1)  # the second layer's LR as a tensor, as torch's own fixture does
    opt = torch.optim.SGD(groups, lr=0.1)
    tensor_lr = opt.param_groups[1]["lr"]
    sched = layerwise.LayerwiseLR(opt, 4, policy=layerwise.Linear())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for step in range(1, 4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
        assert opt.param_groups[1]["lr"] is tensor_lr  # written in place, still a tensor
        assert float(tensor_lr) == pytest.approx(0.1 * (1 - step / 4))
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - step / 4))
    assert sched.lr_at(2)[1] == pytest.approx(0.05)


def test_tempbalance_scales_a_tensor_lr_in_place_and_writes_it_back():
    model = _model()
    groups = _part(model).param_groups(lr=0.1)
    groups[1]["lr"] = torch.tensor(0.1)
    opt = torch.optim.SGD(groups, lr=0.1)
    tensor_lr = opt.param_groups[1]["lr"]
    balance = layerwise.TempBalance(opt, every=1, min_eigs=2)
    seen = []
    opt.register_step_pre_hook(lambda *_: seen.append(float(tensor_lr)))  # after TempBalance's: the applied LR
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert opt.param_groups[1]["lr"] is tensor_lr and float(tensor_lr) == pytest.approx(0.1)  # written back
    assert seen == [pytest.approx(0.1 * balance.multipliers["2"])] and balance.multipliers["2"] != 1
