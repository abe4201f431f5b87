"""SecantLR: exact curvature on quadratics, a hand-written reference loop, rejections, resume, bad input."""

import io

import pytest
import torch
from torch import nn

import layerwise
from layerwise import Cosine, SecantLR


def _quadratic(curvatures=(2.0, 50.0)):
    params = [nn.Parameter(torch.tensor([3.0, -1.0], dtype=torch.float64)) for _ in curvatures]

    def loss():
        return sum(0.5 * c * (p**2).sum() for c, p in zip(curvatures, params))

    return params, loss


def _step(opt, loss_fn):
    opt.zero_grad()
    loss_fn().backward()
    opt.step()


def test_recovers_each_groups_exact_curvature_and_takes_newton_steps():
    params, loss = _quadratic()
    opt = SecantLR(
        torch.optim.SGD([{"params": [p], "name": f"g{i}"} for i, p in enumerate(params)], lr=1e-3), gamma=0.0, beta=0.7
    )
    _step(opt, loss)
    assert opt.curvature == {"g0": None, "g1": None}
    _step(opt, loss)
    assert opt.curvature["g0"] == pytest.approx(2.0, rel=1e-12)
    assert opt.curvature["g1"] == pytest.approx(50.0, rel=1e-12)
    assert opt.lrs["g0"] == pytest.approx(0.5) and opt.lrs["g1"] == pytest.approx(0.02)
    assert float(loss().detach()) < 1e-20  # the step at lr = 1 / c lands on each group's minimum
    assert opt.stats["accepted"] == 2 and opt.stats["rejected"] == 0


def _reference(model, batches, lr, mode, beta, gamma, scale):
    """Plain-Python SecantLR with one group per parameter tensor, SGD with momentum."""
    params = list(model.parameters())
    base = torch.optim.SGD([{"params": [p]} for p in params], lr=lr, momentum=0.9)
    eta = [lr] * len(params)
    sums = [[0.0, 0.0, 0.0] for _ in params]
    seen = [False] * len(params)
    prev = None
    for x, y in batches:
        base.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grads = [p.grad.detach().clone() for p in params]
        weights = [p.detach().clone() for p in params]
        if prev is not None:
            for k in range(len(params)):
                dw = weights[k] - prev[0][k]
                dg = grads[k] - prev[1][k]
                terms = [float((dg * dw).sum()), float((dw * dw).sum()), -float((prev[1][k] * dw).sum()) * prev[2][k]]
                sums[k] = [beta * s + (1 - beta) * t for s, t in zip(sums[k], terms)]
                seen[k] = True
            for k in range(len(params)):
                if not seen[k] or sums[k][0] <= 0:
                    continue
                star = scale * (sums[k][1] if mode == "bb" else sums[k][2]) / sums[k][0]
                eta[k] = gamma * eta[k] + (1 - gamma) * star
        for group, value in zip(base.param_groups, eta):
            group["lr"] = value
        prev = (weights, grads, list(eta))
        base.step()
    return eta, [p.detach().clone() for p in params]


@pytest.mark.parametrize("mode", ["bb", "line"])
def test_matches_a_hand_written_reference_loop(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    twin = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    twin.load_state_dict(model.state_dict())
    batches = [(torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)) for _ in range(12)]
    eta, weights = _reference(twin, batches, 0.01, mode, beta=0.6, gamma=0.5, scale=0.5)
    opt = SecantLR(
        torch.optim.SGD([{"params": [p]} for p in model.parameters()], lr=0.01, momentum=0.9),
        mode=mode,
        beta=0.6,
        gamma=0.5,
        scale=0.5,
    )
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert list(opt.lrs.values()) == pytest.approx(eta, rel=1e-9)
    for p, w in zip(model.parameters(), weights):
        torch.testing.assert_close(p.detach(), w, rtol=1e-9, atol=1e-12)


