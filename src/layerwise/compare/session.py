"""One comparison: train its runs (resuming from the run store), then write the report.

With ``budget="time"`` (the default) every method trains for the baseline's training wall-clock on
the same seed (or ``budget_seconds``): the baseline of each seed trains first, the task's epochs,
and every other run of that seed stops by its own clock at the baseline's training time, its
schedules following its share of that time (:mod:`.budget`). With ``budget="steps"`` every method
trains the task's epochs.

Examples:
    >>> from layerwise.compare.session import CompareConfig, compare_variants
    >>> config = CompareConfig(quick=True, budget="time")
    >>> result = compare_variants("fashion-mnist", [("baseline", "baseline", {})], config=config)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sqlite3
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import recipes
from .._checks import finite_nonneg, one_of, positive_int
from ..groups import Partition
from ..tasks import Task, TaskData, resolve_task
from ..tasks.base import split_size
from ..training import progress_bar, steps_per_epoch
from .budget import CLOCKS
from .engines import group_for
from .executors import Executor, Job, TaskRef, comparison_data, executor_of, run_jobs
from .methods import (
    METHODS,
    OPTIMIZER_USES,
    Build,
    check_methods,
    default_methods,
    method_snippet,
    resolve_settings,
)
from .parallel import check_parallel
from .report import (
    AA_LABEL,
    SMOKE,
    answer,
    markdown_table,
    plot_all,
    plot_forest,
    smoke_rows,
    summarize,
    write_html,
)
from .runner import RunSpec, run_one, warm_up
from .store import RunStore, locked
from .targets import check_margin, check_target, margin_of, scale_of

__all__ = [
    "BUDGETS",
    "CompareConfig",
    "Variant",
    "check_executor",
    "check_max_runs",
    "check_request",
    "compare",
    "compare_variants",
    "fingerprint",
    "parse_overrides",
    "plan_round",
    "write_atomically",
]

Variant = tuple[str, str, dict[str, Any]]
"""(label, method name, settings overrides)."""

BUDGETS = ("steps", "time")
"""``steps``: every method trains the task's epochs; ``time``: every method trains for the same wall-clock."""


def _positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    if not (optional and value is None):
        positive_int(name, value)


