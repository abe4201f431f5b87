"""The comparison's report: a results table (terminal and markdown), PNG plots and an HTML page.

``outcomes`` maps each method's label to ``{"records": [...], "errors": [...]}`` (one record per
finished seed, as :func:`layerwise.compare.runner.run_one` returns it).

Examples:
    >>> import tempfile
    >>> from layerwise.compare import compare
    >>> result = compare("ellipse", ["baseline", "hidlr"], budget="steps", out=tempfile.mkdtemp(),
    ...                  progress=False)  # doctest: +SKIP
    >>> print(markdown_table(summarize(result["outcomes"], metric="loss")["rows"], "loss"))  # doctest: +SKIP

    :func:`pareto_front` is what the time-vs-metric plot draws:

    >>> pareto_front([(1.0, 0.80), (2.0, 0.78), (3.0, 0.86)])
    [(1.0, 0.8), (3.0, 0.86)]
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..plotting import legend, pyplot
from .stats import FIRST_LOOK, Decision, Question, decide_fixed, decide_rounds, reach, sizing
from .targets import (
    default_target,
    margin_of,
    scale_of,
    time_to_target,
    verdict,
    verdict_questions,
    verdict_tests,
)

__all__ = [
    "AA_LABEL",
    "SMOKE",
    "answer",
    "forest_rows",
    "hardware_gap",
    "load_gap",
    "markdown_table",
    "plot_all",
    "plot_forest",
    "smoke_rows",
    "summarize",
    "write_html",
]

AA_LABEL = "baseline (A/A)"
"""``--aa``: the baseline's second run under this name; its verdict is the machine's noise floor."""

Outcomes = dict[str, dict[str, list]]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


BUDGET_WARNING = 0.10
"""A method whose training time is off its budget by more than this fraction gets a warning."""

LOAD_GAP = 1.0
"""Two runs of a seed pair timed by the wall clock were timed under different load when their mean
1-minute load averages differ by more than this: one more runnable thread beside one of them than
beside the other (docs/verdicts.md)."""


def load_gap(record: dict[str, Any], base: dict[str, Any]) -> tuple[float, float] | None:
    """The two runs' mean loads when the pair was timed under different load (:data:`LOAD_GAP`), else None.

    A pair timed by the process clock is never flagged (other processes do not move it), nor one whose
    load is unknown (a record stored before runs recorded it).

    >>> load_gap({"load": {"mean": 6.2}}, {"load": {"mean": 0.4}})
    (6.2, 0.4)
    >>> load_gap({"load": {"mean": 6.2}, "clock": "process"}, {"load": {"mean": 0.4}, "clock": "process"}) is None
    True
    """
    if {record.get("clock", "wall"), base.get("clock", "wall")} != {"wall"}:
        return None
    mine, theirs = (r.get("load", {}).get("mean") for r in (record, base))
    if mine is None or theirs is None or abs(mine - theirs) <= LOAD_GAP:
        return None
    return mine, theirs


def _hardware(record: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """Where a run was timed: host, CPU model, CUDA device (a run of the comparison's own process names
    its host only, in its ``timing``)."""
    node = record.get("node") or {}
    return node.get("host") or (record.get("timing") or {}).get("host"), node.get("cpu"), node.get("cuda")


def hardware_gap(record: dict[str, Any], base: dict[str, Any]) -> tuple[str, str] | None:
    """The two runs' hardware when the pair was timed on different hardware, else None: their CPU models
    or CUDA devices differ, or, where either names neither, their hosts do (unknown: never flagged).
    Unlike load, the process clock does not excuse it: other hardware moves every clock.

    >>> a100, h100 = {"host": "n1", "cpu": "EPYC", "cuda": "A100"}, {"host": "n2", "cpu": "EPYC", "cuda": "H100"}
    >>> hardware_gap({"node": h100}, {"node": a100})
    ('n2 (EPYC, H100)', 'n1 (EPYC, A100)')
    >>> hardware_gap({"node": {**a100, "host": "n3"}}, {"node": a100}) is None
    True
    """
    mine, theirs = _hardware(record), _hardware(base)
    if mine[0] is None or theirs[0] is None:
        return None
    named = any(mine[1:]) and any(theirs[1:])
    if (mine[1:] == theirs[1:]) if named else (mine[0] == theirs[0]):
        return None
    shown = [f"{h[0]} ({', '.join(part for part in h[1:] if part)})" if any(h[1:]) else h[0] for h in (mine, theirs)]
    return shown[0], shown[1]


def _apart_pairs(
    records: list[dict[str, Any]], base_records: list[dict[str, Any]], gap: Callable[[dict, dict], Any]
) -> dict[int, Any]:
    """The seeds whose pair ``gap`` flags (:func:`load_gap`, :func:`hardware_gap`), with what it found."""
    base = {_seed(r, i): r for i, r in enumerate(base_records)}
    gaps = {_seed(r, i): gap(r, base[_seed(r, i)]) for i, r in enumerate(records) if _seed(r, i) in base}
    return {seed: found for seed, found in gaps.items() if found is not None}


def _hardware_note(moved: dict[int, tuple[str, str]], pairs: int) -> str:
    """A row's note on its pairs timed on different hardware."""
    seeds = ", ".join(f"seed {seed} ({mine} vs the baseline's {theirs})" for seed, (mine, theirs) in moved.items())
    return (
        f"timed on different hardware: {len(moved)} of {pairs} seed pairs, {seeds}; their speed is left out, and "
        "their accuracy at equal time came from unequal steps (--budget steps, or nodes of one kind)"
    )


