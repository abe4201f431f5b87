"""Hi-DLR and SecantLR in a user's own loop: foreign LR writes, wrapped optimizers, fits that are never
accepted, GradScaler and resuming a model with dropout."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from layerwise import ForeignLRWarning, HiDLR, SecantLR
from layerwise.hidlr import NEVER_ACCEPTED_ROUNDS

TECHNIQUES = {
    "hidlr": lambda opt: HiDLR(opt, update_every=2, clip=(0.0, 0.5)),
    "secant": lambda opt: SecantLR(opt, mode="line", clip=(0.0, 0.5)),
}


def _net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Dropout(dropout), nn.Linear(7, 2))


def _groups(net: nn.Module, lr: float = 0.1) -> list[dict]:
    return [
        {"params": list(net[0].parameters()), "name": "a", "lr": lr},
        {"params": list(net[3].parameters()), "name": "b", "lr": lr},
    ]


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(12, 5, generator=g), torch.randn(12, 2, generator=g)


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: range, after=lambda: None) -> None:
    for step in steps:
        x, y = _batch(step)

        def loss_fn(x=x, y=y) -> torch.Tensor:
            return nn.functional.mse_loss(net(x), y)

        opt.zero_grad()
        loss_fn().backward()
        opt.step(loss_fn)
        after()


def _foreign(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ForeignLRWarning)]


# -- foreign LR writes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", TECHNIQUES)
def test_a_steplr_beside_it_is_named_once_with_both_values_and_the_fix(name):
    net = _net()
    opt = TECHNIQUES[name](torch.optim.SGD(_groups(net)))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(net, opt, range(12), sched.step)
    messages = _foreign(caught)
    assert len(messages) == 1  # once, though StepLR writes every 3 steps
    written = messages[0]
    kind = type(opt).__name__
    assert f"{kind}: param group 'a' has lr" in written and f"but {kind} last wrote" in written
    assert "StepLR" in written and "schedule=" in written and "total_steps=" in written


@pytest.mark.parametrize("name", TECHNIQUES)
def test_an_assignment_is_noticed_and_the_found_lr_is_applied(name):
    net = _net()
    opt = TECHNIQUES[name](torch.optim.SGD(_groups(net)))
    _train(net, opt, range(2))
    opt.param_groups[1]["lr"] = 123.0
    with pytest.warns(ForeignLRWarning, match=r"param group 'b' has lr 123,"):
        _train(net, opt, range(2, 3))
    assert opt.param_groups[1]["lr"] != 123.0  # the technique's rate was applied, as the warning says


@pytest.mark.parametrize("name", TECHNIQUES)
def test_schedules_that_leave_lr_alone_and_loads_stay_silent(name):
    net = _net()
    opt = TECHNIQUES[name](torch.optim.SGD(_groups(net)))
    keep = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)  # writes each lr back unchanged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(net, opt, range(6), keep.step)
        saved = copy.deepcopy(opt.state_dict())
        _train(net, opt, range(6, 8))
        opt.load_state_dict(saved)
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "name": "c", "lr": 0.3})
        _train(net, opt, range(6, 8))
    assert _foreign(caught) == []


def test_techniques_that_own_lr_say_so():
    assert HiDLR.owns_lr is True and SecantLR.owns_lr is True
    assert getattr(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), "owns_lr", False) is False


# -- wrapped optimizers --------------------------------------------------------------------------


class _StepWrapper(torch.optim.Optimizer):
    """accelerate's AcceleratedOptimizer in miniature: no Optimizer.__init__, steps passed through."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def step(self, closure=None):
        return self.optimizer.step(closure)


@pytest.mark.parametrize("name", TECHNIQUES)
def test_a_step_wrapper_is_refused_at_construction_with_the_order_that_works(name):
    wrapped = _StepWrapper(torch.optim.SGD(_groups(_net())))
    kind = "HiDLR" if name == "hidlr" else "SecantLR"
    with pytest.raises(TypeError, match=rf"optimizer: a _StepWrapper wrapping a SGD.*accelerator.prepare\({kind}\("):
        TECHNIQUES[name](wrapped)