@dataclass(frozen=True)
class CompareConfig:
    """Everything that decides which runs a comparison makes (the run store is keyed by it).

    Attributes:
        epochs: epochs of the baseline (default: the task's; its quick epochs with ``quick``).
        train_size: train on the first this many examples (default: the task's ``train_size``).
        policy: the global LR policy every scheduled method shares.
        quick: the task's quick data slice (its ``quick_train_size`` and ``quick_test_size``
            examples), its quick epochs, 3 evaluations per run unless ``eval_points`` is given, and a
            2-step warm-up.
        eval_points: test evaluations per run, evenly spaced (training time excludes them; default 10).
        test_size: evaluate on the first this many test examples (None: all).
        telemetry_every: record :class:`~layerwise.LayerMonitor` telemetry every this many steps.
        budget: ``"time"`` (equal wall-clock) or ``"steps"`` (equal epochs).
        budget_seconds: with ``budget="time"``: the budget itself, for every run the baseline's
            included (default: the baseline's training time on each seed).
        nproc: train each run on this many processes, data-parallel (None or 1: this process alone;
            under torchrun: its world size). See :mod:`.engines`.
        fsdp: shard the model with FSDP2 instead of DDP (needs ``nproc`` or torchrun).
        clock: what times every run, the budget and the curves: ``"wall"`` (elapsed seconds) or
            ``"process"`` (the training process's CPU seconds; on CUDA, CUDA events), which other
            processes on the machine do not move (:func:`~layerwise.compare.budget.clock_of`).
    """

    epochs: int | None = None
    train_size: int | None = None
    policy: str = "cosine"
    quick: bool = False
    eval_points: int | None = None
    test_size: int | None = 5000
    telemetry_every: int | None = None
    budget: Literal["steps", "time"] = "time"
    budget_seconds: float | None = None
    nproc: int | None = None
    fsdp: bool = False
    clock: Literal["wall", "process"] = "wall"

    def __post_init__(self) -> None:
        if self.eval_points is None:
            object.__setattr__(self, "eval_points", 3 if self.quick else 10)
        one_of("--budget", self.budget, BUDGETS)
        one_of("--clock", self.clock, CLOCKS)
        one_of("--policy", self.policy, tuple(recipes.POLICIES))
        seconds = self.budget_seconds
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
                raise ValueError(f"--budget-seconds: a finite number of seconds > 0, got {seconds!r}")
            if self.budget != "time":
                raise ValueError("--budget-seconds: only with --budget time")
        _positive_int("epochs", self.epochs, optional=True)
        _positive_int("train_size", self.train_size, optional=True)
        _positive_int("test_size", self.test_size, optional=True)
        _positive_int("telemetry_every", self.telemetry_every, optional=True)
        _positive_int("eval_points", self.eval_points)
        _positive_int("--nproc", self.nproc, optional=True)
        if not isinstance(self.fsdp, bool):
            raise TypeError(f"--fsdp: expected True or False, got {self.fsdp!r}")

    @classmethod
    def options(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def fingerprint() -> dict[str, Any]:
    """A new invocation's timing context: an id, the machine, and its load (1-minute average) now.

    Every run of one :func:`compare_variants` call carries the same fingerprint; the report flags
    speed-ups between runs of different calls (another time, perhaps another load).
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "invocation": uuid.uuid4().hex[:12],
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load": None if load is None else round(load, 2),
    }


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def _load_data(task: Task, config: CompareConfig) -> TaskData:
    """The task's data as a comparison uses it (:func:`~layerwise.compare.executors.comparison_data`)."""
    return comparison_data(task, config.quick, config.test_size)


def check_executor(executor: str | Executor | None, config: CompareConfig) -> Executor | None:
    """The executor of a comparison's runs (None: this process), connected and checked before any run is
    submitted: ValueError naming the flag. A data-parallel run (``--nproc``, ``--fsdp``, torchrun) trains here."""
    chosen = executor_of(executor)
    if chosen is None:
        return None
    nproc, engine = check_parallel(config.nproc, config.fsdp)
    if engine is not None or (nproc or 1) > 1:
        flag = "--fsdp" if config.fsdp else "--nproc"
        raise ValueError(
            f"{flag}: a data-parallel run trains on this machine's processes; with --executor {chosen.name} every "
            "run is one process (drop --nproc and --fsdp, or use --executor local)"
        )
    chosen.check()
    return chosen


AUTO_SEEDS = (3, 10)
"""``--seeds auto``: the seeds every method starts with, and the default most a method gets."""


def parse_seeds(seeds: int | str) -> tuple[int, int | None]:
    """``seeds`` as given: a count, or ``"auto"`` / ``"auto:MAX"``: 3 seeds, then one more per round to
    the baseline and every undecided method, at most MAX (default 10). Returns (start, MAX or None).

    >>> parse_seeds(3), parse_seeds("auto"), parse_seeds("auto:6")
    ((3, None), (3, 10), (3, 6))
    """
    if isinstance(seeds, str) and (seeds == "auto" or seeds.startswith("auto:")):
        most = seeds.partition(":")[2] or str(AUTO_SEEDS[1])
        if not most.isdigit() or int(most) < AUTO_SEEDS[0]:
            raise ValueError(f"--seeds: auto or auto:MAX with an integer MAX >= {AUTO_SEEDS[0]}, got {seeds!r}")
        return AUTO_SEEDS[0], int(most)
    if isinstance(seeds, str):
        if not seeds.isdigit():
            raise ValueError(f"--seeds: a count >= 1, auto, or auto:MAX, got {seeds!r}")
        seeds = int(seeds)
    positive_int("--seeds", seeds)
    return seeds, None


def check_max_runs(max_runs: int | None, seeds: int | str, labels: int) -> None:
    """``--max-runs``: a whole number, only with ``--seeds auto``, at least the first round's runs."""
    if max_runs is None:
        return
    if isinstance(max_runs, bool) or not isinstance(max_runs, int):
        raise ValueError(f"--max-runs: a whole number of runs, got {max_runs!r}")
    start, most = parse_seeds(seeds)
    if most is None:
        raise ValueError("--max-runs: only with --seeds auto (it caps the runs that added seeds may take)")
    if max_runs < start * labels:
        raise ValueError(
            f"--max-runs: at least one round, {start * labels} runs ({start} seeds of each of the {labels} methods, "
            f"the baseline included), got {max_runs}"
        )


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


def _check_minutes(max_minutes: float | None) -> None:
    valid = isinstance(max_minutes, (int, float)) and not isinstance(max_minutes, bool) and 0 < max_minutes < math.inf
    if max_minutes is not None and not valid:
        raise ValueError(f"--max-minutes: a finite number of minutes > 0, got {max_minutes!r}")


@dataclass(frozen=True)
class _Comparison:
    """One comparison's fixed context: what it trains, for how long, and where it writes."""

    task: Task
    config: CompareConfig
    resolved: list[Variant]
    seeds: int
    out: Path
    epochs: int
    train_size: int | None
    nproc: int | None
    engine: str | None
    progress: bool
    seed_counts: dict[str, int] = field(default_factory=dict)
    """Seeds of each label beyond ``seeds`` (``--seeds auto`` adds them to undecided methods)."""

    def seeds_of(self, label: str) -> int:
        return self.seed_counts.get(label, self.seeds)

    @property
    def baseline(self) -> str:
        """The label every method is judged against (and, under a time budget, timed by): ``baseline`` or the first."""
        labels = [label for label, _, _ in self.resolved]
        return "baseline" if "baseline" in labels else labels[0]

    @staticmethod
    def run_key(label: str, method: str, settings: Mapping[str, Any], seed: int) -> str:
        """A run's key in the store (the A/A twin of ``--aa`` apart from the baseline's runs)."""
        return RunStore.key(method, settings, seed) + ("|aa" if label == AA_LABEL else "")

    def keys(self) -> dict[str, str]:
        """Each label's variant key in the run store."""
        return {label: RunStore.variant_key(method, settings) for label, method, settings in self.resolved}

    def runs(self) -> list[tuple[str, str, dict[str, Any], int]]:
        """Every ``(label, method, settings, seed)`` of the comparison, seed-major.

        Seed 0 of every method, then seed 1, ...: a slow phase of the machine spreads over the
        methods instead of landing on whole methods, and each finished seed is a paired round. The
        baseline goes first in each seed (its training time is the seed's budget).
        """
        most = max([self.seeds, *self.seed_counts.values()])
        ordered = sorted(self.resolved, key=lambda variant: variant[0] != self.baseline)
        seeded = [(seed, variant) for seed in range(most) for variant in ordered]
        return [(label, m, s, seed) for seed, (label, m, s) in seeded if seed < self.seeds_of(label)]


def compare_variants(
    task: str | Task,
    variants: Sequence[Variant],
    *,
    config: CompareConfig | None = None,
    seeds: int = 1,
    out: str | Path = "runs/compare",
    target: float | None = None,
    target_tolerance: float | None = None,
    tensorboard: bool = False,
    progress: bool = True,
    title: str | None = None,
    data: TaskData | None = None,
    retime: bool = False,
    note: str = "",
    correction: bool = True,
    max_minutes: float | None = None,
    aa: bool = False,
    margin: float | None = None,
    max_runs: int | None = None,
    executor: str | Executor | None = None,
) -> dict[str, Any]:
    """Run every variant for ``seeds`` seeds (resuming from ``out``) and write the report there.

    Args:
        config: what decides the runs (:class:`CompareConfig`; default: its defaults).
        target: the metric value for "time to target" (default: the baseline's final mean minus
            ``target_tolerance``: accuracy points, or percent of a loss).
        tensorboard: log each run's telemetry under ``out/tensorboard`` (needs ``telemetry_every``).
        data: replaces the task's own data (``config.test_size`` does not apply to it).
        retime: rerun the finished runs timed by an earlier invocation, so every time in the report
            comes from this one.
        note: a sentence added to the report's description of the setting.
        correction: correct both questions of all the methods together by Holm's rule (False: each
            question tested at 5 % alone).
        seeds: a count, or ``"auto"`` / ``"auto:MAX"``: seeds added until every method is decided
            (:func:`parse_seeds`; the verdicts then use the group-sequential rule).
        max_minutes: with ``seeds="auto"``: add no seed round once this invocation has spent this
            many minutes.
        aa: also train the baseline a second time, as ``"baseline (A/A)"``: its verdict against the
            baseline is this machine's and this task's noise floor (outside the correction's family).
        margin: the accuracy question's equivalence margin, in accuracy points (a loss: its own units;
            default: 0.5 points, a loss none; :func:`~layerwise.compare.targets.margin_of`).
        max_runs: with ``seeds="auto"``: at most this many runs in all, every seed of every method
            (:func:`plan_round` fits the rounds to it; at least the first round's runs).
        executor: where the runs train: ``"local"`` or None (this process, one after another),
            ``"ray"``, ``"slurm"``, or an executor built with its resources
            (:func:`~layerwise.compare.executors.executor_of`); the runs of a round then train at once,
            under ``budget="time"`` the baselines' first.

    Returns ``{"rows", "table", "setting", "outcomes", "target", "paths"}``.
    """
    task = resolve_task(task)
    config = config or CompareConfig()
    start, most = parse_seeds(seeds)
    _check_minutes(max_minutes)
    check_margin(margin, task.metric)
    variants = [*variants, _twin(variants)] if aa else variants
    check_max_runs(max_runs, seeds, len(variants))
    resolved, model, partition = _checked_variants(task, variants, config, start, target, target_tolerance, tensorboard)
    nproc, engine = check_parallel(config.nproc, config.fsdp, task, [method for _, method, _ in variants])
    executor = check_executor(executor, config)
    group = group_for(config.nproc, config.fsdp)
    if group is not None and group.rank != 0:  # a torchrun follower: rank 0 sends every run
        group.follow(task, lambda: data if data is not None else _load_data(task, config))
        return {"follower": True, "rank": group.rank, "rows": [], "outcomes": {}, "unsaved": []}
    epochs = config.epochs or (task.quick_epochs if config.quick else task.epochs)
    train_size = config.train_size or (task.quick_train_size if config.quick else task.train_size)
    comparison = _Comparison(task, config, resolved, start, Path(out), epochs, train_size, nproc, engine, progress)
    judging = _Judging(target, target_tolerance, correction, most, margin, max_runs)
    store_key = _store_key(comparison, own_data=data is None)
    # one comparison per --out at a time; followers end with the group
    with group or nullcontext(), locked(comparison.out), RunStore(comparison.out / "runs.sqlite", store_key) as store:
        invocation = fingerprint()
        if engine is not None:
            invocation["nproc"], invocation["engine"] = nproc, engine
        started, unsaved, warm, own = time.perf_counter(), {}, False, data
        run = run_one if group is None else group.run_one
        while True:  # one round; with --seeds auto, again while methods are undecided
            todo = _due_runs(store, comparison, invocation["invocation"] if retime else None)
            if todo and not warm:
                data = data if data is not None else _load_data(task, config)
                if executor is None:  # the workers warm up themselves
                    warm_up(task, data, 2 if config.quick else 10)
                warm = True
            if executor is None:
                unsaved |= _train_due(store, comparison, todo, run, data, invocation, tensorboard)
            else:
                unsaved |= _train_on(executor, store, comparison, todo, (data, own), invocation, tensorboard)
            outcomes = _collect_outcomes(store, comparison, unsaved)
            summary = _summary(outcomes, comparison, judging)  # the round's verdicts: the plan and the report read them
            spent = (time.perf_counter() - started) / 60
            if most is None or (max_minutes is not None and spent >= max_minutes):
                break
            plan = _next_round(summary["rows"], comparison, judging)
            if not plan:
                break
            comparison = replace(comparison, seed_counts={**comparison.seed_counts, **plan})
    report = _write_report(comparison, model, partition, outcomes, summary, judging, title, note)
    return {**report, "outcomes": outcomes, "unsaved": sorted(unsaved)}


def _twin(variants: Sequence[Variant]) -> Variant:
    """``--aa``: the baseline variant (``baseline``, else the first) again, under :data:`AA_LABEL`."""
    _, method, settings = next((v for v in variants if v[0] == "baseline"), variants[0])
    return AA_LABEL, method, settings


@dataclass(frozen=True)
class _Judging:
    """How the verdicts are reached: the target, the correction, the seeds' maximum under ``--seeds auto``,
    the equivalence margin."""

    target: float | None
    target_tolerance: float | None
    correction: bool
    most: int | None
    margin: float | None = None
    max_runs: int | None = None


def _summary(outcomes: dict[str, dict[str, list]], comparison: _Comparison, judging: _Judging) -> dict[str, Any]:
    return summarize(
        outcomes,
        baseline=comparison.baseline,
        metric=comparison.task.metric,
        target=judging.target,
        target_tolerance=judging.target_tolerance,
        budget=comparison.config.budget,
        correction=judging.correction,
        sequential=judging.most,
        margin=judging.margin,
    )


def _seed_counts(comparison: _Comparison) -> dict[str, int]:
    return {label: comparison.seeds_of(label) for label, _, _ in comparison.resolved}


def _next_round(rows: Sequence[Mapping[str, Any]], comparison: _Comparison, judging: _Judging) -> dict[str, int]:
    """The next round's seed counts (:func:`plan_round`, from this round's ``rows``) within the runs
    ``--max-runs`` leaves."""
    assert judging.most is not None
    seeds = _seed_counts(comparison)
    room = None if judging.max_runs is None else judging.max_runs - sum(seeds.values())
    return plan_round(rows, seeds, comparison.baseline, judging.most, room)


def _race_text(comparison: _Comparison, judging: _Judging, rows: Sequence[Mapping[str, Any]]) -> str:
    """Under ``--seeds auto``: the runs made against every method to the seed cap, and what stays open."""
    assert judging.most is not None
    seeds = _seed_counts(comparison)
    full = sum(judging.most if label != AA_LABEL else n for label, n in seeds.items())
    runs = sum(seeds.values())
    text = (
        f"- Seeds: {runs} runs, of the {full} that every method to {judging.most} seeds would take: "
        f"the stops saved {full - runs}."
    )
    still = [row["method"] for row in rows if row["open"] and row["method"] != AA_LABEL]
    if still:
        capped = judging.max_runs is not None and any(seeds[label] < judging.most for label in still)
        where = f"at the cap (--max-runs {judging.max_runs})" if capped else f"at {judging.most} seeds"
        text += f" Open {where}: {', '.join(still)}."
    return text


def _checked_variants(
    task: Task,
    variants: Sequence[Variant],
    config: CompareConfig,
    seeds: int,
    target: float | None,
    target_tolerance: float | None,
    tensorboard: bool,
) -> tuple[list[Variant], nn.Module, Partition]:
    """The variants with their resolved settings, checked with every option; a fresh model and its partition."""
    positive_int("seeds", seeds)
    labels = [label for label, _, _ in variants]
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"methods: need distinct, non-empty labels, got {labels}")
    check_target(target, task.metric)
    if target_tolerance is not None:
        finite_nonneg("--target-tolerance", target_tolerance)
    if tensorboard and config.telemetry_every is None:
        raise ValueError("tensorboard: needs telemetry_every (what to log, how often)")
    check_methods(task, [method for _, method, _ in variants])
    resolved = [(label, method, resolve_settings(method, overrides)) for label, method, overrides in variants]
    model = task.make_model()
    partition = task.partition_of(model)
    check_methods(task, [method for _, method, _ in variants], partition)
    return resolved, model, partition


