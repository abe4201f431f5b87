"""The answer and the results table in text (compare/tables.py)."""

import math

import pytest

from layerwise.compare.measures import budget_of, metric_of
from layerwise.compare.tables import answer, markdown_table, smoke_rows, table_head
from layerwise.compare.verdicts import summarize
from summary_records import seed_record as _record


def test_one_seed_answers_that_nothing_can_be_decided():
    outcomes = {
        "baseline": {"records": [_record(0, 0.8)], "errors": []},
        "m": {"records": [_record(0, 0.9)], "errors": []},
        "broken": {"records": [], "errors": ["Traceback\nRuntimeError: boom"]},
    }
    text = answer(summarize(outcomes, budget="steps")["rows"], "accuracy", "steps")
    assert text.startswith("- One seed per method: no verdict can be decided")
    assert "- No finished run: broken." in text


def _judged(method, verdict, diff=0.0, sizing=None):
    accuracy = {
        "decided": verdict in ("better", "worse", "equivalent"),
        "verdict": verdict,
        "decision": {"diff": diff},
        "margin": 0.005,
    }
    return {"method": method, "runs": 3, "open": [], "sizing": sizing, "tests": {"accuracy": accuracy, "speed": {}}}


def test_the_answer_names_every_kind_of_verdict_with_its_effect():
    rows = [
        _judged("up", "better", 0.02),
        _judged("down", "worse", -0.031),
        _judged("same", "equivalent", 0.0001),
        _judged("open", "undecided", 0.004, sizing={"needed": 7, "pairs": 3, "alpha": 0.025}),
        _judged("hopeless", "futile"),
    ]
    rows[0]["tests"]["speed"] = {"decided": True, "verdict": "better", "decision": {"diff": math.log(2.0)}}
    rows[1]["tests"]["speed"] = {"decided": True, "verdict": "worse", "decision": {"diff": math.log(0.8)}}
    assert answer(rows, "accuracy", "steps").splitlines() == [
        "- Best model at equal steps: better up (+2.00 points); worse down (-3.10 points); equivalent within "
        "±0.50 points: same; undecided open (its observed difference needs 7 seeds at 5 %/2 (Holm): 4 more); "
        "stopped, a decision unlikely by the seed cap: hopeless.",
        "- Soonest to the target: sooner up (2.00x); later down (0.80x).",
    ]


def test_a_loss_answer_is_in_the_losss_own_units():
    rows = [_judged("lower", "better", -0.25)]  # lower is better: a claim of better has a negative difference
    assert answer(rows, "loss").splitlines()[0] == "- Best model at equal time: better lower (-0.25 loss)."


@pytest.mark.parametrize(
    ("metric", "budget", "ratio", "measured"),
    [
        ("accuracy", "time", "train s / budget", "test accuracy % at equal time (mean ± std)"),
        ("loss", "steps", "speed-up vs baseline", "test loss at equal steps (mean ± std)"),
    ],
    ids=["accuracy-time", "loss-steps"],
)
def test_the_table_head_follows_the_budget_and_the_metric(metric, budget, ratio, measured):
    head = table_head(metric_of(metric), budget_of(budget))
    assert head[4:6] == [ratio, measured] and len(head) == 10
    assert markdown_table([], metric, budget).splitlines()[0] == "| " + " | ".join(head) + " |"


def test_a_smoke_run_keeps_what_ran_and_drops_every_ratio_and_verdict():
    rows = [
        {"method": "baseline", "verdict": "reference", "speedup": 1.0, "target_ratio": 1.0, "metric": 0.8},
        {"method": "m", "verdict": "2.00 points better", "speedup": 1.3, "target_ratio": 1.5, "metric": 0.82},
    ]
    rows[1] |= {"tests": {"accuracy": {}}, "open": ["speed"], "sizing": {"needed": 4}}
    smoke = smoke_rows(rows)
    assert [(r["verdict"], r["speedup"], r["target_ratio"], r["metric"]) for r in smoke] == [
        ("reference", None, None, 0.8),
        ("smoke run", None, None, 0.82),
    ]
    assert smoke[1]["tests"] is None and smoke[1]["open"] == [] and smoke[1]["sizing"] is None
    assert rows[1]["verdict"] == "2.00 points better"  # the summary's rows are left as they were
