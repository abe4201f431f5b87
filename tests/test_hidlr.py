import copy
import io
import logging

import numpy as np
import pytest
import torch
from torch import nn

import layerwise
from layerwise import HiDLR
from layerwise.quadfit import fit_quadratic, probe_plan
from layerwise.schedules import Cosine, LayerSchedule, LinearInTime


def spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T + n * torch.eye(n, dtype=torch.float64)


class Quadratic:
    """L(w) = 1/2 w^T H w - c^T w over two parameter groups (sizes 3 and 2)."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed + 1)
        self.H = spd(5, seed)
        self.c = torch.randn(5, generator=g, dtype=torch.float64)
        self.w1 = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))
        self.blocks = [slice(0, 3), slice(3, 5)]

    def loss(self):
        w = torch.cat([self.w1, self.w2])
        return 0.5 * w @ self.H @ w - self.c @ w

    def groups(self, lr):
        return [{"params": [self.w1], "name": "a", "lr": lr}, {"params": [self.w2], "name": "b", "lr": lr}]


def closed_form(q, direction):
    """b_k = G_k . g_k and A_kl = g_k^T H_kl g_l, where g = -direction is the base optimizer's update."""
    with torch.no_grad():
        w = torch.cat([q.w1, q.w2])
        G = q.H @ w - q.c
        g = -torch.cat(direction)
        parts = [torch.zeros(5, dtype=torch.float64) for _ in q.blocks]
        for part, block in zip(parts, q.blocks):
            part[block] = g[block]
        b = torch.stack([G @ part for part in parts])
        A = torch.stack([torch.stack([pk @ q.H @ pl for pl in parts]) for pk in parts])
    return b.numpy(), A.numpy()


def expected_eta(q, direction, full=False):
    """eta* = A^-1 b (full), b_k / A_kk (diagonal)."""
    b, A = closed_form(q, direction)
    return np.linalg.solve(A, b) if full else b / np.diag(A)


def base_direction(opt_factory, q):
    """The base optimizer's step at lr 1, taken on a copy."""
    q2 = copy.deepcopy(q)
    opt = opt_factory(q2.groups(1.0))
    opt.load_state_dict(copy.deepcopy(q.opt_state)) if hasattr(q, "opt_state") else None
    for group in opt.param_groups:
        group["lr"] = 1.0
    q2.w1.grad, q2.w2.grad = q.w1.grad.clone(), q.w2.grad.clone()
    before = [q2.w1.detach().clone(), q2.w2.detach().clone()]
    opt.step()
    return [q2.w1.detach() - before[0], q2.w2.detach() - before[1]]


@pytest.mark.parametrize(
    "factory",
    [
        lambda g: torch.optim.SGD(g, lr=0.01),
        lambda g: torch.optim.SGD(g, lr=0.01, momentum=0.9),
        lambda g: torch.optim.Adam(g, lr=0.01),
        lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd", "momentum", "adam", "adamw"],
)
@pytest.mark.parametrize("full", [False, True])
def test_recovers_known_curvature(factory, full):
    q = Quadratic()
    opt = HiDLR(factory(q.groups(0.01)), update_every=3, gamma=0.0, full_matrix=full)
    for step in range(7):
        opt.zero_grad()
        q.loss().backward()
        if step % 3 == 0:
            q.opt_state = opt.optimizer.state_dict()
            b, A = closed_form(q, base_direction(factory, q))
            eta_before = list(opt.eta)
        opt.step(q.loss)
        if step % 3 == 0:
            fit = opt.last_fit
            np.testing.assert_allclose(fit.b, b, rtol=1e-7)
            np.testing.assert_allclose(fit.A, A if full else np.diag(np.diag(A)), rtol=1e-7, atol=1e-9 * abs(A).max())
            assert fit.r2 == pytest.approx(1.0)
            star = np.linalg.solve(A, b) if full else b / np.diag(A)
            if fit.accepted:
                np.testing.assert_allclose(opt.eta, star, rtol=1e-7)
            else:  # momentum can point uphill for a group: the step keeps the previous LRs
                assert fit.reason == "slope" and (star <= 0).any()
                assert opt.eta == eta_before
    assert opt.stats["accepted"] >= 1


def test_ellipse_is_newton():
    x = nn.Parameter(torch.tensor([50.0], dtype=torch.float64))
    y = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = HiDLR(torch.optim.SGD([{"params": [x]}, {"params": [y]}], lr=1e-4), update_every=1, gamma=0.0)

    def loss():
        return (x**2 + 100 * y**2).sum()

    opt.zero_grad()
    loss().backward()
    opt.step(loss)
    assert float(loss().detach()) < 1e-10
    assert opt.eta == pytest.approx([0.5, 0.005])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.l2 = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.l2(self.l1(x)))


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def make(seed=0):
    torch.manual_seed(seed)
    model = Net()
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 6))
    return model, part