def _store_key(comparison: _Comparison, *, own_data: bool) -> dict[str, Any]:
    """What the run store is keyed by: the task and its settings (with its file's sha256), the
    configuration as it applies, the parallel engine."""
    config, engine = comparison.config, comparison.engine
    left_out = ("test_size", "train_size", "epochs", "nproc", "fsdp")
    key = {
        "task": comparison.task.name,
        "task_settings": comparison.task.settings(),
        **{k: v for k, v in asdict(config).items() if k not in left_out},
        "epochs": comparison.epochs,
        "train_size": comparison.train_size,
        **({"test_size": config.test_size} if own_data else {}),
        **({"parallel": {"nproc": comparison.nproc, "engine": engine}} if engine is not None else {}),
    }
    if key["telemetry_every"] is None:
        del key["telemetry_every"]
    if key["clock"] == "wall":  # the clock of every store written before there was a choice
        del key["clock"]
    return key


def _due_runs(store: RunStore, comparison: _Comparison, retime: str | None) -> list[tuple[str, str, dict, int]]:
    """The runs still to train: not finished, or (``retime``: this invocation's id) timed by another invocation."""

    def due(label: str, method: str, settings: dict[str, Any], seed: int) -> bool:
        record = store.finished(comparison.run_key(label, method, settings, seed))
        if record is None:
            return True
        return retime is not None and record.get("timing", {}).get("invocation") != retime

    return [run for run in comparison.runs() if due(*run)]


