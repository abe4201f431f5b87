"""``layerwise bench executor``: one small comparison's wall-clock on a local Ray with 1 and with 2 workers.

Every run is one Ray task with one CPU (one torch thread), so the workers are Ray's CPUs: with 1 the
runs train one after another, with 2 two at a time. Each setting runs the comparison once untimed
(Ray's workers start, import torch and warm up), then ``repeats`` times, each into a fresh ``--out``;
the result is the median of each and their ratio (1 worker over 2: above 1, the fan-out saves time).

Examples:
    >>> run_executor_bench(quick=True)["speedup"] > 1  # doctest: +SKIP
    True
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ..compare import compare
from ..compare.executors import RayExecutor

__all__ = ["run_executor_bench"]


def run_executor_bench(
    quick: bool,
    task: str = "fashion-mnist",
    methods: str = "baseline,freezeout",
    seeds: int | None = None,
    repeats: int | None = None,
) -> dict[str, Any]:
    """The comparison's median wall-clock with 1 and 2 Ray workers, and their ratio."""
    import ray

    seeds = seeds or (2 if quick else 4)
    repeats = repeats or (2 if quick else 3)
    names = methods.split(",")
    options = {"seeds": seeds, "budget": "steps", "quick": True, "progress": False}
    seconds: dict[int, list[float]] = {}
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            with tempfile.TemporaryDirectory() as folder:
                compare(task, names, out=Path(folder) / "warm-up", executor=RayExecutor(), **options)
                seconds[workers] = []
                for repeat in range(repeats):
                    started = time.perf_counter()
                    compare(task, names, out=Path(folder) / f"{repeat}", executor=RayExecutor(), **options)
                    seconds[workers].append(time.perf_counter() - started)
        finally:
            ray.shutdown()
    medians = {workers: statistics.median(times) for workers, times in seconds.items()}
    return {
        "task": task,
        "methods": names,
        "runs": seeds * len(names),
        "seconds": {f"{workers} worker(s)": [round(s, 2) for s in times] for workers, times in seconds.items()},
        "median_s_1_worker": round(medians[1], 2),
        "median_s_2_workers": round(medians[2], 2),
        "speedup": round(medians[1] / medians[2], 3),
    }
