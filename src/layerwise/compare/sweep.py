"""Learning rates: every method at the task's LR times several factors, and the baseline's LR tuned first.

An automatic learning rate is worth its cost when the user does not know the learning rate. A
sweep trains each method with the task's LR multiplied by every factor (one comparison per factor,
each at equal cost within itself, in ``OUT/lr<factor>``) and reports the final metric against the
factor. Methods that set or find their own LR (:attr:`Method.uses_task_lr` False: Prodigy,
D-Adaptation, DoG, ...) run once, at the factor nearest 1, and are drawn as a flat line.

A verdict against a baseline at an untuned LR says little. :func:`tune_baseline` trains the
baseline alone at each factor (the comparison's own options and seeds, in ``OUT/tune/lr<factor>``),
keeps the factor with the best final metric, and returns the task at that LR, so every method that
starts from the task's LR starts from the tuned one; the tuning runs and their cost are reported.

Examples:
    >>> from layerwise.compare.sweep import lr_sweep
    >>> result = lr_sweep("ellipse", ["baseline", "hidlr"], [0.1, 1.0], budget="steps",
    ...                   out="runs/sweep", progress=False)  # doctest: +SKIP
    >>> print(result["table"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..tasks import Task, resolve_task
from .measures import Metric, metric_of
from .methods import METHODS
from .session import check_request, run_request

__all__ = ["Tuned", "check_factors", "lr_sweep", "tune_baseline"]


def check_factors(factors: Sequence[float], flag: str = "--lr-sweep") -> list[float]:
    """Distinct finite factors > 0 (ValueError naming ``flag`` otherwise).

    Examples:
        >>> check_factors([0.1, 1, 10])
        [0.1, 1.0, 10.0]
    """
    values = list(factors)
    ok = all(not isinstance(f, bool) and isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in values)
    if not values or not ok or len(set(values)) != len(values):
        raise ValueError(f"{flag}: distinct finite factors > 0, e.g. 0.3,1,3; got {values}")
    return [float(f) for f in values]


def _anchor(factors: Sequence[float]) -> float:
    """The factor nearest 1 (on a log scale), where methods with their own LR run."""
    return min(factors, key=lambda f: abs(math.log(f)))


def lr_sweep(
    task: Any,
    methods: Sequence[str] | None = None,
    factors: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
    *,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    out: str | Path = "runs/lr-sweep",
    **options: Any,
) -> dict[str, Any]:
    """Compare ``methods`` at each LR factor; returns ``{"rows", "table", "factors", "results", "paths"}``.

    ``options`` are :func:`~layerwise.compare.session.compare`'s. Every factor's request is checked
    before the first one trains.
    """
    task = resolve_task(task)
    factors = check_factors(factors)
    out = Path(out)
    anchor = _anchor(factors)
    settings = dict(settings or {})
    if methods is None:
        methods = check_request(task, None, settings=settings, **options).methods
    methods = list(methods)
    requests = []
    for factor in factors:
        names = [m for m in methods if factor == anchor or METHODS.get(m).uses_task_lr]
        swept = replace(task, name=f"{task.name}@lr{factor:g}", lr=task.lr * factor)
        mine = {name: value for name, value in settings.items() if name in names}
        requests.append(check_request(swept, names, settings=mine, **{**options, "out": out / f"lr{factor:g}"}))
    results = [run_request(request) for request in requests]
    rows = _rows(methods, factors, results)
    metric = metric_of(task.metric)
    table = _table(rows, factors, metric)
    (out / "sweep.md").write_text(
        f"# LR sweep: {task.name}\n\nFinal test {task.metric} (mean ± std over seeds) with the task's LR "
        f"({task.lr:g}) times each factor; methods with their own LR ran once (at x{anchor:g}).\n\n{table}\n"
    )
    (out / "sweep.json").write_text(json.dumps({"task": task.name, "factors": factors, "rows": rows}, indent=1))
    plot = _plot(rows, factors, metric, out / "sweep.png")
    return {
        "rows": rows,
        "table": table,
        "factors": factors,
        "results": results,
        "paths": {"markdown": out / "sweep.md", "json": out / "sweep.json", "plot": plot},
    }


@dataclass(frozen=True)
class Tuned:
    """The baseline's LR grid: the factor kept, the task at its LR, each factor's results, the cost.

    ``means``: each factor's mean final metric (None: no finished run); ``seconds``: the whole
    tuning's wall-clock, training and evaluations; ``runs``: its finished runs.
    """

    task: Task
    factor: float
    means: dict[float, float | None]
    seconds: float
    runs: int
    table: str

    def note(self) -> str:
        """The sentence a comparison's report carries about it."""
        return (
            f"The baseline's LR was tuned first (--tune-baseline): the task's LR times each of "
            f"{', '.join(f'{f:g}' for f in self.means)}, the baseline alone with this comparison's seeds and budget "
            f"({self.runs} runs, {self.seconds / 60:.1f} min with evaluations, reported in tune/tuning.md); the best "
            f"final {self.task.metric} was at x{self.factor:g}, so every method that starts from the task's LR "
            f"starts from {self.task.lr:g}."
        )


