"""Sub-tensor groups (Hi-DLR §4.3): each output row of a layer its own LR group, against hand-written references."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import layerwise
from layerwise import HiDLR, LayerMonitor, LayerwiseLR, SecantLR, by_rows, merge_rows
from layerwise.schedules import Cosine


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))


def _batch(step):
    g = torch.Generator().manual_seed(50 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 2, (16, 4), generator=g).float()


def _loss(net, step):
    x, y = _batch(step)
    return nn.functional.binary_cross_entropy_with_logits(net(x), y)  # 4 binary tasks sharing the last layer


ROW_LRS = [0.05, 0.2, 0.5, 1.0]


def test_subtensor_rows_are_one_linear_trained_with_a_learning_rate_per_row():
    net, ref = _net(), _net()
    part = by_rows(net, "2")
    assert part.names == ("body", "2.row0", "2.row1", "2.row2", "2.row3")
    with torch.no_grad():
        assert torch.equal(net(_batch(0)[0]), ref(_batch(0)[0]))  # the same function after the split
    groups = part.param_groups(lr=0.1)
    for group, lr in zip(groups[1:], ROW_LRS):
        group["lr"] = lr
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    bufs = None
    for step in range(5):
        opt.zero_grad()
        _loss(net, step).backward()
        opt.step()
        grads = torch.autograd.grad(_loss(ref, step), list(ref.parameters()))  # by hand: SGD momentum, row LRs
        bufs = [g.clone() for g in grads] if bufs is None else [0.9 * b + g for b, g in zip(bufs, grads)]
        with torch.no_grad():
            for (name, p), b in zip(ref.named_parameters(), bufs):
                if name.startswith("2."):
                    p.sub_(torch.tensor(ROW_LRS).view(-1, *([1] * (p.ndim - 1))) * b)
                else:
                    p.sub_(0.1 * b)
    torch.testing.assert_close(net[2].weight, ref[2].weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(net[2].bias, ref[2].bias, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(net[0].weight, ref[0].weight, rtol=1e-6, atol=1e-7)


def test_subtensor_groups_with_adamw_weight_decay_resume_exactly_from_a_checkpoint():
    def build():
        net = _net()
        part = by_rows(net, "2", {"first": [0, 1], "last": [3]})  # row 2 goes to 2.rest
        groups = part.param_groups(lr=1e-2, weight_decay=0.1, lr_mult={"first": 3.0})
        return net, torch.optim.AdamW(groups), part

    net, opt, part = build()
    assert part.names == ("body", "first", "last", "2.rest")
    for step in range(6):
        opt.zero_grad()
        _loss(net, step).backward()
        opt.step()
    straight = copy.deepcopy(net.state_dict())
    net, opt, _ = build()
    for step in range(3):
        opt.zero_grad()
        _loss(net, step).backward()
        opt.step()
    saved = copy.deepcopy({"net": net.state_dict(), "opt": opt.state_dict()})
    resumed, opt2, _ = build()
    resumed.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    for step in range(3, 6):
        opt2.zero_grad()
        _loss(resumed, step).backward()
        opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(straight.values(), resumed.state_dict().values()))
    merge_rows(resumed, "2")  # back to a plain Linear with the trained values
    assert isinstance(resumed[2].weight, nn.Parameter) and resumed[2].weight.shape == (4, 8)


def test_subtensor_groups_work_with_hidlr_secant_layerwise_lr_and_telemetry():
    net = _net()
    part = by_rows(net, "2")
    opt = torch.optim.SGD(part.param_groups(lr=0.05))
    hidlr = HiDLR(opt, update_every=2, gamma=0.0, clip=(0.0, 50.0), per_group=True, model=net)
    monitor = LayerMonitor(hidlr, every=1)
    for step in range(6):
        hidlr.zero_grad()
        _loss(net, step).backward()
        hidlr.step(lambda step=step: _loss(net, step))
    assert hidlr.stats["probe_rounds"] == 3 and len(set(hidlr.eta)) > 1  # the rows found LRs of their own
    assert set(monitor.history["grad_norm"]) == {"body", "2.row0", "2.row1", "2.row2", "2.row3"}
    assert len(monitor.history["grad_norm"]["2.row3"]) == 6
    model = _net()
    secant = SecantLR(torch.optim.SGD(by_rows(model, "2").param_groups(lr=0.05)), mode="line", clip=(0, 1.0))
    for step in range(4):
        secant.zero_grad()
        _loss(model, step).backward()
        secant.step()
    assert secant.stats["estimates"] > 0 and len(secant.param_groups) == 5
    model = _net()
    opt = torch.optim.SGD(by_rows(model, "2").param_groups(lr=0.05))
    sched = LayerwiseLR(opt, 10, policy=Cosine())
    for step in range(3):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
        sched.step()
    assert all(g["lr"] < 0.05 for g in opt.param_groups)


def test_subtensor_bad_specs_are_refused_and_leave_the_model_untouched():
    net = _net()
    names = [n for n, _ in net.named_parameters()]
    with pytest.raises(ValueError, match=r"rows\['b'\]: row 1 is also in group 'a'"):
        by_rows(net, "2", {"a": [0, 1], "b": [1, 2]})
    with pytest.raises(ValueError, match=r"rows\['a'\]: row 4 is outside the tensor's rows 0..3"):
        by_rows(net, "2", {"a": [4]})
    with pytest.raises(ValueError, match="module: no submodule named 'head'"):
        by_rows(net, "head")
    with pytest.raises(ValueError, match="has no weight tensor"):
        by_rows(net, "1")
    with pytest.raises(TypeError, match="rows: expected None"):
        by_rows(net, "2", "0,1")
    assert [n for n, _ in net.named_parameters()] == names  # nothing was split
    first = by_rows(net, "2")
    assert by_rows(net, "2").names == first.names  # asked again: the same split, not a second one
    with pytest.raises(ValueError, match="already parametrized"):
        by_rows(net, "2", {"a": [0]})
    with pytest.raises(ValueError, match="is not split by rows"):
        merge_rows(net, "0")
    assert layerwise.by_rows is by_rows


def test_subtensor_task_fashion_mnist_tasks_one_group_per_binary_task():
    from layerwise.tasks import get_task
    from layerwise.tasks.fashion_tasks import one_vs_rest_loss, task_accuracy

    task = get_task("fashion-mnist-tasks")
    model = task.make_model()
    part = task.partition_of(model)
    assert part.names == ("body", *(f"fc.row{i}" for i in range(10)))
    assert task.partition_of(model).names == part.names  # asked twice: one split
    out = torch.tensor([[2.0, -1.0, -3.0], [-1.0, -1.0, 0.5]])
    labels = torch.tensor([0, 1])
    assert task_accuracy(out, labels).tolist() == pytest.approx([1.0, 1 / 3])  # row 2: wrong on tasks 1 and 2
    expected = nn.functional.binary_cross_entropy_with_logits(out, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    assert one_vs_rest_loss(out, labels) == pytest.approx(float(expected))


def test_subtensor_rows_with_adamw_and_no_decay_biases_match_a_hand_written_adamw():
    net, ref = _net(), _net()
    part = by_rows(net, "2")
    lr_mult = {f"2.row{i}": lr / 0.05 for i, lr in enumerate(ROW_LRS)}
    opt = torch.optim.AdamW(part.param_groups(lr=0.05, lr_mult=lr_mult, weight_decay=0.1, no_decay=("bias",)))
    rows = torch.tensor(ROW_LRS)
    lrs = [
        rows.view(-1, 1) if name == "2.weight" else rows if name == "2.bias" else torch.tensor(0.05)
        for name, _ in ref.named_parameters()
    ]
    decays = [0.0 if name.endswith("bias") else 0.1 for name, _ in ref.named_parameters()]  # biases: no decay
    m = [torch.zeros_like(p) for p in ref.parameters()]
    v = [torch.zeros_like(p) for p in ref.parameters()]
    for step in range(1, 6):
        opt.zero_grad()
        _loss(net, step).backward()
        opt.step()
        grads = torch.autograd.grad(_loss(ref, step), list(ref.parameters()))  # by hand: AdamW, row LRs
        with torch.no_grad():
            for p, g, mi, vi, lr, wd in zip(ref.parameters(), grads, m, v, lrs, decays):
                p.mul_(1 - lr * wd)
                mi.mul_(0.9).add_(0.1 * g)
                vi.mul_(0.999).add_(0.001 * g * g)
                p.sub_(lr * (mi / (1 - 0.9**step)) / ((vi / (1 - 0.999**step)).sqrt() + 1e-8))
    for a, b in ((net[0].weight, ref[0].weight), (net[0].bias, ref[0].bias), (net[2].weight, ref[2].weight)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[2].bias, ref[2].bias, rtol=1e-5, atol=1e-6)
    assert [g["weight_decay"] for g in opt.param_groups if g["name"] == "2.row3"] == [0.1, 0.0]  # weight, bias
    by_kind = {group.name: len(group.params) for group in layerwise.by_kind(net)}
    assert by_kind == {"weight": 1 + 4, "bias": 1 + 4}  # the row leaves keep the kind of the tensor they cut


def test_subtensor_row_lrs_follow_the_closed_form_and_telemetry_sees_each_rows_gradient():
    net, ref = _net(), _net()
    part = by_rows(net, "2")
    opt = torch.optim.SGD(part.param_groups(lr=0.05, lr_mult={"2.row1": 10.0}))
    sched = LayerwiseLR(opt, 10, policy=Cosine())
    monitor = LayerMonitor(opt, every=1)
    for step in range(3):
        opt.zero_grad()
        _loss(net, step).backward()
        names, params = zip(*ref.named_parameters())
        grads = dict(zip(names, torch.autograd.grad(_loss(ref, step), list(params))))
        opt.step()
        sched.step()
        with torch.no_grad():  # the reference follows: SGD with the same per-row LRs
            for name, p in ref.named_parameters():
                lr = 0.05 * 0.5 * (1 + math.cos(math.pi * step / 10))  # the LR used this step (before sched.step)
                if name.startswith("2."):
                    mult = torch.tensor([1.0, 10.0, 1.0, 1.0])
                    p.sub_((lr * mult).view(-1, *([1] * (p.ndim - 1))) * grads[name])
                else:
                    p.sub_(lr * grads[name])
        row3 = torch.cat([grads["2.weight"][3], grads["2.bias"][3:]]).norm()
        assert monitor.history["grad_norm"]["2.row3"][-1] == pytest.approx(float(row3), rel=1e-5)
    cosine = 0.5 * (1 + math.cos(math.pi * 3 / 10))
    row_lrs = [g["lr"] for g in opt.param_groups[1:]]
    assert row_lrs == pytest.approx([0.05 * cosine, 0.5 * cosine, 0.05 * cosine, 0.05 * cosine])
    torch.testing.assert_close(net[2].weight, ref[2].weight, rtol=1e-6, atol=1e-7)


def test_subtensor_rows_accept_integer_indices_of_any_kind_and_refuse_others():
    assert by_rows(_net(), "2", {"a": [np.int64(0), torch.tensor(2)]}).names == ("body", "a", "2.rest")
    net = _net()
    for bad in (1.0, True, "1"):
        with pytest.raises(TypeError, match=rf"rows\['a'\]: row {bad!r} is a {type(bad).__name__}, not an integer"):
            by_rows(net, "2", {"a": [0, bad]})
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
