"""Equal wall-clock: under ``--budget time`` everything a method does for a step is counted as training.

A run's training time is what its ``clock`` measures between a start and an end reading (its steps,
and the catch-ups of its scheduler); evaluations are not training. The tests watch a run from the
outside: every clock reading, every optimizer step (from the first global pre-hook to the last
global post-hook, so the method's own step hooks are inside it), every scheduler step and every
evaluation, each with its wall time. Then

* the timed intervals add up to the seconds the run counted;
* every optimizer step and every scheduler step lies inside a timed interval;
* between two optimizer steps, the wall time that no timed interval covers (the run's bookkeeping:
  the batch slice, the loss, the LR samples) is small; intervals holding an evaluation are left out.

A tiny model makes a method's own work too quick to tell from noise, so the walk over every
registered method pads it: each scheduler step sleeps :data:`SCHEDULER_PAD_S` (above the median
bound) and each optimizer step :data:`OPTIMIZER_PAD_S` in a step hook (as DoG's averager and
AutoFreeze's checks are step hooks), long enough that every step's catch-up steps the scheduler.
"""

from __future__ import annotations

import functools
import gc
import itertools
import statistics
import time
from dataclasses import replace

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import layerwise
import layerwise.compare.runner as runner
from blobs import blobs, blobs_task, mlp
from layerwise.compare.budget import Pace
from layerwise.compare.methods import METHODS
from layerwise.compare.runner import RunSpec, run
from layerwise.tasks.lora import peft_lora

MEDIAN_S = 0.002
"""The median uncounted seconds between two optimizer steps may not reach this ..."""
MAX_S = 0.020
"""... nor may those of any one interval (evaluations excepted)."""

SCHEDULER_PAD_S = 0.003
"""The walk's sleep in every scheduler step: above MEDIAN_S, so catch-ups left uncounted fail the bound."""
OPTIMIZER_PAD_S = 0.015
"""The walk's sleep in every optimizer step (a step hook): no step is shorter ..."""
SCHEDULE_STEPS, BUDGET_S = 16, 0.24
"""... than BUDGET_S / SCHEDULE_STEPS, so every step's catch-up steps the scheduler; the schedule's sleeps
(16 x 3 ms) leave most of the budget to the steps (about 12 of them)."""


def _lora_groups(model, sample):
    del sample
    return layerwise.by_lora(model, rest="head")


SCRATCH = blobs_task("equal-time-blobs", weight_decay=5e-4)
FINE = replace(SCRATCH, name="equal-time-blobs-ft", regime="fine-tuning", optimizer="adamw", lr=1e-2, weight_decay=0.01)
LORA = replace(
    FINE,
    name="equal-time-blobs-lora",
    make_model=lambda: peft_lora(mlp(), targets=("0", "2"), r=4, alpha=8, head=("4",)),
    partition=_lora_groups,
)
TASKS = (SCRATCH, FINE, LORA)
"""The walk's tasks: from scratch with SGD, fine-tuning with AdamW, and LoRA adapters (for ``loraplus``)."""
DATA = blobs(None, False)


@functools.cache
def _partition(index: int):
    return TASKS[index].partition_of(TASKS[index].make_model())


def _task_for(name: str):
    """The first of :data:`TASKS` the method applies to (None: none)."""
    return next((task for i, task in enumerate(TASKS) if METHODS[name].applies(task, _partition(i)) is None), None)


Span = tuple[float, float]


class Watch:
    """One run seen from the outside: its clock readings, optimizer steps, scheduler steps and evaluations."""

    def __init__(self) -> None:
        self.readings: list[float] = []
        self.steps: list[Span] = []
        self.scheduled: list[Span] = []
        self.evaluations: list[Span] = []
        self.optimizer = None
        self.pace: Pace | None = None
        self._began: float | None = None

    def clock(self) -> float:
        now = time.perf_counter()
        self.readings.append(now)
        return now

    def step_began(self, optimizer, args, kwargs) -> None:
        if optimizer is self.optimizer and self._began is None:  # an inner optimizer's step is inside
            self._began = time.perf_counter()

    def step_ended(self, optimizer, args, kwargs) -> None:
        if optimizer is self.optimizer and self._began is not None:
            self.steps.append((self._began, time.perf_counter()))
            self._began = None

    def timed(self) -> list[Span]:
        """The clock's readings in (start, end) pairs: the intervals the run counted."""
        assert len(self.readings) % 2 == 0, "a clock reading without its pair"
        return list(zip(self.readings[::2], self.readings[1::2]))

    def outside(self, spans: list[Span]) -> list[Span]:
        """The spans that do not lie inside one timed interval."""
        timed = self.timed()
        return [(a, b) for a, b in spans if not any(s <= a and b <= e for s, e in timed)]

    def uncounted(self) -> list[float]:
        """For two consecutive optimizer steps (end to end), no evaluation between: time no timed interval covers."""
        timed = self.timed()
        gaps = []
        for (_, a), (_, b) in itertools.pairwise(self.steps):
            if any(s < b and a < e for s, e in self.evaluations):
                continue
            covered = sum(max(0.0, min(b, e) - max(a, s)) for s, e in timed)
            gaps.append((b - a) - covered)
        return gaps


class Slow:
    """A scheduler whose every step sleeps ``seconds`` first; its steps' spans go to ``spans``."""

    def __init__(self, inner, seconds: float, spans: list[Span]) -> None:
        self.inner, self.seconds, self.spans = inner, seconds, spans

    def step(self) -> None:
        start = time.perf_counter()
        time.sleep(self.seconds)
        if self.inner is not None:
            self.inner.step()
        self.spans.append((start, time.perf_counter()))