def _loaded_note(loaded: dict[int, tuple[float, float]], pairs: int) -> str:
    """A row's note on its pairs timed under different load: what is left out, what it affected."""
    seeds = ", ".join(
        f"seed {seed} ({mine:.1f} vs the baseline's {theirs:.1f})" for seed, (mine, theirs) in loaded.items()
    )
    return (
        f"timed under different load: {len(loaded)} of {pairs} seed pairs, load average {seeds}; their speed is "
        "left out, and their accuracy at equal time came from unequal steps (--clock process, or --retime on an "
        "idle machine)"
    )


def summarize(
    outcomes: Outcomes,
    baseline: str = "baseline",
    metric: str = "accuracy",
    target: float | None = None,
    target_tolerance: float | None = None,
    budget: str = "time",
    correction: bool = True,
    sequential: int | None = None,
    margin: float | None = None,
) -> dict[str, Any]:
    """One row per method, and the target used for time to target (``budget``: what the runs had equal,
    ``"time"`` or ``"steps"``, for the verdicts' wording).

    A row has: runs, steps, mean training wall-clock, speed-up vs ``baseline`` (its wall-clock over
    the method's), achieved training time over the budget, the metric's mean and std at the end
    (equal time under a time budget), time to target (the median over seeds, a miss counting as
    infinite: none when half or more miss; how many reach it; its ratio to the baseline's), and the
    verdict against the baseline: paired by seed, both questions of every method (accuracy, with
    equivalence within ``margin``, and speed) corrected together over the table by Holm's rule
    (``correction=False``: each at 5 % alone), each printed with the test that decided it.
    ``sequential``: the seeds were added until decided, at most this many: the questions are decided
    by the group-sequential rule replayed round by round (:func:`~layerwise.compare.stats.decide_rounds`).
    The default target is the baseline's mean over its first round (its first 3 seeds under
    ``sequential``, else every seed) less ``target_tolerance``: seeds added later do not move it.
    A row's ``open`` lists its undecided questions (not stopped for futility), ``sizing`` what its
    accuracy seeds could detect.
    """
    base_records = outcomes.get(baseline, {}).get("records", [])
    if target is None:
        target = default_target(_first_round(base_records, sequential), metric, target_tolerance)
    base_wall = _mean_std([r["wall_clock_s"] for r in base_records])[0]
    void_speed = _baseline_off_budget(base_records)

    def times(records: list[dict[str, Any]]) -> dict[int, float | None]:
        return {
            _seed(r, i): None
            if target is None or r["diverged_at"] is not None
            else time_to_target(r["curve"], target, metric)
            for i, r in enumerate(records)
        }

    def finals(records: list[dict[str, Any]]) -> dict[int, float | None]:
        return {_seed(r, i): r["test_metric"] for i, r in enumerate(records)}

    base_times, base_finals = times(base_records), finals(base_records)
    judged_labels = [label for label, o in outcomes.items() if label != baseline and o["records"] and base_records]
    loaded = {label: _apart_pairs(outcomes[label]["records"], base_records, load_gap) for label in judged_labels}
    moved = {label: _apart_pairs(outcomes[label]["records"], base_records, hardware_gap) for label in judged_labels}

    def timed_alike(label: str, records: list[dict[str, Any]]) -> dict[int, float | None]:
        """The method's times to target but on the seeds timed under other load or hardware than the baseline's."""
        apart = {**loaded.get(label, {}), **moved.get(label, {})}
        return {seed: t for seed, t in times(records).items() if seed not in apart}

    tests, asked = {}, {}
    for label in judged_labels:
        mine = (finals(outcomes[label]["records"]), timed_alike(label, outcomes[label]["records"]))
        tests[label] = verdict_tests(mine[0], base_finals, mine[1], base_times, metric)
        asked[label] = verdict_questions(
            mine[0], base_finals, mine[1], base_times, metric, margin, sequential is not None
        )
    decisions = _judge(asked, correction, sequential, void_speed is None)
    base_median = _median_time(base_times)
    rows = []
    for label, outcome in outcomes.items():
        records, errors = outcome["records"], outcome["errors"]
        wall = _mean_std([r["wall_clock_s"] for r in records])[0]
        metric_mean, metric_std = _mean_std([r["test_metric"] for r in records])
        budget_ratio = _budget_ratio(records)
        mine, alike = times(records), timed_alike(label, records)
        ttt, ttt_alike = _median_time(mine), _median_time(alike)
        apart, elsewhere = loaded.get(label, {}), moved.get(label, {})
        void_mine = void_speed or (_not_judged(apart, elsewhere) if (apart or elsewhere) and not alike else None)
        judged, sizing = None, None
        if label in tests:
            on_accuracy = decisions[label]["accuracy"]
            if on_accuracy is not None and not on_accuracy.claimed:
                sizing = _sizing(finals(records), base_finals, on_accuracy.alpha)
            judged = verdict(
                finals(records),
                base_finals,
                alike,
                base_times,
                metric,
                budget,
                void_speed=void_mine,
                decisions=decisions[label],
                margin=margin,
                tests=tests[label],
                questions=asked[label],
            )
        rows.append(
            {
                "method": label,
                "runs": len(records),
                "failed": len(errors),
                "steps": _mean_std([r["steps"] for r in records])[0],
                "wall_clock_s": wall,
                "speedup": base_wall / wall if base_wall and wall else None,
                "budget_ratio": budget_ratio,
                "metric": metric_mean,
                "metric_std": metric_std,
                "time_to_target_s": ttt,
                "reached": sum(t is not None for t in mine.values()),
                "target_ratio": None if not (ttt_alike and base_median) or void_mine else base_median / ttt_alike,
                "verdict": "reference" if label == baseline else _verdict_text(judged, sizing, metric),
                "tests": None if judged is None else _tests_dict(judged, decisions[label], margin_of(metric, margin)),
                "open": [] if judged is None else _open(decisions[label]),
                "sizing": sizing,
                "final_train_loss": _mean_std([r["final_train_loss"] for r in records])[0],
                "notes": "; ".join(
                    _notes(records, errors, base_records, budget_ratio)
                    + ([_loaded_note(apart, len(records))] if apart else [])
                    + ([_hardware_note(elsewhere, len(records))] if elsewhere else [])
                ),
                "timed_under_other_load": sorted(apart),
                "timed_on_other_hardware": sorted(elsewhere),
            }
        )
    rule = "sequential" if sequential is not None else "fixed"
    return {"rows": rows, "target": target, "correction": "holm" if correction else "none", "rule": rule}


