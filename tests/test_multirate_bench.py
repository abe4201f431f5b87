import json
import subprocess
import sys

import pytest
import torch

from blobs import Examples


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


@pytest.mark.parametrize("as_dataset", [False, True])
def test_subset_study_runs_through_the_shared_loop_and_evaluates_with_full_weights(monkeypatch, as_dataset):
    import dataclasses

    from layerwise.bench import multirate_bench
    from layerwise.tasks import TaskData, loop

    g = torch.Generator().manual_seed(0)
    train = (torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g))
    test = (torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    data = TaskData(Examples(train), test) if as_dataset else TaskData(train, test)
    make_task = multirate_bench._subset_task
    monkeypatch.setattr(
        multirate_bench,
        "_subset_task",
        lambda hidden: dataclasses.replace(make_task(hidden), load_data=lambda *a: data),
    )
    calls = []
    monkeypatch.setattr(multirate_bench, "seeded_loop", lambda *a, **kw: calls.append(a) or loop.seeded_loop(*a, **kw))
    report = multirate_bench._subsets(epochs=1, seeds=2, hidden=16, k=2)
    assert set(report["methods"]) == {"sgd", "random-subset multirate k=2"}
    assert len(calls) == 4  # every run trains through the shared loop
    for summary in report["methods"].values():
        assert len(summary["test_accuracies"]) == 2 and 0.0 <= summary["test_accuracy_mean"] <= 1.0
    if as_dataset:  # the same seeded batches as the tensors give the same runs
        tensors = TaskData(train, test)
        monkeypatch.setattr(
            multirate_bench,
            "_subset_task",
            lambda hidden: dataclasses.replace(make_task(hidden), load_data=lambda *a: tensors),
        )
        again = multirate_bench._subsets(epochs=1, seeds=2, hidden=16, k=2)
        for name, summary in report["methods"].items():
            assert summary["test_accuracies"] == again["methods"][name]["test_accuracies"]


def _finetune_data(task):
    from layerwise.tasks import TaskData

    g = torch.Generator().manual_seed(0)
    if task == "effnet-fashion":
        return TaskData(
            (torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)),
            (torch.rand(50, 1, 28, 28, generator=g), torch.randint(0, 10, (50,), generator=g)),
        )
    ids = torch.randint(1000, 5000, (64 + 20, 12), generator=g)
    ids[:, 0] = 101
    labels = torch.randint(0, 3, (84,), generator=g)
    return TaskData((ids[:64], labels[:64]), (ids[64:], labels[64:]))


@pytest.mark.parametrize("task", ["effnet-fashion", "minilm-sentiment"])
def test_finetune_runs_are_the_compare_runners_runs_of_the_registered_methods(task):
    from layerwise.bench.multirate_bench import FINETUNE_GROUPS, _finetune_run, finetune_methods, finetune_task
    from layerwise.compare.runner import run_one

    data = _finetune_data(task)
    assert [name for _, name in FINETUNE_GROUPS[task]][-2:] == ["last block", "head"]
    fine = finetune_task(task, lr=1e-3)
    methods = finetune_methods(2)
    assert [method for method, _ in methods.values()] == ["baseline", "multirate", "multirate-block", "head-only"]
    results = {}
    for label, (method, settings) in methods.items():
        result = results[label] = _finetune_run(fine, data, method, settings, seed=0, epochs=1)
        assert len(result["step_times"]) == 2 and len(result["curve"]) == 1
        assert sum(result["step_times"]) == pytest.approx(result["train_seconds"])  # the clock's pairs are the steps
        assert 0.0 <= result["test_accuracy"] <= 1.0
    method, settings = methods["multirate k=2, fast = head"]
    record = run_one(fine, method, settings, data=data, seed=0, epochs=1, policy="constant", eval_points=1)
    assert record["test_metric"] == results["multirate k=2, fast = head"]["test_accuracy"]
    sgd = finetune_task(task, "sgd", 1e-3)
    assert sgd.optimizer == "sgd" and sgd.optimizer_options == {"nesterov": False} and sgd.weight_decay == 0.0
    assert len(_finetune_run(sgd, data, method, settings, seed=0, epochs=1)["step_times"]) == 2


def test_finetune_takes_a_dataset_task():
    from layerwise.bench.multirate_bench import _finetune_run, finetune_methods, finetune_task
    from layerwise.tasks import TaskData

    data = _finetune_data("effnet-fashion")
    fine = finetune_task("effnet-fashion", lr=1e-3)
    method, settings = finetune_methods(2)["multirate k=2, fast = head + last block"]
    tensors = _finetune_run(fine, data, method, settings, seed=1, epochs=1)
    dataset = _finetune_run(fine, TaskData(Examples(data.train), data.test), method, settings, seed=1, epochs=1)
    assert dataset["test_accuracy"] == tensors["test_accuracy"] and len(dataset["step_times"]) == 2


def test_finetune_report_has_the_speed_up_next_to_its_limit_and_a_plot(tmp_path, monkeypatch):
    import dataclasses

    from layerwise.bench import multirate_bench

    data = _finetune_data("effnet-fashion")
    make = multirate_bench.finetune_task
    monkeypatch.setattr(
        multirate_bench, "finetune_task", lambda *a: dataclasses.replace(make(*a), load_data=lambda *b: data)
    )
    report = multirate_bench._finetune("effnet-fashion", 1, 1, 2, 1e-3, "adamw", tmp_path)
    assert set(report["methods"]) == set(multirate_bench.finetune_methods(2)) and report["per_step_lr"] == 1e-3
    for label, entry in report["methods"].items():
        assert len(entry["curve_mean"]) == 1 and 0.0 <= entry["test_accuracy_mean"] <= 1.0
        if label.startswith("multirate"):
            assert entry["speedup_vs_limit"] == pytest.approx(entry["speedup"] / entry["limit"])
    assert (tmp_path / "multirate_effnet-fashion.png").exists()


def test_finetune_optimizer_is_checked_before_any_work(tmp_path, monkeypatch):
    from layerwise.bench import multirate_bench
    from layerwise.bench.multirate_bench import _finetune

    with pytest.raises(ValueError, match="optimizer: choose from"):
        _finetune("effnet-fashion", 1, 1, 5, 1e-3, "adam", tmp_path)
    with pytest.raises(ValueError, match="lr: give the per-step learning rate"):
        _finetune("effnet-fashion", 1, 1, 5, None, "sgd", tmp_path)
    with pytest.raises(ValueError, match="task: fine-tuning runs on"):
        _finetune("fashion-mnist", 1, 1, 5, None, "adamw", tmp_path)
    monkeypatch.setattr(multirate_bench, "_timing", lambda *a: pytest.fail("timed before the check"))
    with pytest.raises(ValueError, match="optimizer: choose from"):
        multirate_bench.run_multirate_bench(problems="finetune", optimizer="adam")


def test_the_target_asks_for_full_accuracy_within_half_a_point_by_55_percent_of_the_time():
    from layerwise.bench.multirate_bench import _target

    full = {"test_accuracy_mean": 0.80, "train_seconds_mean": 100.0}
    early = [{"curve": [(30.0, 0.70), (54.0, 0.796)]}, {"curve": [(30.0, 0.72), (56.0, 0.796)]}]
    assert _target(full, early, 0.5, 0.55)  # mean: 55 s, 79.6 %
    late = [{"curve": [(30.0, 0.70), (60.0, 0.80)]}]
    assert not _target(full, late, 0.5, 0.55)
    short = [{"curve": [(30.0, 0.79), (50.0, 0.794)]}]
    assert not _target(full, short, 0.5, 0.55)