@pytest.fixture
def watched(monkeypatch):
    """``watched(scheduler_pad, optimizer_pad)``: a :class:`Watch` of the next run, its method's work padded."""
    made: list[Watch] = []

    def began(*args) -> None:
        if made:
            made[-1].step_began(*args)

    def ended(*args) -> None:
        if made:
            made[-1].step_ended(*args)

    hooks = [register_optimizer_step_pre_hook(began), register_optimizer_step_post_hook(ended)]

    def make(scheduler_pad: float = 0.0, optimizer_pad: float = 0.0) -> Watch:
        watch = Watch()
        made.append(watch)
        new_run, evaluate_setup = runner.new_run, runner.evaluate_setup

        def paced(*args, **kwargs):
            watch.pace = Pace(*args, **kwargs)
            return watch.pace

        def padded(*args, **kwargs):
            model, setup = new_run(*args, **kwargs)
            watch.optimizer = setup.optimizer
            if optimizer_pad:
                setup.optimizer.register_step_post_hook(lambda *_: time.sleep(optimizer_pad))
            if setup.scheduler is not None:
                setup = replace(setup, scheduler=Slow(setup.scheduler, scheduler_pad, watch.scheduled))
            return model, setup

        def evaluated(*args, **kwargs):
            start = time.perf_counter()
            try:
                return evaluate_setup(*args, **kwargs)
            finally:
                watch.evaluations.append((start, time.perf_counter()))

        monkeypatch.setattr(runner, "Pace", paced)
        monkeypatch.setattr(runner, "new_run", padded)
        monkeypatch.setattr(runner, "evaluate_setup", evaluated)
        return watch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy machine, intra-op threads waiting for a core make every step slow
    gc.disable()  # a collection lands anywhere: not the accounting's doing
    try:
        yield make
    finally:
        gc.enable()
        torch.set_num_threads(threads)
        for hook in hooks:
            hook.remove()


def _check(name: str, watch: Watch, record: dict) -> None:
    """The run counted its timed intervals, left little time between optimizer steps uncounted, and did all
    its method's work inside the timed intervals."""
    assert sum(e - s for s, e in watch.timed()) == pytest.approx(record["wall_clock_s"]), name
    assert record["wall_clock_s"] == pytest.approx(watch.pace.spent), name
    uncounted = watch.uncounted()
    assert len(uncounted) >= 3, f"{name}: only {len(uncounted)} intervals between optimizer steps"
    median, most = statistics.median(uncounted), max(uncounted)
    assert median < MEDIAN_S and most < MAX_S, (
        f"{name}: uncounted time between optimizer steps: median {median * 1e3:.2f} ms, max {most * 1e3:.2f} ms "
        f"(bounds {MEDIAN_S * 1e3:g} ms, {MAX_S * 1e3:g} ms)"
    )
    for kind, spans in (("optimizer", watch.steps), ("scheduler", watch.scheduled)):
        outside = watch.outside(spans)
        assert not outside, f"{name}: {len(outside)} of {len(spans)} {kind} steps outside the timed intervals"


def test_every_registered_method_applies_to_a_walk_task():
    walked = {name: _task_for(name) for name in METHODS}
    assert not [name for name, task in walked.items() if task is None], "methods no walk task applies to"
    assert len(walked) >= 30 and {"dog", "freezeout", "autofreeze", "freezeout+cache", "loraplus"} <= set(walked)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_paced_run_counts_everything_its_method_does_for_a_step(name, watched):
    task = _task_for(name)
    assert task is not None, f"{name}: applies to none of {[t.name for t in TASKS]}"
    runner.warm_up(task, DATA)  # as a comparison does: the first timed step pays for no thread pool
    watch = watched(SCHEDULER_PAD_S, OPTIMIZER_PAD_S)
    spec = RunSpec(name, steps=SCHEDULE_STEPS, seconds=BUDGET_S, eval_points=1, policy="cosine")
    record = run(task, spec, data=DATA, clock=watch.clock)
    assert record["steps"] == len(watch.steps), name
    _check(name, watch, record)


def test_a_slow_scheduler_is_counted_as_training(watched):
    runner.warm_up(SCRATCH, DATA)
    # steps of 5 ms or more, so the budget ends the run, not the cap on steps (100 per schedule step)
    watch = watched(scheduler_pad=0.05, optimizer_pad=0.005)
    record = run(SCRATCH, RunSpec("baseline", steps=4, seconds=0.4, eval_points=1), data=DATA, clock=watch.clock)
    _check("baseline with a 50 ms scheduler step", watch, record)
    assert len(watch.scheduled) >= 3  # (nearly) the whole schedule, 50 ms a step, inside a budget of 0.4 s
    assert record["wall_clock_s"] >= 0.05 * len(watch.scheduled)


def test_dogs_averager_steps_once_per_optimizer_step_under_both_budgets(monkeypatch):
    import dog

    counted = []
    step = dog.PolynomialDecayAverager.step

    def counting(self):
        counted.append(self)
        step(self)

    monkeypatch.setattr(dog.PolynomialDecayAverager, "step", counting)
    by_steps = run(SCRATCH, RunSpec("dog", steps=7, eval_points=2), data=DATA)
    assert len(counted) == by_steps["steps"] == 7
    counted.clear()
    paced = run(SCRATCH, RunSpec("dog", steps=2, seconds=0.3, eval_points=2), data=DATA)
    assert paced["steps"] > 2  # more steps than its schedule's: stepped as a schedule, it would lag behind
    assert len(counted) == paced["steps"] and len({id(averager) for averager in counted}) == 1
