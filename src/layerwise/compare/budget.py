"""Equal wall-clock: a run that stops by its own training clock, with schedules that follow it.

Under ``--budget time`` every run trains for the same seconds of training (evaluations excluded):
the baseline's training time on the same seed, or the seconds given. A run does not plan its
steps from a cost measured beforehand, because this machine's speed moves by 20-30 % within
minutes (BENCHMARKS.md): a planned step count buys another time in every run. Instead each run
keeps a :class:`Pace`: the seconds its steps have taken against the budget. Its progress
``p = spent / budget`` is the position of every schedule: the method's scheduler is stepped up to
``floor(p * schedule_steps)`` after each step (:meth:`Pace.catch_up`; it may stay or advance
several steps at once), Hi-DLR and SecantLR read ``p`` directly (their ``progress``), and the run
stops at the step that brings it nearest the budget (:meth:`Pace.done`). ``schedule_steps`` is
the baseline's step count, so a method as fast as the baseline follows its schedules step for
step. A faster method takes more steps over the same schedules, a slower one fewer.

Everything a method does for a step is training time; only evaluations (and the switch to the
weights they evaluate) are not. The catch-up is timed by the run's clock and charged to the step
it follows (:meth:`Pace.charge`). What must follow every optimizer step, whatever the budget
(DoG's iterate averager), is not a scheduler: it is an optimizer step hook, inside the timed step.

The run's clock is one of :data:`CLOCKS` (``--clock``): ``wall`` (``time.perf_counter``), which
other processes on the machine move, or ``process`` (the training process's CPU seconds over all
its threads, ``time.process_time``; on CUDA the GPU's own elapsed time between CUDA events), which
they do not. The budget, the records' seconds and the curves all read the chosen clock
(:func:`clock_of`; docs/verdicts.md says when to use which).

Examples:
    >>> pace = Pace(budget_s=1.0, schedule_steps=10)
    >>> for _ in range(4):
    ...     pace.add(0.2)
    >>> pace.progress(), pace.schedule_step(), pace.done()
    (0.8, 8, False)
    >>> pace.add(0.2)
    >>> pace.done()
    True

    A catch-up timed by a clock returns its seconds, which the run charges to the step:

    >>> ticks = iter([0.0, 0.05])
    >>> class Schedule:
    ...     def step(self): pass
    >>> pace = Pace(budget_s=1.0, schedule_steps=10)
    >>> pace.add(0.2)
    >>> pace.catch_up(Schedule(), clock=lambda: next(ticks))
    0.05
    >>> pace.charge(0.05)
    >>> round(pace.spent, 2), pace.steps, pace.stepped
    (0.25, 1, 2)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import one_of, positive_int

__all__ = ["CLOCKS", "CudaClock", "Pace", "clock_of"]

CLOCKS = ("wall", "process")
"""``--clock``: ``wall`` (elapsed seconds, moved by other processes) or ``process`` (the training
process's own CPU seconds; on CUDA, the GPU's elapsed seconds between CUDA events)."""


class CudaClock:
    """Seconds of the GPU's own timeline: each reading records a CUDA event and waits for it.

    Between two readings it counts the GPU's elapsed time on this process's stream, gaps included:
    other processes move it only by delaying this process's kernels (sharing the GPU) or their
    launches (a launch-bound step on a CPU that other processes take). Not exercised without a CUDA
    device.
    """

    def __init__(self) -> None:
        self.start = torch.cuda.Event(enable_timing=True)
        self.start.record()

    def __call__(self) -> float:
        now = torch.cuda.Event(enable_timing=True)
        now.record()
        now.synchronize()
        return self.start.elapsed_time(now) / 1000.0


def clock_of(name: str, device: str = "cpu") -> tuple[Callable[[], float], str]:
    """The clock ``--clock name`` times a run with on ``device``, and the name its record gives it.

    >>> clock_of("process")[1], clock_of("wall")[1]
    ('process', 'wall')
    """
    one_of("--clock", name, CLOCKS)
    if name == "wall":
        return time.perf_counter, "wall"
    if device == "cuda" and torch.cuda.is_available():
        return CudaClock(), "cuda-events"
    return time.process_time, "process"


@dataclass
class Pace:
    """A run's training seconds against its budget, and how far its schedules have advanced.

    Attributes:
        budget_s: the run's training budget in seconds.
        schedule_steps: the length of the schedules the method was built with (the baseline's steps).
        spent: the training seconds so far (the steps' and their catch-ups'); ``steps``: the steps
            taken; ``stepped``: how often the method's scheduler has been stepped.
    """

    budget_s: float
    schedule_steps: int
    spent: float = 0.0
    steps: int = 0
    stepped: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.budget_s, (int, float)) and 0 < self.budget_s < math.inf):
            raise ValueError(f"budget_s: a finite number of seconds > 0, got {self.budget_s!r}")
        positive_int("schedule_steps", self.schedule_steps)

    def progress(self) -> float:
        """The share of the budget spent, at most 1."""
        return min(1.0, self.spent / self.budget_s)

    def schedule_step(self) -> int:
        """Where the schedules stand: ``floor(progress * schedule_steps)``."""
        return math.floor(self.progress() * self.schedule_steps)

    def add(self, seconds: float) -> None:
        """Count one training step of ``seconds``."""
        self.spent += seconds
        self.steps += 1

    def done(self) -> bool:
        """True once another step would end farther from the budget than stopping now (half a mean step)."""
        return self.steps > 0 and self.spent + 0.5 * self.spent / self.steps >= self.budget_s

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` more of training to the last step (its scheduler's catch-up), not a step."""
        self.spent += seconds

    def catch_up(self, scheduler: Any, clock: Callable[[], float] | None = None) -> float:
        """Step ``scheduler`` until it stands at :meth:`schedule_step` (never back).

        Returns the seconds the steps took by ``clock`` (0.0 without a clock, or with nothing to
        step): training time, which the caller charges (:meth:`charge`; a data-parallel run, the
        slowest rank's).
        """
        due = self.schedule_step() - self.stepped
        if due <= 0:
            return 0.0
        start = 0.0 if clock is None else clock()
        for _ in range(due):
            scheduler.step()
            self.stepped += 1
        return 0.0 if clock is None else clock() - start