@pytest.mark.parametrize("name", TECHNIQUES)
def test_wrapping_the_technique_steps_it_and_keeps_its_counters_reachable(name):
    net = _net()
    opt = _StepWrapper(TECHNIQUES[name](torch.optim.SGD(_groups(net))))
    _train(net, opt, range(4))
    assert opt.optimizer.step_count == 4 and set(opt.optimizer.lrs) == {"a", "b"}


def test_a_real_accelerator_prepares_hidlr_and_refuses_the_other_order():
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    net = _net()
    with pytest.raises(TypeError, match=r"accelerator\.prepare\(HiDLR\("):
        HiDLR(accelerator.prepare(torch.optim.SGD(_groups(net))))
    hidlr = HiDLR(torch.optim.SGD(_groups(net)), update_every=2, clip=(0.0, 0.5))
    model, opt = accelerator.prepare(net, hidlr)
    for step in range(4):
        x, y = _batch(step)

        def loss_fn(x=x, y=y) -> torch.Tensor:
            return nn.functional.mse_loss(model(x), y)

        opt.zero_grad()
        accelerator.backward(loss_fn())
        opt.step(loss_fn)
    assert opt.optimizer is hidlr and hidlr.stats["probe_rounds"] == 2 and hidlr.step_count == 4


# -- fits that are never accepted -----------------------------------------------------------------


