"""LayerMonitor: values against hand computations, sampling, Adam step sizes, frozen groups, logging, bad input."""

import json

import pytest
import torch
from torch import nn

import layerwise
from layerwise import Freezer, LayerMonitor
from layerwise.plotting import plot_telemetry


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def _step(model, opt, x, y):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _flat(tensors):
    return torch.cat([t.detach().flatten() for t in tensors]).double()


def test_values_match_hand_computations():
    model = _model()
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 3))
    opt = torch.optim.SGD(part.param_groups(lr=0.1), lr=0.1)
    monitor = LayerMonitor(opt, every=1, groups=part)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    initial = {name: _flat(group.params) for name, group in zip(part.names, part)}
    _step(model, opt, x, y)  # step 0
    before = {name: _flat(group.params) for name, group in zip(part.names, part)}
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    grads = {name: _flat([p.grad for p in group.params]) for name, group in zip(part.names, part)}
    opt.step()  # step 1
    assert monitor.steps == [0, 1]
    for name, group in zip(part.names, part):
        after = _flat(group.params)
        h = monitor.history
        assert h["lr"][name][1] == 0.1
        assert h["grad_norm"][name][1] == pytest.approx(float(grads[name].norm()), rel=1e-6)
        assert h["weight_norm"][name][1] == pytest.approx(float(after.norm()), rel=1e-6)
        relative = float((after - before[name]).norm() / before[name].norm())
        assert h["relative_update"][name][1] == pytest.approx(relative, rel=1e-5)
        assert relative == pytest.approx(0.1 * float(grads[name].norm() / before[name].norm()), rel=1e-5)
        cosine = float(after @ initial[name] / (after.norm() * initial[name].norm()))
        assert h["rotation"][name][1] == pytest.approx(1 - cosine, abs=1e-9)
        assert h["frozen"][name] == [0.0, 0.0] and h["adam_step"][name] == [None, None]


def test_records_every_nth_step_only():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = LayerMonitor(opt, every=3, quantities=["lr", "grad_norm"])
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    for _ in range(7):
        _step(model, opt, x, y)
    assert monitor.steps == [0, 3, 6] and set(monitor.history) == {"lr", "grad_norm"}
    monitor.remove()
    _step(model, opt, x, y)
    _step(model, opt, x, y)
    assert monitor.steps == [0, 3, 6]


def test_adam_effective_step_quantiles():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    monitor = LayerMonitor(opt, every=1, quantities=["adam_step"], quantiles=(0.0, 0.5, 1.0))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    _step(model, opt, x, y)
    _step(model, opt, x, y)
    v_hat = torch.cat([opt.state[p]["exp_avg_sq"].flatten() / (1 - 0.99**2) for p in model.parameters()]).double()
    steps = 0.01 / (v_hat.sqrt() + 1e-8)
    got = monitor.history["adam_step"]["group0"][1]
    assert got == pytest.approx([float(steps.min()), float(steps.quantile(0.5)), float(steps.max())], rel=1e-6)


def test_frozen_groups_and_tensorboard_style_logging():
    model = _model()
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 3))
    opt = torch.optim.SGD(part.param_groups(lr=0.1))

    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    writer = Writer()
    monitor = LayerMonitor(opt, every=1, quantities=["lr", "frozen"], writer=writer)
    Freezer(model, opt).freeze(part.names[0])
    _step(model, opt, torch.randn(4, 3), torch.randn(4, 1))
    assert monitor.history["frozen"] == {part.names[0]: [1.0], part.names[1]: [0.0]}
    assert (f"frozen/{part.names[0]}", 1.0, 0) in writer.calls and (f"lr/{part.names[1]}", 0.1, 0) in writer.calls


def test_state_dict_resumes_the_records_and_rotation_reference(tmp_path):
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    straight = LayerMonitor(opt, every=2)
    for _ in range(6):
        _step(model, opt, x, y)
    model2 = _model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    first = LayerMonitor(opt2, every=2)
    for _ in range(3):
        _step(model2, opt2, x, y)
    state = first.state_dict()
    first.remove()
    second = LayerMonitor(opt2, every=2)
    second.load_state_dict(state)
    for _ in range(3):
        _step(model2, opt2, x, y)
    assert second.steps == straight.steps and second.history == straight.history
    path = second.save(tmp_path / "telemetry.json")
    assert json.loads(path.read_text())["steps"] == [0, 2, 4]
    assert {p.name for p in plot_telemetry(json.loads(path.read_text()), tmp_path / "plots")} >= {"rotation.png"}


def test_bad_input_is_refused():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every: must be an int >= 1"):
        LayerMonitor(opt, every=0)
    with pytest.raises(ValueError, match=r"quantities: unknown \['curvature'\]; choose from"):
        LayerMonitor(opt, quantities=["lr", "curvature"])
    with pytest.raises(TypeError, match="quantities: expected a sequence of names"):
        LayerMonitor(opt, quantities="lr")
    with pytest.raises(TypeError, match="writer: expected a SummaryWriter"):
        LayerMonitor(opt, writer=object())
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="do not hold the partition's groups"):
        LayerMonitor(opt, groups=part)
    with pytest.raises(TypeError, match=r"optimizer: expected a torch\.optim\.Optimizer"):
        LayerMonitor([p for p in model.parameters()])
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_real_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model = _model()
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 3))
    opt = torch.optim.SGD(part.param_groups(lr=0.1))
    writer = SummaryWriter(log_dir=str(tmp_path))
    monitor = LayerMonitor(opt, every=2, quantities=["lr", "relative_update"], writer=writer)
    for _ in range(4):
        _step(model, opt, torch.randn(4, 3), torch.randn(4, 1))
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    name = part.names[1]
    assert f"relative_update/{name}" in events.Tags()["scalars"]
    logged = [(e.step, e.value) for e in events.Scalars(f"relative_update/{name}")]
    expected = list(zip(monitor.steps, monitor.history["relative_update"][name]))
    assert [s for s, _ in logged] == [s for s, _ in expected] == [0, 2]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)