def _not_judged(loaded: dict[int, Any], moved: dict[int, Any]) -> str:
    """Why a method's speed is not judged when every seed pair was timed apart."""
    how = [*(["under different load"] if loaded else []), *(["on different hardware"] if moved else [])]
    return f"speed not judged: timed {' and '.join(how)}"


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


def _first_round(base_records: list[dict[str, Any]], sequential: int | None) -> list[float | None]:
    """The baseline's final metrics of its first round: its first 3 seeds when seeds are added until
    decided, else all of them (one round)."""
    return [r["test_metric"] for i, r in enumerate(base_records) if sequential is None or _seed(r, i) < FIRST_LOOK]


def _open(decided: dict[str, Decision | None]) -> list[str]:
    """The questions still open: undecided, and neither claimed nor stopped for futility."""
    return [question for question, d in decided.items() if d is not None and d.verdict == "undecided"]


def answer(rows: list[dict[str, Any]], metric: str, budget: str = "time") -> str:
    """The report's first lines: for each question, the methods decided better or worse than the
    baseline, the undecided ones with what would decide them, and the A/A noise floor when it ran.

    >>> claim = {"decided": True, "verdict": "better", "decision": {"diff": 0.02}}
    >>> row = {"method": "m", "tests": {"accuracy": claim, "speed": {"decided": None}},
    ...        "open": [], "sizing": None, "runs": 3, "verdict": "2.00 points better"}
    >>> print(answer([row], "accuracy"))
    - Best model at equal time: better m (+2.00 points).
    - Soonest to the target: no method compared.
    """
    scale, unit = scale_of(metric)
    judged = [r for r in rows if r["tests"] is not None and r["method"] != AA_LABEL]
    at = "at equal time" if budget == "time" else "at equal steps"
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
    more = max(0, sizing["needed"] - sizing["pairs"])
    return f"{row['method']} (its observed difference needs {sizing['needed']} seeds at {_level(sizing)}: {more} more)"


