"""``layerwise bench multirate``: the wall-clock speed-up of Multirate fine-tuning, measured.

Quick (timing only): a pretrained model of a task (default ``effnet-fashion``) trains the same
batches with full fine-tuning and with :class:`Multirate` (fast = the head, slow = the rest,
period ``k``), alternating blocks of ``k * cycles`` steps. ``speedup`` is the ratio of median
step times; ``limit`` is the paper's eq. (6) ideal ``k T_full / (T_full + (k - 1) T_fast)`` from
this run's measured step times (``T_fast``: Multirate's steps without a slow gradient).

Full, ``problems=finetune``: fine-tuning at equal epochs on ``task`` (``effnet-fashion`` or
``minilm-sentiment``, the task's quick split): full fine-tuning, Multirate with fast = head and
fast = head + last block, head only; several seeds; test accuracy and wall-clock after every
epoch, the speed-up next to eq. (6)'s limit, and whether Multirate gets within half a point of full
fine-tuning's accuracy in at most 55 % of its wall-clock; a plot of accuracy vs wall-clock.
``optimizer=adamw`` (default) or ``sgd`` (the paper's SGD with momentum 0.9; give ``lr``).

Full, ``problems=subsets``: the random-subset regulariser of §5.1 on the paper's single-hidden-layer perceptron
(here on Fashion-MNIST): plain SGD (h = 0.1) vs ``RandomSubsetMultirate`` (k = 5, input-layer
weights slow with probability 0.8, hidden-layer weights 0.5), several seeds, test accuracy.

Examples:
    $ layerwise bench multirate --quick --json
    $ layerwise bench multirate --set epochs=10 --set seeds=3
    $ layerwise bench multirate --set problems=finetune --set task=minilm-sentiment
    $ layerwise bench multirate --set problems=finetune --set optimizer=sgd --set lr=0.01
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..groups import by_head, by_patterns
from ..multirate import Multirate
from ..plotting import pyplot
from ..random_subsets import RandomSubsetMultirate
from ..tasks import get_task

__all__ = ["run_multirate_bench"]


def _timed_steps(model, opt, batches, loss_fn) -> list[float]:
    times = []
    for x, y in batches:
        start = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
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
    train = task.load_data(None, True).train
    batch = batch_size or task.batch_size
    steps = k * cycles
    batches = [(train[0][i * batch : (i + 1) * batch], train[1][i * batch : (i + 1) * batch]) for i in range(steps)]
    torch.manual_seed(0)
    full_model = task.make_model()
    mr_model = copy.deepcopy(full_model)
    full = cls(full_model.parameters(), lr=lr, **options)
    part = by_head(mr_model, sample_input=task.sample_input())
    multirate = Multirate.from_partition(part, fast=["head"], lr=lr * k, k=k, base=cls, model=mr_model, **options)
    runs = ((full_model, full), (mr_model, multirate))
    for model, opt in runs:  # warm-up: one cycle each
        _timed_steps(model, opt, batches[:k], task.loss)
    full_times, mr_times = [], []
    for _ in range(repeats):  # alternate, so drifts of the machine hit both alike
        full_times += _timed_steps(*runs[0], batches, task.loss)
        mr_times += _timed_steps(*runs[1], batches, task.loss)
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
        "batch_size": batch,
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


def _subset_run(data, method: str, seed: int, epochs: int, hidden: int, k: int) -> dict[str, Any]:
    (x, y), (x_test, y_test) = data.train, data.test
    torch.manual_seed(seed)
    model = _perceptron(hidden)
    if method == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        probabilities = {model[1].weight: 0.8, model[3].weight: 0.5}
        opt = RandomSubsetMultirate(model.parameters(), lr=0.1, k=k, probabilities=probabilities, seed=seed)
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 128):
            index = perm[i : i + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    full = opt.full_weights() if isinstance(opt, RandomSubsetMultirate) else contextlib.nullcontext()
    with torch.no_grad(), full:
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return {"test_accuracy": accuracy, "seconds": seconds}


def _subsets(epochs: int, seeds: int, hidden: int, k: int) -> dict[str, Any]:
    data = get_task("fashion-mnist").load_data(None, False)
    runs: dict[str, list[dict[str, Any]]] = {"sgd": [], f"random-subset multirate k={k}": []}
    for seed in range(seeds):  # seed by seed, so drifts of the machine hit both alike
        for method in runs:
            runs[method].append(_subset_run(data, method, seed, epochs, hidden, k))
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


FINETUNE_PARTS = {
    "effnet-fashion": [
        (r"^model\._fc\.", "head"),
        (r"^model\.(_blocks\.15\.|_conv_head\.|_bn1\.)", "last block"),
    ],
    "minilm-sentiment": [
        (r"^model\.classifier\.", "head"),
        (r"^model\.bert\.(encoder\.layer\.5\.|pooler\.)", "last block"),
    ],
}
"""Per fine-tuning task: its head and its last block (EfficientNet-Lite0: the last MBConv block, head
conv and its norm; MiniLM: the classifier, and the last transformer layer with the pooler)."""


OPTIMIZERS = ("adamw", "sgd")
"""Base optimizers of the fine-tuning comparison: ``adamw`` (the task's weight decay) or ``sgd``, the
paper's recipe (momentum 0.9, no weight decay; Figures 4-7)."""


def _base(optimizer: str, task) -> tuple[type[torch.optim.Optimizer], dict[str, float]]:
    if optimizer == "adamw":
        return torch.optim.AdamW, {"weight_decay": task.weight_decay}
    if optimizer == "sgd":
        return torch.optim.SGD, {"momentum": 0.9}
    raise ValueError(f"optimizer: choose from {list(OPTIMIZERS)}, got {optimizer!r}")


def _finetune_run(
    task_name: str, data, method: str, seed: int, epochs: int, k: int, lr: float, optimizer: str = "adamw"
) -> dict[str, Any]:
    (x, y), (x_test, y_test) = data.train, data.test
    task = get_task(task_name)
    base, options = _base(optimizer, task)
    torch.manual_seed(seed)
    model = task.make_model()
    part = by_patterns(model, FINETUNE_PARTS[task_name], rest="body")
    groups = {g.name: list(g.params) for g in part}
    if method == "full":
        opt: torch.optim.Optimizer = base(model.parameters(), lr=lr, **options)
    elif method == "head only":
        for p in (*groups["body"], *groups["last block"]):
            p.requires_grad_(False)
        opt = base(groups["head"], lr=lr, **options)
    else:
        fast = groups["head"] + (groups["last block"] if method.endswith("+ last block") else [])
        slow = [p for p in model.parameters() if all(p is not q for q in fast)]
        opt = Multirate(fast, slow, lr=lr * k, k=k, base=base, model=model, **options)
    order = torch.Generator().manual_seed(seed)
    batch = task.batch_size
    step_times, curve, elapsed = [], [], 0.0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x) - batch + 1, batch):
            index = perm[i : i + batch]
            start = time.perf_counter()
            opt.zero_grad()
            task.loss(model(x[index]), y[index]).backward()
            opt.step()
            step_times.append(time.perf_counter() - start)
        elapsed = sum(step_times)
        model.eval()
        with torch.no_grad():
            correct = sum(
                int((model(x_test[j : j + 500]).argmax(1) == y_test[j : j + 500]).sum())
                for j in range(0, len(x_test), 500)
            )
        curve.append((elapsed, correct / len(x_test)))
    return {"test_accuracy": curve[-1][1], "train_seconds": elapsed, "curve": curve, "step_times": step_times}


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
    if task_name not in FINETUNE_PARTS:
        raise ValueError(f"task: fine-tuning runs on {sorted(FINETUNE_PARTS)}, got {task_name!r}")
    task = get_task(task_name)
    _base(optimizer, task)
    if lr is None and optimizer != "adamw":
        raise ValueError(f"lr: give the per-step learning rate for optimizer={optimizer!r} (the task's is for AdamW)")
    lr = task.lr if lr is None else lr
    data = task.load_data(None, True)
    methods = ["full", f"multirate k={k}, fast = head", f"multirate k={k}, fast = head + last block", "head only"]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in range(seeds):  # seed by seed, so drifts of the machine hit every method alike
        for method in methods:
            runs[method].append(_finetune_run(task_name, data, method, seed, epochs, k, lr, optimizer))
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
        "task": f"{task_name}: {task.description}; {len(data.train[1])} train / {len(data.test[1])} test, "
        f"batch {task.batch_size}",
        "optimizer": optimizer,
        "per_step_lr": lr,
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
    timing = _timing(task, k, cycles or 2, repeats or 3, batch_size, timing_base, impl)
    if quick:
        return timing
    wanted = {p.strip() for p in problems.split(",") if p.strip()}
    if wanted - {"finetune", "subsets"}:
        raise ValueError(f"problems: unknown {sorted(wanted - {'finetune', 'subsets'})}; choose from finetune, subsets")
    report: dict[str, Any] = {"timing": timing}
    if "finetune" in wanted:
        report["finetune"] = _finetune(task, finetune_epochs, seeds, k, lr, optimizer, Path(out))
    if "subsets" in wanted:
        report["random_subsets"] = _subsets(epochs, seeds, hidden, k)
    return report