OPTIMIZERS = {
    "sgd-momentum": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adam": lambda groups: torch.optim.Adam(groups, lr=1e-3),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05),
    "rmsprop": lambda groups: torch.optim.RMSprop(groups, lr=1e-3, momentum=0.5),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_probing_leaves_params_state_and_buffers_as_a_plain_step(name):
    """Every HiDLR step equals a plain base step at the applied LRs: params, state and BN buffers bitwise."""
    model_a, part_a = make()
    model_b = copy.deepcopy(model_a)
    part_b = layerwise.by_layer(model_b, sample_input=torch.zeros(2, 6))
    opt_a = HiDLR(OPTIMIZERS[name](part_a.param_groups(lr=0.01)), update_every=2, model=model_a, groups=part_a)
    opt_b = OPTIMIZERS[name](part_b.param_groups(lr=0.01))
    for x, y in batches(6):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        opt_a.step(lambda m=model_a, x=x, y=y: nn.functional.cross_entropy(m(x), y))
        for ga, gb in zip(opt_a.param_groups, opt_b.param_groups):
            gb["lr"] = ga["lr"]
        opt_b.step()
        for ta, tb in zip(model_a.state_dict().values(), model_b.state_dict().values()):
            assert torch.equal(ta, tb)
        sa, sb = opt_a.optimizer.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for key in sa:
            for field in sa[key]:
                assert torch.equal(torch.as_tensor(sa[key][field]), torch.as_tensor(sb[key][field]))
    assert opt_a.stats["probe_rounds"] == 3
    assert opt_a.stats["forward_passes"] == 3 * 4 * len(part_a)


def test_groups_merge_by_name_and_count_forward_passes():
    model, part = make()
    groups = part.param_groups(lr=0.01, weight_decay=1e-4, no_decay=("bias",))  # decay / no-decay dicts share names
    assert len(groups) > len(part)
    opt = HiDLR(torch.optim.SGD(groups, lr=0.01), update_every=4, groups=part)
    assert opt.names == list(part.names)
    x, y = batches(1)[0]
    loss = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step(loss)
    assert opt.stats["forward_passes"] == 2 * 4 * len(part)
    assert len(opt.history) == 2
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(opt.lrs[group["name"]])


def test_hi_ulr_is_one_group():
    model, _ = make()
    opt = HiDLR(torch.optim.SGD(model.parameters(), lr=0.01), update_every=1)
    x, y = batches(1)[0]
    loss = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt.zero_grad()
    loss().backward()
    opt.step(loss)
    assert opt.names == ["group0"]
    assert opt.stats["forward_passes"] == 4


def test_gamma_smoothing_and_clip():
    q = Quadratic()
    opt = HiDLR(torch.optim.SGD(q.groups(0.01)), update_every=1, gamma=0.5)
    opt.zero_grad()
    q.loss().backward()
    want = expected_eta(q, [-q.w1.grad, -q.w2.grad])
    opt.step(q.loss)
    np.testing.assert_allclose(opt.eta, 0.5 * 0.01 + 0.5 * want, rtol=1e-7)

    q = Quadratic()
    opt = HiDLR(torch.optim.SGD(q.groups(0.01)), update_every=1, gamma=0.0, clip=(0.0, 1e-3))
    opt.zero_grad()
    q.loss().backward()
    opt.step(q.loss)
    assert max(opt.eta) == pytest.approx(1e-3)


def test_schedule_multiplies_found_lrs_and_skips_zero_factor_groups():
    q = Quadratic()
    opt = HiDLR(torch.optim.SGD(q.groups(0.01)), update_every=1, gamma=0.0, schedule=Cosine(), total_steps=4)
    for step in range(3):
        opt.zero_grad()
        q.loss().backward()
        opt.step(q.loss)
        factor = Cosine()(step / 4)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([e * factor for e in opt.eta])

    q = Quadratic()
    frozen_b = LayerSchedule(layers=LinearInTime(start=[1.0, 0.0], end=[1.0, 0.0]))
    opt = HiDLR(torch.optim.SGD(q.groups(0.01)), update_every=1, schedule=frozen_b, total_steps=10)
    w2 = q.w2.detach().clone()
    opt.zero_grad()
    q.loss().backward()
    opt.step(q.loss)
    assert opt.stats["forward_passes"] == 4  # only group a probed
    assert opt.eta[1] == 0.01
    assert torch.equal(q.w2.detach(), w2)


def test_nonfinite_probes_keep_lrs_and_params(caplog):
    q = Quadratic()
    opt = HiDLR(torch.optim.SGD(q.groups(0.01)), update_every=1)
    calls = []

    def closure():
        calls.append(1)
        return q.loss() * (float("nan") if len(calls) == 3 else 1.0)

    opt.zero_grad()
    q.loss().backward()
    want = [(q.w1 - 0.01 * q.w1.grad).detach(), (q.w2 - 0.01 * q.w2.grad).detach()]
    with caplog.at_level(logging.WARNING, logger="layerwise.hidlr"):
        opt.step(closure)
    assert opt.eta == [0.01, 0.01]
    assert opt.stats["rejections"]["nonfinite"] == 1 and opt.stats["accepted"] == 0
    assert "nonfinite" in caplog.text
    assert torch.equal(q.w1.detach(), want[0]) and torch.equal(q.w2.detach(), want[1])


def train(opt, model, data, start=0):
    for x, y in data[start:]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step(lambda x=x, y=y: nn.functional.cross_entropy(model(x), y))


def test_resume_mid_run_equals_uninterrupted():
    data = batches(10)
    model, part = make()
    opt = HiDLR(torch.optim.AdamW(part.param_groups(lr=1e-3)), update_every=3, gamma=0.5, model=model)
    train(opt, model, data)

    model2, part2 = make()
    opt2 = HiDLR(torch.optim.AdamW(part2.param_groups(lr=1e-3)), update_every=3, gamma=0.5, model=model2)
    train(opt2, model2, data[:5])
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    model3, part3 = make(seed=1)
    model3.load_state_dict(saved["model"])
    opt3 = HiDLR(torch.optim.AdamW(part3.param_groups(lr=1e-3)), update_every=3, gamma=0.5, model=model3)
    opt3.load_state_dict(saved["opt"])
    train(opt3, model3, data, start=5)
    for a, b in zip(model.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)
    assert opt3.eta == opt.eta and opt3.stats == opt.stats and opt3.step_count == 10
    assert opt.stats["accepted"] > 0


def test_works_with_a_torch_lr_scheduler_reading_param_groups():
    model, part = make()
    opt = HiDLR(torch.optim.SGD(part.param_groups(lr=0.01)), update_every=2)
    assert isinstance(opt, torch.optim.Optimizer)
    x, y = batches(1)[0]
    loss = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt.zero_grad()
    loss().backward()
    opt.step(loss)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(list(opt.lrs.values()))
    assert "HiDLR(SGD" in repr(opt)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"update_every": 0}, "update_every"),
        ({"update_every": 1.5}, "update_every"),
        ({"update_every": True}, "update_every"),
        ({"gamma": 1.0}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"probes": (1.0, -1.0)}, "probes"),
        ({"probes": (0.0, 1.0, 2.0, -1.0)}, "probes"),
        ({"clip": (1.0, 0.5)}, "clip"),
        ({"schedule": Cosine()}, "total_steps"),
        ({"min_r2": 1.5}, "min_r2"),
    ],
)
def test_bad_arguments(kwargs, match):
    q = Quadratic()
    with pytest.raises(ValueError, match=match):
        HiDLR(torch.optim.SGD(q.groups(0.01)), **kwargs)