def _concave(steps: int, **options) -> tuple[HiDLR, list[str]]:
    """Gradient descent on -|w|^2: the loss is concave along every update, so every fit is rejected."""
    w = nn.Parameter(torch.tensor([1.0, -0.5]))
    opt = HiDLR(torch.optim.SGD([w], lr=0.01), update_every=2, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            opt.zero_grad()
            (-(w**2).sum()).backward()
            opt.step(lambda: -(w**2).sum())
    return opt, [str(c.message) for c in caught if "none of" in str(c.message)]


def test_an_adaptive_interval_backs_off_when_no_fit_is_accepted():
    opt, messages = _concave(64, max_interval=32)
    assert opt.stats["accepted"] == 0 and opt.stats["rejections"]["curvature"] == opt.stats["probe_rounds"]
    assert [h["step"] for h in opt.history] == [0, 4, 12, 28, 60]  # 4, 8, 16, 32 steps apart: not 32 rounds
    assert opt.interval == 32
    assert len(messages) == 1 and "rejections: curvature 5" in messages[0] and "interval grows" in messages[0]
    fixed, _ = _concave(64)  # the paper's fixed interval probes all along: 32 rounds, 6.4 times the forwards
    assert fixed.stats["probe_rounds"] == 32 and fixed.stats["forward_passes"] == 32 * opt.stats["forward_passes"] / 5


def test_a_run_resumed_while_backing_off_probes_at_the_straight_runs_steps():
    def concave_steps(opt, w, steps):
        for _ in steps:
            opt.zero_grad()
            (-(w**2).sum()).backward()
            opt.step(lambda: -(w**2).sum())

    w = nn.Parameter(torch.tensor([1.0, -0.5]))
    first = HiDLR(torch.optim.SGD([w], lr=0.01), update_every=2, max_interval=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        concave_steps(first, w, range(20))  # rounds at 0, 4, 12: the interval is 16 now
        saved = copy.deepcopy(first.state_dict())
        resumed = HiDLR(torch.optim.SGD([w], lr=0.01), update_every=2, max_interval=32)
        resumed.load_state_dict(saved)
        concave_steps(resumed, w, range(20, 64))
    assert [h["step"] for h in resumed.history] == [0, 4, 12, 28, 60] and resumed.interval == 32


def test_a_fixed_interval_keeps_probing_as_the_paper_and_warns_once_what_to_try():
    opt, messages = _concave(40)
    assert opt.stats["probe_rounds"] == 20 and opt.interval == 2
    assert len(messages) == 1
    assert (
        f"none of {NEVER_ACCEPTED_ROUNDS} fits was accepted (rejections: curvature {NEVER_ACCEPTED_ROUNDS})"
        in (messages[0])
    )
    assert "per_group=True" in messages[0] and "max_interval" in messages[0]
    assert opt.diagnosis is not None and opt.diagnosis.startswith("Hi-DLR: none of 20 fits")
    line = opt.log_stats
    assert line["hidlr/never_accepted"] == 1.0 and line["hidlr/rejected_curvature"] == 20.0
    assert line["hidlr/accepted"] == 0.0 and all(isinstance(v, float) for v in line.values())


def test_no_diagnosis_before_enough_rounds_or_once_a_fit_is_accepted():
    opt, messages = _concave(2 * (NEVER_ACCEPTED_ROUNDS - 1))
    assert messages == [] and opt.diagnosis is None and opt.log_stats["hidlr/never_accepted"] == 0.0
    net = _net()
    opt = HiDLR(torch.optim.SGD(_groups(net, lr=0.01)), update_every=1, clip=(0.0, 0.5), per_group=True)
    _train(net, opt, range(8))
    assert opt.stats["accepted"] > 0 and opt.diagnosis is None


# -- GradScaler and resuming with dropout ----------------------------------------------------------


def test_gradscaler_steps_hidlr_with_the_closure_positional():
    net = _net()
    opt = HiDLR(torch.optim.SGD(_groups(net)), update_every=2, clip=(0.0, 0.5))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert scaler.is_enabled()
    for step in range(4):
        x, y = _batch(step)

        def loss_fn(x=x, y=y) -> torch.Tensor:
            return nn.functional.mse_loss(net(x), y)

        opt.zero_grad()
        scaler.scale(loss_fn()).backward()
        scaler.step(opt, loss_fn)  # positional: the keyword form is refused by torch itself
        scaler.update()
        if step == 0:
            with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
                scaler.step(opt, closure=loss_fn)
    assert opt.step_count == 4 and opt.stats["probe_rounds"] == 2


def test_resume_with_dropout_is_exact_when_the_rng_state_is_saved():
    def run(stop: int | None) -> list[torch.Tensor]:
        net = _net(dropout=0.3)
        opt = HiDLR(torch.optim.SGD(_groups(net)), update_every=2, clip=(0.0, 0.5))
        _train(net, opt, range(stop or 6))
        if stop is not None:  # save, rebuild, load, finish
            saved = copy.deepcopy({"model": net.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()})
            net = _net(dropout=0.3)
            opt = HiDLR(torch.optim.SGD(_groups(net)), update_every=2, clip=(0.0, 0.5))
            torch.manual_seed(123)  # whatever the new process did before
            net.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            torch.set_rng_state(saved["rng"])
            _train(net, opt, range(stop, 6))
        return [p.detach().clone() for p in net.parameters()]

    for a, b in zip(run(None), run(3)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_check_state_dict_refuses_a_misshapen_base_state_without_changing_anything(name):
    net = _net()
    trained = TECHNIQUES[name](torch.optim.SGD(_groups(net), momentum=0.9))
    _train(net, trained, range(3))
    saved = copy.deepcopy(trained.state_dict())
    saved["base"]["state"][0]["momentum_buffer"] = torch.zeros(3)  # not the shape of parameter 0
    fresh = TECHNIQUES[name](torch.optim.SGD(_groups(_net()), momentum=0.9))
    before = str(fresh.state_dict())
    with pytest.raises(ValueError, match=r"state_dict\['base'\]"):
        fresh.check_state_dict(saved)
    fresh.check_state_dict(trained.state_dict())  # a state of this setup passes
    assert str(fresh.state_dict()) == before
