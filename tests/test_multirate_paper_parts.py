"""Multirate's parts the paper allows: hybrid per-part optimizers, Langevin noise, Algorithm 2 in its literal order.

Each is checked against a hand-written loop of the paper's formulas (Algorithms 1-2, eq. 2, App. A).
"""

import math

import pytest
import torch
from torch import nn

from layerwise import Multirate

K, H, STEPS = 3, 0.3, 7


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2))


def _batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)


def _loss(net, step):
    x, y = _batch(step)
    return ((net(x) - y) ** 2).mean()


def _grads(net, step, params):
    return torch.autograd.grad(_loss(net, step), params)


def _train(opt, net, steps=STEPS, closure=False):
    for step in range(steps):
        if closure:

            def again(step=step):
                opt.zero_grad()
                loss = _loss(net, step)
                loss.backward()
                return loss

            opt.step(again)
        else:
            opt.zero_grad()
            _loss(net, step).backward()
            opt.step()


# ---- hybrid per-part optimizers ---------------------------------------------------------------


def test_hybrid_adamw_fast_and_sgd_momentum_slow_equal_a_hand_written_loop():
    net, ref = _net(), _net()
    fast, slow = list(net[2].parameters()), list(net[0].parameters())
    betas, eps, wd, mu = (0.9, 0.99), 1e-8, 0.01, 0.9
    base = {
        "fast": (torch.optim.AdamW, {"betas": betas, "eps": eps, "weight_decay": wd}),
        "slow": (torch.optim.SGD, {"momentum": mu}),
    }
    opt = Multirate(fast, slow, lr=H, k=K, base=base)
    assert [type(o) for o in opt.optimizers] == [torch.optim.AdamW, torch.optim.SGD]
    _train(opt, net)

    rf, rs = list(ref[2].parameters()), list(ref[0].parameters())
    m = [torch.zeros_like(p) for p in rf]
    v = [torch.zeros_like(p) for p in rf]
    buf = [torch.zeros_like(p) for p in rs]
    drift = None
    for step in range(STEPS):
        grads = _grads(ref, step, rf + rs)
        with torch.no_grad():
            t, lr = step + 1, H / K  # the fast part: AdamW at h/k every step
            for i, (p, g) in enumerate(zip(rf, grads[: len(rf)])):
                m[i] = betas[0] * m[i] + (1 - betas[0]) * g
                v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
                m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
                p.mul_(1 - lr * wd).sub_(lr * m_hat / (v_hat.sqrt() + eps))
            if step % K == 0:  # the slow part: p_S := mu p_S + grad every k steps, theta_S -= h/k p_S every step
                for i, g in enumerate(grads[len(rf) :]):
                    buf[i] = g.clone() if step == 0 else mu * buf[i] + g
                drift = [-(H / K) * b for b in buf]
            for p, d in zip(rs, drift):
                p.add_(d)
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hybrid_per_part_momentum_and_weight_decay_equal_a_hand_written_loop():
    net, ref = _net(), _net()
    fast, slow = list(net[2].parameters()), list(net[0].parameters())
    base = {
        "fast": (torch.optim.SGD, {"momentum": 0.5}),
        "slow": (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.1}),
    }
    _train(Multirate(fast, slow, lr=H, k=K, base=base), net)
    rf, rs = list(ref[2].parameters()), list(ref[0].parameters())
    bf, bs, drift = [None] * len(rf), [None] * len(rs), None
    for step in range(STEPS):
        grads = _grads(ref, step, rf + rs)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(rf, grads[: len(rf)])):
                bf[i] = g.clone() if bf[i] is None else 0.5 * bf[i] + g
                p.sub_(H / K * bf[i])
            if step % K == 0:  # Algorithm A3: the decay joins the slow gradient
                for i, (p, g) in enumerate(zip(rs, grads[len(rf) :])):
                    g = g + 0.1 * p
                    bs[i] = g.clone() if bs[i] is None else 0.9 * bs[i] + g
                drift = [-(H / K) * b for b in bs]
            for p, d in zip(rs, drift):
                p.add_(d)
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hybrid_refusals_name_the_part_and_change_nothing():
    net = _net()
    fast, slow = list(net[2].parameters()), list(net[0].parameters())
    with pytest.raises(ValueError, match=r"base: no base class for the parts \['slow'\]"):
        Multirate(fast, slow, lr=H, k=K, base={"fast": torch.optim.SGD})
    with pytest.raises(ValueError, match=r"base: no part named \['middle'\]"):
        Multirate(
            fast, slow, lr=H, k=K, base={"fast": torch.optim.SGD, "slow": torch.optim.SGD, "middle": torch.optim.SGD}
        )
    with pytest.raises(TypeError, match=r"base\['slow'\]: expected a torch.optim.Optimizer class"):
        Multirate(fast, slow, lr=H, k=K, base={"fast": torch.optim.SGD, "slow": "sgd"})
    with pytest.raises(ValueError, match=r"base\['slow'\] momentum"):
        Multirate(fast, slow, lr=H, k=K, base={"fast": torch.optim.SGD, "slow": (torch.optim.SGD, {"momentum": -1})})
    assert all(p.requires_grad for p in net.parameters())  # nothing was set up


