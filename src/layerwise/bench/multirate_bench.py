"""``layerwise bench multirate``: the wall-clock speed-up of Multirate fine-tuning, measured.

Quick (timing only): a pretrained model of a task (default ``effnet-fashion``) trains the same
batches with full fine-tuning and with :class:`Multirate` (fast = the head, slow = the rest,
period ``k``), alternating blocks of ``k * cycles`` steps. ``speedup`` is the ratio of median
step times; ``limit`` is the paper's eq. (6) ideal ``k T_full / (T_full + (k - 1) T_fast)`` from
this run's measured step times (``T_fast``: Multirate's steps without a slow gradient). Both
step through the shared loop (:func:`~layerwise.tasks.loop.seeded_loop`) on the task's seeded batches.

Full, ``problems=finetune``: fine-tuning at equal epochs on ``task`` (``effnet-fashion`` or
``minilm-sentiment``, the task's quick split, in its five groups from the input to the head):
runs of ``layerwise compare``'s runner (:func:`~layerwise.compare.runner.run`, constant LR) with
the methods ``baseline`` (full fine-tuning), ``multirate`` (fast = head), ``multirate-block``
(fast = head + last block) and ``head-only``; several seeds; test accuracy and wall-clock after
every epoch, the speed-up next to eq. (6)'s limit, and whether Multirate gets within half a point of
full fine-tuning's accuracy in at most 55 % of its wall-clock; a plot of accuracy vs wall-clock.
``optimizer=adamw`` (default) or ``sgd`` (the paper's SGD with heavy-ball momentum 0.9; give ``lr``).
The paired verdicts of the same methods are ``layerwise compare --task effnet-fashion --methods
baseline,multirate,multirate-block,head-only``.

Full, ``problems=subsets``: the random-subset regulariser of §5.1 on the paper's single-hidden-layer perceptron
(here on Fashion-MNIST, through the shared loop): plain SGD (h = 0.1) vs ``RandomSubsetMultirate``
(k = 5, input-layer weights slow with probability 0.8, hidden-layer weights 0.5), several seeds, test accuracy.

Examples:
    $ layerwise bench multirate --quick --json
    $ layerwise bench multirate --set epochs=10 --set seeds=3
    $ layerwise bench multirate --set problems=finetune --set task=minilm-sentiment
    $ layerwise bench multirate --set problems=finetune --set optimizer=sgd --set lr=0.01
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..compare.methods import Setup
from ..compare.runner import RunSpec, run, train_step
from ..groups import by_head, by_patterns
from ..multirate import Multirate
from ..plotting import pyplot
from ..random_subsets import RandomSubsetMultirate
from ..tasks import Task, TaskData, get_task
from ..tasks.base import split_size
from ..tasks.loop import Batch, evaluate, loader_options, seeded_loop
from ..tasks.pretrained_tasks import EFFNET_STAGES, MINILM_BLOCKS
from ..training import steps_per_epoch

__all__ = ["FINETUNE_GROUPS", "finetune_methods", "finetune_task", "run_multirate_bench"]


def _timed_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, task: Task, train: Any, steps: int) -> list[float]:
    """Each step's seconds over ``steps`` seeded batches (seed 0) of ``train``, through the shared loop."""
    times: list[float] = []
    setup = Setup(opt)

    def step(batch: Batch) -> torch.Tensor:
        return train_step(model, setup, task, batch.data)

    def after(batch: Batch, loss: torch.Tensor, seconds: float) -> None:
        times.append(seconds)

    seeded_loop(train, task.batch_size, step, seed=0, steps=steps, after=after, **loader_options(task))
    return times


IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
"""The base optimizer's kernels timed by ``impl``: torch's default (a loop over tensors on CPU), foreach, fused."""


