"""One training run of a task with one method: the seeded data order every method shares.

A run goes through the seeded loop of :mod:`layerwise.tasks.loop` (``loss.backward();
optimizer.step(); scheduler.step()``, with a loss closure for the methods that probe losses).
Only training is timed: the steps and, paced by the clock, the catch-up of the method's scheduler
after each (:mod:`.budget`); the test evaluations in between are not. A run trains the
task's epochs, exactly ``steps`` steps, or for ``seconds`` of training (equal wall-clock: it
stops by its own clock, and its schedules follow its share of the budget, :mod:`.budget`): past
the first epoch the same seeded generator reshuffles every epoch, so every method sees the same
batches in the same order for as long as it trains. :class:`RunSpec` describes a run; :func:`run`
trains it.

Every record says how it was timed: ``clock`` (``wall``, ``process`` or ``cuda-events``,
:func:`~layerwise.compare.budget.clock_of`), ``load`` (the machine's 1-minute load average at the
start, at each evaluation and at the end, their mean, and the CPU count) and ``step_s`` (the median
and 90th percentile of its steps' training seconds). Records stored before these fields read them
as unknown.

Examples:
    >>> from layerwise.compare.runner import run_one
    >>> record = run_one("ellipse", "hidlr", seed=0)  # doctest: +SKIP
    >>> record["test_metric"], record["wall_clock_s"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import positive_int
from ..param_groups import group_names
from ..prefix_cache import FrozenPrefixCache
from ..tasks import Task, TaskData, make_optimizer, resolve_task
from ..tasks.base import Data, split_examples, split_size
from ..tasks.loop import Batch, batch_step, evaluate, loader_options, seeded_batches_of, seeded_loop
from ..telemetry import LayerMonitor
from ..training import slice_batch, steps_per_epoch
from ..wrapping import owns_lr
from .budget import Pace, clock_of
from .methods import METHODS, Build, Setup, build_setup, resolve_settings
from .parallel import Parallel

__all__ = [
    "RunSpec",
    "attach_cache",
    "eval_steps",
    "evaluate_setup",
    "group_lrs",
    "load_average",
    "new_run",
    "optimizer_text",
    "param_norms",
    "run",
    "run_one",
    "train_step",
    "warm_up",
]

LR_SAMPLES = 200
"""At most this many sampled steps of every group's LR are kept per run."""

MAX_PACED = 100
"""A run paced by the clock takes at most this many times its schedules' steps."""

OnStep = Callable[[int, int, float], None]
"""``on_step(step, total, loss)`` after every step (progress bars)."""


@dataclass(frozen=True)
class RunSpec:
    """One run: the method, its settings and seed, and everything else that decides its record.

    Attributes:
        settings: overrides of the method's default settings.
        epochs: default: the task's (its quick epochs with ``quick``).
        steps: train exactly this many steps instead; the data is reshuffled every epoch as usual,
            with the same seeded order as a run of ``epochs``.
        seconds: train for this many seconds of training instead, stopping by the run's own clock;
            its schedules are built for the steps above (``steps``, else the epochs') and follow
            its progress through the budget (:class:`~layerwise.compare.budget.Pace`).
        train_size: keep the first examples of the train split (default: all).
        policy: the global LR policy every scheduled method shares.
        quick: the task's quick data (when no data is given) and quick epochs.
        eval_points: test evaluations, evenly spaced over the run (the last one at its end).
        telemetry_every: attach a :class:`LayerMonitor` recording every this many steps
            (its records go to ``record["telemetry"]``).
        tensorboard: also log the telemetry there (a ``SummaryWriter`` log directory).
        clock: what times the run (``wall`` or ``process``, :func:`~layerwise.compare.budget.clock_of`).
    """

    method: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None
    train_size: int | None = None
    policy: str = "cosine"
    quick: bool = False
    eval_points: int = 10
    telemetry_every: int | None = None
    tensorboard: str | Path | None = None
    clock: str = "wall"


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _spread(seconds: list[float]) -> dict[str, float | None]:
    """The median and the 90th percentile (nearest rank) of the steps' training seconds."""
    if not seconds:
        return {"median": None, "p90": None}
    ordered = sorted(seconds)
    return {"median": statistics.median(ordered), "p90": ordered[math.ceil(0.9 * len(ordered)) - 1]}


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each named group's current LR (param-group dicts sharing a name report the first one's)."""
    lrs: dict[str, float] = {}
    for name, group in zip(group_names(optimizer.param_groups), optimizer.param_groups):
        lrs.setdefault(name, float(group["lr"]))
    return lrs


def param_norms(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each named group's parameter L2 norm (sharded parameters gathered: every rank must call it)."""
    squares: dict[str, float] = {}
    for name, group in zip(group_names(optimizer.param_groups), optimizer.param_groups):
        for p in group["params"]:
            whole = p.full_tensor() if hasattr(p, "full_tensor") else p
            squares[name] = squares.get(name, 0.0) + float(whole.detach().double().square().sum())
    return {name: math.sqrt(total) for name, total in squares.items()}