# ---- Langevin noise -----------------------------------------------------------------------------


def test_langevin_noise_has_the_formulas_variance_per_step_on_each_part():
    fast, slow = nn.Parameter(torch.zeros(200_000)), nn.Parameter(torch.zeros(200_000))
    tau = {"fast": 0.5, "slow": 2.0}
    opt = Multirate([fast], [slow], lr=0.12, k=4, temperature=tau, noise_seed=3)
    for step in range(2):
        before = fast.detach().clone(), slow.detach().clone()
        fast.grad = torch.zeros_like(fast)  # no gradient: the move is the noise alone
        if slow.requires_grad:
            slow.grad = torch.zeros_like(slow)
        opt.step()
        eta = 0.12 / 4  # every part's LR per step: h / k (the slow part's h spread over its k steps)
        for name, p, old in (("fast", fast, before[0]), ("slow", slow, before[1])):
            move = p.detach() - old
            assert abs(float(move.mean())) < 4 * math.sqrt(2 * eta * tau[name] / move.numel())
            assert float(move.var()) == pytest.approx(2 * eta * tau[name], rel=0.02), (step, name)
    assert opt.temperatures == [0.5, 2.0]


def test_langevin_trajectory_equals_a_hand_written_loop_with_the_documented_draws():
    net, ref = _net(), _net()
    tau = {"fast": 1e-3, "slow": 4e-3}
    _train(
        Multirate(list(net[2].parameters()), list(net[0].parameters()), lr=H, k=K, temperature=tau, noise_seed=5), net
    )
    rf, rs = list(ref[2].parameters()), list(ref[0].parameters())
    noise = torch.Generator().manual_seed(5)
    drift = None
    for step in range(STEPS):
        grads = _grads(ref, step, rf + rs)
        with torch.no_grad():
            for p, g in zip(rf, grads[: len(rf)]):
                p.sub_(H / K * g)
            if step % K == 0:  # Algorithm 1 without momentum: the slow gradient spread over k steps
                drift = [-(H / K) * g for g in grads[len(rf) :]]
            for p, d in zip(rs, drift):
                p.add_(d)
            for params, t in ((rf, tau["fast"]), (rs, tau["slow"])):  # then eq. 2's noise, fast part first
                for p in params:  # sqrt(2 eta tau) N(0, 1), eta = h / k the LR per step of both parts
                    p.add_(math.sqrt(2 * (H / K) * t) * torch.randn(p.shape, generator=noise))
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_langevin_noise_is_seeded_and_resumes_with_the_same_draws():
    def run(stop=None, state=None, seed=7):
        net = _net()
        opt = Multirate(
            list(net[2].parameters()),
            list(net[0].parameters()),
            lr=H,
            k=K,
            momentum=0.9,
            temperature={"fast": 1e-3, "slow": 1e-4},
            noise_seed=seed,
        )
        start = 0
        if state is not None:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            start = state["step"]
        for step in range(start, stop or STEPS):
            opt.zero_grad()
            _loss(net, step).backward()
            opt.step()
        return net, opt

    straight, _ = run()
    half, opt = run(stop=4)
    state = {"net": half.state_dict(), "opt": opt.state_dict(), "step": 4}
    resumed, _ = run(state=state)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))
    other, _ = run(seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(straight.parameters(), other.parameters()))
    quiet_net = _net()
    quiet = Multirate(list(quiet_net[2].parameters()), list(quiet_net[0].parameters()), lr=H, k=K, momentum=0.9)
    with pytest.raises(ValueError, match="temperature"):
        quiet.load_state_dict(opt.state_dict())  # a noisy run's checkpoint into a noiseless optimizer


