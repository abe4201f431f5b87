"""``layerwise bench multirate``: the wall-clock speed-up of Multirate fine-tuning, measured.

Quick (timing only): a pretrained model of a task (default ``effnet-fashion``) trains the same
batches with full fine-tuning and with :class:`Multirate` (fast = the head, slow = the rest,
period ``k``), alternating blocks of ``k * cycles`` steps. ``speedup`` is the ratio of median
step times; ``limit`` is the paper's eq. (6) ideal ``k T_full / (T_full + (k - 1) T_fast)`` from
this run's measured step times (``T_fast``: Multirate's steps without a slow gradient).

Example:
    $ layerwise bench multirate --quick --json
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from ..groups import by_head
from ..multirate import Multirate
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


def run_multirate_bench(
    quick: bool = False,
    task: str = "effnet-fashion",
    k: int = 5,
    cycles: int | None = None,
    repeats: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The benchmark entry point; options come from ``layerwise bench multirate --set key=value``."""
    if not quick:
        raise ValueError(
            "bench multirate: only --quick (timing) is built so far; the accuracy-at-equal-epochs "
            "comparison is not implemented yet"
        )
    return _timing(task, k, cycles or 2, repeats or 3, batch_size)
