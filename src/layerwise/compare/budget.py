"""Equal-cost plans: each method's step cost against the baseline's, and the steps a time budget buys.

A method's cost is measured before any run, so the plan is fixed (and stored) and every run stays
deterministic and resumable. Every timed method runs its whole schedule compressed into a short
block of ``block`` steps (a multiple of every method's period: Hi-DLR's probing interval,
Multirate's cycle), so the block holds the method's probes, its slow refreshes and, for FreezeOut
and gradual unfreezing, every stage of its freeze schedule in the proportions of the real run:
the block's mean step cost is the cost integrated over the schedule. The baseline and every timed
method step in turn on the same batches (the order rotates each step, so machine drift and cache
effects hit all alike); the block is repeated on fresh models and the median ratio is kept.
Methods that only move learning rates (``Method.same_cost``) cost what the baseline costs and are
not timed.

Examples:
    >>> plan_steps(60.0, 0.25)
    240
    >>> block_length([16, 4, 1], minimum=24)
    32
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..tasks import Task
from .methods import METHODS
from .runner import attach_cache, new_run, train_step

if TYPE_CHECKING:
    from .parallel import Parallel

__all__ = ["CostPlan", "block_length", "measure_costs", "plan_budget", "plan_steps"]

Entry = tuple[str, str, Mapping[str, Any]]
"""(store key, method name, resolved settings)."""


def plan_steps(budget_s: float, step_s: float) -> int:
    """Whole steps of ``step_s`` seconds that fill ``budget_s`` seconds best (at least one)."""
    if not (budget_s > 0 and math.isfinite(budget_s)):
        raise ValueError(f"budget_s: a finite number of seconds > 0, got {budget_s!r}")
    if not (step_s > 0 and math.isfinite(step_s)):
        raise ValueError(f"step_s: a finite number of seconds > 0, got {step_s!r}")
    return max(1, round(budget_s / step_s))


def block_length(periods: Sequence[int], minimum: int = 32) -> int:
    """The shortest multiple of every period that is at least ``minimum`` steps."""
    period = math.lcm(*periods) if periods else 1
    return period * max(1, -(-minimum // period))


@dataclass(frozen=True)
class CostPlan:
    """Measured step costs: the baseline's seconds per step and each method's cost relative to it."""

    baseline_step_s: float
    ratios: dict[str, float]
    timed: list[str]
    block: int
    repeats: int


def measure_costs(
    task: Task,
    entries: Sequence[Entry],
    batches: Sequence[tuple[Any, torch.Tensor]],
    *,
    policy: str,
    repeats: int = 3,
    minimum: int = 32,
    clock: Callable[[], float] = time.perf_counter,
    parallel: Parallel | None = None,
    indices: Sequence[torch.Tensor] | None = None,
) -> CostPlan:
    """Step costs of ``entries`` relative to the baseline (uniform LR, the task's optimizer).

    ``batches``: the batches of the timing block (cycled). ``clock``: seconds (a fake clock in tests).
    ``parallel``: every rank of a data-parallel comparison calls this alike and times its steps on
    its slice of each batch, communication included (each rank's own clock). ``indices``: each
    batch's example indices, for the methods with a :class:`~layerwise.FrozenPrefixCache` (the
    cache fills on the block's first pass over the batches and serves them after, as in a run).
    """
    timed = [e for e in entries if not METHODS[e[1]].same_cost]
    block = block_length([METHODS[method].period(settings) for _, method, settings in timed], minimum)
    samples: dict[str, list[float]] = {key: [] for key, _, _ in timed}
    base_steps: list[float] = []
    for repeat in range(repeats):
        runs = [new_run(task, "baseline", {"policy": None}, block, policy, repeat, parallel)]
        runs += [new_run(task, method, settings, block, policy, repeat, parallel) for _, method, settings in timed]
        if parallel is not None:
            runs = [(parallel.prepare(model), setup) for model, setup in runs]
        caches = [_cache_for(model, setup, indices) for model, setup in runs]
        seconds = [0.0] * len(runs)
        weight = 1.0
        for step in range(block):
            xb, yb = batches[step % len(batches)]
            if parallel is not None:
                xb, yb, weight = parallel.split(xb, yb)
            for offset in range(len(runs)):
                which = (step + offset) % len(runs)
                model, setup = runs[which]
                cache = caches[which]
                start = clock()
                with nullcontext() if cache is None else cache.batch(indices[step % len(batches)]):
                    train_step(model, setup, task, xb, yb, weight)
                seconds[which] += clock() - start
        for cache in caches:
            if cache is not None:
                cache.remove()
        base_steps.append(seconds[0] / block)
        for (key, _, _), spent in zip(timed, seconds[1:]):
            samples[key].append(spent / seconds[0])
    ratios = {key: 1.0 for key, _, _ in entries}
    ratios.update({key: statistics.median(values) for key, values in samples.items()})
    return CostPlan(statistics.median(base_steps), ratios, [key for key, _, _ in timed], block, repeats)


def _cache_for(model: torch.nn.Module, setup: Any, indices: Sequence[torch.Tensor] | None) -> Any:
    if setup.cache is None:
        return None
    if indices is None:
        raise ValueError("indices: a method with a prefix cache is timed on batches of known example indices")
    return attach_cache(model, setup, int(max(int(i.max()) for i in indices)) + 1)


def plan_budget(
    costs: CostPlan, baseline_steps: int, budget_seconds: float | None = None
) -> tuple[float, dict[str, int]]:
    """The budget in seconds and each entry's planned steps.

    Without ``budget_seconds`` the budget is the baseline's ``baseline_steps`` at its measured cost,
    and a method of cost ratio ``r`` gets ``baseline_steps / r`` steps.
    """
    if budget_seconds is None:  # exact for the baseline and for methods of its cost
        steps = {key: max(1, round(baseline_steps / ratio)) for key, ratio in costs.ratios.items()}
        return baseline_steps * costs.baseline_step_s, steps
    budget = float(budget_seconds)
    return budget, {key: plan_steps(budget, ratio * costs.baseline_step_s) for key, ratio in costs.ratios.items()}
