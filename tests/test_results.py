"""The comparison's report text (compare/results.py): results.md's answer, setting and table."""

from blobs import blobs_task
from layerwise.compare import compare
from layerwise.compare.tables import SMOKE, markdown_table
from layerwise.tasks import register_task

register_task(blobs_task("results-blobs"))


def test_a_quick_comparison_is_a_smoke_run_with_no_speed_ratio_or_verdict(tmp_path):
    result = compare("results-blobs", ["baseline", "freezeout"], out=tmp_path, quick=True, progress=False, seeds=1)
    assert result["answer"] == SMOKE
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["freezeout"]["verdict"] == "smoke run" and rows["freezeout"]["target_ratio"] is None
    assert rows["freezeout"]["metric"] is not None
    text = result["answer"] + result["setting"] + markdown_table(result["rows"], "accuracy")
    assert "x sooner" not in text and "x the baseline" not in text and "x later" not in text
    assert "Verdicts:" not in result["setting"]


def test_the_answer_says_what_the_stops_saved_and_what_stays_open_at_the_cap(tmp_path):
    from layerwise.compare import compare
    from layerwise.tasks import TASKS, register_task

    if "race-blobs" not in TASKS:
        register_task(blobs_task("race-blobs"))
    options = {"policy": "constant", "progress": False, "eval_points": 2, "budget": "steps"}
    result = compare(
        "race-blobs", ["baseline", "freezeout", "llr"], seeds="auto:4", max_runs=10, out=tmp_path, **options
    )
    lines = result["answer"].splitlines()
    seeds_line = next(line for line in lines if line.startswith("- Seeds:"))
    assert seeds_line.startswith(
        "- Seeds: 9 runs, of the 12 that every method to 4 seeds would take: the stops saved 3."
    )
    still = [row["method"] for row in result["rows"] if row["open"]]
    assert seeds_line.endswith(f" Open at the cap (--max-runs 10): {', '.join(still)}." if still else "saved 3.")
