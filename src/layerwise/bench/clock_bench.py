"""How far the process clock and the wall clock agree on one run's training (``layerwise bench clock``).

Each repeat trains one run of the baseline and reads both clocks at every reading the run's own
clock makes, so both time exactly the intervals the run counts as training (its steps, evaluations
excluded). The ratio process / wall of a run is its training's CPU seconds per elapsed second: about
the number of busy threads on an idle machine (torch's intra-op threads all count), lower when
other processes take the cores. Run it on an idle machine; it records the load average beside the
ratios so a busy run can be told apart.

Examples:
    >>> from layerwise.bench.suite import run_bench
    >>> run_bench("clock", quick=True, task="ellipse")["median_ratio"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from ..compare.runner import RunSpec, load_average, run
from ..tasks import resolve_task

__all__ = ["DualClock", "run_clock_bench"]


class DualClock:
    """A run's clock (wall seconds) that also reads the process clock at every reading.

    The run reads it in (start, end) pairs; :meth:`totals` sums both clocks over those intervals.
    """

    def __init__(self) -> None:
        self.readings: list[tuple[float, float]] = []

    def __call__(self) -> float:
        wall, process = time.perf_counter(), time.process_time()
        self.readings.append((wall, process))
        return wall

    def totals(self) -> tuple[float, float]:
        """The wall and process seconds summed over the intervals the run counted."""
        starts, ends = self.readings[0::2], self.readings[1::2]
        wall = sum(end[0] - start[0] for start, end in zip(starts, ends))
        process = sum(end[1] - start[1] for start, end in zip(starts, ends))
        return wall, process


def _one_run(task: Any, steps: int, seed: int) -> dict[str, float | None]:
    """One baseline run timed by both clocks; its seconds, their ratio and the load around it."""
    clock = DualClock()
    before = load_average()
    run(task, RunSpec("baseline", seed=seed, steps=steps, eval_points=1, quick=True), clock=clock)
    wall, process = clock.totals()
    return {"wall_s": wall, "process_s": process, "ratio": process / wall, "load_before": before}


def run_clock_bench(
    quick: bool, task: str = "fashion-mnist", steps: int | None = None, repeats: int | None = None, warmup: int = 1
) -> dict[str, Any]:
    """Train ``repeats`` runs of ``steps`` steps after ``warmup`` untimed ones; the ratio process / wall per run.

    ``median_ratio`` is over the timed runs. On an idle machine it is the run's busy threads; under
    load it falls. ``spread`` is (max - min) / median of the ratios: small when the clocks agree.
    """
    resolved = resolve_task(task)
    steps = steps or (20 if quick else 200)
    repeats = repeats or (3 if quick else 7)
    for seed in range(warmup):
        _one_run(resolved, steps, seed)
    runs = [_one_run(resolved, steps, warmup + i) for i in range(repeats)]
    ratios = [r["ratio"] for r in runs]
    median = statistics.median(ratios)
    return {
        "task": resolved.name,
        "steps": steps,
        "repeats": repeats,
        "warmup": warmup,
        "runs": runs,
        "median_ratio": median,
        "spread": (max(ratios) - min(ratios)) / median,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_after": load_average(),
    }