def _level(sizing: dict[str, Any]) -> str:
    """The level a seed count is for, as the report says it (stored records before the level: 5 %)."""
    alpha = sizing.get("alpha", 0.05)
    return "5 %" if alpha == 0.05 else f"5 %/{round(0.05 / alpha)} (Holm)"


def _seed(record: dict[str, Any], position: int) -> int:
    """A run's seed (records written before seeds were stored: their position)."""
    return record.get("seed", position)


def _median_time(times: dict[int, float | None]) -> float | None:
    """The median time to target over seeds, a miss counting as infinite (None: half or more missed)."""
    if not times:
        return None
    median = reach([math.inf if t is None else t for t in times.values()]).median
    return median if math.isfinite(median) else None


def _judge(
    asked: dict[str, dict[str, Question | None]], correction: bool, sequential: int | None, speed_valid: bool
) -> dict[str, dict[str, Decision | None]]:
    """Per method and question (``accuracy``, ``speed``): its decision, or None (not compared). Every
    question of the table's methods is one family, corrected together; the A/A twin is its own.

    A fixed number of seeds: each question tested once on all its pairs. Seeds added until decided
    (``sequential``: their maximum): the group-sequential rule, replayed round by round.
    """
    out: dict[str, dict[str, Decision | None]] = {label: {"accuracy": None, "speed": None} for label in asked}
    # the A/A twin is judged alone: it calibrates the table, it is not one of its claims
    for family in ([label for label in asked if label != AA_LABEL], [label for label in asked if label == AA_LABEL]):
        questions = {
            (label, name): question
            for label in family
            for name, question in asked[label].items()
            if question is not None and (name == "accuracy" or speed_valid)
        }
        if sequential is None:
            found = decide_fixed(questions, correct=correction)
        else:
            found = decide_rounds(questions, sequential, correct=correction)
        for (label, name), decision in found.items():
            out[label][name] = decision
    return out


def _metric_diffs(mine: dict[int, float | None], base: dict[int, float | None]) -> list[float]:
    """Method minus baseline per seed both finished, in seed order."""
    shared = sorted(s for s in mine.keys() & base.keys() if mine[s] is not None and base[s] is not None)
    return [mine[s] - base[s] for s in shared]


def _verdict_text(judged: dict[str, Any] | None, sizing: dict[str, Any] | None, metric: str) -> str:
    """The verdict's sentence; an accuracy question without a claim adds what its seeds detect and what
    would decide it."""
    if judged is None:
        return "—"
    text = judged["text"]
    if not sizing or sizing.get("detectable") is None:
        return text
    scale, unit = scale_of(metric)
    detects = f"{sizing['pairs']} seed pairs detect {sizing['detectable'] * scale:.2f} {unit}"
    needs = "" if not sizing["needed"] else f", the observed difference needs {sizing['needed']}"
    return f"{text}; {detects}{needs} (at {_level(sizing)})"


def _sizing(mine: dict[int, float | None], base: dict[int, float | None], alpha: float) -> dict[str, Any] | None:
    """For the accuracy question, at level ``alpha``: the smallest difference these seed pairs detect,
    the pairs the observed one needs."""
    diffs = _metric_diffs(mine, base)
    if len(diffs) < 2:
        return None
    return {**asdict(sizing(diffs, alpha)), "alpha": alpha}