def _train_due(
    store: RunStore,
    comparison: _Comparison,
    todo: Sequence[tuple[str, str, dict[str, Any], int]],
    run: Callable[..., dict[str, Any]],
    data: TaskData | None,
    invocation: dict[str, Any],
    tensorboard: bool,
) -> dict[str, dict[str, Any]]:
    """Train the due runs with ``run`` (``run_one`` or a group's), storing each; the finished runs not stored."""
    task, config = comparison.task, comparison.config
    shared = {**_shared(comparison), "data": data}
    unsaved: dict[str, dict[str, Any]] = {}
    with progress_bar(len(todo), f"compare {task.name}", comparison.progress, unit="run", leave=True) as runs_bar:
        for done, (label, method, settings, seed) in enumerate(todo):
            key = comparison.run_key(label, method, settings, seed)
            logs = comparison.out / "tensorboard" / f"{_slug(label)}-seed{seed}" if tensorboard else None
            budget = _run_budget(store, comparison, label, seed, data, unsaved)
            started = time.perf_counter()
            with progress_bar(0, f"{label} seed {seed}", comparison.progress) as steps_bar:
                try:
                    if isinstance(budget, str):
                        raise RuntimeError(budget)
                    record = run(
                        task,
                        method,
                        settings,
                        seed=seed,
                        tensorboard=logs,
                        on_step=_step_progress(steps_bar),
                        **{k: budget[k] for k in ("steps", "seconds") if k in budget},
                        **shared,
                    )
                except Exception:
                    store.fail(key, method, seed, traceback.format_exc())
                else:
                    record.update(label=label, timing=invocation, budget=_budget_note(budget, record))
                    _save(store, key, record, unsaved, f"{label} seed {seed}")
                    if done == 0 and comparison.progress and len(todo) > 1:
                        _say(_estimate_text(record, time.perf_counter() - started, len(todo) - 1, config))
            if runs_bar is not None:
                runs_bar.update(1)
    return unsaved