def test_bad_optimizer_and_groups():
    q = Quadratic()
    with pytest.raises(TypeError, match="optimizer"):
        HiDLR(q.groups(0.01))
    model, part = make()
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="groups"):
        HiDLR(other, groups=part)


def snapshot(model, opt):
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.optimizer.state_dict()),
        [g["lr"] for g in opt.param_groups],
    )


@pytest.mark.parametrize(
    ("closure", "error", "match"),
    [
        (lambda m, x, y: nn.functional.cross_entropy(m(x), y, reduction="none"), TypeError, "scalar"),
        (lambda m, x, y: 1.0, TypeError, "scalar"),
        (lambda m, x, y: nn.functional.cross_entropy(m(x), y).backward(), ValueError, "backward"),
    ],
    ids=["vector", "float", "backward"],
)
def test_bad_closure_leaves_model_and_optimizer_untouched(closure, error, match):
    model, part = make()
    opt = HiDLR(torch.optim.Adam(part.param_groups(lr=1e-3)), update_every=1, model=model)
    data = batches(2)
    train(opt, model, data[:1])
    x, y = data[1]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    before = snapshot(model, opt)
    with pytest.raises(error, match=match):
        opt.step(lambda: closure(model, x, y))
    after = snapshot(model, opt)
    for a, b in zip(before[0].values(), after[0].values()):
        assert torch.equal(a, b)
    assert before[2] == after[2]
    for key, state in before[1]["state"].items():
        for field, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after[1]["state"][key][field]))
    with pytest.raises(TypeError, match="closure"):
        opt.step()