def _tests_dict(judged: dict[str, Any], decided: dict[str, Decision | None], margin: float | None) -> dict[str, Any]:
    """The verdict's two questions as plain dicts (the JSON and HTML read them). ``low``/``high`` are the
    interval of the test that decided (the one the table prints: sequential or Holm-corrected), None
    when the question was not tested; ``decided`` (a claim made), ``verdict`` and ``decision`` (the
    rule's numbers). ``unadjusted`` holds the plain comparison (one look, 95 %, no correction: its
    interval is not a decision). The accuracy one carries the equivalence margin."""
    empty = {"test": None, "n": None, "diff": None, "p": None}
    out = {}
    for question in ("accuracy", "speed"):
        comparison, decision = judged[question], decided.get(question)
        plain = None if comparison is None else asdict(comparison)
        out[question] = {
            **(empty if plain is None else {k: plain[k] for k in empty}),
            "low": None if decision is None else decision.low,
            "high": None if decision is None else decision.high,
            "decided": None if decision is None else decision.claimed,
            "verdict": None if decision is None else decision.verdict,
            "decision": None if decision is None else asdict(decision),
            "unadjusted": plain,
        }
    out["accuracy"]["margin"] = margin
    return out


def _notes(
    records: list[dict[str, Any]], errors: list[str], base_records: list[dict[str, Any]], budget_ratio: float | None
) -> list[str]:
    """A row's notes: divergences, an achieved time far from the budget, parallel runs, timing apart, failures."""
    notes = []
    diverged = sum(r["diverged_at"] is not None for r in records)
    if diverged:
        notes.append(f"{diverged} diverged")
    if budget_ratio is not None and abs(budget_ratio - 1) > BUDGET_WARNING:
        notes.append(f"warning: trained {budget_ratio:.2f}x its budget")
    ways = {(r.get("nproc", 1), r.get("engine", "single")) for r in records}
    for nproc, engine in sorted(ways - {(1, "single")}):
        notes.append(f"data-parallel: {nproc} process{'es' if nproc > 1 else ''} ({engine})")
    apart = _timed_apart(records, base_records)
    if apart:
        notes.append(apart)
    notes.extend(f"failed: {e.splitlines()[-1] if e else ''}"[:160] for e in errors)
    return notes


def _timed_apart(records: list[dict[str, Any]], base_records: list[dict[str, Any]]) -> str | None:
    """A warning when these runs and the baseline's were timed by different invocations (another load)."""
    runs = {r["timing"]["invocation"]: r["timing"] for r in records + base_records if r.get("timing")}
    if len(runs) < 2:
        return None
    loads = ", ".join(str(t.get("load")) for t in runs.values())
    return (
        f"timed apart: {len(runs)} invocations with baseline (load {loads}); rerun with --retime to time them together"
    )


def _baseline_off_budget(base_records: list[dict[str, Any]]) -> str | None:
    """Why the table's speed comparisons are void, or None: the baseline trained more than
    :data:`BUDGET_WARNING` off its budget (a budget given in seconds that it stopped short of)."""
    off = _budget_ratio(base_records)
    if off is None or abs(off - 1) <= BUDGET_WARNING:
        return None
    return f"speed not compared: the baseline trained {off:.2f}x its budget"


def _budget_ratio(records: list[dict[str, Any]]) -> float | None:
    """Achieved training time over the budget, the mean over the runs (each run's own seed's budget)."""
    ratios = [r["wall_clock_s"] / seconds for r in records if (seconds := budget_seconds(r))]
    return statistics.fmean(ratios) if ratios else None


def budget_seconds(record: dict[str, Any]) -> float | None:
    """A run's training budget in seconds: a paced run's ``budget_s``, the reference run's own time
    (its ``budget`` note), or None (a step budget)."""
    return record.get("budget_s") or record.get("budget", {}).get("seconds")


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _cells(row: dict[str, Any], metric: str, budget: str) -> list[str]:
    scale = 100.0 if metric == "accuracy" else 1.0
    spec = ".2f" if metric == "accuracy" else ".4g"
    metric_text = "—"
    if row["metric"] is not None:
        metric_text = f"{row['metric'] * scale:{spec}} ± {row['metric_std'] * scale:{spec}}"
    cells = [
        row["method"],
        f"{row['runs']}" + (f" (+{row['failed']} failed)" if row["failed"] else ""),
        _fmt(row["steps"], ".0f"),
        _fmt(row["wall_clock_s"], ".1f"),
    ]
    if budget == "time":
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


