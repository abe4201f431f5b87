"""``layerwise compare``: train one task with several techniques side by side and report.

Every method trains the same task from the same seeds, in the same data order, for the same
number of steps. Runs are stored as they finish (``DIR/runs.sqlite``), so an interrupted
comparison resumes where it stopped; a run that fails is reported with its error and the others
still run. The report is a table (terminal, ``results.md``), one JSON record per run
(``DIR/runs/``), PNG plots and ``report.html``.

Example:
    >>> from layerwise.compare import compare
    >>> result = compare("fashion-mnist", ["baseline", "freezeout"], quick=True, out="runs/cmp")  # doctest: +SKIP
    >>> print(result["table"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..bench.tasks import Task, TaskData, get_task, make_optimizer
from .methods import METHODS, Method, check_methods, register_method, resolve_settings
from .report import markdown_table, plot_all, summarize, write_html
from .runner import run_one
from .store import RunStore

__all__ = ["METHODS", "Method", "Variant", "compare", "compare_variants", "default_methods", "register_method"]

Variant = tuple[str, str, dict[str, Any]]
"""(label, method name, settings overrides)."""


def default_methods(task: Task) -> list[str]:
    """Every registered default method that applies to ``task``, in registry order."""
    partition = task.groups(task.make_model())
    return [name for name, m in METHODS.items() if m.default and m.applies(task, partition) is None]


def _bar(total: int, desc: str, enabled: bool, position: int = 0):
    if not enabled:
        return nullcontext(None)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return nullcontext(None)
    return tqdm(
        total=total,
        desc=desc,
        unit="run" if position == 0 else "step",
        position=position,
        leave=position == 0,
        dynamic_ncols=True,
        mininterval=1.0,
    )


def _warm_up(task: Task, data: TaskData, steps: int = 10) -> None:
    """A few untimed training steps, so the first timed run does not pay for thread pools and caches."""
    model = task.make_model()
    optimizer = make_optimizer(task, [{"params": [p for p in model.parameters() if p.requires_grad]}])
    x, y = data.train
    for step in range(steps):
        index = torch.arange(step * task.batch_size, (step + 1) * task.batch_size) % len(x)
        optimizer.zero_grad()
        task.loss(model(x[index]), y[index]).backward()
        optimizer.step()


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def compare_variants(
    task: str | Task,
    variants: Sequence[Variant],
    *,
    seeds: int = 1,
    epochs: int | None = None,
    train_size: int | None = None,
    policy: str = "cosine",
    quick: bool = False,
    out: str | Path = "runs/compare",
    eval_points: int = 4,
    test_size: int | None = 5000,
    telemetry_every: int | None = None,
    tensorboard: bool = False,
    progress: bool = True,
    title: str | None = None,
    data: TaskData | None = None,
) -> dict[str, Any]:
    """Run every variant for ``seeds`` seeds (resuming from ``out``) and write the report there.

    ``test_size``: evaluate on the first this many test examples (None: all). ``data`` replaces
    the task's own (loaded once otherwise; ``test_size`` does not apply to it). Returns
    ``{"rows", "table", "setting", "outcomes", "paths"}``; see :func:`compare` for the others.
    """
    task = get_task(task) if isinstance(task, str) else task
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds: must be an int >= 1, got {seeds!r}")
    labels = [label for label, _, _ in variants]
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"methods: need distinct, non-empty labels, got {labels}")
    partition = task.groups(task.make_model())
    check_methods(task, [method for _, method, _ in variants], partition)
    resolved = [(label, method, resolve_settings(method, overrides)) for label, method, overrides in variants]
    if train_size is None and not quick:
        train_size = task.train_size
    epochs = epochs or (task.quick_epochs if quick else task.epochs)
    out = Path(out)
    own_data = data is None
    config = {
        "task": task.name,
        "epochs": epochs,
        "train_size": train_size,
        "quick": quick,
        "policy": policy,
        "eval_points": eval_points,
        **({"telemetry_every": telemetry_every} if telemetry_every else {}),
        **({"test_size": test_size} if own_data else {}),
    }
    outcomes: dict[str, dict[str, list]] = {label: {"records": [], "errors": []} for label in labels}
    with RunStore(out / "runs.sqlite", config) as store:
        todo = [
            (label, method, settings, seed)
            for label, method, settings in resolved
            for seed in range(seeds)
            if store.finished(RunStore.key(method, settings, seed)) is None
        ]
        if todo and data is None:
            data = task.load_data(None, quick)
            if test_size is not None:
                data = TaskData(data.train, (data.test[0][:test_size], data.test[1][:test_size]))
        if todo:
            _warm_up(task, data)
        with _bar(len(todo), f"compare {task.name}", progress) as runs_bar:
            for label, method, settings, seed in todo:
                key = RunStore.key(method, settings, seed)
                with _bar(0, f"{label} seed {seed}", progress, position=1) as steps_bar:

                    def on_step(step: int, total: int, loss: float, bar=steps_bar) -> None:
                        if bar is not None:
                            bar.total = total
                            bar.update(1)
                            if step % 25 == 0:
                                bar.set_postfix(loss=f"{loss:.3g}", refresh=False)

                    try:
                        record = run_one(
                            task,
                            method,
                            settings,
                            seed=seed,
                            epochs=epochs,
                            train_size=train_size,
                            policy=policy,
                            quick=quick,
                            data=data,
                            eval_points=eval_points,
                            telemetry_every=telemetry_every,
                            tensorboard=out / "tensorboard" / f"{_slug(label)}-seed{seed}" if tensorboard else None,
                            on_step=on_step,
                        )
                    except Exception:
                        store.fail(key, method, seed, traceback.format_exc())
                    else:
                        record["label"] = label
                        store.save(key, record)
                if runs_bar is not None:
                    runs_bar.update(1)
        runs_dir = out / "runs"
        runs_dir.mkdir(parents=True, exist_ok=True)
        for label, method, settings in resolved:
            for seed in range(seeds):
                key = RunStore.key(method, settings, seed)
                record = store.finished(key)
                if record is not None:
                    outcomes[label]["records"].append(record)
                    (runs_dir / f"{_slug(label)}-seed{seed}.json").write_text(json.dumps(record))
                else:
                    outcomes[label]["errors"].append(store.error(key) or "not run")
    baseline = "baseline" if "baseline" in outcomes else labels[0]
    rows = summarize(outcomes, baseline=baseline)
    table = markdown_table(rows, task.metric)
    title = title or f"layerwise compare: {task.name}"
    used = next((r["train_size"] for o in outcomes.values() for r in o["records"]), train_size)
    tested = next((r["test_examples"] for o in outcomes.values() for r in o["records"]), "the")
    setting = (
        f"{task.description}. {epochs} epoch(s), {used or 'all'} training examples, {tested} test examples, batch "
        f"{task.batch_size}, {task.optimizer} at LR {task.lr:g}, global policy {policy}, {seeds} seed(s); "
        f"speed-up = {baseline}'s training wall-clock / the method's."
    )
    (out / "results.md").write_text(f"# {title}\n\n{setting}\n\n{table}\n")
    plots = plot_all(outcomes, task.metric, out)
    html_path = write_html(out / "report.html", title, rows, task.metric, plots, setting)
    return {
        "rows": rows,
        "table": table,
        "setting": setting,
        "outcomes": outcomes,
        "paths": {"markdown": out / "results.md", "html": html_path, "plots": plots, "runs": runs_dir},
    }


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
    """Train ``task`` with each of ``methods`` (default: every method that applies) and report.

    Args:
        settings: per-method overrides, e.g. ``{"freezeout": {"t0": 0.5}}``.
        **options: ``seeds``, ``epochs``, ``train_size``, ``policy``, ``quick``, ``out``,
            ``eval_points``, ``progress`` (see :func:`compare_variants`).
    """
    task = get_task(task) if isinstance(task, str) else task
    methods = list(methods) if methods else default_methods(task)
    settings = dict(settings or {})
    stray = sorted(set(settings) - set(methods))
    if stray:
        raise ValueError(f"--set: settings for methods that are not compared: {stray}; compared: {methods}")
    variants = [(name, name, dict(settings.get(name, {}))) for name in methods]
    return compare_variants(task, variants, **options)
