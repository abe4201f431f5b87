"""Equal-cost plans: each method's step cost against the baseline's, and the steps a time budget buys.

A method's cost is measured before any run, so the plan is fixed (and stored) and every run stays
deterministic and resumable. Every timed method runs its whole schedule compressed into a short
block of its own (``minimum`` steps, rounded up to a multiple of its own period: Multirate's cycle),
so the block holds its slow refreshes and, for FreezeOut and gradual unfreezing, every stage of its
freeze schedule in the proportions of the real run: the block's mean step cost is the cost
integrated over the schedule. A method with rare expensive rounds (Hi-DLR's probing,
:class:`~layerwise.compare.methods.Rounds`) is timed with a round every few steps, and the round
steps' extra cost is weighed by the rounds its run makes. The baseline and every timed method step
in turn on the same batches (the order rotates each step, so machine drift and cache effects hit
all alike; a method's cost is against the baseline's steps taken beside its own); the blocks are
repeated on fresh models and the median ratio is kept. Methods that only move learning rates
(``Method.same_cost``) cost what the baseline costs and are not timed.

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
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..tasks import Task
from ..training import progress_bar
from .methods import METHODS, Rounds
from .parallel import Parallel
from .runner import attach_cache, new_run, train_step

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
    """Measured step costs: the baseline's seconds per step and each method's cost relative to it.

    ``blocks``: each timed method's block length; ``timing_steps``: every step the measurement took
    (all repeats, the baseline's included).
    """

    baseline_step_s: float
    ratios: dict[str, float]
    timed: list[str]
    blocks: dict[str, int]
    repeats: int
    timing_steps: int


def measure_costs(
    task: Task,
    entries: Sequence[Entry],
    batches: Sequence[tuple[Any, torch.Tensor]],
    *,
    policy: str,
    steps: int,
    repeats: int = 2,
    minimum: int = 16,
    clock: Callable[[], float] = time.perf_counter,
    parallel: Parallel | None = None,
    indices: Sequence[torch.Tensor] | None = None,
    progress: bool = False,
) -> CostPlan:
    """Step costs of ``entries`` relative to the baseline (uniform LR, the task's optimizer).

    ``batches``: the batches of the timing block (cycled). ``steps``: the baseline's steps in a run
    (how many rounds a run of a :class:`~layerwise.compare.methods.Rounds` method makes per step).
    ``clock``: seconds (a fake clock in tests). ``parallel``: every rank of a data-parallel
    comparison calls this alike and times its steps on its slice of each batch, communication
    included (each rank's own clock). ``indices``: each batch's example indices, for the methods
    with a :class:`~layerwise.FrozenPrefixCache` (the cache fills on the block's first pass over the
    batches and serves them after, as in a run). ``progress``: a progress line (repeat, step).
    """
    timed = [e for e in entries if not METHODS[e[1]].same_cost]
    timings = [_timing(method, settings, minimum) for _, method, settings in timed]
    blocks = [block for _, block, _ in timings]
    longest = max(blocks, default=minimum)  # the baseline alone still prices a given budget
    samples: dict[str, list[float]] = {key: [] for key, _, _ in timed}
    base_steps: list[float] = []
    total = repeats * (longest + sum(blocks))
    named = ", ".join(f"{method} {block}" for (_, method, _), block in zip(timed, blocks))
    with progress_bar(total, f"timing step costs (steps per block: {named}; baseline {longest})", progress) as bar:
        for repeat in range(repeats):
            runs = [new_run(task, "baseline", {"policy": None}, longest, policy, repeat, parallel)]
            runs += [
                new_run(task, method, timing_settings, block, policy, repeat, parallel)
                for (_, method, _), (timing_settings, block, _) in zip(timed, timings)
            ]
            lengths = [longest, *blocks]
            if parallel is not None:
                runs = [(parallel.prepare(model), setup) for model, setup in runs]
            caches = [_cache_for(model, setup, indices) for model, setup in runs]
            seconds: list[list[float]] = [[] for _ in runs]
            weight = 1.0
            for step in range(longest):
                xb, yb = batches[step % len(batches)]
                if parallel is not None:
                    xb, yb, weight = parallel.split(xb, yb)
                active = [which for which, length in enumerate(lengths) if step < length]
                for offset in range(len(active)):
                    which = active[(step + offset) % len(active)]
                    model, setup = runs[which]
                    cache = caches[which]
                    start = clock()
                    with nullcontext() if cache is None else cache.batch(indices[step % len(batches)]):
                        train_step(model, setup, task, xb, yb, weight)
                    seconds[which].append(clock() - start)
                if bar is not None:
                    bar.update(len(active))
                    bar.set_postfix(repeat=f"{repeat + 1}/{repeats}", refresh=False)
            for cache in caches:
                if cache is not None:
                    cache.remove()
            base = seconds[0]
            base_steps.append(sum(base) / len(base) if base else 0.0)
            for (key, _, _), (_, block, rounds), spent in zip(timed, timings, seconds[1:]):
                # the baseline's steps taken beside this method's (without step 0 where its step 0 is left out)
                beside = statistics.fmean(base[1 if rounds else 0 : block])
                samples[key].append(_per_step(spent, rounds, steps, beside) / beside)
    ratios = {key: 1.0 for key, _, _ in entries}
    ratios.update({key: statistics.median(values) for key, values in samples.items()})
    return CostPlan(
        statistics.median(base_steps) if base_steps else 0.0,
        ratios,
        [key for key, _, _ in timed],
        {key: block for (key, _, _), (_, block, _) in zip(timed, timings)},
        repeats,
        total,
    )


def _timing(method: str, settings: Mapping[str, Any], minimum: int) -> tuple[Mapping[str, Any], int, Rounds | None]:
    """The settings a method's timing block runs, the block's length, and its rounds (if it has any)."""
    spec = METHODS[method]
    if spec.rounds is None:
        return settings, block_length([spec.period(settings)], minimum), None
    rounds = spec.rounds(settings)
    return rounds.timed, block_length([rounds.every], max(minimum, 2 * rounds.every)), rounds


def _per_step(seconds: Sequence[float], rounds: Rounds | None, steps: int, baseline_s: float) -> float:
    """A method's mean step seconds in its run, from its timing block's steps.

    With rounds, step 0 (a round that also pays one-time costs) is left out, and the round steps'
    extra seconds are weighed by the run's rounds per step: a run of ``s`` steps makes
    ``rounds.count(s)`` rounds, and ``s`` is the baseline's ``steps`` over the cost ratio (two
    refinements from ``s = steps``).
    """
    if rounds is None:
        return sum(seconds) / len(seconds)
    spikes = [t for step, t in enumerate(seconds) if step and step % rounds.every == 0]
    plain = [t for step, t in enumerate(seconds) if step % rounds.every]
    plain_s, extra_s = statistics.fmean(plain), statistics.fmean(spikes) - statistics.fmean(plain)
    run_steps, per_step = steps, plain_s
    for _ in range(2):
        per_step = plain_s + extra_s * rounds.count(run_steps) / run_steps
        run_steps = max(1, round(steps * baseline_s / per_step))
    return per_step


def _cache_for(model: torch.nn.Module, setup: Any, indices: Sequence[torch.Tensor] | None) -> Any:
    if setup.cache is None:
        return None
    if indices is None:
        raise ValueError("indices: a method with a prefix cache is timed on batches of known example indices")
    unchecked = replace(setup, cache={**setup.cache, "verify": 0})  # a run self-checks only its first batches
    return attach_cache(model, unchecked, int(max(int(i.max()) for i in indices)) + 1)


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