def test_langevin_refusals_a_negative_temperature_or_an_unknown_part():
    net = _net()
    fast, slow = list(net[2].parameters()), list(net[0].parameters())
    with pytest.raises(ValueError, match=r"temperature\['slow'\]"):
        Multirate(fast, slow, lr=H, k=K, temperature={"slow": -0.1})
    with pytest.raises(ValueError, match=r"temperature: no part named \['body'\]"):
        Multirate(fast, slow, lr=H, k=K, temperature={"body": 0.1})
    assert all(p.requires_grad for p in net.parameters())


# ---- Algorithm 2 in the paper's literal order ---------------------------------------------------


def test_literal_algorithm_2_equals_the_papers_loop():
    net, ref = _net(), _net()
    mu = 0.9
    opt = Multirate(
        list(net[2].parameters()), list(net[0].parameters()), lr=H, k=K, momentum=mu, drift=False, literal=True
    )
    _train(opt, net, closure=True)

    rf, rs = list(ref[2].parameters()), list(ref[0].parameters())
    pf, ps = [None] * len(rf), [None] * len(rs)
    for step in range(STEPS):
        if step % K == 0:  # p_S := mu p_S + grad_S(theta_S, theta_F); theta_S := theta_S - h p_S
            grads = _grads(ref, step, rs)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(rs, grads)):
                    ps[i] = g.clone() if ps[i] is None else mu * ps[i] + g
                    p.sub_(H * ps[i])
        grads = _grads(ref, step, rf)  # the fast gradient at the (moved) slow parameters
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(rf, grads)):
                pf[i] = g.clone() if pf[i] is None else mu * pf[i] + g
                p.sub_(H / K * pf[i])
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the default reading takes the refresh step's fast gradient before the jump: a different run
    plain = _net()
    _train(
        Multirate(list(plain[2].parameters()), list(plain[0].parameters()), lr=H, k=K, momentum=mu, drift=False), plain
    )
    assert not torch.allclose(plain[2].weight, net[2].weight)


def test_literal_refusals_without_a_closure_or_with_drift_change_nothing():
    net = _net()
    fast, slow = list(net[2].parameters()), list(net[0].parameters())
    with pytest.raises(ValueError, match=r"literal: only with drift=False"):
        Multirate(fast, slow, lr=H, k=K, literal=True)
    opt = Multirate(fast, slow, lr=H, k=K, drift=False, literal=True, momentum=0.9)
    _loss(net, 0).backward()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"closure: literal=True"):
        opt.step()
    assert opt.step_count == 0 and all(torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert not opt.optimizers[0].state and not opt.optimizers[1].state


def test_compare_multirate_uses_heavy_ball_momentum_on_sgd_tasks_as_algorithm_1():
    from blobs import blobs_task
    from layerwise.compare.methods import Build, build_setup, method_snippet, resolve_settings

    task = blobs_task("multirate-heavy-ball", regime="fine-tuning")  # the sgd preset: Nesterov momentum 0.9
    model = task.make_model()
    build = Build(task, model, task.partition_of(model), 8, "constant")
    for heavy_ball, nesterov in ((True, False), (False, True)):
        settings = resolve_settings("multirate", {"heavy_ball": heavy_ball})
        setup = build_setup(build, "multirate", settings)
        assert all(g["nesterov"] is nesterov and g["momentum"] == 0.9 for g in setup.optimizer.param_groups)
        assert f"nesterov={nesterov}" in method_snippet(build, "multirate", settings)


def test_compare_multirate_ablation_settings_drift_same_lr_and_weight_decay():
    from blobs import blobs_task
    from layerwise.compare.methods import Build, build_setup, method_snippet, resolve_settings

    task = blobs_task("multirate-ablations", regime="fine-tuning", weight_decay=1e-3)
    model = task.make_model()
    build = Build(task, model, task.partition_of(model), 8, "constant")
    default = build_setup(build, "multirate", resolve_settings("multirate")).optimizer
    assert default.drift and default.slow_lr is None and default.optimizers[1].param_groups[0]["weight_decay"] == 1e-3
    settings = resolve_settings("multirate", {"drift": False, "same_lr": True, "weight_decay": 0.0, "k": 5})
    ablated = build_setup(build, "multirate", settings).optimizer
    assert not ablated.drift and ablated.slow_lr == task.lr  # h_S = h_F: the slow part steps the fast part's LR
    assert all(g["weight_decay"] == 0.0 for g in ablated.param_groups)
    text = method_snippet(build, "multirate", settings)
    assert "drift=False" in text and f"slow_lr={task.lr!r}" in text and "weight_decay=0.0" in text
