"""``layerwise bench multirate``: the wall-clock speed-up of Multirate fine-tuning, measured.

Quick (timing only): a pretrained model of a task (default ``effnet-fashion``) trains the same
batches with full fine-tuning and with :class:`Multirate` (fast = the head, slow = the rest,
period ``k``), alternating blocks of ``k * cycles`` steps. ``speedup`` is the ratio of median
step times; ``limit`` is the paper's eq. (6) ideal ``k T_full / (T_full + (k - 1) T_fast)`` from
this run's measured step times (``T_fast``: Multirate's steps without a slow gradient).

Full: the random-subset regulariser of §5.1 on the paper's single-hidden-layer perceptron
(here on Fashion-MNIST): plain SGD (h = 0.1) vs ``RandomSubsetMultirate`` (k = 5, input-layer
weights slow with probability 0.8, hidden-layer weights 0.5), several seeds, test accuracy.

Example:
    $ layerwise bench multirate --quick --json
    $ layerwise bench multirate --set epochs=10 --set seeds=3
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Any

import torch

from ..groups import by_head
from ..multirate import Multirate
from ..random_subsets import RandomSubsetMultirate
from .tasks import get_task

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


def _timing(task_name: str, k: int, cycles: int, repeats: int, batch_size: int | None) -> dict[str, Any]:
    task = get_task(task_name)
    train = task.load_data(None, True).train
    batch = batch_size or task.batch_size
    steps = k * cycles
    batches = [(train[0][i * batch : (i + 1) * batch], train[1][i * batch : (i + 1) * batch]) for i in range(steps)]
    torch.manual_seed(0)
    full_model = task.make_model()
    mr_model = copy.deepcopy(full_model)
    full = torch.optim.SGD(full_model.parameters(), lr=0.01, momentum=0.9)
    part = by_head(mr_model, sample_input=task.sample_input())
    multirate = Multirate.from_partition(part, fast=["head"], lr=0.01 * k, k=k, momentum=0.9, model=mr_model)
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
    return {
        "speedup": statistics.mean(full_times) / t_mr,
        "limit": k * t_full / (t_full + (k - 1) * t_fast),
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
) -> dict[str, Any]:
    """The benchmark entry point; options come from ``layerwise bench multirate --set key=value``."""
    timing = _timing(task, k, cycles or 2, repeats or 3, batch_size)
    if quick:
        return timing
    return {
        "timing": timing,
        "random_subsets": _subsets(epochs, seeds, hidden, k),
        "finetune": "not built yet: accuracy at equal epochs on MiniLM and EfficientNet (see docs/multirate.md)",
    }
