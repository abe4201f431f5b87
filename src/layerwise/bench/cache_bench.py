"""``layerwise bench cache``: what a FrozenPrefixCache saves, measured beside what was predicted before training.

For each case (a freezing method on a task) and seed, three runs of the compare runner on the
same batches, in rotating order: full training (``baseline``), the method, and ``METHOD+cache``.
The measured saving of each is ``1 - its training seconds / the baseline's``; the cache's own gain
is the method's seconds over the cached method's. Before training, the prediction integrates the
step times measured with the first k groups frozen, without and with a warm cache
(:func:`layerwise.cost.prefix_step_times`), over the method's schedule of frozen groups, and
weighs the cached time by the share of rows the cache can serve at each step, simulated on the
run's own seeded data order (an example is served once it was seen since its cut last moved).

Examples:
    >>> from layerwise.bench.cache_bench import simulate_served
    >>> simulate_served([1, 1, 1, 1], examples=4, batch=2, seed=0)  # the second epoch is served
    [0.0, 0.0, 1.0, 1.0]
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..compare.methods import resolve_settings
from ..compare.runner import RunSpec, new_run, run
from ..cost import prefix_step_times
from ..freezing import Freezer
from ..prefix_cache import FrozenPrefixCache
from ..tasks import resolve_task
from ..training import seeded_indices, steps_per_epoch

__all__ = ["CASES", "cut_depths", "frozen_counts", "predicted_savings", "run_cache_bench", "simulate_served"]

CASES: dict[str, tuple[str, str, dict[str, Any], dict[str, int]]] = {
    "freezeout": ("fashion-mnist", "freezeout", {}, {}),
    "freezeout-8-epochs": ("fashion-mnist", "freezeout", {}, {"train_size": 4000, "epochs": 8}),
    "fine-tune": ("effnet-finetune", "fine-tune", {}, {}),
    "head-only": ("effnet-finetune", "head-only", {}, {}),
    "gradual-unfreezing": ("effnet-finetune", "gradual-unfreezing", {}, {}),
}
"""Case name -> (task, method, settings, run size): FreezeOut from scratch (the main job's scratch regime:
16,000 images x 2 epochs; and the same 250 steps as 4,000 images x 8 epochs, where examples come back
while layers are frozen) and three fine-tuning recipes on the pretrained EfficientNet (its fine-tuning
regime)."""


def frozen_counts(task: Any, method: str, settings: dict[str, Any], total: int, policy: str) -> list[int]:
    """How many input-side groups are frozen at each step of ``method``'s schedule (its scheduler stepped alone)."""
    _, setup = new_run(task, method, resolve_settings(method, settings), total, policy, seed=0)
    names = [g["name"] for g in setup.optimizer.param_groups]
    names = list(dict.fromkeys(names))
    counts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the schedulers step without optimizer steps here
        for _ in range(total):
            frozen = set(setup.freezer.frozen)
            counts.append(next((i for i, n in enumerate(names) if n not in frozen), len(names)))
            if setup.scheduler is not None:
                setup.scheduler.step()
    return counts


def simulate_served(
    counts: Sequence[int], *, examples: int, batch: int, seed: int, cuts: Sequence[int] | None = None
) -> list[float]:
    """Per step, the share of the batch's rows a cache serves: rows stored at the current cut since it
    last moved. ``cuts[k]``: the cut (its depth; 0: none) the cache takes with ``k`` groups frozen, so
    freezing a group that moves no cut keeps the rows (default: every frozen count is its own cut)."""
    depth = list(range(max(counts, default=0) + 1)) if cuts is None else list(cuts)
    stored = np.zeros(examples, dtype=np.int64)  # the cut each example is stored at (0: not stored)
    served = []
    for (_, _, index), k in zip(seeded_indices(examples, batch, seed=seed, steps=len(counts)), counts):
        rows, cut = index.numpy(), depth[k]
        stored[stored > cut] = 0  # a group unfroze: the deeper entries are dropped
        served.append(float((stored[rows] == cut).mean()) if cut else 0.0)
        stored[rows] = cut
    return served


