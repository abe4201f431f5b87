import json
import subprocess
import sys

import pytest
import torch

from blobs import Examples
from layerwise.bench.hidlr_bench import _toy
from layerwise.tasks.hidlr_problems import NAM, SHAPES, TOYS, grid, nam_synthetic_data


def test_toys_have_their_minimisers():
    for toy in TOYS.values():
        x, y = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in toy.minimiser)
        loss = toy.loss(x, y)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(0.0, abs=1e-12)
        assert float(x.grad) == pytest.approx(0.0, abs=1e-9) and float(y.grad) == pytest.approx(0.0, abs=1e-9)


def test_grid_is_the_papers():
    values = grid(1e-5, 12)
    assert len(values) == 12 and values[0] == 1e-5 and values[2] == pytest.approx(1e-4)
    assert values[-1] == pytest.approx(1e-5 * 10**5.5)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_hidlr_beats_the_uniform_grid_on_the_toys(name):
    result = _toy(name, 20, 1e-3)
    assert result["hi_dlr_iterations_to_1e-10"] <= 3
    assert result["hi_dlr_final_loss"] <= result["best_uniform_final_loss"]
    assert result["target_met"]


def test_nam_data_and_groups():
    x, y = nam_synthetic_data(2000, seed=3)
    assert x.shape == (2000, 10) and y.shape == (2000,)
    assert float(x.min()) >= -2 and float(x.max()) <= 2
    noise = y - sum(f(x[:, i]) for i, f in enumerate(SHAPES))
    assert float(noise.std()) == pytest.approx(1.0, abs=0.1)  # features 7..10 have no effect
    model = NAM()
    groups = model.groups(0.01)
    assert [g["name"] for g in groups] == ["beta", *(f"f{k}" for k in range(1, 11))]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert model(x[:5]).shape == (5,)


def test_bench_hidlr_quick_json_last_line():
    cmd = [sys.executable, "-m", "layerwise.cli", "bench", "hidlr", "--quick", "--json"]
    cmd += ["--set", "phi=2", "--set", "repeats=1", "--set", "max_interval=4"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["K"] == 2 and result["phi"] == 2
    assert result["bound"] == pytest.approx(1 / (1 + 8 / 6))
    assert 0 < result["relative_speed"] < 1.5
    assert result["accepted"] + result["rejected"] >= 1
    assert result["relative_speed_adaptive"] > 0 and result["adaptive_options"]["max_interval"] == 4
    # a probe round without stepping copies only the group a probe moves (plus one tensor's
    # temporaries): at most one copy of the parameters; stepping and restoring also copies the
    # update and the momentum buffers
    assert result["peak_extra_bytes"] <= result["param_bytes"]
    assert result["peak_extra_bytes_step_and_restore"] > 2.5 * result["param_bytes"]


def test_nam_runs_train_the_registered_task_through_the_shared_loop(monkeypatch):
    from layerwise.bench import hidlr_bench
    from layerwise.compare.runner import run_one
    from layerwise.tasks import TaskData, get_task, loop

    task = get_task("nam-synthetic")
    data = TaskData(nam_synthetic_data(512, seed=0), nam_synthetic_data(128, seed=100))
    calls = []
    monkeypatch.setattr(hidlr_bench, "seeded_loop", lambda *a, **kw: calls.append(a) or loop.seeded_loop(*a, **kw))
    uniform = hidlr_bench._nam_run(task, data, 2, task.lr, "uniform", seed=0)
    assert len(calls) == 1 and len(uniform["_curve"]) == len(uniform["_lrs"]) == 2
    # a uniform run is compare's baseline at a constant LR: the same seeded batches, steps and test loss
    record = run_one(task, "baseline", data=data, seed=0, epochs=2, policy="constant", eval_points=1)
    assert uniform["test_loss"] == pytest.approx(record["test_loss"], rel=1e-6)
    hi_dlr = hidlr_bench._nam_run(task, data, 1, 1e-3, "hi-dlr", seed=0, update_every=2, gamma=0.9)
    assert len(hi_dlr["_lrs"][-1]) == 11 and hi_dlr["stats"]["probe_rounds"] >= 1
    as_dataset = hidlr_bench._nam_run(task, TaskData(Examples(data.train), data.test), 2, task.lr, "uniform", seed=0)
    assert as_dataset["test_loss"] == pytest.approx(uniform["test_loss"], rel=1e-6)


def test_lora_comparison_trains_the_lora_task_through_the_shared_loop(monkeypatch):
    from layerwise.bench import hidlr_lora
    from layerwise.tasks import TaskData, loop

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (24, 10), generator=g)
    ids[:, 0] = 101
    labels = torch.randint(0, 3, (24,), generator=g)
    data = TaskData(Examples((ids[:16], labels[:16])), (ids[16:], labels[16:]))
    calls = []
    monkeypatch.setattr(hidlr_lora, "seeded_loop", lambda *a, **kw: calls.append(a) or loop.seeded_loop(*a, **kw))
    report = hidlr_lora.lora_comparison(steps=2, batch_size=4, phi=1, eval_size=4, data=data)
    assert len(calls) == len(report["runs"]) == len(hidlr_lora.LORA_GRID) + 7
    assert report["best_uniform"] in report["runs"] and set(report["target_met"]) == {
        name for name in report["runs"] if name.startswith("hi-")
    }
    assert len(report["runs"]["hi-dlr"]["final_lrs"]) == 3  # lora_A, lora_B, head