def _head(metric: str, budget: str) -> list[str]:
    unit = " %" if metric == "accuracy" else ""
    at = "at equal time" if budget == "time" else "at equal steps"
    return [
        "method",
        "runs",
        "steps",
        "train s",
        "train s / budget" if budget == "time" else "speed-up vs baseline",
        f"test {metric}{unit} {at} (mean ± std)",
        "median time to target s (reached)",
        "speed to target vs baseline",
        "verdict vs baseline (interval of the deciding test)",
        "notes",
    ]


def markdown_table(rows: list[dict[str, Any]], metric: str, budget: str = "time") -> str:
    """The results as a markdown table (also readable in a terminal)."""
    head = _head(metric, budget)
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(_cells(row, metric, budget)) + " |" for row in rows]
    return "\n".join(lines)


def _colors(plt, count: int):
    """One distinct colour per method: tab10 up to 10 methods, tab20 up to 20 (a comparison with peers)."""
    if count <= 10:
        return plt.cm.tab10(np.arange(count))
    return plt.cm.tab20(np.arange(count) % 20)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[tuple[float, float]]:
    """The points no other point beats in both time (lower) and metric, sorted by time.

    Examples:
        >>> pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9)])
        [(1.0, 0.5), (3.0, 0.9)]
    """
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []
    for seconds, value in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if not front or sign * value > sign * front[-1][1]:
            front.append((seconds, value))
    return front


