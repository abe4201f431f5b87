import json
import subprocess
import sys

import pytest
import torch


def test_bench_multirate_quick_json_last_line():
    cmd = [sys.executable, "-m", "layerwise.cli", "bench", "multirate", "--quick", "--json"]
    cmd += ["--set", "k=2", "--set", "cycles=1", "--set", "repeats=2", "--set", "batch_size=8"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["k"] == 2 and result["task"] == "effnet-fashion"
    # eq. (6) from the reported step times; which is faster is a benchmark's question (timing under load is noisy)
    full, fast = result["full_step_ms"], result["multirate_fast_step_ms"]
    assert result["limit"] == pytest.approx(2 * full / (full + fast), rel=0.01)
    assert result["steps_timed"] == 2 * 2 and 0 < result["speedup"] < 10
    assert result["speedup_over_limit"] == pytest.approx(result["speedup"] / result["limit"], abs=1e-3)


def test_bench_multirate_times_adamw_with_fused_kernels_and_refuses_unknown_ones():
    from layerwise.bench.multirate_bench import _timing

    result = _timing("effnet-fashion", 2, 1, 1, 4, base="adamw", impl="fused")
    assert result["base"] == "adamw" and result["impl"] == "fused" and result["refresh_over_full"] > 0
    with pytest.raises(ValueError, match="impl: must be one of"):
        _timing("effnet-fashion", 2, 1, 1, 4, impl="triton")


def test_subset_study_runs_and_evaluates_with_full_weights(monkeypatch):
    from layerwise.bench import multirate_bench
    from layerwise.tasks import TaskData

    g = torch.Generator().manual_seed(0)
    data = TaskData(
        (torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g)),
        (torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)),
    )
    monkeypatch.setattr(multirate_bench, "get_task", lambda name: type("T", (), {"load_data": lambda *a: data})())
    report = multirate_bench._subsets(epochs=1, seeds=2, hidden=16, k=2)
    assert set(report["methods"]) == {"sgd", "random-subset multirate k=2"}
    for summary in report["methods"].values():
        assert len(summary["test_accuracies"]) == 2 and 0.0 <= summary["test_accuracy_mean"] <= 1.0


@pytest.mark.parametrize("task", ["effnet-fashion", "minilm-sentiment"])
def test_finetune_methods_train_the_right_parts(task):
    from layerwise.bench.multirate_bench import FINETUNE_PARTS, _finetune_run
    from layerwise.tasks import TaskData

    g = torch.Generator().manual_seed(0)
    if task == "effnet-fashion":
        data = TaskData(
            (torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)),
            (torch.rand(50, 1, 28, 28, generator=g), torch.randint(0, 10, (50,), generator=g)),
        )
    else:
        ids = torch.randint(1000, 5000, (64 + 20, 12), generator=g)
        ids[:, 0] = 101
        labels = torch.randint(0, 3, (84,), generator=g)
        data = TaskData((ids[:64], labels[:64]), (ids[64:], labels[64:]))
    assert [name for _, name in FINETUNE_PARTS[task]] == ["head", "last block"]
    for method in ("full", "multirate k=2, fast = head", "multirate k=2, fast = head + last block", "head only"):
        result = _finetune_run(task, data, method, seed=0, epochs=1, k=2, lr=1e-3)
        assert len(result["step_times"]) == 2 and len(result["curve"]) == 1
        assert 0.0 <= result["test_accuracy"] <= 1.0
    sgd = _finetune_run(task, data, "multirate k=2, fast = head", seed=0, epochs=1, k=2, lr=1e-3, optimizer="sgd")
    assert len(sgd["step_times"]) == 2


def test_finetune_optimizer_is_checked_before_any_work(tmp_path):
    from layerwise.bench.multirate_bench import _finetune

    with pytest.raises(ValueError, match="optimizer: choose from"):
        _finetune("effnet-fashion", 1, 1, 5, 1e-3, "adam", tmp_path)
    with pytest.raises(ValueError, match="lr: give the per-step learning rate"):
        _finetune("effnet-fashion", 1, 1, 5, None, "sgd", tmp_path)


def test_the_target_asks_for_full_accuracy_within_half_a_point_by_55_percent_of_the_time():
    from layerwise.bench.multirate_bench import _target

    full = {"test_accuracy_mean": 0.80, "train_seconds_mean": 100.0}
    early = [{"curve": [(30.0, 0.70), (54.0, 0.796)]}, {"curve": [(30.0, 0.72), (56.0, 0.796)]}]
    assert _target(full, early, 0.5, 0.55)  # mean: 55 s, 79.6 %
    late = [{"curve": [(30.0, 0.70), (60.0, 0.80)]}]
    assert not _target(full, late, 0.5, 0.55)
    short = [{"curve": [(30.0, 0.79), (50.0, 0.794)]}]
    assert not _target(full, short, 0.5, 0.55)
