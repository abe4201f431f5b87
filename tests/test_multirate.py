import copy
import io

import pytest
import torch
from torch import nn

import layerwise
from layerwise import Multirate


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))


def make(seed=0):
    torch.manual_seed(seed)
    return MLP().double()


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
        for _ in range(n)
    ]


def loss_of(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def reference_sgd(model, data, h, k, mu, wd=0.0, drift=True, slow_lr=None):
    """Algorithms 1 / A3 (drift) and 2 (no drift), written from the paper's pseudo-code."""
    slow, fast = list(model.body.parameters()), list(model.head.parameters())
    p_s = [torch.zeros_like(p) for p in slow]
    p_f = [torch.zeros_like(p) for p in fast]
    h_s = h if slow_lr is None else slow_lr
    for t, (x, y) in enumerate(data):
        refresh = t % k == 0
        grads = torch.autograd.grad(loss_of(model, x, y), fast + slow if refresh else fast)
        with torch.no_grad():
            if refresh:
                for i, (p, g) in enumerate(zip(slow, grads[len(fast) :])):
                    p_s[i] = mu * p_s[i] + g + wd * p
                if not drift:
                    for p, m in zip(slow, p_s):
                        p -= h_s * m
            for i, (p, g) in enumerate(zip(fast, grads[: len(fast)])):
                p_f[i] = mu * p_f[i] + g + wd * p
                p -= h / k * p_f[i]
            if drift:
                for p, m in zip(slow, p_s):
                    p -= h_s / k * m
    return model


def run(opt, model, data):
    for x, y in data:
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
    return model


def assert_close(a, b, **tol):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.detach(), pb.detach(), msg=name, **tol)


@pytest.mark.parametrize(
    "settings",
    [
        {"k": 5, "mu": 0.9},
        {"k": 5, "mu": 0.9, "wd": 5e-3},
        {"k": 3, "mu": 0.0},
        {"k": 1, "mu": 0.9},
        {"k": 4, "mu": 0.9, "drift": False},
        {"k": 4, "mu": 0.9, "slow_lr": 0.05},
    ],
    ids=["alg1", "algA3", "plain-sgd", "k1", "alg2", "uncoupled"],
)
def test_matches_the_papers_algorithms(settings):
    data = batches(23)  # 4 full cycles and a partial one
    h = 0.2
    ref = reference_sgd(make(), data, h, **settings)
    model = make()
    opt = Multirate(
        model.head.parameters(),
        model.body.parameters(),
        lr=h,
        k=settings["k"],
        momentum=settings["mu"],
        weight_decay=settings.get("wd", 0.0),
        drift=settings.get("drift", True),
        slow_lr=settings.get("slow_lr"),
    )
    run(opt, model, data)
    assert_close(model, ref, rtol=1e-10, atol=1e-12)


def test_k_fast_steps_per_slow_gradient_and_backward_stops_at_the_fast_part():
    model = make()
    opt = Multirate(model.head.parameters(), model.body.parameters(), lr=0.1, k=4, momentum=0.9)
    seen = []
    for t, (x, y) in enumerate(batches(9)):
        opt.zero_grad()
        hidden = model.body(x)
        assert hidden.requires_grad == (t % 4 == 0)  # no graph through the slow prefix on fast steps
        nn.functional.cross_entropy(model.head(hidden), y).backward()
        seen.append(all(p.grad is not None for p in model.body.parameters()))
        assert all(p.grad is not None for p in model.head.parameters())
        opt.step()
    assert seen == [t % 4 == 0 for t in range(9)]


def test_adam_base_drifts_the_slow_adam_update():
    data = batches(12)
    h, k = 0.01, 3
    model = make()
    opt = Multirate(
        model.head.parameters(), model.body.parameters(), lr=h, k=k, base=torch.optim.AdamW, weight_decay=0.01
    )
    run(opt, model, data)

    ref = make()
    shadow = copy.deepcopy(ref.body)  # the slow part's Adam runs on a copy: its update is the drift
    slow_adam = torch.optim.AdamW(shadow.parameters(), lr=h, weight_decay=0.01)
    fast_adam = torch.optim.AdamW(ref.head.parameters(), lr=h / k, weight_decay=0.01)
    drift = None
    for t, (x, y) in enumerate(data):
        for p in ref.body.parameters():
            p.requires_grad_(t % k == 0)
        ref.zero_grad()
        loss_of(ref, x, y).backward()
        if t % k == 0:
            with torch.no_grad():
                for s, p in zip(shadow.parameters(), ref.body.parameters()):
                    s.copy_(p)
                    s.grad = p.grad.clone()
            slow_adam.step()
            drift = [(s.detach() - p.detach()) / k for s, p in zip(shadow.parameters(), ref.body.parameters())]
        fast_adam.step()
        with torch.no_grad():
            for p, d in zip(ref.body.parameters(), drift):
                p += d
    assert_close(model, ref, rtol=1e-9, atol=1e-12)