def optimizer_text(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer a run stepped: its class, with the optimizer it wraps (``HiDLR(SGD)``)."""
    inner = getattr(optimizer, "optimizer", None)
    name = type(optimizer).__name__
    return f"{name}({type(inner).__name__})" if isinstance(inner, torch.optim.Optimizer) else name


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def new_run(
    task: Task,
    method: str,
    settings: Mapping[str, Any],
    total_steps: int,
    policy: str,
    seed: int,
    parallel: Parallel | None = None,
):
    """A fresh seeded model of ``task`` and ``method``'s setup for a run of ``total_steps`` steps.

    With FSDP (``parallel.engine == "fsdp"``) the model is sharded before the setup is built; the
    task's partition, found on the whole model, gives the sharded parameters (``Group.params``
    reads them from their modules).
    """
    torch.manual_seed(seed)
    model = task.make_model()
    partition = task.partition_of(model)
    if parallel is not None and parallel.engine == "fsdp":
        parallel.shard(model)
    build = Build(task, model, partition, total_steps, policy)
    return model, build_setup(build, method, settings)


def attach_cache(model: nn.Module, setup: Setup, examples: int, task: Task | None = None) -> FrozenPrefixCache | None:
    """The :class:`FrozenPrefixCache` a ``+cache`` method asks for (``setup.cache``), on ``model``; or None.

    Every example index gives the same input unless the task has a ``train_transform``: the cache
    refuses such a task (it would serve an activation of another random draw).
    """
    if setup.cache is None:
        return None
    if task is not None and task.train_transform is not None:
        raise ValueError(
            f"task {task.name!r} has a train_transform (random augmentation): the frozen-prefix cache keys "
            "activations by example index and would serve one draw's activation for another; run the method "
            "without +cache"
        )
    if task is not None and task.accumulate > 1:
        raise ValueError(
            f"task {task.name!r} accumulates {task.accumulate} micro-batches per step: the frozen-prefix cache "
            "serves a whole batch's example indices at once; run the method without +cache or with accumulate=1"
        )
    return FrozenPrefixCache(model, setup.freezer, examples, same_inputs=True, shallower="allow", **setup.cache)


def train_step(
    model: nn.Module, setup: Setup, task: Task, xb: Any, yb: Any = None, weight: float = 1.0
) -> torch.Tensor:
    """One training step of ``setup`` on a batch through the task's loss hook; returns the loss (before the step).

    The batch is ``(xb, yb)``, or ``xb`` itself when ``yb`` is None (a dict or tuple batch).
    ``weight`` scales the loss that is differentiated and probed (a data-parallel rank's share
    of the global batch, :meth:`~layerwise.compare.parallel.Parallel.split`); the loss returned
    is the batch's own.
    """
    return batch_step(
        model,
        setup.optimizer,
        task.loss_on,
        xb if yb is None else (xb, yb),
        scheduler=setup.scheduler,
        weight=weight,
        closure=setup.wants_closure,
        precision=task.precision,
        clip_grad_norm=task.clip_grad_norm,
        accumulate=task.accumulate,
    )


def evaluate_setup(model: nn.Module, setup: Setup, split: Data, task: Task) -> dict[str, float]:
    """Evaluate ``model`` on ``split`` at the weights ``setup`` evaluates (``eval_mode``), then back to training."""
    if setup.eval_mode is not None:
        setup.eval_mode()
    try:
        return evaluate(model, split, task)
    finally:
        if setup.train_mode is not None:
            setup.train_mode()


def warm_up(task: Task, data: TaskData, steps: int = 10) -> None:
    """A few untimed training steps, so the first timed run does not pay for thread pools and caches.

    They go through the task's batches and loss hook, so a collate function that cannot batch the
    examples or a ``batch_loss`` that gives no scalar tensor fails here, before any run.
    """
    model = task.make_model()
    optimizer = make_optimizer(task, [{"params": [p for p in model.parameters() if p.requires_grad]}])
    if isinstance(data.train, tuple) and task.train_transform is None:  # tensors: the warm-up of old, no shuffle
        x, y = data.train
        indices = (torch.arange(s * task.batch_size, (s + 1) * task.batch_size) % len(y) for s in range(steps))
        batches = ((slice_batch(x, index), y[index]) for index in indices)
    else:
        seeded = seeded_batches_of(data.train, task.batch_size, seed=0, steps=steps, **loader_options(task))
        batches = (batch for *_, batch in seeded)
    for batch in batches:
        optimizer.zero_grad()
        task.loss_on(model, batch).backward()
        optimizer.step()


def eval_steps(total: int, points: int) -> set[int]:
    """``points`` evaluation steps spread evenly over ``total`` steps, the last at the end.

    Examples:
        >>> sorted(eval_steps(10, 4))
        [2, 5, 8, 10]
    """
    return {max(1, round(total * i / points)) for i in range(1, points + 1)}


def run_one(
    task: str | Task,
    method: str,
    settings: Mapping[str, Any] | None = None,
    *,
    data: TaskData | None = None,
    on_step: OnStep | None = None,
    parallel: Parallel | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """Train ``task`` with ``method`` once: :func:`run` of ``RunSpec(method, settings, **spec)``.

    Examples:
        >>> record = run_one("ellipse", "baseline", seed=1, steps=20, eval_points=1)  # doctest: +SKIP
    """
    described = RunSpec(method, dict(settings or {}), **spec)
    return run(resolve_task(task), described, data=data, on_step=on_step, parallel=parallel)


def run(
    task: Task,
    spec: RunSpec,
    *,
    data: TaskData | None = None,
    on_step: OnStep | None = None,
    parallel: Parallel | None = None,
    clock: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Train ``task`` as ``spec`` describes and return a JSON-ready record of the run.

    Args:
        data: the task's data (default: loaded, its quick slice with ``spec.quick``).
        on_step: ``on_step(step, total, loss)`` after every step (progress bars).
        parallel: this process's rank of a data-parallel run (:mod:`.parallel`), which every rank
            calls alike: each trains on its slice of every global batch and evaluates; the
            losses recorded are the global batch's. None: this process trains alone.
        clock: seconds, for the training time (a fake clock in tests; default: ``spec.clock``'s).
    """
    settings = resolve_settings(spec.method, spec.settings)
    epochs = _epochs(task, spec)
    data = data or task.load_data(None, spec.quick)
    train = split_examples(data.train, spec.train_size)
    per_epoch = steps_per_epoch(split_size(train), task.batch_size)
    total = epochs * per_epoch if spec.steps is None else spec.steps
    pace = None if spec.seconds is None else Pace(spec.seconds, total)
    model, setup = new_run(task, spec.method, settings, total, spec.policy, spec.seed, parallel)
    device = next((p.device.type for p in model.parameters()), "cpu")
    chosen, clock_name = clock_of(spec.clock, device)
    clock = clock or chosen
    if pace is not None and owns_lr(setup.optimizer):  # Hi-DLR, SecantLR: their schedules read the budget's share
        setup.optimizer.progress = pace.progress
    cache = _run_cache(model, setup, spec.method, split_size(train), parallel, task)
    forward = model if parallel is None else parallel.prepare(model)
    recorder = _Recorder(model, setup, task, data.test, total, spec.eval_points, on_step, parallel, pace, clock)
    monitor, writer = _monitor(setup.optimizer, spec)
    forward.train()
    if setup.train_mode is not None:
        setup.train_mode()
    step = _stepper(forward, setup, task, cache, parallel, pace)
    limit = total if pace is None else total * MAX_PACED
    hooks = {"before": recorder.before, "after": recorder.after, "clock": clock, **loader_options(task)}
    seeded_loop(train, task.batch_size, step, seed=spec.seed, steps=limit, **hooks)
    total = recorder.steps
    record = {
        "task": task.name,
        "method": spec.method,
        "settings": dict(settings),
        "seed": spec.seed,
        "epochs": round(total / per_epoch, 4),
        "steps": total,
        "train_size": split_size(train),
        "test_examples": split_size(data.test),
        "policy": spec.policy,
        "metric": task.metric,
        "optimizer": optimizer_text(setup.optimizer),
        **recorder.record(task.metric, per_epoch),
        "param_norms": param_norms(setup.optimizer),
        "nproc": 1 if parallel is None else parallel.world,
        "engine": "single" if parallel is None else parallel.engine,
        **({} if pace is None else {"schedule_steps": pace.schedule_steps, "budget_s": pace.budget_s}),
        "clock": clock_name,
    }
    return _finish(record, setup.optimizer, cache, monitor, writer)


