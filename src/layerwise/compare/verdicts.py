"""The comparison's verdicts: one row per method with its decisions against the baseline.

:func:`summarize` reads every method's runs, decides both questions of every method (accuracy, with
equivalence within the margin, and speed to the target) corrected together over the table, and gives
each row the verdict's sentence, its tests as plain dicts (the JSON and HTML read them), what its
seeds could detect, and its notes: divergences, a time off the budget, and seed pairs timed under
different load (:func:`load_gap`) or on different hardware (:func:`hardware_gap`).

``outcomes`` maps each method's label to ``{"records": [...], "errors": [...]}`` (one record per
finished seed, as :func:`layerwise.compare.runner.run_one` returns it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .measures import Budget, Metric, budget_of, metric_of
from .stats import FIRST_LOOK, Decision, Question, decide_fixed, decide_rounds, reach, sizing
from .targets import default_target, margin_of, time_to_target, verdict, verdict_questions, verdict_tests

__all__ = [
    "AA_LABEL",
    "BUDGET_WARNING",
    "LOAD_GAP",
    "Outcomes",
    "budget_seconds",
    "hardware_gap",
    "level_text",
    "load_gap",
    "summarize",
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
    metric: Metric | str = "accuracy",
    target: float | None = None,
    target_tolerance: float | None = None,
    budget: Budget | str = "time",
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
    metric, budget = metric_of(metric), budget_of(budget)
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


def _first_round(base_records: list[dict[str, Any]], sequential: int | None) -> list[float | None]:
    """The baseline's final metrics of its first round: its first 3 seeds when seeds are added until
    decided, else all of them (one round)."""
    return [r["test_metric"] for i, r in enumerate(base_records) if sequential is None or _seed(r, i) < FIRST_LOOK]


def _open(decided: dict[str, Decision | None]) -> list[str]:
    """The questions still open: undecided, and neither claimed nor stopped for futility."""
    return [question for question, d in decided.items() if d is not None and d.verdict == "undecided"]


def level_text(sizing: dict[str, Any]) -> str:
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


def _verdict_text(judged: dict[str, Any] | None, sizing: dict[str, Any] | None, metric: Metric) -> str:
    """The verdict's sentence; an accuracy question without a claim adds what its seeds detect and what
    would decide it."""
    if judged is None:
        return "—"
    text = judged["text"]
    if not sizing or sizing.get("detectable") is None:
        return text
    detects = f"{sizing['pairs']} seed pairs detect {sizing['detectable'] * metric.scale:.2f} {metric.unit}"
    needs = "" if not sizing["needed"] else f", the observed difference needs {sizing['needed']}"
    return f"{text}; {detects}{needs} (at {level_text(sizing)})"


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
