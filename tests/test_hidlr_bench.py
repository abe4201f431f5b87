import json
import subprocess
import sys

import pytest
import torch

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
