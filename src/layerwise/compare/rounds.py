"""A comparison's rounds of runs: which are due, how long each trains, training them (here or on an
executor), storing them, and the next round under ``--seeds auto``.

A round's seed counts (``counts``: each variant's label -> its seeds so far) start at the request's
``seeds.start`` for every variant; :func:`plan_round` gives an undecided method one more.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..tasks import TaskData
from ..tasks.base import split_size
from ..training import progress_bar, steps_per_epoch
from .executors import Executor, Job, TaskRef, run_jobs
from .request import Request, Variant
from .runner import RunSpec
from .store import RunStore
from .verdicts import AA_LABEL

__all__ = ["Run", "collect_outcomes", "due_runs", "first_round", "next_round", "plan_round", "train_due", "train_on"]

Run = tuple[Variant, int]
"""One run of a comparison: a variant and its seed."""

Unsaved = dict[str, dict[str, Any]]
"""The finished runs the store could not keep, by run key (the report reads them from here)."""


def first_round(request: Request) -> dict[str, int]:
    """Every variant's seeds in the first round: the request's ``seeds.start``."""
    return {variant.label: request.seeds.start for variant in request.variants}


def runs(request: Request, counts: Mapping[str, int]) -> list[Run]:
    """Every ``(variant, seed)`` of the comparison, seed-major.

    Seed 0 of every method, then seed 1, ...: a slow phase of the machine spreads over the
    methods instead of landing on whole methods, and each finished seed is a paired round. The
    baseline goes first in each seed (its training time is the seed's budget).
    """
    ordered = sorted(request.variants, key=lambda variant: not variant.reference)
    return [(v, seed) for seed in range(max(counts.values())) for v in ordered if seed < counts[v.label]]


def due_runs(store: RunStore, request: Request, counts: Mapping[str, int], retime: str | None) -> list[Run]:
    """The runs still to train: not finished, or (``retime``: this invocation's id) timed by another invocation."""

    def due(variant: Variant, seed: int) -> bool:
        record = store.finished(variant.run_key(seed))
        if record is None:
            return True
        return retime is not None and record.get("timing", {}).get("invocation") != retime

    return [run for run in runs(request, counts) if due(*run)]


def plan_round(
    rows: Sequence[Mapping[str, Any]], seeds: Mapping[str, int], baseline: str, most: int, room: int | None = None
) -> dict[str, int]:
    """The next round under ``--seeds auto``: each label's new seed count, for the methods that get one.

    A seed goes to every method with an open question below ``most`` seeds, and to the baseline
    whenever a method would pass it; a method whose questions are all decided (claimed, stopped for
    futility, or at ``most``) gets none. ``room``: the runs the cap leaves (None: no cap); when the
    round does not fit, the methods nearest a decision (the highest chance of one by ``most`` seeds
    among their open questions) go first. Empty: no round.
    """
    growing = sorted(
        (row for row in rows if row["open"] and row["method"] != AA_LABEL and seeds[row["method"]] < most),
        key=_chance_of_decision,
        reverse=True,
    )
    labels = [row["method"] for row in growing]
    while labels:
        plan = {label: seeds[label] + 1 for label in labels}
        passed = max(plan.values()) > seeds[baseline]
        if room is None or len(plan) + passed <= room:
            return {**plan, **({baseline: seeds[baseline] + 1} if passed else {})}
        labels.pop()
    return {}


def _chance_of_decision(row: Mapping[str, Any]) -> float:
    """The highest chance of a decision by the seed cap among a row's open questions (0 when unknown)."""
    chances = [((row["tests"] or {}).get(q, {}).get("decision") or {}).get("power") for q in row["open"]]
    return max((c for c in chances if c is not None), default=0.0)


def next_round(rows: Sequence[Mapping[str, Any]], request: Request, counts: Mapping[str, int]) -> dict[str, int]:
    """The next round's seed counts (:func:`plan_round`, from this round's ``rows``) within the runs
    ``--max-runs`` leaves."""
    most, max_runs = request.seeds.most, request.judging.max_runs
    assert most is not None
    room = None if max_runs is None else max_runs - sum(counts.values())
    return plan_round(rows, counts, request.baseline.label, most, room)


def train_due(
    store: RunStore,
    request: Request,
    todo: Sequence[Run],
    run: Callable[..., dict[str, Any]],
    data: TaskData | None,
    invocation: dict[str, Any],
) -> Unsaved:
    """Train the due runs with ``run`` (``run_one`` or a group's), storing each; the finished runs not stored."""
    task, progress = request.task, request.options.progress
    shared = {**_shared(request), "data": data}
    unsaved: Unsaved = {}
    with progress_bar(len(todo), f"compare {task.name}", progress, unit="run", leave=True) as runs_bar:
        for done, (variant, seed) in enumerate(todo):
            key = variant.run_key(seed)
            started = time.perf_counter()
            with progress_bar(0, f"{variant.label} seed {seed}", progress) as steps_bar:
                try:
                    budget = _run_budget(store, request, variant, seed, data, unsaved)
                    record = run(
                        task,
                        variant.method,
                        variant.settings,
                        seed=seed,
                        tensorboard=_logs(request, variant, seed, request.out),
                        on_step=_step_progress(steps_bar),
                        **budget.lengths(),
                        **shared,
                    )
                except Exception:
                    store.fail(key, variant.method, seed, traceback.format_exc())
                else:
                    record.update(label=variant.label, timing=invocation, budget=budget.recorded(record))
                    _save(store, key, record, unsaved, f"{variant.label} seed {seed}")
                    if done == 0 and progress and len(todo) > 1:
                        say(_estimate_text(record, time.perf_counter() - started, len(todo) - 1, request))
            if runs_bar is not None:
                runs_bar.update(1)
    return unsaved


def train_on(
    executor: Executor,
    store: RunStore,
    request: Request,
    todo: Sequence[Run],
    loaded: TaskData | None,
    invocation: dict[str, Any],
) -> Unsaved:
    """Train the due runs on ``executor``, all at once (under a time budget, the baselines first: their
    times are the seeds' budgets), storing each as it comes back; the finished runs not stored.
    ``loaded``: the task's data here (each worker loads its own, unless the request gives the data)."""
    task, config = request.task, request.config
    shared = _shared(request)
    ref = TaskRef.of(task, config.quick, config.test_size)
    timed = config.paced and config.budget_seconds is None
    stages = [[r for r in todo if r[0].reference], [r for r in todo if not r[0].reference]]
    unsaved: Unsaved = {}
    with progress_bar(len(todo), f"compare {task.name} ({executor.name})", request.options.progress, unit="run") as bar:
        for stage in stages if timed else [list(todo)]:
            jobs, notes = [], {}
            for variant, seed in stage:
                key = variant.run_key(seed)
                try:
                    budget = _run_budget(store, request, variant, seed, loaded, unsaved)
                except NoBudget as missing:
                    store.fail(key, variant.method, seed, str(missing))
                    if bar is not None:
                        bar.update(1)
                    continue
                logs = _logs(request, variant, seed, request.out.resolve())
                lengths = budget.lengths()
                spec = RunSpec(variant.method, variant.settings, seed=seed, tensorboard=logs, **lengths, **shared)
                name = f"{variant.label} seed {seed}"
                jobs.append(Job.of(key, name, spec, ref, executor.cpus_per_run, request.options.data))
                notes[key] = variant.label, budget
            for job, outcome in run_jobs(executor, jobs, request.out, say):
                if outcome.record is None:
                    store.fail(job.key, job.spec.method, job.spec.seed, outcome.error or "no record")
                else:
                    label, budget = notes[job.key]
                    outcome.record.update(label=label, timing=invocation, budget=budget.recorded(outcome.record))
                    _save(store, job.key, outcome.record, unsaved, job.name)
                if bar is not None:
                    bar.update(1)
    return unsaved


def collect_outcomes(
    store: RunStore, request: Request, counts: Mapping[str, int], unsaved: Mapping[str, dict[str, Any]]
) -> dict[str, dict[str, list]]:
    """Every label's finished records (each also written to ``out/runs``) and the errors of the others."""
    outcomes: dict[str, dict[str, list]] = {v.label: {"records": [], "errors": []} for v in request.variants}
    runs_dir = request.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for variant, seed in runs(request, counts):
        key = variant.run_key(seed)
        record = unsaved.get(key) or store.finished(key)
        if record is not None:
            outcomes[variant.label]["records"].append(record)
            write_atomically(runs_dir / f"{_slug(variant.label)}-seed{seed}.json", json.dumps(record))
        else:
            outcomes[variant.label]["errors"].append(store.error(key) or "not run")
    return outcomes


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def say(text: str) -> None:
    """A line for the user, between progress bars."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(text, file=sys.stderr)
    else:
        tqdm.write(text, file=sys.stderr)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def _logs(request: Request, variant: Variant, seed: int, out: Path) -> Path | None:
    """Where a run logs its telemetry for TensorBoard (None: no ``--tensorboard``)."""
    return out / "tensorboard" / f"{_slug(variant.label)}-seed{seed}" if request.options.tensorboard else None


def _estimate_text(record: dict[str, Any], seconds: float, left: int, request: Request) -> str:
    """After the first run: its training time (the budget, under a time budget) and the time the rest will take."""
    budget = "the budget of every run" if record.get("budget", {}).get("reference") else "training"
    return (
        f"{record['method']} seed {record['seed']}: {record['wall_clock_s']:.1f} s of {budget}, "
        f"{seconds:.0f} s with its {request.config.eval_points} evaluations; {left} run(s) left, about "
        f"{left * seconds / 60:.1f} min"
    )


class NoBudget(RuntimeError):
    """A paced run whose seed's baseline has no finished run: its budget, that run's time, is unknown."""


@dataclass(frozen=True)
class RunBudget:
    """How long one run trains (``steps``, ``seconds``: what the runner takes; None: the task's epochs, or
    no clock) and how its record's ``budget`` note says it was set."""

    note: Mapping[str, Any]
    steps: int | None = None
    seconds: float | None = None

    def lengths(self) -> dict[str, Any]:
        """The runner's keyword arguments for this length."""
        given = {"steps": self.steps, "seconds": self.seconds}
        return {name: value for name, value in given.items() if value is not None}

    def recorded(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A finished run's ``budget`` note (a paced run's seconds are its record's ``budget_s``); the
        baseline's reference run gets its own time, its seed's budget."""
        return {**self.note, "seconds": record["wall_clock_s"]} if self.note.get("reference") else dict(self.note)


def _shared(request: Request) -> dict[str, Any]:
    """What every run of the comparison shares (the data aside: ``data``, given to the runs here)."""
    config = request.config
    return {
        "epochs": request.epochs,
        "train_size": request.train_size,
        "policy": config.policy,
        "quick": config.quick,
        "eval_points": config.eval_points,
        "telemetry_every": config.telemetry_every,
        "clock": config.clock,
    }


def _run_budget(
    store: RunStore,
    request: Request,
    variant: Variant,
    seed: int,
    data: TaskData | None,
    unsaved: Mapping[str, dict[str, Any]],
) -> RunBudget:
    """How long one run trains, and its record's ``budget`` note; :class:`NoBudget` says why it has none.

    Under ``budget="time"`` every run but the baseline's reference run stops by its clock at its
    seed's budget (``seconds``) with schedules built for the baseline's ``steps``; the reference run
    (``budget_seconds`` not given) trains the task's epochs, and its training time is the budget.
    """
    config = request.config
    if not config.paced:
        return RunBudget({"mode": config.budget})
    assert data is not None  # loaded before any run is due
    n_train = min(split_size(data.train), request.train_size or split_size(data.train))
    steps = request.epochs * steps_per_epoch(n_train, request.task.batch_size)
    if config.budget_seconds is not None:
        return RunBudget({"mode": "time", "source": "given"}, steps, float(config.budget_seconds))
    if variant.reference:
        return RunBudget({"mode": "time", "source": "baseline", "reference": True, "schedule_steps": steps})
    reference_key = request.baseline.run_key(seed)
    reference = unsaved.get(reference_key) or store.finished(reference_key)
    if reference is None:
        raise NoBudget(
            f"no budget: the baseline's seed {seed} has no finished run, and its training time is this run's budget"
        )
    return RunBudget({"mode": "time", "source": "baseline"}, steps, reference["wall_clock_s"])


def _step_progress(bar: Any) -> Callable[[int, int, float], None]:
    """``on_step`` for a run's progress bar (None: no bar)."""

    def on_step(step: int, total: int, loss: float) -> None:
        if bar is not None:
            bar.total = total
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{loss:.3g}", refresh=False)

    return on_step


def _save(store: RunStore, key: str, record: dict[str, Any], unsaved: Unsaved, name: str) -> None:
    """Store a finished run; one that cannot be stored is kept in ``unsaved`` for the report, and said so."""
    try:
        store.save(key, record)
    except (OSError, sqlite3.Error) as err:
        unsaved[key] = record
        warnings.warn(f"--out: could not store the finished run {name}: {err}", stacklevel=4)