def _train_on(
    executor: Executor,
    store: RunStore,
    comparison: _Comparison,
    todo: Sequence[tuple[str, str, dict[str, Any], int]],
    data: tuple[TaskData, TaskData | None],
    invocation: dict[str, Any],
    tensorboard: bool,
) -> dict[str, dict[str, Any]]:
    """Train the due runs on ``executor``, all at once (under a time budget, the baselines first: their
    times are the seeds' budgets), storing each as it comes back; the finished runs not stored.
    ``data``: the task's data here, and the comparison's own (None: each worker loads the task's)."""
    task, config = comparison.task, comparison.config
    loaded, own = data
    shared = _shared(comparison)
    ref = TaskRef.of(task, config.quick, config.test_size)
    timed = config.budget == "time" and config.budget_seconds is None
    stages = [[r for r in todo if r[0] == comparison.baseline], [r for r in todo if r[0] != comparison.baseline]]
    unsaved: dict[str, dict[str, Any]] = {}
    with progress_bar(len(todo), f"compare {task.name} ({executor.name})", comparison.progress, unit="run") as bar:
        for stage in stages if timed else [list(todo)]:
            jobs, notes = [], {}
            for label, method, settings, seed in stage:
                key = comparison.run_key(label, method, settings, seed)
                budget = _run_budget(store, comparison, label, seed, loaded, unsaved)
                if isinstance(budget, str):
                    store.fail(key, method, seed, budget)
                    if bar is not None:
                        bar.update(1)
                    continue
                logs = comparison.out.resolve() / "tensorboard" / f"{_slug(label)}-seed{seed}" if tensorboard else None
                lengths = {k: budget[k] for k in ("steps", "seconds") if k in budget}
                spec = RunSpec(method, settings, seed=seed, tensorboard=logs, **lengths, **shared)
                jobs.append(Job.of(key, f"{label} seed {seed}", spec, ref, executor.cpus_per_run, own))
                notes[key] = label, budget
            for job, outcome in run_jobs(executor, jobs, comparison.out, _say):
                if outcome.record is None:
                    store.fail(job.key, job.spec.method, job.spec.seed, outcome.error or "no record")
                else:
                    label, budget = notes[job.key]
                    outcome.record.update(label=label, timing=invocation, budget=_budget_note(budget, outcome.record))
                    _save(store, job.key, outcome.record, unsaved, job.name)
                if bar is not None:
                    bar.update(1)
    return unsaved