def tune_baseline(task: Any, factors: Sequence[float], *, out: str | Path = "runs/compare", **options: Any) -> Tuned:
    """Train the baseline at the task's LR times each factor; return the task at the best factor's LR.

    ``options`` are :func:`~layerwise.compare.session.compare`'s (seeds, budget, ...). The best is the
    highest mean final accuracy (lowest loss); a tie goes to the factor nearest 1. Writes
    ``OUT/tune/tuning.md``.
    """
    task = resolve_task(task)
    factors = check_factors(factors, "--tune-baseline")
    started = time.perf_counter()
    swept = lr_sweep(task, ["baseline"], factors, out=Path(out) / "tune", **options)
    cells = swept["rows"][0]["by_factor"]
    means = {f: cells[f"{f:g}"]["mean"] if f"{f:g}" in cells else None for f in factors}
    found = {f: m for f, m in means.items() if m is not None}
    if not found:
        raise RuntimeError("--tune-baseline: no baseline run finished at any factor; see OUT/tune")
    sign = 1.0 if metric_of(task.metric).higher_is_better else -1.0
    best = max(found, key=lambda f: (sign * found[f], -abs(math.log(f))))
    runs = sum(cell["runs"] for cell in cells.values())
    seconds = time.perf_counter() - started
    (Path(out) / "tune" / "tuning.md").write_text(
        f"# The baseline's LR, tuned: {task.name}\n\nThe task's LR ({task.lr:g}) times each factor, the baseline "
        f"alone; kept: x{best:g} (LR {task.lr * best:g}). {runs} runs, {seconds:.0f} s with evaluations.\n\n"
        f"{swept['table']}\n"
    )
    return Tuned(replace(task, lr=task.lr * best), best, means, seconds, runs, swept["table"])


def _rows(methods: Sequence[str], factors: Sequence[float], results: Sequence[dict[str, Any]]) -> list[dict]:
    rows = []
    for method in methods:
        cells = {}
        for factor, result in zip(factors, results):
            outcome = result["outcomes"].get(method)
            values = [r["test_metric"] for r in outcome["records"]] if outcome else []
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells[f"{factor:g}"] = {"mean": statistics.fmean(values), "std": std, "runs": len(values)}
        rows.append({"method": method, "uses_task_lr": METHODS.get(method).uses_task_lr, "by_factor": cells})
    return rows


def _table(rows: list[dict], factors: Sequence[float], metric: Metric) -> str:
    scale, spec = metric.scale, metric.spec
    head = ["method", *(f"x{f:g}" for f in factors), "best factor"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(factors) + "---|"]
    better = max if metric.higher_is_better else min
    for row in rows:
        cells = row["by_factor"]
        values = []
        for factor in factors:
            cell = cells.get(f"{factor:g}")
            if cell is None and not row["uses_task_lr"] and cells:
                values.append("(own LR)")
            else:
                values.append("—" if cell is None else f"{cell['mean'] * scale:{spec}} ± {cell['std'] * scale:{spec}}")
        best = "own LR" if not row["uses_task_lr"] else "—"
        if row["uses_task_lr"] and cells:
            best = "x" + better(cells, key=lambda k: cells[k]["mean"])
        lines.append("| " + " | ".join([row["method"], *values, best]) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], factors: Sequence[float], metric: Metric, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scale = metric.scale
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in rows:
        cells = row["by_factor"]
        if not cells:
            continue
        if not row["uses_task_lr"]:
            (value,) = [c["mean"] * scale for c in cells.values()]
            ax.plot([min(factors), max(factors)], [value, value], linestyle="--", label=f"{row['method']} (own LR)")
            continue
        xs = [f for f in factors if f"{f:g}" in cells]
        ax.plot(xs, [cells[f"{f:g}"]["mean"] * scale for f in xs], marker="o", label=row["method"])
    ax.set_xscale("log")
    ax.set_xlabel("factor on the task's learning rate")
    ax.set_ylabel(f"final test {metric.name}" + (" %" if metric.percent else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