def _metric_vs_time(plt, outcomes: Outcomes, metric: str, path: Path, target: float | None) -> None:
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    scale = 100.0 if metric == "accuracy" else 1.0
    means: list[tuple[float, float]] = []
    for color, (label, outcome) in zip(_colors(plt, len(outcomes)), outcomes.items()):
        curves = [r["curve"] for r in outcome["records"] if r["curve"]]
        if not curves:
            continue
        for curve in curves:
            ax.plot(
                [p["seconds"] for p in curve],
                [p[f"test_{metric}"] * scale for p in curve],
                color=color,
                alpha=0.25,
                lw=0.8,
            )
        points = min(len(c) for c in curves)
        seconds = np.mean([[p["seconds"] for p in c[:points]] for c in curves], 0)
        values = np.mean([[p[f"test_{metric}"] for p in c[:points]] for c in curves], 0) * scale
        ax.plot(seconds, values, marker="o", ms=3.5, lw=2.2, color=color, label=label)
        means += list(zip(seconds.tolist(), values.tolist()))
    if target is not None:
        ax.axhline(target * scale, color="black", ls=":", lw=1.2, label="target")
    front = pareto_front(means, metric == "accuracy")
    if front:
        ax.step(*zip(*front), where="post", color="black", lw=1.0, ls="--", alpha=0.7, label="Pareto frontier")
    if metric == "accuracy" and means:  # the interesting part: from a little below the worst final mean up
        finals = [v for _, v in means]
        ax.set_ylim(max(0.0, np.percentile(finals, 10) - 5), min(100.0, max(finals) + 2))
    ax.set_xlabel("training wall-clock (s), evaluation excluded")
    ax.set_ylabel(f"test {metric}" + (" (%)" if metric == "accuracy" else ""))
    ax.set_title(f"test {metric} vs wall-clock (each seed faint, mean bold)")
    ax.grid(alpha=0.3)
    legend(ax, loc="lower right" if metric == "accuracy" else "upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _train_loss(plt, outcomes: Outcomes, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for color, (label, outcome) in zip(_colors(plt, len(outcomes)), outcomes.items()):
        traces = [np.array([np.nan if v is None else v for v in r["train_loss"]], float) for r in outcome["records"]]
        if not traces:
            continue
        steps = min(len(t) for t in traces)
        mean = np.nanmean(np.stack([t[:steps] for t in traces]), 0)
        window = max(1, steps // 50)
        smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, label=label, color=color, lw=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_yscale("log")
    ax.set_title("training loss vs step (mean over seeds)")
    ax.grid(alpha=0.3)
    legend(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _grid(plt, count: int, height: float = 2.6):
    cols = min(3, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height * rows), dpi=100, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def _lr(plt, outcomes: Outcomes, path: Path) -> None:
    shown = {label: o["records"][0] for label, o in outcomes.items() if o["records"]}
    fig, axes = _grid(plt, max(1, len(shown)))
    for ax, (label, record) in zip(axes, shown.items()):
        names = list(record["lr"])
        colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(names))))
        for color, name in zip(colors, names):
            ax.plot(record["lr_steps"], record["lr"][name], color=color, lw=1.1)
        ax.set_title(f"{label} ({len(names)} groups)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("each group's LR over time (first seed; colour: first group dark -> last group light)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _freeze(plt, outcomes: Outcomes, path: Path) -> bool:
    shown = {label: o["records"][0] for label, o in outcomes.items() if o["records"] and o["records"][0]["frozen_at"]}
    if not shown:
        return False
    fig, axes = _grid(plt, len(shown), height=3.2)
    for ax, (label, record) in zip(axes, shown.items()):
        names, total = record["groups"], record["steps"]
        ends = [record["frozen_at"].get(name, total) for name in names]
        ax.barh(
            range(len(names)),
            ends,
            color=["tab:blue" if name in record["frozen_at"] else "tab:green" for name in names],
        )
        ax.set_yticks(range(len(names)), names, fontsize=6)
        for decision in record.get("freeze_decisions", []):  # AutoFreeze: the signal that froze the group
            row = names.index(decision["group"])
            text = f" {decision['change']:.2g} < {decision['threshold']:.2g}"
            ax.text(decision["step"], row, text, va="center", fontsize=5)
        ax.invert_yaxis()
        ax.set_xlim(0, total)
        ax.set_xlabel("step (bar: trainable; blue groups then frozen)", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle("freeze timeline", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_all(outcomes: Outcomes, metric: str, out: Path, target: float | None = None) -> list[Path]:
    """Write the comparison's PNG plots into ``out``; returns their paths."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metric_vs_wallclock.png", out / "train_loss.png", out / "lr_by_group.png"]
    _metric_vs_time(plt, outcomes, metric, paths[0], target)
    _train_loss(plt, outcomes, paths[1])
    _lr(plt, outcomes, paths[2])
    if _freeze(plt, outcomes, out / "freeze_timeline.png"):
        paths.append(out / "freeze_timeline.png")
    return paths


FOREST_MARKS = {
    "better": ("better", "^", "#1a9850"),
    "worse": ("worse", "v", "#d73027"),
    "equivalent": ("equivalent", "s", "#4575b4"),
    "undecided": ("open", "o", "#737373"),
    "futile": ("open (stopped)", "X", "#737373"),
    None: ("not judged", "D", "#bdbdbd"),
}
"""A forest row's mark by its accuracy verdict: the word printed beside it, its marker and colour
(the word and the marker keep it readable in greyscale)."""


def forest_rows(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The forest plot's rows: each judged method's paired difference from the baseline in the metric's
    display units, the interval of the test that decided its accuracy question, and its mark."""
    scale, _ = scale_of(metric)
    out = []
    for row in rows:
        if row["tests"] is None or row["method"] == AA_LABEL:
            continue
        accuracy = row["tests"]["accuracy"]
        decision = accuracy["decision"] or {}
        values = [decision.get(k) for k in ("diff", "low", "high")]
        diff, low, high = (None if v is None or not math.isfinite(v) else v * scale for v in values)
        mark = FOREST_MARKS[accuracy["verdict"]][0]
        out.append({"method": row["method"], "diff": diff, "low": low, "high": high, "mark": mark})
    return out


def plot_forest(rows: list[dict[str, Any]], metric: str, margin: float | None, path: Path) -> Path | None:
    """The answer in one picture: one row per method, its difference from the baseline with the deciding
    test's interval, marked better / worse / equivalent / open, the margin (in the metric's stored
    units) a band around zero; None when no method was judged."""
    data = forest_rows(rows, metric)
    if not data:
        return None
    plt = pyplot()
    scale, unit = scale_of(metric)
    marks = {label: (marker, color) for label, marker, color in FOREST_MARKS.values()}
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.45 * len(data)), dpi=110)
    if margin:
        band = margin * scale
        ax.axvspan(-band, band, color="#e0e0e0", zorder=0, label=f"equivalence margin ±{band:g} {unit}")
    ax.axvline(0.0, color="black", lw=0.8)
    for y, item in enumerate(data):
        marker, color = marks[item["mark"]]
        if item["low"] is not None and item["high"] is not None:
            ax.hlines(y, item["low"], item["high"], color=color, lw=2.2)
        if item["diff"] is not None:
            ax.plot(item["diff"], y, marker=marker, ms=9, color=color, mec="black", ls="none")
        ax.annotate(item["mark"], (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=9)
    ax.set_yticks(range(len(data)), [item["method"] for item in data])
    ax.set_ylim(len(data) - 0.5, -0.5)
    ax.set_xlabel(f"test {metric}, method minus baseline ({unit}), paired by seed")
    ax.set_title("against the baseline, with the interval of the test that decided it", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if margin:
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


CAPTIONS = {
    "forest": "The answer in one picture: each method's test metric minus the baseline's, paired by seed, with the "
    "interval of the test that decided it (the sequential boundary's under --seeds auto); marked better (triangle "
    "up), worse (triangle down), equivalent (square) or open (circle; a cross when stopped for futility); the grey "
    "band is the equivalence margin.",
    "metric_vs_wallclock": "Test metric against training wall-clock: every seed faint, the mean bold; the dotted line "
    "is the target, the dashed line the Pareto frontier (the best metric reached by any method at each time).",
    "train_loss": "Training loss against step (moving average, mean over seeds).",
    "lr_by_group": "Every group's learning rate over the run (first seed).",
    "freeze_timeline": "When each group froze (bar: trainable); for AutoFreeze, the gradient-norm change that froze it "
    "against the percentile of the groups still training.",
}


def html_section(
    title: str,
    rows: list[dict[str, Any]],
    metric: str,
    plots: list[Path],
    notes: str = "",
    *,
    snippets: dict[str, str] | None = None,
    budget: str = "time",
    base: Path | None = None,
    level: int = 1,
    answer: str = "",
) -> str:
    """The body of one comparison's report: heading, the answer, setting, table, plots, snippets.

    ``base``: the folder the page lives in (image paths are relative to it; default: the plots' folder).
    """
    head = _head(metric, budget)
    body = [
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in _cells(row, metric, budget)) + "</tr>"
        for row in rows
    ]

    def src(p: Path) -> str:
        return html.escape(str(p.relative_to(base)) if base is not None else p.name)

    def figure(p: Path) -> str:
        return (
            f'<figure><img src="{src(p)}" alt="{html.escape(p.stem)}">'
            f"<figcaption>{html.escape(CAPTIONS.get(p.stem, p.stem))}</figcaption></figure>"
        )

    forest = "".join(figure(p) for p in plots if p.stem == "forest")
    images = "\n".join(figure(p) for p in plots if p.stem != "forest")
    code = "".join(
        f"<details><summary>{html.escape(label)}</summary><pre>{html.escape(text)}</pre></details>"
        for label, text in (snippets or {}).items()
    )
    code = f"<h{level + 1}>Each method in a plain PyTorch loop</h{level + 1}>{code}" if code else ""
    answered = "".join(f"<li>{html.escape(line.removeprefix('- '))}</li>" for line in answer.splitlines())
    answered = f'<ul class="answer">{answered}</ul>' if answered else ""
    return f"""<h{level}>{html.escape(title)}</h{level}>
{answered}
{forest}
<p>{html.escape(notes)}</p>
<div class="scroll"><table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>
{chr(10).join(body)}
</table></div>
{images}
{code}"""


def html_page(title: str, sections: str) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px;line-height:1.4}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}}th{{background:#f3f3f3}}
td:first-child,td:nth-last-child(-n+2){{text-align:left}}td:nth-last-child(2){{min-width:16em}}
.scroll{{overflow-x:auto}}img{{max-width:100%}}figure{{margin:1.5em 0}}figcaption{{color:#444;font-size:90%}}
pre{{background:#f6f8fa;padding:0.8em;overflow-x:auto;font-size:85%}}summary{{cursor:pointer;margin:0.3em 0}}</style>
</head>
<body>
{sections}
</body></html>
"""


def write_html(
    path: Path,
    title: str,
    rows: list[dict[str, Any]],
    metric: str,
    plots: list[Path],
    notes: str = "",
    *,
    snippets: dict[str, str] | None = None,
    budget: str = "time",
    answer: str = "",
) -> Path:
    """One page with the answer, the results table, the plots and each method's snippet (paths relative to the page)."""
    section = html_section(title, rows, metric, plots, notes, snippets=snippets, budget=budget, answer=answer)
    path.write_text(html_page(title, section))
    return path