def _budget_note(budget: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """A finished run's ``budget`` note: how its length was set, without the steps and seconds it was
    given (a paced run's seconds are its record's ``budget_s``); the baseline's reference run gets its own
    time, its seed's budget."""
    note = {k: v for k, v in budget.items() if k not in ("steps", "seconds")}
    return {**note, "seconds": record["wall_clock_s"]} if note.get("reference") else note


def _shared(comparison: _Comparison) -> dict[str, Any]:
    """What every run of the comparison shares (the data aside: ``data``, given to the runs here)."""
    config = comparison.config
    return {
        "epochs": comparison.epochs,
        "train_size": comparison.train_size,
        "policy": config.policy,
        "quick": config.quick,
        "eval_points": config.eval_points,
        "telemetry_every": config.telemetry_every,
        "clock": config.clock,
    }


def _run_budget(
    store: RunStore,
    comparison: _Comparison,
    label: str,
    seed: int,
    data: TaskData | None,
    unsaved: Mapping[str, dict[str, Any]],
) -> dict[str, Any] | str:
    """How long one run trains, and its record's ``budget`` note; a string says why it has no budget.

    Under ``budget="time"`` every run but the baseline's reference run stops by its clock at its
    seed's budget (``seconds``) with schedules built for the baseline's ``steps``; the reference run
    (``budget_seconds`` not given) trains the task's epochs, and its training time is the budget.
    """
    config = comparison.config
    if config.budget != "time":
        return {"mode": config.budget}
    n_train = min(split_size(data.train), comparison.train_size or split_size(data.train))
    steps = comparison.epochs * steps_per_epoch(n_train, comparison.task.batch_size)
    if config.budget_seconds is not None:
        return {"mode": "time", "source": "given", "seconds": float(config.budget_seconds), "steps": steps}
    if label == comparison.baseline:
        return {"mode": "time", "source": "baseline", "reference": True, "schedule_steps": steps}
    _, method, settings = next(v for v in comparison.resolved if v[0] == comparison.baseline)
    reference_key = comparison.run_key(comparison.baseline, method, settings, seed)
    reference = unsaved.get(reference_key) or store.finished(reference_key)
    if reference is None:
        return f"no budget: the baseline's seed {seed} has no finished run, and its training time is this run's budget"
    return {"mode": "time", "source": "baseline", "seconds": reference["wall_clock_s"], "steps": steps}


def _step_progress(bar: Any) -> Callable[[int, int, float], None]:
    """``on_step`` for a run's progress bar (None: no bar)."""

    def on_step(step: int, total: int, loss: float) -> None:
        if bar is not None:
            bar.total = total
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{loss:.3g}", refresh=False)

    return on_step


def _save(store: RunStore, key: str, record: dict[str, Any], unsaved: dict[str, dict[str, Any]], name: str) -> None:
    """Store a finished run; one that cannot be stored is kept in ``unsaved`` for the report, and said so."""
    try:
        store.save(key, record)
    except (OSError, sqlite3.Error) as err:
        unsaved[key] = record
        warnings.warn(f"--out: could not store the finished run {name}: {err}", stacklevel=4)


def _collect_outcomes(
    store: RunStore, comparison: _Comparison, unsaved: Mapping[str, dict[str, Any]]
) -> dict[str, dict[str, list]]:
    """Every label's finished records (each also written to ``out/runs``) and the errors of the others."""
    outcomes: dict[str, dict[str, list]] = {label: {"records": [], "errors": []} for label, _, _ in comparison.resolved}
    runs_dir = comparison.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for label, method, settings, seed in comparison.runs():
        key = comparison.run_key(label, method, settings, seed)
        record = unsaved.get(key) or store.finished(key)
        if record is not None:
            outcomes[label]["records"].append(record)
            write_atomically(runs_dir / f"{_slug(label)}-seed{seed}.json", json.dumps(record))
        else:
            outcomes[label]["errors"].append(store.error(key) or "not run")
    return outcomes


def _write_report(
    comparison: _Comparison,
    model: nn.Module,
    partition: Partition,
    outcomes: dict[str, dict[str, list]],
    summary: Mapping[str, Any],
    judging: _Judging,
    title: str | None,
    note: str,
) -> dict[str, Any]:
    """``results.md`` (the answer first), the plots and ``report.html`` from the last round's ``summary``
    (:func:`~layerwise.compare.report.summarize`); the report's parts."""
    task, config, out = comparison.task, comparison.config, comparison.out
    rows, target_value = summary["rows"], summary["target"]
    rows = smoke_rows(rows) if config.quick else rows
    table = markdown_table(rows, task.metric, budget=config.budget)
    title = title or f"layerwise compare: {task.name}"
    verdicts = "" if config.quick else " " + _verdicts_text(rows, judging, task.metric)
    setting = _setting_text(comparison, outcomes, target_value) + verdicts
    setting += f" {note}" if note else ""
    snippets = _snippets(task, model, partition, comparison.resolved, rows, config.policy, _paced(comparison))
    answered = SMOKE if config.quick else answer(rows, task.metric, config.budget)
    if judging.most is not None and not config.quick:
        answered += "\n" + _race_text(comparison, judging, rows)
    (out / "results.md").write_text(
        f"# {title}\n\n{answered}\n\n{setting}\n\n{table}\n\n{_snippets_markdown(snippets)}"
    )
    margin = margin_of(task.metric, judging.margin)
    forest = None if config.quick else plot_forest(rows, task.metric, margin, out / "forest.png")
    plots = [*([forest] if forest else []), *plot_all(outcomes, task.metric, out, target=target_value)]
    html_path = write_html(
        out / "report.html",
        title,
        rows,
        task.metric,
        plots,
        setting,
        snippets=snippets,
        budget=config.budget,
        answer=answered,
    )
    return {
        "answer": answered,
        "rows": rows,
        "table": table,
        "setting": setting,
        "target": target_value,
        "snippets": snippets,
        "metric": task.metric,
        "budget": config.budget,
        "paths": {"markdown": out / "results.md", "html": html_path, "plots": plots, "runs": out / "runs"},
    }


def _verdicts_text(rows: Sequence[dict[str, Any]], judging: _Judging, metric: str) -> str:
    """How the verdicts were reached: pairing, equivalence, the correction over the table's questions,
    the sequential rule and its futility stop."""
    accuracy = {r["method"]: (r["tests"] or {}).get("accuracy") for r in rows}
    unpaired = [m for m, test in accuracy.items() if test and test["test"] == "welch" and test["diff"] is not None]
    judged = sum(r["tests"] is not None and r["method"] != AA_LABEL for r in rows)
    fallback = f" (Welch's unpaired test for {', '.join(unpaired)}, not judged: seeds differ)" if unpaired else ""
    margin = margin_of(metric, judging.margin)
    scale, unit = scale_of(metric)
    equivalence = f", equivalent when TOST puts it within ±{margin * scale:.2f} {unit}" if margin else ""
    corrected = (
        f"both questions of the {judged} methods corrected together by Holm's rule, so the chance of any false "
        "claim in the table is at most 5 %"
        if judging.correction
        else "no correction (--no-correction): each question at 5 % alone, so the chance of some false claim "
        "in the table grows with its size"
    )
    if judging.most is not None:
        corrected = (
            f"seeds added until decided (3 to {judging.most}), each question decided by the group-sequential "
            f"boundary for up to {judging.most} pairs and stopped once its chance of a decision by {judging.most} "
            f"seeds falls under 10 %; {corrected}"
        )
    return (
        f"Verdicts: seed s of every method paired with the baseline's seed s{fallback}; accuracy by the paired "
        f"t{equivalence}; speed by the paired t on log times (Wilcoxon's signed rank when a seed misses the target "
        f"or seeds are added); {corrected}; each verdict names the test that decided it, with that test's interval "
        "(docs/verdicts.md)."
    )


def _seeds_text(comparison: _Comparison) -> str:
    counts = {label: comparison.seeds_of(label) for label, _, _ in comparison.resolved}
    if len(set(counts.values())) == 1:
        return f"{comparison.seeds} seed(s)" if not comparison.seed_counts else f"{next(iter(counts.values()))} seeds"
    return "seeds per method: " + ", ".join(f"{label} {n}" for label, n in counts.items())


def _setting_text(comparison: _Comparison, outcomes: dict[str, dict[str, list]], target: float | None) -> str:
    """The report's description of the setting: data, optimizer, policy, seeds, budget, target, evaluations."""
    task, config = comparison.task, comparison.config
    budget_text = _budget_text(comparison, outcomes)
    if comparison.engine is not None:
        budget_text += " " + _parallel_text(comparison.nproc, comparison.engine, task.batch_size)
    used = next((r["train_size"] for o in outcomes.values() for r in o["records"]), comparison.train_size)
    tested = next((r["test_examples"] for o in outcomes.values() for r in o["records"]), "the")
    target_text = "no target (no finished baseline run)" if target is None else _target_text(task, target)
    own = sorted({str(settings["policy"]) for _, _, settings in comparison.resolved if settings.get("policy")})
    policy = f"global policy {config.policy}" + (f" unless a variant sets its own ({', '.join(own)})" if own else "")
    return (
        f"{task.description or task.name}. {used or 'all'} training examples, {tested} test examples, batch "
        f"{task.batch_size}, {task.optimizer_name} at LR {task.lr:g}, {policy}, {_seeds_text(comparison)}. "
        f"{_optimizers_text(comparison)}{budget_text} {target_text} Training time excludes the "
        f"{config.eval_points} evaluations per run."
    )


def _optimizers_text(comparison: _Comparison) -> str:
    """Which methods do not train with the task's optimizer, and what they do instead (empty: none)."""
    uses: dict[str, list[str]] = {}
    for label, method, _ in comparison.resolved:
        use = METHODS[method].optimizer_use
        if use != "task":
            uses.setdefault(use, []).append(label)
    return "".join(f"{', '.join(labels)}: {OPTIMIZER_USES[use]}. " for use, labels in uses.items())


def _say(text: str) -> None:
    """A line for the user, between progress bars."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(text, file=sys.stderr)
    else:
        tqdm.write(text, file=sys.stderr)


def _estimate_text(record: dict[str, Any], seconds: float, left: int, config: CompareConfig) -> str:
    """After the first run: its training time (the budget, under a time budget) and the time the rest will take."""
    budget = "the budget of every run" if record.get("budget", {}).get("reference") else "training"
    return (
        f"{record['method']} seed {record['seed']}: {record['wall_clock_s']:.1f} s of {budget}, "
        f"{seconds:.0f} s with its {config.eval_points} evaluations; {left} run(s) left, about "
        f"{left * seconds / 60:.1f} min"
    )


def _budget_text(comparison: _Comparison, outcomes: dict[str, dict[str, list]]) -> str:
    config, epochs = comparison.config, comparison.epochs
    if config.budget == "steps":
        return f"Equal steps: every method trains {epochs} epoch(s)."
    return _time_budget_text(comparison, outcomes) + _clock_text(config.clock)


def _clock_text(clock: str) -> str:
    """What timed the runs, when it is not the wall clock."""
    if clock == "wall":
        return ""
    return (
        " Timed by the process clock (--clock process): the training process's CPU seconds over all its threads "
        "(CUDA events on a GPU), which other processes on the machine do not move; every 'seconds' is on it."
    )


def _time_budget_text(comparison: _Comparison, outcomes: dict[str, dict[str, list]]) -> str:
    """The equal-time budget: given, or the baseline's training time on each seed."""
    config, epochs = comparison.config, comparison.epochs
    paced = (
        "stopping by its own clock at the step nearest the budget; its schedules (the LR policy, freeze times, "
        "Hi-DLR's schedule) follow its share of the budget, so a faster method takes more steps over the same "
        "schedules (docs/ARCHITECTURE.md, compare/budget.py)"
    )
    if config.budget_seconds is not None:
        return f"Equal wall-clock: every run, the baseline's included, trains for {config.budget_seconds:g} s, {paced}."
    budgets = [r["wall_clock_s"] for r in outcomes.get(comparison.baseline, {}).get("records", [])]
    measured = f" ({min(budgets):.1f}-{max(budgets):.1f} s over its seeds)" if budgets else ""
    return (
        f"Equal wall-clock: the baseline trains {epochs} epoch(s), and every other run of a seed trains for the "
        f"baseline's training time on that seed{measured}, {paced}; 'train s / budget' is over that time."
    )


def _parallel_text(nproc: int, engine: str, batch_size: int) -> str:
    how = "FSDP2 (layerwise.fsdp.shard)" if engine == "fsdp" else "DDP (layerwise.distributed.wrap)"
    return (
        f"Data-parallel: every run on {nproc} process{'es' if nproc > 1 else ''} with {how}, each rank training "
        f"on its slice of every "
        f"global batch of {batch_size}; training time is rank 0's, communication included."
    )


def _target_text(task: Task, target: float) -> str:
    value = f"{100 * target:.2f} %" if task.metric == "accuracy" else f"{target:.4g}"
    return f"Target for 'time to target': test {task.metric} {value}."


PACED_SNIPPET = (
    "# paced by its clock in the comparison (its schedules followed its share of the time budget);\n"
    "# in a plain loop, the same schedules over the steps it took:\n"
)
"""The first lines of a snippet of a run that a time budget paced (:mod:`.budget`)."""


def _paced(comparison: _Comparison) -> set[str]:
    """The labels whose runs stopped by their clock: under a time budget all, but the baseline that set it."""
    if comparison.config.budget != "time":
        return set()
    labels = {label for label, _, _ in comparison.resolved}
    return labels if comparison.config.budget_seconds is not None else labels - {comparison.baseline}


def _snippets(task, model, partition, resolved, rows, policy, paced: set[str]) -> dict[str, str]:
    """Each method's lines for a plain loop, for the steps it took (``paced``: the labels a time budget paced)."""
    steps = {row["method"]: row.get("steps") for row in rows}
    snippets = {}
    for label, method, settings in resolved:
        total = int(steps.get(label) or 1)
        text = method_snippet(Build(task, model, partition, total, policy), method, settings)
        if text is not None:
            snippets[label] = (PACED_SNIPPET if label in paced else "") + text
    return snippets


def _snippets_markdown(snippets: dict[str, str]) -> str:
    if not snippets:
        return ""
    parts = ["## Each method in a plain PyTorch loop", ""]
    for label, text in snippets.items():
        parts += [f"**{label}**", "", "```python", text, "```", ""]
    return "\n".join(parts)


def parse_overrides(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["freezeout.t0=0.5", ...]`` -> ``{"freezeout": {"t0": 0.5}}`` (values parsed as JSON when they can be)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        method, dot, key = target.rpartition(".")
        if not sep or not dot or not method or not key:
            raise ValueError(f"--set: expected METHOD.KEY=VALUE (e.g. freezeout.t0=0.5), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        overrides.setdefault(method, {})[key] = parsed
    return overrides


def compare(
    task: str | Task = "fashion-mnist",
    methods: Sequence[str] | None = None,
    *,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train ``task`` with each of ``methods`` (default: the methods that fit its regime) and report.

    Args:
        task: a registered task's name, ``PATH.py:FACTORY`` or a :class:`~layerwise.tasks.Task`.
        settings: per-method overrides, e.g. ``{"freezeout": {"t0": 0.5}}``.
        **options: the fields of :class:`CompareConfig` (``budget``, ``epochs``, ...) and the other
            arguments of :func:`compare_variants` (``seeds``, ``out``, ``target``, ...).
    """
    return compare_variants(**check_request(task, methods, settings=settings, **options))


_RUN_OPTIONS = (
    "seeds",
    "out",
    "target",
    "target_tolerance",
    "tensorboard",
    "progress",
    "title",
    "data",
    "retime",
    "correction",
    "max_minutes",
    "aa",
    "margin",
    "max_runs",
    "executor",
)


def check_request(
    task: str | Task = "fashion-mnist",
    methods: Sequence[str] | None = None,
    *,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Everything :func:`compare` checks before it loads any data, as :func:`compare_variants`'s arguments.

    Unknown options, bad configuration values, unknown or inapplicable methods, and every method
    setting raise ValueError (or TypeError) naming the flag; nothing is trained, loaded or written.
    """
    task = resolve_task(task)
    config_fields = set(CompareConfig.options())
    known = config_fields | set(_RUN_OPTIONS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"compare: unknown option {unknown[0]!r}; choose from {sorted(known)}")
    config = CompareConfig(**{k: v for k, v in options.items() if k in config_fields})
    if methods is not None:
        methods = list(methods)
        check_methods(task, methods)
    settings = dict(settings or {})
    for name, overrides in settings.items():
        if name in METHODS:  # checked before any model is built; other names are refused below
            resolve_settings(name, overrides)
    partition = task.partition_of(task.make_model())
    methods = methods if methods is not None else default_methods(task, partition)
    stray = sorted(set(settings) - set(methods))
    if stray:
        raise ValueError(f"--set: settings for methods that are not compared: {stray}; compared: {methods}")
    check_methods(task, methods, partition)
    check_parallel(config.nproc, config.fsdp, task, methods)
    rest = {k: v for k, v in options.items() if k not in config_fields}
    if rest.get("executor") is not None:
        rest["executor"] = check_executor(rest["executor"], config)
    parse_seeds(rest.get("seeds", 1))
    _check_minutes(rest.get("max_minutes"))
    check_max_runs(rest.get("max_runs"), rest.get("seeds", 1), len(methods) + bool(rest.get("aa")))
    check_target(rest.get("target"), task.metric)
    check_margin(rest.get("margin"), task.metric)
    if rest.get("target_tolerance") is not None:
        finite_nonneg("--target-tolerance", rest["target_tolerance"])
    if rest.get("tensorboard") and config.telemetry_every is None:
        raise ValueError("--tensorboard: needs --telemetry N (what to log, how often)")
    variants = [(name, name, dict(settings.get(name, {}))) for name in methods]
    return {"task": task, "variants": variants, "config": config, **rest}