def cut_depths(model: Any, setup: Any, batch: tuple[Any, Any]) -> list[int]:
    """The cut a :class:`~layerwise.FrozenPrefixCache` takes with the first k groups frozen, k = 0..K, as
    the number of ops before it (0: no cut), from one forward per k."""
    freezer = Freezer(model, setup.optimizer)
    rows = len(batch[1])
    depths = [0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a shallower cut is what is asked for
        for k in range(1, len(freezer.names) + 1):
            freezer.freeze(*freezer.names[:k])
            cache = FrozenPrefixCache(model, freezer, rows, same_inputs=True, shallower="allow")
            with cache.batch(np.arange(rows)):
                model(batch[0])
            cut = cache._choose(cache._frozen_ids())[0] if cache._trace is not None else None
            depths.append(0 if cut is None else cut.position)
            cache.remove()
    freezer.unfreeze(*freezer.names)
    return depths


def predicted_savings(
    counts: Sequence[int], served: Sequence[float], plain: Sequence[float], cached: Sequence[float]
) -> dict[str, float]:
    """Savings against full training (step time ``plain[0]``): without the cache, with it as simulated, and
    with every frozen forward served (the bound :func:`layerwise.cost.timed_saving` gives with ``cached``)."""
    full = plain[0]
    without = statistics.fmean(plain[k] for k in counts)
    with_cache = statistics.fmean(s * cached[k] + (1 - s) * plain[k] for k, s in zip(counts, served))
    bound = statistics.fmean(cached[k] for k in counts)
    return {
        "without_cache": round(1 - without / full, 4),
        "with_cache": round(1 - with_cache / full, 4),
        "with_cache_all_served": round(1 - bound / full, 4),
        "served_share": round(statistics.fmean(served), 4),
    }


def _case(name: str, seeds: int, quick: bool, policy: str) -> dict[str, Any]:
    task_name, method, settings, size = CASES[name]
    task = resolve_task(task_name)
    data = task.load_data(None, quick)
    x, y = data.train
    train_size = min(len(y), 256 if quick else size.get("train_size", task.train_size or len(y)))
    epochs = 2 if quick else size.get("epochs", task.epochs)
    total = epochs * steps_per_epoch(train_size, task.batch_size)
    counts = frozen_counts(task, method, settings, total, policy)
    model, setup = new_run(task, "baseline", {"policy": None}, total, policy, seed=0)
    groups = [dict(g) for g in setup.optimizer.param_groups]
    rows = min(task.batch_size, 32) if quick else task.batch_size
    batch = (x[:rows], y[:rows])
    repeats = 2 if quick else 9
    plain = prefix_step_times(model, groups, batch, task.loss, repeats=repeats)
    cached = prefix_step_times(model, groups, batch, task.loss, repeats=repeats, cached=True)
    cuts = cut_depths(model, setup, batch)
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], method: [], f"{method}+cache": []}
    for seed in range(seeds):
        order = list(runs)
        order = order[seed % 3 :] + order[: seed % 3]  # rotate, so drift hits each alike
        for which in order:
            base = "baseline" if which == "baseline" else which
            spec = RunSpec(
                base,
                {} if which == "baseline" else settings,
                seed=seed,
                steps=total,
                train_size=train_size,
                policy=policy,
                quick=quick,
                eval_points=1,
            )
            runs[which].append(run(task, spec, data=data))
    predictions = [
        predicted_savings(
            counts,
            simulate_served(counts, examples=train_size, batch=task.batch_size, seed=s, cuts=cuts),
            plain,
            cached,
        )
        for s in range(seeds)
    ]

    def seconds(key: str) -> list[float]:
        return [r["wall_clock_s"] for r in runs[key]]

    base_s, plain_s, cache_s = seconds("baseline"), seconds(method), seconds(f"{method}+cache")
    stats = [r["cache"] for r in runs[f"{method}+cache"]]
    rows = [s["hits"] + s["advanced"] + s["misses"] + s["uncached"] for s in stats]
    return {
        "task": task_name,
        "method": method,
        "epochs": epochs,
        "steps": total,
        "train_size": train_size,
        "seeds": seeds,
        "step_s_frozen_k": [round(t, 6) for t in plain],
        "step_s_frozen_k_cached": [round(t, 6) for t in cached],
        "predicted": {key: round(statistics.fmean(p[key] for p in predictions), 4) for key in predictions[0]},
        "measured": {
            "saving_without_cache": round(1 - statistics.median(p / b for p, b in zip(plain_s, base_s)), 4),
            "saving_with_cache": round(1 - statistics.median(c / b for c, b in zip(cache_s, base_s)), 4),
            "cache_speedup": round(statistics.median(p / c for p, c in zip(plain_s, cache_s)), 4),
            "hit_rate": round(statistics.fmean(s["hits"] / n for s, n in zip(stats, rows)), 4),
            "advanced_rate": round(statistics.fmean(s["advanced"] / n for s, n in zip(stats, rows)), 4),
            "stored_mb": round(max(s["stored_bytes"] for s in stats) / 2**20, 2),
            "boundary": stats[-1]["boundary"],
        },
        "train_s": {key: [round(v, 2) for v in seconds(key)] for key in runs},
        "test_metric": {key: [r["test_metric"] for r in runs[key]] for key in runs},
        "same_results_as_uncached": all(
            a["train_loss"] == b["train_loss"] for a, b in zip(runs[method], runs[f"{method}+cache"])
        ),
    }


def run_cache_bench(
    quick: bool = False, *, cases: str | None = None, seeds: int | None = None, policy: str = "cosine"
) -> dict[str, Any]:
    """The cache's saving per case (comma-separated names of :data:`CASES`; default all but
    gradual-unfreezing, whose stages are shorter than an epoch at the main job's length; quick: freezeout)."""
    names = (cases or ("freezeout" if quick else "freezeout,freezeout-8-epochs,fine-tune,head-only")).split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"cases: no case {unknown[0]!r}; cases: {list(CASES)}")
    count = seeds if seeds is not None else (1 if quick else 3)
    return {"cases": {name: _case(name, count, quick, policy) for name in names}}