def _timing(
    task_name: str,
    k: int,
    cycles: int,
    repeats: int,
    batch_size: int | None,
    base: str = "sgd",
    impl: str = "default",
) -> dict[str, Any]:
    if base not in ("sgd", "adamw"):
        raise ValueError(f"timing_base: must be 'sgd' or 'adamw', got {base!r}")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl: must be one of {list(IMPLEMENTATIONS)}, got {impl!r}")
    cls, options = (
        (torch.optim.SGD, {"momentum": 0.9}) if base == "sgd" else (torch.optim.AdamW, {"weight_decay": 0.01})
    )
    options = {**options, **IMPLEMENTATIONS[impl]}
    lr = 0.01 if base == "sgd" else 5e-5
    task = get_task(task_name)
    task = task if batch_size is None else dataclasses.replace(task, batch_size=batch_size)
    train = task.load_data(None, True).train
    steps = k * cycles
    torch.manual_seed(0)
    full_model = task.make_model()
    mr_model = copy.deepcopy(full_model)
    full = cls(full_model.parameters(), lr=lr, **options)
    part = by_head(mr_model, sample_input=task.sample_input())
    multirate = Multirate.from_partition(part, fast=["head"], lr=lr * k, k=k, base=cls, model=mr_model, **options)
    runs = ((full_model, full), (mr_model, multirate))
    for model, opt in runs:  # warm-up: one cycle each
        _timed_steps(model, opt, task, train, k)
    full_times, mr_times = [], []
    for _ in range(repeats):  # alternate, so drifts of the machine hit both alike (the same batches each time)
        full_times += _timed_steps(*runs[0], task, train, steps)
        mr_times += _timed_steps(*runs[1], task, train, steps)
    t_full = statistics.median(full_times)
    t_fast = statistics.median(t for i, t in enumerate(mr_times) if i % k != 0)
    t_slow = statistics.median(t for i, t in enumerate(mr_times) if i % k == 0)
    t_mr = statistics.mean(mr_times)
    speedup, limit = statistics.mean(full_times) / t_mr, k * t_full / (t_full + (k - 1) * t_fast)
    return {
        "speedup": speedup,
        "limit": limit,
        "speedup_over_limit": round(speedup / limit, 4),
        "refresh_over_full": round(t_slow / t_full, 4),
        "base": base,
        "impl": impl,
        "k": k,
        "task": task_name,
        "batch_size": task.batch_size,
        "full_step_ms": round(t_full * 1e3, 1),
        "multirate_fast_step_ms": round(t_fast * 1e3, 1),
        "multirate_slow_step_ms": round(t_slow * 1e3, 1),
        "steps_timed": len(full_times),
        "fast_groups": ["head"],
    }


def _perceptron(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )


def _subset_task(hidden: int) -> Task:
    """Fashion-MNIST on the paper's perceptron, batch 128 (the §5.1 problem)."""
    return dataclasses.replace(get_task("fashion-mnist"), make_model=lambda: _perceptron(hidden), batch_size=128)


def _subset_run(task: Task, data: TaskData, method: str, seed: int, epochs: int, k: int) -> dict[str, Any]:
    """One seeded run of plain SGD or the random-subset regulariser through the shared loop."""
    torch.manual_seed(seed)
    model = task.make_model()
    if method == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        probabilities = {model[1].weight: 0.8, model[3].weight: 0.5}
        opt = RandomSubsetMultirate(model.parameters(), lr=0.1, k=k, probabilities=probabilities, seed=seed)
    setup = Setup(opt)

    def step(batch: Batch) -> torch.Tensor:
        return train_step(model, setup, task, batch.data)

    steps = epochs * steps_per_epoch(split_size(data.train), task.batch_size)
    model.train()
    seconds = seeded_loop(data.train, task.batch_size, step, seed=seed, steps=steps, **loader_options(task))
    full = opt.full_weights() if isinstance(opt, RandomSubsetMultirate) else contextlib.nullcontext()
    with full:
        accuracy = evaluate(model, data.test, task)["accuracy"]
    return {"test_accuracy": accuracy, "seconds": seconds}


def _subsets(epochs: int, seeds: int, hidden: int, k: int) -> dict[str, Any]:
    task = _subset_task(hidden)
    data = task.load_data(None, False)
    runs: dict[str, list[dict[str, Any]]] = {"sgd": [], f"random-subset multirate k={k}": []}
    for seed in range(seeds):  # seed by seed, so drifts of the machine hit both alike
        for method in runs:
            runs[method].append(_subset_run(task, data, method, seed, epochs, k))
    summary = {}
    for method, results in runs.items():
        accuracies = [r["test_accuracy"] for r in results]
        summary[method] = {
            "test_accuracy_mean": statistics.mean(accuracies),
            "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "test_accuracies": accuracies,
            "seconds_mean": statistics.mean(r["seconds"] for r in results),
        }
    return {
        "model": f"784-{hidden}-10 perceptron, SGD h=0.1, batch 128",
        "epochs": epochs,
        "seeds": seeds,
        "probabilities": {"input layer": 0.8, "hidden layer": 0.5},
        "methods": summary,
    }


