import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import layerwise
from blobs import Examples
from layerwise.freezeout import FreezeOut, FreezeOutRule, freeze_times


def reference_freezeout_lrs(alpha, num_groups, total, t0, strategy, scale):
    """Hand-written FreezeOut (paper eq. 1 with the 1/2): LR of every group at every step."""
    lin = [1.0] if num_groups == 1 else [t0 + (1 - t0) * i / (num_groups - 1) for i in range(num_groups)]
    t = [x**3 for x in lin] if strategy == "cubic" else lin
    table = []
    for step in range(total):
        row = []
        for i in range(num_groups):
            a0 = alpha / t[i] if scale else alpha
            p = step / total
            row.append(a0 / 2 * (1 + math.cos(math.pi * p / t[i])) if p < t[i] else 0.0)
        table.append(row)
    return table


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.l2 = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.l3 = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.l3(self.l2(self.l1(x))))


def setup(total=40, **kwargs):
    torch.manual_seed(0)
    model = Net()
    part = layerwise.by_block(model, sample_input=torch.zeros(2, 6))
    opt = torch.optim.SGD(part.param_groups(lr=0.1, weight_decay=1e-3, no_decay=("bias", "norm")), momentum=0.9)
    return model, opt, FreezeOut(model, opt, total, **kwargs)


def batches(seed, n):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def train(model, opt, freezeout, data, trace=None):
    for x, y in data:
        if trace is not None:
            trace.append((list(freezeout.frozen), [g["lr"] for g in opt.param_groups]))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        freezeout.step()


def test_closed_form_values():
    assert freeze_times(5, 0.8, "cubic")[0] == pytest.approx(0.512)
    assert freeze_times(5, 0.5, "linear") == pytest.approx([0.5, 0.625, 0.75, 0.875, 1.0])
    rule = FreezeOutRule.build(3, t0=0.5, strategy="linear", scale_lr=True)
    t = rule.times
    for i, ti in enumerate(t):
        start = rule.multipliers(0.0, 3)[i]
        assert start == pytest.approx(1 / ti)  # scaled: alpha_i(0) = alpha / t_i
        assert rule.multipliers(ti / 2, 3)[i] == pytest.approx(start / 2)  # cosine midpoint
        assert rule.multipliers(ti, 3)[i] == 0.0  # zero at t_i
    unscaled = FreezeOutRule.build(3, t0=0.5, strategy="linear", scale_lr=False)
    assert unscaled.multipliers(0.0, 3).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("strategy", ["linear", "cubic"])
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("t0", [0.5, 0.8])
def test_schedule_matches_reference_loop(strategy, scale, t0):
    params = [{"params": [nn.Parameter(torch.zeros(1))], "name": f"g{i}"} for i in range(5)]
    opt = torch.optim.SGD(params, lr=0.2)
    model = nn.ParameterList([group["params"][0] for group in params])
    fo = FreezeOut(model, opt, 100, t0=t0, strategy=strategy, scale_lr=scale)
    got = []
    for _ in range(100):
        got.append([g["lr"] for g in opt.param_groups])
        opt.step()
        fo.step()
    expected = reference_freezeout_lrs(0.2, 5, 100, t0, strategy, scale)
    assert np.allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert fo.lr_at(37) == got[37]


def test_freeze_happens_at_exactly_the_scheduled_step_and_head_trains_to_the_end():
    model, opt, fo = setup(total=40)
    depth_of = {g["name"]: g["depth"] for g in opt.param_groups}
    times = fo.times
    expected_step = {name: math.ceil(times[d] * 40 - 1e-9) for name, d in depth_of.items() if times[d] < 1}
    assert times[-1] == 1.0 and fo.frozen_at[-1] is None  # head
    trace = []
    train(model, opt, fo, batches(1, 40), trace)
    for step, (frozen, lrs) in enumerate(trace):
        assert set(frozen) == {n for n, s in expected_step.items() if step >= s}
        for group, lr in zip(opt.param_groups, lrs):
            assert (lr == 0.0) == (group["name"] in frozen)
    assert set(fo.frozen) == {"l1", "l2", "l3"}
    assert trace[-1][1][-1] > 0


def test_frozen_layers_stop_changing_and_bn_stats_stay():
    model, opt, fo = setup(total=20)
    data = batches(2, 20)
    train(model, opt, fo, data[:12])
    assert "l1" in fo.frozen
    weight = model.l1[0].weight.detach().clone()
    stats = model.l1[1].running_var.clone()
    train(model, opt, fo, data[12:])
    assert torch.equal(weight, model.l1[0].weight)
    assert torch.equal(stats, model.l1[1].running_var)


