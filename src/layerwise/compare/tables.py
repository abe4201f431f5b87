"""The comparison's answer and results table, in text: the answer's lines first, then one row per method.

Examples:
    >>> from layerwise.compare.measures import ACCURACY, TIME
    >>> row = {"method": "m", "runs": 3, "failed": 0, "steps": 100.0, "wall_clock_s": 9.5, "budget_ratio": 0.95,
    ...        "speedup": 1.05, "metric": 0.8123, "metric_std": 0.004, "time_to_target_s": 7.25, "reached": 3,
    ...        "target_ratio": 1.2, "verdict": "reference", "notes": ""}
    >>> table_cells(row, ACCURACY, TIME)[5]
    '81.23 ± 0.40'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .measures import Budget, Metric, budget_of, metric_of
from .verdicts import AA_LABEL, level_text

__all__ = ["SMOKE", "answer", "markdown_table", "smoke_rows", "table_cells", "table_head"]


SMOKE = (
    "Smoke run (--quick): a few steps on a slice of the data check that every method runs end to end; "
    "its times and accuracies say nothing about speed or quality, so no speed-up or verdict is given."
)
"""The answer of a ``--quick`` comparison."""


def smoke_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a smoke run: accuracies and what ran kept, speed ratios and verdicts left out."""
    left_out = {"speedup": None, "target_ratio": None, "tests": None, "open": [], "sizing": None}
    return [
        {**row, **left_out, "verdict": "reference" if row["verdict"] == "reference" else "smoke run"} for row in rows
    ]


def answer(rows: list[dict[str, Any]], metric: Metric | str, budget: Budget | str = "time") -> str:
    """The report's first lines: for each question, the methods decided better or worse than the
    baseline, the undecided ones with what would decide them, and the A/A noise floor when it ran.

    >>> claim = {"decided": True, "verdict": "better", "decision": {"diff": 0.02}}
    >>> row = {"method": "m", "tests": {"accuracy": claim, "speed": {"decided": None}},
    ...        "open": [], "sizing": None, "runs": 3, "verdict": "2.00 points better"}
    >>> print(answer([row], "accuracy"))
    - Best model at equal time: better m (+2.00 points).
    - Soonest to the target: no method compared.
    """
    metric, at = metric_of(metric), budget_of(budget).equal
    scale, unit = metric.scale, metric.unit
    judged = [r for r in rows if r["tests"] is not None and r["method"] != AA_LABEL]
    lines = [
        f"- Best model {at}: "
        + _question(judged, "accuracy", lambda d: f"{d * scale:+.2f} {unit}", ("better", "worse")),
        "- Soonest to the target: " + _question(judged, "speed", lambda d: f"{math.exp(d):.2f}x", ("sooner", "later")),
    ]
    if judged and all(r["runs"] < 2 for r in judged):
        lines = ["- One seed per method: no verdict can be decided (`--seeds 3`, or `--seeds auto` until decided)."]
    twin = next((r for r in rows if r["method"] == AA_LABEL), None)
    if twin is not None:
        lines.append(f"- Noise floor (the baseline against its own second run, --aa): {twin['verdict']}.")
    missing = [r["method"] for r in rows if r["runs"] == 0]
    if missing:
        lines.append(f"- No finished run: {', '.join(missing)}.")
    return "\n".join(lines)


def _question(rows: list[dict[str, Any]], question: str, effect: Callable[[float], str], words: tuple[str, str]) -> str:
    """One question's answer: the claims (``words`` for better and worse, with the effect the decision
    measured; equivalent within the margin), the undecided ones (with what would decide them) and the
    ones stopped for futility."""
    tested = [r for r in rows if r["tests"][question].get("decided") is not None]
    if not tested:
        return "no method compared."

    def having(verdict: str) -> list[dict[str, Any]]:
        return [r for r in tested if r["tests"][question]["verdict"] == verdict]

    def measured(row: dict[str, Any]) -> str:
        return f"{row['method']} ({effect(row['tests'][question]['decision']['diff'])})"

    parts = [
        f"{word} " + ", ".join(map(measured, group))
        for word, verdict in zip(words, ("better", "worse"))
        if (group := having(verdict))
    ]
    if equivalent := having("equivalent"):
        margin = effect(equivalent[0]["tests"][question]["margin"]).lstrip("+")
        parts.append(f"equivalent within ±{margin}: " + ", ".join(r["method"] for r in equivalent))
    if open_ := having("undecided"):
        parts.append("undecided " + ", ".join(_open_text(r, question) for r in open_))
    if futile := having("futile"):
        parts.append("stopped, a decision unlikely by the seed cap: " + ", ".join(r["method"] for r in futile))
    return "; ".join(parts) + "."


def _open_text(row: dict[str, Any], question: str) -> str:
    """An undecided method and what would decide it (accuracy: the seeds its observed difference needs)."""
    sizing = row.get("sizing") or {}
    if question != "accuracy" or not sizing.get("needed"):
        return row["method"]
    more, level = max(0, sizing["needed"] - sizing["pairs"]), level_text(sizing)
    return f"{row['method']} (its observed difference needs {sizing['needed']} seeds at {level}: {more} more)"


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table_cells(row: dict[str, Any], metric: Metric, budget: Budget) -> list[str]:
    """A summary row's cells, as :func:`table_head` names them."""
    scale, spec = metric.scale, metric.spec
    metric_text = "—"
    if row["metric"] is not None:
        metric_text = f"{row['metric'] * scale:{spec}} ± {row['metric_std'] * scale:{spec}}"
    cells = [
        row["method"],
        f"{row['runs']}" + (f" (+{row['failed']} failed)" if row["failed"] else ""),
        _fmt(row["steps"], ".0f"),
        _fmt(row["wall_clock_s"], ".1f"),
    ]
    if budget.paced:
        cells.append(_fmt(row["budget_ratio"], ".2f"))
    else:
        cells.append(_fmt(row["speedup"], ".2f"))
    ttt = "—" if row["time_to_target_s"] is None else f"{row['time_to_target_s']:.1f}"
    cells += [
        metric_text,
        f"{ttt} ({row['reached']}/{row['runs']})",
        _fmt(row["target_ratio"], ".2f"),
        row["verdict"],
        row["notes"],
    ]
    return cells


def table_head(metric: Metric, budget: Budget) -> list[str]:
    """The results table's column names: under a time budget its fifth column is the time over the
    budget, under a step budget the speed-up."""
    unit = " %" if metric.percent else ""
    return [
        "method",
        "runs",
        "steps",
        "train s",
        "train s / budget" if budget.paced else "speed-up vs baseline",
        f"test {metric.name}{unit} {budget.equal} (mean ± std)",
        "median time to target s (reached)",
        "speed to target vs baseline",
        "verdict vs baseline (interval of the deciding test)",
        "notes",
    ]


def markdown_table(rows: list[dict[str, Any]], metric: Metric | str, budget: Budget | str = "time") -> str:
    """The results as a markdown table (also readable in a terminal)."""
    metric, budget = metric_of(metric), budget_of(budget)
    head = table_head(metric, budget)
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(table_cells(row, metric, budget)) + " |" for row in rows]
    return "\n".join(lines)