def _epochs(task: Task, spec: RunSpec) -> int:
    """The run's epochs (checked), and its ``steps`` checked."""
    epochs = spec.epochs or (task.quick_epochs if spec.quick else task.epochs)
    positive_int("epochs", epochs)
    if spec.steps is not None:
        positive_int("steps", spec.steps)
    return epochs


def _run_cache(
    model: nn.Module, setup: Setup, method: str, examples: int, parallel: Parallel | None, task: Task
) -> FrozenPrefixCache | None:
    """The run's prefix cache (:func:`attach_cache`), refused in a data-parallel run or on an augmented task."""
    if setup.cache is not None and parallel is not None:
        raise ValueError(f"{method}: {METHODS[method].not_parallel.get(parallel.engine, 'runs in one process')}")
    try:
        return attach_cache(model, setup, examples, task)
    except ValueError as err:
        raise ValueError(f"{method}: {err}") from None


def _monitor(optimizer: torch.optim.Optimizer, spec: RunSpec) -> tuple[LayerMonitor | None, Any]:
    """The run's telemetry (``spec.telemetry_every``) and its TensorBoard writer, each None when not asked for."""
    if spec.tensorboard is not None and spec.telemetry_every is None:
        raise ValueError("tensorboard: needs telemetry_every (what to log, how often)")
    writer = None
    if spec.tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(spec.tensorboard))
    if spec.telemetry_every is None:
        return None, writer
    return LayerMonitor(optimizer, every=spec.telemetry_every, writer=writer), writer


