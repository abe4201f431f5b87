"""One comparison: check its request once, train its rounds of runs (resuming from the run store), then
write the report.

With ``budget="time"`` (the default) every method trains for the baseline's training wall-clock on
the same seed (or ``budget_seconds``): the baseline of each seed trains first, the task's epochs,
and every other run of that seed stops by its own clock at the baseline's training time, its
schedules following its share of that time (:mod:`.budget`). With ``budget="steps"`` every method
trains the task's epochs.

The request and its check are in :mod:`.request`, the runs of a round in :mod:`.rounds`, the report's
text in :mod:`.results`; this module runs them in order.

Examples:
    >>> from layerwise.compare.session import CompareConfig, compare_variants
    >>> config = CompareConfig(quick=True, budget="time")
    >>> result = compare_variants("fashion-mnist", [("baseline", "baseline", {})], config=config)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from ..tasks import Task, TaskData
from .engines import group_for
from .executors import comparison_data
from .request import BUDGETS, CompareConfig, Request, Variant, VariantSpec, check_request, parse_overrides
from .results import write_report
from .rounds import collect_outcomes, due_runs, first_round, next_round, plan_round, train_due, train_on
from .runner import run_one, warm_up
from .store import RunStore, locked
from .verdicts import summarize

__all__ = [
    "BUDGETS",
    "CompareConfig",
    "Request",
    "Variant",
    "check_request",
    "compare",
    "compare_variants",
    "fingerprint",
    "parse_overrides",
    "plan_round",
    "run_request",
]


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
            options of :func:`~layerwise.compare.request.check_request` (``seeds``, ``out``, ``target``, ...).
    """
    return run_request(check_request(task, methods, settings=settings, **options))


def compare_variants(task: str | Task, variants: Sequence[VariantSpec], **options: Any) -> dict[str, Any]:
    """Train each of ``variants``, ``(label, method, overrides)``, and report: :func:`compare` with labels.

    ``options`` are :func:`~layerwise.compare.request.check_request`'s (``config``, ``seeds``, ``out``, ...).
    """
    return run_request(check_request(task, variants=variants, **options))


def run_request(request: Request) -> dict[str, Any]:
    """Run a checked request's every variant for its seeds (resuming from ``request.out``), round after round
    under ``--seeds auto``, and write the report there.

    Returns ``{"answer", "rows", "table", "setting", "target", "snippets", "metric", "budget", "paths",
    "outcomes", "unsaved"}`` (a torchrun follower: ``{"follower": True, "rank", ...}``).
    """
    task, config, options = request.task, request.config, request.options
    group = group_for(config.nproc, config.fsdp)
    if group is not None and group.rank != 0:  # a torchrun follower: rank 0 sends every run
        group.follow(task, lambda: options.data if options.data is not None else _load_data(request))
        return {"follower": True, "rank": group.rank, "rows": [], "outcomes": {}, "unsaved": []}
    counts = first_round(request)
    # one comparison per --out at a time; followers end with the group
    with (
        group or nullcontext(),
        locked(request.out),
        RunStore(request.out / "runs.sqlite", request.store_key()) as store,
    ):
        invocation = fingerprint()
        if request.engine is not None:
            invocation["nproc"], invocation["engine"] = request.nproc, request.engine
        started, unsaved, warm, data = time.perf_counter(), {}, False, options.data
        run = run_one if group is None else group.run_one
        while True:  # one round; with --seeds auto, again while methods are undecided
            todo = due_runs(store, request, counts, invocation["invocation"] if options.retime else None)
            if todo and not warm:
                data = data if data is not None else _load_data(request)
                if options.executor is None:  # the workers warm up themselves
                    warm_up(task, data, 2 if config.quick else 10)
                warm = True
            if options.executor is None:
                unsaved |= train_due(store, request, todo, run, data, invocation)
            else:
                unsaved |= train_on(options.executor, store, request, todo, data, invocation)
            outcomes = collect_outcomes(store, request, counts, unsaved)
            summary = _summary(request, outcomes)  # the round's verdicts: the plan and the report read them
            plan = {} if _last_round(request, started) else next_round(summary["rows"], request, counts)
            if not plan:
                break
            counts = {**counts, **plan}
    report = write_report(request, counts, outcomes, summary)
    return {**report, "outcomes": outcomes, "unsaved": sorted(unsaved)}


def fingerprint() -> dict[str, Any]:
    """A new invocation's timing context: an id, the machine, and its load (1-minute average) now.

    Every run of one :func:`run_request` call carries the same fingerprint; the report flags
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


def _load_data(request: Request) -> TaskData:
    """The task's data as a comparison uses it (:func:`~layerwise.compare.executors.comparison_data`)."""
    return comparison_data(request.task, request.config.quick, request.config.test_size)


def _last_round(request: Request, started: float) -> bool:
    """No round after this one: a fixed seed count, or ``--max-minutes`` spent."""
    minutes = request.judging.max_minutes
    return request.seeds.most is None or (minutes is not None and (time.perf_counter() - started) / 60 >= minutes)


def _summary(request: Request, outcomes: dict[str, dict[str, list]]) -> dict[str, Any]:
    judging = request.judging
    return summarize(
        outcomes,
        baseline=request.baseline.label,
        metric=request.task.metric,
        target=judging.target,
        target_tolerance=judging.target_tolerance,
        budget=request.config.budget,
        correction=judging.correction,
        sequential=request.seeds.most,
        margin=judging.margin,
    )
