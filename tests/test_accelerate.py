"""The techniques on accelerate's AcceleratedOptimizer (what ``accelerator.prepare`` returns), on CPU."""

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import layerwise
from layerwise import FreezeOut, Freezer, GradualUnfreezing, LayerwiseLR
from layerwise.wrapping import unwrap_optimizer

accelerate = pytest.importorskip("accelerate")

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1))


def _prepared():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    part = layerwise.by_layer(model, sample_input=X)
    opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
    accelerator = accelerate.Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, opt)
    assert type(opt).__name__ == "AcceleratedOptimizer"
    return accelerator, model, opt


def _train(accelerator, model, opt, steps, technique):
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        accelerator.backward(loss)
        opt.step()
        technique.step()


def test_freezeout_on_an_accelerated_optimizer_trains_past_its_freezes():
    accelerator, model, opt = _prepared()
    freezeout = FreezeOut(model, opt, total_steps=20, t0=0.3, strategy="linear")
    assert freezeout.optimizer is opt.optimizer
    _train(accelerator, model, opt, 12, freezeout)
    assert freezeout.frozen == ("0",)
    frozen = model[0].weight.detach().clone()
    _train(accelerator, model, opt, 8, freezeout)
    assert freezeout.frozen == ("0", "2") and torch.equal(model[0].weight, frozen)
    model[0].weight.grad = torch.ones_like(model[0].weight)  # the guard runs when the wrapper steps
    with pytest.raises(RuntimeError, match="got gradients after they froze"):
        opt.step()


def test_layerwise_lr_and_gradual_unfreezing_on_an_accelerated_optimizer():
    accelerator, model, opt = _prepared()
    sched = LayerwiseLR(opt, 6, layers=layerwise.Discriminative(2.0))
    _train(accelerator, model, opt, 6, sched)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(sched.lr_at(6))
    unfreezing = GradualUnfreezing(Freezer(model, opt), every=2, fresh=True)  # added to a trained optimizer
    assert unfreezing.freezer.frozen == ("0", "2")
    _train(accelerator, model, opt, 4, unfreezing)
    assert unfreezing.freezer.frozen == ()


def test_anything_else_is_refused_at_construction_naming_the_argument():
    model = nn.Linear(2, 2)

    class NoInit(torch.optim.Optimizer):
        def __init__(self):
            pass

    for bad in (NoInit(), object()):
        with pytest.raises(TypeError, match=r"optimizer: expected a torch\.optim\.Optimizer, or a wrapper"):
            Freezer(model, bad)
        with pytest.raises(TypeError, match="optimizer: expected"):
            LayerwiseLR(bad, 3)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    assert unwrap_optimizer(inner) is inner


def test_a_layer_monitor_on_an_accelerated_optimizer_records_through_it():
    accelerator, model, opt = _prepared()
    monitor = layerwise.LayerMonitor(opt, every=1)
    _train(accelerator, model, opt, 2, LayerwiseLR(opt, total_steps=2))
    assert all(len(values) == 2 for per_group in monitor.history.values() for values in per_group.values())


def test_a_prepared_scheduler_stepped_per_process_is_reported_once(monkeypatch):
    # accelerate's AcceleratedScheduler steps the scheduler num_processes times per optimizer step: on 2
    # processes a LayerwiseLR built for the optimizer's steps would end half-way through the run
    accelerator, model, opt = _prepared()
    sched = accelerator.prepare(LayerwiseLR(opt, 100, policy=layerwise.Cosine()))
    monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", lambda: SimpleNamespace(num_processes=2))
    with pytest.warns(UserWarning, match=r"step\(\) ran 16 times over 8 optimizer steps \(2\.0 per") as caught:
        _train(accelerator, model, opt, 12, sched)
    assert len(caught) == 1 and caught[0].filename.endswith("accelerate/scheduler.py")  # the caller, not layerwise
    assert sched.scheduler.last_epoch == 24


@pytest.mark.parametrize("per_epoch", [False, True])
def test_a_scheduler_stepped_once_per_optimizer_step_or_per_epoch_is_not_reported(per_epoch):
    accelerator, model, opt = _prepared()
    sched = LayerwiseLR(opt, 40, policy=layerwise.Cosine())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(40):
            loss = nn.functional.cross_entropy(model(X), Y)
            opt.zero_grad()
            accelerator.backward(loss)
            opt.step()
            if not per_epoch or step % 10 == 9:
                sched.step()
        for _ in range(30):  # the schedule stepped on its own (a plot), no optimizer step: not a pace
            LayerwiseLR(opt, 40, policy=layerwise.Cosine()).step()