def _stepper(
    forward: nn.Module,
    setup: Setup,
    task: Task,
    cache: FrozenPrefixCache | None,
    parallel: Parallel | None,
    pace: Pace | None,
) -> Callable[[Batch], torch.Tensor]:
    """The timed step of a run: the batch's loss, weighted by this rank's share in a data-parallel run.

    Paced by the clock, the method's scheduler is not stepped here: the recorder steps it up to the
    budget's share after each step (:meth:`~layerwise.compare.budget.Pace.catch_up`) and times it
    as part of the step. What follows every optimizer step (DoG's averager) is an optimizer step
    hook, so it runs inside this step under either budget.
    """
    stepped = setup if pace is None else replace(setup, scheduler=None)

    def step(batch: Batch) -> torch.Tensor:
        data, weight = (batch.data, 1.0) if parallel is None else parallel.split(batch.data)
        with nullcontext() if cache is None else cache.batch(batch.index):
            loss = train_step(forward, stepped, task, data, None, weight)
        return loss if parallel is None else loss * weight

    return step


class _Recorder:
    """What a run records while it trains: losses, sampled LRs, when groups froze, evaluations."""

    def __init__(
        self,
        model: nn.Module,
        setup: Setup,
        task: Task,
        test: Data,
        total: int,
        eval_points: int,
        on_step: OnStep | None,
        parallel: Parallel | None,
        pace: Pace | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.model, self.setup, self.task, self.test = model, setup, task, test
        self.total, self.on_step, self.parallel, self.pace, self.clock = total, on_step, parallel, pace, clock
        self.evaluate_at = eval_steps(total, eval_points)
        self.marks = [i / eval_points for i in range(1, eval_points)]  # paced: the budget's shares to evaluate at
        self.steps = 0
        self.lr_every = max(1, total // LR_SAMPLES)
        self.lr: dict[str, list[float]] = {name: [] for name in group_lrs(setup.optimizer)}
        self.lr_steps: list[int] = []
        self.losses: list[float | None] = []
        self.curve: list[dict[str, float]] = []
        self.frozen_at: dict[str, int] = {}
        self.seconds, self.diverged_at = 0.0, None
        self.step_seconds: list[float] = []
        self.loads = [load_average()]

    def before(self, batch: Batch) -> None:
        """Untimed: every ``lr_every`` steps, each group's LR."""
        if batch.step % self.lr_every == 0:
            self.lr_steps.append(batch.step)
            for name, lr in group_lrs(self.setup.optimizer).items():
                self.lr[name].append(lr)

    def after(self, batch: Batch, loss: torch.Tensor, seconds: float) -> bool:
        """The step's loss, the groups it froze, progress, an evaluation when due; True once the run ends
        (its loss diverged, or, paced by the clock, its budget is spent)."""
        if self.parallel is not None and self.pace is not None:  # every rank keeps the slowest rank's pace
            seconds = self.parallel.slowest(seconds)
        if self.pace is not None:  # the schedules move to the budget's share, as a scheduler steps after a step
            self.pace.add(seconds)
            seconds += self._catch_up()
        self.seconds += seconds
        self.step_seconds.append(seconds)
        self.steps = done = batch.step + 1
        value = loss.item() if self.parallel is None else self.parallel.mean(loss)
        self.losses.append(value if math.isfinite(value) else None)
        if self.setup.freezer is not None:
            for name in set(self.setup.freezer.frozen) - set(self.frozen_at):
                self.frozen_at[name] = done
        if self.on_step is not None:
            self.on_step(done, self._expected(done), value)
        if not math.isfinite(value):
            self.diverged_at = done
            return True
        ending = self.pace is not None and self.pace.done()
        if ending or self._evaluation_due(done):
            self.loads.append(load_average())
            metrics = evaluate_setup(self.model, self.setup, self.test, self.task)
            self.curve.append({"step": done, "seconds": self.seconds, **{f"test_{k}": v for k, v in metrics.items()}})
        return ending

    def _catch_up(self) -> float:
        """Paced: the method's scheduler stepped to the budget's share, timed; its seconds charged to the step.

        Every rank of a data-parallel run keeps one pace, so each steps the scheduler alike and charges
        the slowest rank's seconds (an all-reduce only when the scheduler was stepped).
        """
        assert self.pace is not None
        if self.setup.scheduler is None:
            return 0.0
        stepped = self.pace.stepped
        seconds = self.pace.catch_up(self.setup.scheduler, self.clock)
        if self.pace.stepped == stepped:
            return 0.0
        if self.parallel is not None:
            seconds = self.parallel.slowest(seconds)
        self.pace.charge(seconds)
        return seconds

    def _evaluation_due(self, done: int) -> bool:
        """At evenly spaced steps; paced by the clock, once the budget's share passes the next mark."""
        if self.pace is None:
            return done in self.evaluate_at
        passed = [mark for mark in self.marks if self.pace.progress() >= mark]
        self.marks = self.marks[len(passed) :]
        return bool(passed)

    def _expected(self, done: int) -> int:
        """The run's length as known now: its steps, or, paced, the steps its pace so far predicts."""
        if self.pace is None or self.pace.spent <= 0:
            return self.total
        return max(done, round(done / self.pace.progress()))

    def record(self, metric: str, per_epoch: int) -> dict[str, Any]:
        """The record's fields from what was recorded (the final train loss: the last tenth of an epoch's mean)."""
        final = self.curve[-1] if self.curve and self.diverged_at is None else {}
        tail = [v if v is not None else math.nan for v in self.losses[-max(1, per_epoch // 10) :]]
        loads = [*self.loads, load_average()]
        known = [load for load in loads if load is not None]
        return {
            "load": {
                "start": loads[0],
                "end": loads[-1],
                "mean": statistics.fmean(known) if known else None,
                "cpus": os.cpu_count(),
            },
            "step_s": _spread(self.step_seconds),
            "groups": list(self.lr),
            "wall_clock_s": self.seconds,
            "test_metric": _finite_or_none(final.get(f"test_{metric}")),
            "test_loss": _finite_or_none(final.get("test_loss")),
            "final_train_loss": _finite_or_none(sum(tail) / len(tail)),
            "diverged_at": self.diverged_at,
            "curve": self.curve,
            "train_loss": self.losses,
            "lr_steps": self.lr_steps,
            "lr": self.lr,
            "frozen_at": self.frozen_at,
            **({} if self.setup.records is None else dict(self.setup.records())),
        }


def _finish(
    record: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    cache: FrozenPrefixCache | None,
    monitor: LayerMonitor | None,
    writer: Any,
) -> dict[str, Any]:
    """Add what the optimizer, the cache and the telemetry recorded to ``record``, then detach them."""
    if owns_lr(optimizer):  # Hi-DLR, SecantLR: the LRs it found and why it kept or rejected them
        record["found_lr_stats"] = dict(optimizer.stats)
    if cache is not None:
        record["cache"] = {**cache.stats, "boundary": cache.boundary}
        cache.remove()
    if monitor is not None:
        monitor.remove()
        record["telemetry"] = monitor.to_dict()
    if writer is not None:
        writer.close()
    return record