FINETUNE_GROUPS = {"effnet-fashion": EFFNET_STAGES, "minilm-sentiment": MINILM_BLOCKS}
"""Per fine-tuning task, its five groups from the input to the head (:mod:`layerwise.tasks.pretrained_tasks`):
the last two are the "last block" (EfficientNet-Lite0: the last MBConv block, head conv and its norm;
MiniLM: the last transformer layer with the pooler) and the "head"."""


OPTIMIZERS = ("adamw", "sgd")
"""Base optimizers of the fine-tuning comparison: ``adamw`` (the task's weight decay) or ``sgd``, the
paper's recipe (heavy-ball momentum 0.9, no weight decay; Figures 4-7)."""


def finetune_methods(k: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """The fine-tuning comparison's labels -> ``layerwise compare`` method and settings."""
    return {
        "full": ("baseline", {}),
        f"multirate k={k}, fast = head": ("multirate", {"k": k, "fast": 1}),
        f"multirate k={k}, fast = head + last block": ("multirate-block", {"k": k, "fast": 2}),
        "head only": ("head-only", {}),
    }


def finetune_task(task_name: str, optimizer: str = "adamw", lr: float | None = None) -> Task:
    """``task_name`` in its five groups with the base ``optimizer`` and per-step ``lr`` (default: the task's AdamW LR).

    Raises:
        ValueError: naming ``task``, ``optimizer`` or ``lr`` (required with ``sgd``), before anything loads.
    """
    if task_name not in FINETUNE_GROUPS:
        raise ValueError(f"task: fine-tuning runs on {sorted(FINETUNE_GROUPS)}, got {task_name!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: choose from {list(OPTIMIZERS)}, got {optimizer!r}")
    if lr is None and optimizer != "adamw":
        raise ValueError(f"lr: give the per-step learning rate for optimizer={optimizer!r} (the task's is for AdamW)")
    rules = FINETUNE_GROUPS[task_name]
    task = dataclasses.replace(get_task(task_name), partition=lambda model, sample: by_patterns(model, rules))
    if optimizer == "sgd":  # the paper's: heavy-ball momentum, no weight decay, for every method
        task = dataclasses.replace(task, optimizer="sgd", optimizer_options={"nesterov": False}, weight_decay=0.0)
    return task if lr is None else dataclasses.replace(task, lr=lr)


class _StepClock:
    """``time.perf_counter`` that keeps its readings: an unpaced run reads its clock only just before
    and just after each training step (:func:`~layerwise.tasks.loop.seeded_loop`), so the pairs are
    its steps' seconds."""

    def __init__(self) -> None:
        self.readings: list[float] = []

    def __call__(self) -> float:
        self.readings.append(time.perf_counter())
        return self.readings[-1]

    def step_seconds(self) -> list[float]:
        """Each step's seconds, in order."""
        return [end - start for start, end in zip(self.readings[::2], self.readings[1::2])]


def _finetune_run(task: Task, data: TaskData, method: str, settings: dict[str, Any], seed: int, epochs: int) -> dict:
    """One seeded run of ``layerwise compare``'s runner at a constant LR, evaluated after every epoch."""
    clock = _StepClock()
    spec = RunSpec(method, settings, seed=seed, epochs=epochs, policy="constant", eval_points=epochs)
    record = run(task, spec, data=data, clock=clock)
    curve = [(point["seconds"], point["test_accuracy"]) for point in record["curve"]]
    return {
        "test_accuracy": record["test_metric"],
        "train_seconds": record["wall_clock_s"],
        "curve": curve,
        "step_times": clock.step_seconds(),
    }


def _mean_curve(results: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(training seconds, test accuracy) after each epoch, averaged over seeds."""
    epochs = len(results[0]["curve"])
    return [
        (statistics.mean(r["curve"][e][0] for r in results), statistics.mean(r["curve"][e][1] for r in results))
        for e in range(epochs)
    ]


def _target(full: dict[str, Any], results: list[dict[str, Any]], points: float, fraction: float) -> bool:
    """Whether the mean curve comes within ``points`` of full fine-tuning's accuracy by ``fraction`` of its time."""
    goal = full["test_accuracy_mean"] - points / 100
    limit = fraction * full["train_seconds_mean"]
    return any(accuracy >= goal and seconds <= limit for seconds, accuracy in _mean_curve(results))


def _finetune(
    task_name: str, epochs: int, seeds: int, k: int, lr: float | None, optimizer: str, out: Path
) -> dict[str, Any]:
    task = finetune_task(task_name, optimizer, lr)
    data = task.load_data(None, True)
    methods = finetune_methods(k)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in methods}
    for seed in range(seeds):  # seed by seed, so drifts of the machine hit every method alike
        for label, (method, settings) in methods.items():
            runs[label].append(_finetune_run(task, data, method, settings, seed, epochs))
    full_seconds = statistics.mean(r["train_seconds"] for r in runs["full"])
    full_step = statistics.median(t for r in runs["full"] for t in r["step_times"])
    summary = {}
    for method, results in runs.items():
        accuracies = [r["test_accuracy"] for r in results]
        entry = {
            "test_accuracy_mean": statistics.mean(accuracies),
            "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in results),
        }
        entry["wall_clock_vs_full"] = entry["train_seconds_mean"] / full_seconds
        entry["curve_mean"] = _mean_curve(results)
        if method.startswith("multirate"):
            fast = statistics.median(t for r in results for i, t in enumerate(r["step_times"]) if i % k)
            limit = k * full_step / (full_step + (k - 1) * fast)
            entry.update(speedup=1 / entry["wall_clock_vs_full"], limit=limit)
            entry["speedup_vs_limit"] = entry["speedup"] / limit
            entry["within_half_a_point_in_55_percent"] = _target(summary["full"], results, 0.5, 0.55)
        summary[method] = entry
    plot = out / f"multirate_{task_name}.png"
    _plot_finetune(runs, plot, task.description)
    return {
        "task": f"{task_name}: {task.description}; {split_size(data.train)} train / {split_size(data.test)} test, "
        f"batch {task.batch_size}",
        "optimizer": optimizer,
        "per_step_lr": task.lr,
        "epochs": epochs,
        "seeds": seeds,
        "methods": summary,
        "plot": str(plot),
    }


def _plot_finetune(runs: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for method, results in runs.items():
        seconds, accuracy = zip(*_mean_curve(results))
        ax.plot(seconds, [100 * a for a in accuracy], marker="o", label=method)
    ax.set(
        xlabel="training wall-clock (s)",
        ylabel="test accuracy (%)",
        title=title.split(",")[0],
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run_multirate_bench(
    quick: bool = False,
    task: str = "effnet-fashion",
    k: int = 5,
    cycles: int | None = None,
    repeats: int | None = None,
    batch_size: int | None = None,
    epochs: int = 10,
    seeds: int = 3,
    hidden: int = 512,
    problems: str = "finetune,subsets",
    finetune_epochs: int = 2,
    lr: float | None = None,
    optimizer: str = "adamw",
    out: str = "runs/bench-multirate",
    timing_base: str = "sgd",
    impl: str = "default",
) -> dict[str, Any]:
    """The benchmark entry point; options come from ``layerwise bench multirate --set key=value``.

    ``timing_base`` (``sgd`` or ``adamw``) and ``impl`` (``default``, ``foreach``, ``fused``) choose the
    base optimizer and its kernels for the timing block (full fine-tuning and Multirate alike).
    """
    wanted = {p.strip() for p in problems.split(",") if p.strip()}
    if not quick and wanted - {"finetune", "subsets"}:
        raise ValueError(f"problems: unknown {sorted(wanted - {'finetune', 'subsets'})}; choose from finetune, subsets")
    if not quick and "finetune" in wanted:
        finetune_task(task, optimizer, lr)  # refused before the timing block runs
    timing = _timing(task, k, cycles or 2, repeats or 3, batch_size, timing_base, impl)
    if quick:
        return timing
    report: dict[str, Any] = {"timing": timing}
    if "finetune" in wanted:
        report["finetune"] = _finetune(task, finetune_epochs, seeds, k, lr, optimizer, Path(out))
    if "subsets" in wanted:
        report["random_subsets"] = _subsets(epochs, seeds, hidden, k)
    return report