def test_negative_curvature_and_nan_are_rejected_and_counted():
    w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = SecantLR(torch.optim.SGD([w], lr=0.1), gamma=0.0)
    for _ in range(3):
        _step(opt, lambda: -(w**2).sum())  # concave: <dg, dw> < 0
    assert opt.lrs["group0"] == 0.1
    assert opt.stats["rejections"]["nonpositive"] == 2 and opt.stats["accepted"] == 0
    v = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = SecantLR(torch.optim.SGD([v], lr=0.1), gamma=0.0)
    _step(opt, lambda: (v**2).sum())
    _step(opt, lambda: (v**2).sum() * float("nan"))
    assert opt.lrs["group0"] == 0.1 and opt.stats["rejections"]["nonfinite"] == 1


def test_schedule_multiplies_the_found_rate_and_clip_bounds_it():
    params, loss = _quadratic((2.0,))
    opt = SecantLR(torch.optim.SGD(params, lr=1e-3), gamma=0.0, clip=(0.0, 0.1), schedule=Cosine(), total_steps=4)
    for _ in range(3):
        _step(opt, loss)
    assert opt.lrs["group0"] == pytest.approx(0.1)  # 1 / c = 0.5, clipped
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * Cosine()(2 / 4))  # applied on the third step (index 2)


def test_works_on_adam_with_the_line_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 4))
    opt = SecantLR(torch.optim.Adam(part.param_groups(lr=1e-3)), mode="line", groups=part, clip=(0, 0.1))
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    first = nn.functional.mse_loss(model(x), y).item()
    for _ in range(30):
        _step(opt, lambda: nn.functional.mse_loss(model(x), y))
    assert nn.functional.mse_loss(model(x), y).item() < first
    assert all(0 < v <= 0.1 for v in opt.lrs.values()) and opt.stats["accepted"] > 0


def test_resume_from_a_checkpoint_is_exact():
    def batches(start, count):
        g = torch.Generator().manual_seed(3)
        data = [(torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)) for _ in range(12)]
        return data[start : start + count]

    def make():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
        part = layerwise.by_layer(model, sample_input=torch.zeros(2, 3))
        return model, SecantLR(torch.optim.SGD(part.param_groups(lr=0.01), momentum=0.9), beta=0.8, update_every=2)

    def train(model, opt, data):
        for x, y in data:
            _step(opt, lambda x=x, y=y: nn.functional.mse_loss(model(x), y))

    straight, opt = make()
    train(straight, opt, batches(0, 12))
    first, opt1 = make()
    train(first, opt1, batches(0, 5))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed, opt2 = make()
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, batches(5, 7))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert opt.lrs == opt2.lrs and opt.stats == opt2.stats


def test_bad_input_is_refused_and_leaves_the_optimizer_untouched():
    w = nn.Parameter(torch.ones(2))
    base = torch.optim.SGD([w], lr=0.1)
    before = [dict(g) for g in base.param_groups]
    cases = [
        ({"mode": "newton"}, ValueError, r"mode: must be one of \('bb', 'line'\)"),
        ({"beta": 1.0}, ValueError, r"beta: must be in \[0, 1\)"),
        ({"gamma": -0.1}, ValueError, r"gamma: must be in \[0, 1\)"),
        ({"scale": 0.0}, ValueError, "scale: must be a finite number > 0"),
        ({"update_every": 0}, ValueError, "update_every: must be an int >= 1"),
        ({"clip": (1.0, 0.5)}, ValueError, "clip: expected"),
        ({"schedule": Cosine()}, ValueError, "total_steps: an int >= 1 is required"),
        ({"schedule": 3}, TypeError, "schedule: expected a Policy or LayerSchedule"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            SecantLR(base, **options)
    with pytest.raises(TypeError, match=r"optimizer: expected a torch\.optim\.Optimizer"):
        SecantLR([w])
    with pytest.raises(TypeError, match="already a SecantLR"):
        SecantLR(SecantLR(base))
    model = nn.Linear(2, 1)
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="do not hold the partition's groups"):
        SecantLR(torch.optim.SGD(model.parameters(), lr=0.1), groups=part)
    assert [dict(g) for g in base.param_groups] == before and not base.state