def test_resume_after_freezing_equals_uninterrupted_run():
    data = batches(3, 40)
    model, opt, fo = setup(total=40)
    train(model, opt, fo, data)
    reference = [p.detach().clone() for p in model.parameters()]

    model, opt, fo = setup(total=40)
    train(model, opt, fo, data[:30])
    assert fo.frozen  # some layers froze before the checkpoint
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "fo": fo.state_dict()})
    model2, opt2, fo2 = setup(total=40)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    fo2.load_state_dict(saved["fo"])
    assert fo2.frozen == fo.frozen
    train(model2, opt2, fo2, data[30:])
    assert all(torch.equal(a, b) for a, b in zip(reference, model2.parameters()))


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"t0": 0.0}, ValueError, "t0"),
        ({"t0": 1.5}, ValueError, "t0"),
        ({"strategy": "quadratic"}, ValueError, "strategy"),
        ({"scale_lr": "yes"}, TypeError, "scale_lr"),
        ({"total_steps": 0}, ValueError, "total_steps"),
    ],
)
def test_bad_input_changes_nothing(kwargs, error, argument):
    model = Net()
    part = layerwise.by_block(model, sample_input=torch.zeros(2, 6))
    opt = torch.optim.SGD(part.param_groups(lr=0.1))
    before = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    total = kwargs.pop("total_steps", 10)
    with pytest.raises(error, match=argument):
        FreezeOut(model, opt, total, **kwargs)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == before


@pytest.mark.parametrize("as_dataset", [False, True])
def test_lockstep_timing_trains_both_runs_on_the_same_steps_and_freezeout_frees_state(monkeypatch, as_dataset):
    from layerwise.bench import freezeout_bench
    from layerwise.tasks import TaskData, loop

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g)
    train = Examples((x, y)) if as_dataset else (x, y)
    calls = []
    monkeypatch.setattr(freezeout_bench, "seeded_loop", lambda *a, **kw: calls.append(a) or loop.seeded_loop(*a, **kw))
    result = freezeout_bench._lockstep("resnet-cnn", TaskData(train, (x[:10], y[:10])), steps=8, seed=0)
    assert len(calls) == 1  # the two runs step through the shared loop
    assert len(result["times"]["baseline"]) == len(result["times"]["freezeout"]) == 8
    assert result["frozen"] == ["stem", "layer1", "layer2", "layer3"]
    state = result["optimizer_state_mb_at_end"]
    assert state["freezeout"] < state["baseline"] / 10


def test_full_sweep_is_the_compare_runners_runs_paired_by_seed(tmp_path):
    from layerwise.bench import freezeout_bench
    from layerwise.compare.runner import run_one
    from layerwise.tasks import TaskData

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 1, 28, 28, generator=g), torch.randint(0, 10, (80,), generator=g)
    data = TaskData((x, y), (x[:16], y[:16]))
    config = dict(freezeout_bench.DEFAULT)
    report = freezeout_bench._full(data, ["resnet-cnn"], 2, 1, 64, [config], tmp_path)
    entry = report["models"]["resnet-cnn"]
    assert report["train_size"] == 64 and entry["steps"] == 1
    task = freezeout_bench._task_of("resnet-cnn")
    spec = {"data": data, "epochs": 1, "train_size": 64, "policy": "cosine", "eval_points": 1}
    for method, settings, summary in (
        ("baseline", {}, entry["baseline"]),
        ("freezeout", config, entry["freezeout"][0]),
    ):
        runs = [run_one(task, method, settings, seed=seed, **spec)["test_metric"] for seed in range(2)]
        assert summary["test_accuracy_mean"] == pytest.approx(sum(runs) / 2)
    paired = entry["freezeout"][0]["test_accuracy_diff"]
    assert paired["test"] == "paired t" and paired["n"] == 2
    assert {"predicted_saving_paper", "predicted_saving_timed", "measured_saving_mean"} <= set(entry["freezeout"][0])


def test_densenet_final_batchnorm_trains_to_the_end_with_the_classifier_as_in_the_authors_code():
    from layerwise.tasks.models import DenseNetBC, dense_layer_groups

    model = DenseNetBC(growth=4, layers_per_block=2)
    part = dense_layer_groups(model, torch.zeros(2, 1, 28, 28))
    final_norm = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)][-1]
    assert part.names[-1] == "fc" and f"{final_norm}.weight" in part["fc"].param_names
    assert len(part) == len(layerwise.by_block(model, 2, sample_input=torch.zeros(2, 1, 28, 28))) - 1
    opt = torch.optim.SGD(part.param_groups(lr=0.1), lr=0.1)
    fo = FreezeOut(model, opt, 100)
    norm_group = next(i for i, g in enumerate(opt.param_groups) if g["name"] == "fc")
    assert fo.frozen_at[norm_group] is None  # it never freezes: it trains with the classifier
