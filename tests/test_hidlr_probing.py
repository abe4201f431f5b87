"""Hi-DLR's cheaper probing: the base update without stepping, an adaptive interval, sub-batch probes."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from layerwise import HiDLR
from layerwise._directions import rule_for

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2, dampening=0.1),
    "sgd-nesterov-max": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, maximize=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam-wd": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2, betas=(0.8, 0.99)),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))


def _groups(net: nn.Module) -> list[dict]:
    return [{"params": list(net[0].parameters()), "name": "a"}, {"params": list(net[2].parameters()), "name": "b"}]


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(12, 5, generator=g), torch.randn(12, 2, generator=g)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_update_without_stepping_is_bitwise_the_stepped_one(name):
    net = _net()
    opt = OPTIMIZERS[name](_groups(net))
    for step in range(4):  # with state after the first step; then compare at lr 0.7
        x, y = _batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        rule = rule_for(opt)
        assert rule is not None
        changes = [rule(g, p, 0.7) for g in opt.param_groups for p in g["params"]]
        state, before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in net.parameters()]
        for g in opt.param_groups:
            g["lr"] = 0.7
        opt.step()
        for change, p, p0 in zip(changes, net.parameters(), before):
            assert torch.equal(change, p.detach() - p0)
        with torch.no_grad():  # back, then a normal step to grow the state
            for p, p0 in zip(net.parameters(), before):
                p.copy_(p0)
        opt.load_state_dict(state)
        opt.step()


def test_other_optimizers_and_options_step_and_restore():
    params = [nn.Parameter(torch.ones(2))]
    assert rule_for(torch.optim.RMSprop(params)) is None
    assert rule_for(torch.optim.Adam(params, amsgrad=True)) is None
    assert rule_for(torch.optim.SGD(params, lr=0.1, foreach=True)) is None
    assert rule_for(torch.optim.Adam(params, lr=torch.tensor(0.1))) is None


def _train(direction: str, base: str = "adamw", steps: int = 6, **options) -> tuple[list, HiDLR]:
    net = _net()
    opt = HiDLR(OPTIMIZERS[base](_groups(net)), update_every=2, direction=direction, clip=(0, 0.5), **options)
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step(lambda x=x, y=y: nn.functional.mse_loss(net(x), y))
    return [p.detach().clone() for p in net.parameters()], opt


@pytest.mark.parametrize("base", ["sgd-momentum-wd", "adamw", "adam-wd"])
def test_hidlr_without_stepping_trains_bitwise_as_with_it_and_copies_no_state(base, monkeypatch):
    stepped, with_step = _train("step", base)
    copies = []
    monkeypatch.setattr(HiDLR, "_copy_state", staticmethod(lambda state: copies.append(state) or dict(state)))
    direct, without = _train("auto", base)
    assert copies == []  # no copy of the optimizer state
    assert with_step.eta == without.eta and with_step.history == without.history
    for a, b in zip(stepped, direct):
        assert torch.equal(a, b)


def test_the_interval_doubles_up_to_the_cap_and_halves_on_a_large_move():
    _, opt = _train("auto", "sgd", steps=40, max_interval=8, interval_tolerance=10.0)  # every move is small
    assert [h["step"] for h in opt.history] == [0, 4, 12, 20, 28, 36]  # 2 -> 4 -> 8, the cap
    assert opt.interval == 8 == opt.stats["interval"] and opt.stats["probe_rounds"] == 6
    _, opt = _train("auto", "sgd", steps=12, max_interval=8, interval_tolerance=1e-12)  # every move is large
    assert [h["step"] for h in opt.history] == list(range(0, 12, 2)) and opt.interval == 2


def test_an_adaptive_round_smooths_with_gamma_per_phi_steps_since_the_last_one(monkeypatch):
    stars = []
    fit = HiDLR._update_eta
    monkeypatch.setattr(HiDLR, "_update_eta", lambda self, active, f: stars.append(f.eta_star) or fit(self, active, f))
    _, opt = _train("auto", "sgd", steps=40, max_interval=8, interval_tolerance=10.0, gamma=0.8)
    steps = [h["step"] for h in opt.history]
    assert steps == [0, 4, 12, 20, 28, 36]
    eta, gaps = [0.1, 0.1], [2] + [b - a for a, b in itertools.pairwise(steps)]  # the first round: Phi
    for gap, star, record in zip(gaps, stars, opt.history):
        gamma = 0.8 ** (gap / 2)
        eta = [gamma * e + (1 - gamma) * float(s) for e, s in zip(eta, star)]
        assert record["eta"] == pytest.approx(eta, rel=1e-12)
    _, fixed = _train("auto", "sgd", steps=8, gamma=0.8)  # a fixed interval: gamma itself, the paper
    assert fixed._round_gamma() == 0.8


def test_an_adaptive_run_resumes_exactly(tmp_path):
    straight, _ = _train("auto", "adamw", steps=20, max_interval=8, interval_tolerance=0.5)
    net = _net()
    make = lambda: HiDLR(  # noqa: E731
        OPTIMIZERS["adamw"](_groups(net)), update_every=2, clip=(0, 0.5), max_interval=8, interval_tolerance=0.5
    )
    opt = make()

    def run(opt, steps):
        for step in steps:
            x, y = _batch(step)
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step(lambda x=x, y=y: nn.functional.mse_loss(net(x), y))

    run(opt, range(9))
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    net.load_state_dict(saved["model"])
    resumed = make()
    resumed.load_state_dict(saved["opt"])
    assert (resumed.interval, resumed.next_probe) == (opt.interval, opt.next_probe)
    run(resumed, range(9, 20))
    for a, b in zip(straight, net.parameters()):
        assert torch.equal(a, b.detach())


def test_probes_on_a_sub_batch_get_the_fraction():
    net = _net()
    opt = HiDLR(torch.optim.SGD(_groups(net), lr=0.1), update_every=1, probe_fraction=0.5)
    x, y = _batch(0)
    seen = []

    def closure(fraction=1.0):
        seen.append(fraction)
        n = -(-len(x) * fraction // 1)
        return nn.functional.mse_loss(net(x[: int(n)]), y[: int(n)])

    nn.functional.mse_loss(net(x), y).backward()
    opt.step(closure)
    assert seen and set(seen) == {0.5} and opt.stats["forward_passes"] == len(seen)
    with pytest.raises(TypeError, match=r"closure: with probe_fraction=0\.5, HiDLR calls closure\(fraction\)"):
        opt.step(lambda: nn.functional.mse_loss(net(x), y))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_interval": 1, "update_every": 2}, "max_interval: "),
        ({"max_interval": 4.5}, "max_interval: "),
        ({"interval_tolerance": 0.0}, "interval_tolerance: must be a finite number > 0"),
        ({"probe_fraction": 0.0}, "probe_fraction: "),
        ({"probe_fraction": 1.5}, "probe_fraction: "),
        ({"direction": "guess"}, "direction: "),
    ],
)
def test_bad_probing_options_are_refused_before_anything_changes(options, message):
    net = _net()
    base = torch.optim.SGD(_groups(net), lr=0.1)
    before = copy.deepcopy(base.state_dict())
    with pytest.raises(ValueError, match=message):
        HiDLR(base, **options)
    assert base.state_dict() == before
