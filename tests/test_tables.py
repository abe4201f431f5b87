"""The answer and the results table in text (compare/tables.py)."""

from layerwise.compare.tables import answer
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