def test_joint_scale_corrects_the_diagonal_overshoot_of_coupled_groups():
    def run(joint):
        x = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        y = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = HiDLR(
            torch.optim.SGD([{"params": [x]}, {"params": [y]}], lr=0.01), update_every=1, gamma=0.0, joint_scale=joint
        )

        def loss():
            return ((x + y - 1) ** 2).sum()

        opt.zero_grad()
        loss().backward()
        opt.step(loss)
        return float(loss().detach()), opt

    overshoot, plain = run(False)
    assert plain.eta == pytest.approx([0.5, 0.5])  # each group alone would solve it: together they overshoot
    assert overshoot == pytest.approx(1.0)
    exact, joint = run(True)
    assert joint.eta == pytest.approx([0.25, 0.25])
    assert exact == pytest.approx(0.0, abs=1e-20)
    assert joint.stats["forward_passes"] == 4 * 2 + 4


def test_per_group_acceptance_updates_only_the_groups_that_pass():
    plan = probe_plan(2)
    u1, u2 = plan[:, 0], plan[:, 1]
    one_concave = 1 - u1 + u1**2 - u2 - u2**2
    assert fit_quadratic(plan, one_concave, np.array([0.1, 0.2])).reason == "curvature"
    fit = fit_quadratic(plan, one_concave, np.array([0.1, 0.2]), per_group=True)
    assert fit.accepted and fit.groups.tolist() == [True, False]
    assert fit.eta_star[0] == pytest.approx(0.1 * 1 / 2)

    x = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    y = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = HiDLR(torch.optim.SGD([{"params": [x]}, {"params": [y]}], lr=0.01), update_every=1, gamma=0.0, per_group=True)

    def loss():
        return (x**2 - torch.cos(3 * y)).sum()  # at y = 1 the curvature 9 cos(3) of -cos(3y) is negative

    opt.zero_grad()
    loss().backward()
    opt.step(loss)
    assert opt.eta[0] == pytest.approx(0.5, rel=1e-3) and opt.eta[1] == 0.01
    assert opt.stats["accepted"] == 1 and opt.stats["groups_kept"] == 1
    with pytest.raises(ValueError, match="per_group"):
        HiDLR(torch.optim.SGD([x], lr=0.1), per_group=True, full_matrix=True)


def test_anchored_fit_costs_one_forward_per_round_and_is_newton_on_the_ellipse():
    x = nn.Parameter(torch.tensor([50.0], dtype=torch.float64))
    y = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = HiDLR(torch.optim.SGD([{"params": [x]}, {"params": [y]}], lr=1e-4), update_every=1, gamma=0.0, anchored=True)

    def loss():
        return (x**2 + 100 * y**2).sum()

    opt.zero_grad()
    loss().backward()
    opt.step(loss)
    assert float(loss().detach()) < 1e-10 and opt.eta == pytest.approx([0.5, 0.005])
    assert opt.stats["forward_passes"] == 4 * 2 + 1  # the probes and the loss at the current weights
    saved = opt.state_dict()
    plain = HiDLR(torch.optim.SGD([{"params": [x]}, {"params": [y]}], lr=1e-4), update_every=1, gamma=0.0)
    with pytest.raises(ValueError, match="anchored"):
        plain.load_state_dict(saved)