def test_three_levels_recursive_periods():
    model = make()
    first, second = model.body[0], model.body[2]
    opt = Multirate.levels(
        [model.head.parameters(), second.parameters(), first.parameters()], lr=0.3, ratios=[2, 3], momentum=0.9
    )
    assert opt.periods == [1, 2, 6]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.1, 0.3])
    data = batches(13)
    needs = []
    for x, y in data:
        needs.append((first.weight.requires_grad, second.weight.requires_grad))
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
    assert needs == [(t % 6 == 0, t % 2 == 0) for t in range(13)]

    # reference: each level refreshes its momentum every period and drifts h_i / period_i per step
    ref = make()
    levels = [list(ref.head.parameters()), list(ref.body[2].parameters()), list(ref.body[0].parameters())]
    periods, steps = [1, 2, 6], [0.05, 0.1, 0.3]
    momenta = [[torch.zeros_like(p) for p in level] for level in levels]
    for t, (x, y) in enumerate(data):
        live = [i for i in range(3) if t % periods[i] == 0]
        params = [p for i in live for p in levels[i]]
        grads = iter(torch.autograd.grad(loss_of(ref, x, y), params))
        with torch.no_grad():
            for i in live:
                momenta[i] = [0.9 * m + next(grads) for m in momenta[i]]
            for i in range(3):
                for p, m in zip(levels[i], momenta[i]):
                    p -= steps[i] / periods[i] * m
    assert_close(model, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("split", [3, 5, 7])
def test_resume_mid_cycle_equals_uninterrupted(split):
    data = batches(12)
    straight = make()
    run(Multirate(straight.head.parameters(), straight.body.parameters(), lr=0.1, k=5, momentum=0.9), straight, data)

    first = make()
    opt = Multirate(first.head.parameters(), first.body.parameters(), lr=0.1, k=5, momentum=0.9)
    run(opt, first, data[:split])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = make(seed=3)
    resumed.load_state_dict(saved["model"])
    opt = Multirate(resumed.head.parameters(), resumed.body.parameters(), lr=0.1, k=5, momentum=0.9)
    opt.load_state_dict(saved["opt"])
    assert opt.step_count == split
    assert resumed.body[0].weight.requires_grad == (split % 5 == 0)
    run(opt, resumed, data[split:])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_from_partition_and_slow_biases_in_one_line():
    model = make()
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 5, dtype=torch.float64))
    opt = Multirate.from_partition(part, fast=["head"], lr=0.1, k=4, momentum=0.9)
    assert {id(p) for p in opt.optimizers[0].param_groups[0]["params"]} == {id(p) for p in model.head.parameters()}
    slow_biases = Multirate.from_partition(layerwise.by_kind(model), fast=["weight"], lr=0.1, k=4)
    assert all(p.dim() == 1 for g in slow_biases.optimizers[1].param_groups for p in g["params"])
    with pytest.raises(ValueError, match="fast"):
        Multirate.from_partition(part, fast=["nope"], lr=0.1, k=4)


def test_gradient_accumulation_and_grad_scaler():
    data = batches(8)
    plain = make()
    run(Multirate(plain.head.parameters(), plain.body.parameters(), lr=0.1, k=3, momentum=0.9), plain, data)

    model = make()
    opt = Multirate(model.head.parameters(), model.body.parameters(), lr=0.1, k=3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    for x, y in data:
        opt.zero_grad()
        for half in (slice(0, 8), slice(8, 16)):  # two micro-batches, summed to the mean
            scaler.scale(loss_of(model, x[half], y[half]) / 2).backward()
        scaler.step(opt)
        scaler.update()
    assert_close(model, plain, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, "k"),
        ({"k": 2.5}, ValueError, "k"),
        ({"k": True}, ValueError, "k"),
        ({"lr": -0.1}, ValueError, "lr"),
        ({"momentum": -0.5}, ValueError, "momentum"),
        ({"slow_lr": float("nan")}, ValueError, "slow_lr"),
        ({"base": "sgd"}, TypeError, "base"),
    ],
)
def test_bad_arguments_leave_parameters_untouched(kwargs, error, match):
    model = make()
    options = {"lr": 0.1, "k": 3, **kwargs}
    with pytest.raises(error, match=match):
        Multirate(model.head.parameters(), model.body.parameters(), **options)
    assert all(p.requires_grad for p in model.parameters())


def test_bad_parts():
    model = make()
    with pytest.raises(ValueError, match="both"):
        Multirate(model.parameters(), model.body.parameters(), lr=0.1, k=2)
    with pytest.raises(ValueError, match="fast"):
        Multirate([], model.body.parameters(), lr=0.1, k=2)
    with pytest.raises(ValueError, match="neither"):
        Multirate(model.head.parameters(), model.body[0].parameters(), lr=0.1, k=2, model=model)
    assert all(p.requires_grad for p in model.parameters())


def test_unused_parameters_with_no_grad_do_not_crash():
    model = make()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Multirate(model.head.parameters(), [*model.body.parameters(), unused], lr=0.1, k=2, momentum=0.9)
    run(opt, model, batches(5))
    assert torch.equal(unused.detach(), torch.ones(3, dtype=torch.float64))
    assert opt.step_count == 5


def test_levels_take_the_model_check_and_an_uncoupled_slow_lr():
    model = make()
    parts = [list(model.head.parameters()), list(model.body[2].parameters()), list(model.body[0].parameters())]
    opt = Multirate.levels(parts, lr=0.4, ratios=[2, 2], slow_lr=0.05, model=model)
    assert opt.periods == [1, 2, 4] and [g["lr"] for g in opt.param_groups] == [0.1, 0.2, 0.05]  # h / 4, h / 2, h_S
    with pytest.raises(ValueError, match="parameters in neither part"):
        Multirate.levels(parts[:2], lr=0.4, ratios=[2], model=model)
