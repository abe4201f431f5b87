"""The comparison's report text (compare/results.py): results.md's answer, setting and table."""

import pytest

from blobs import blobs_task
from layerwise.compare import compare
from layerwise.compare.request import CompareConfig, check_request
from layerwise.compare.results import PACED_SNIPPET, write_report
from layerwise.compare.tables import SMOKE, markdown_table
from layerwise.compare.verdicts import summarize
from layerwise.tasks import register_task

register_task(blobs_task("results-blobs"))
register_task(blobs_task("loss-blobs", metric="loss"))


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


def _loss_record(method, seed, final):
    curve = [
        {"step": 8, "seconds": 1.0, "test_loss": final + 0.2},
        {"step": 16, "seconds": 2.0, "test_loss": final},
    ]
    return {
        "method": method,
        "seed": seed,
        "wall_clock_s": 2.0,
        "test_metric": final,
        "diverged_at": None,
        "final_train_loss": final,
        "steps": 16,
        "curve": curve,
        "train_loss": [1.0, 0.9],
        "lr_steps": [0, 15],
        "lr": {"group0": [0.05, 0.05]},
        "groups": ["group0"],
        "frozen_at": {},
        "budget": {"mode": "steps"},
        "train_size": 256,
        "test_examples": 64,
    }


def test_a_loss_report_writes_its_target_and_verdicts_in_the_losss_units(tmp_path):
    request = check_request(
        "loss-blobs", ["baseline", "freezeout"], seeds=3, out=tmp_path, config=CompareConfig(budget="steps")
    )
    counts = {"baseline": 3, "freezeout": 3}
    outcomes = {
        "baseline": {
            "records": [_loss_record("baseline", s, v) for s, v in enumerate((0.50, 0.52, 0.48))],
            "errors": [],
        },
        "freezeout": {
            "records": [_loss_record("freezeout", s, v) for s, v in enumerate((0.40, 0.43, 0.37))],
            "errors": [],
        },
    }
    summary = summarize(outcomes, metric="loss", budget="steps")
    report = write_report(request, counts, outcomes, summary)
    assert report["metric"] == "loss" and report["target"] == pytest.approx(0.505)  # the mean, 1 % worse
    text = (tmp_path / "results.md").read_text()
    assert "Target for 'time to target': test loss 0.505." in report["setting"]
    assert "Equal steps: every method trains 2 epoch(s)." in report["setting"]
    assert report["answer"].startswith("- Best model at equal steps: better freezeout (-0.10 loss).")
    assert "TOST" not in report["setting"]  # a loss has no default equivalence margin
    assert text.startswith(f"# layerwise compare: loss-blobs\n\n{report['answer']}\n\n{report['setting']}\n\n")
    assert "| test loss at equal steps (mean ± std) |" in text and "| freezeout | 3 |" in text
    assert not any(snippet.startswith(PACED_SNIPPET) for snippet in report["snippets"].values())  # steps: unpaced
    assert [p.name for p in report["paths"]["plots"]][:2] == ["forest.png", "metric_vs_wallclock.png"]


def test_a_report_names_the_variants_own_policies_and_the_callers_note(tmp_path):
    from layerwise.compare.session import compare_variants

    variants = [
        ("uniform", "baseline", {}),
        ("step", "baseline", {"policy": "step"}),
        ("1cycle", "llr", {"policy": "onecycle"}),
    ]
    config = CompareConfig(policy="constant", eval_points=2, budget="steps")
    result = compare_variants("results-blobs", variants, config=config, out=tmp_path, progress=False, note="Read me.")
    assert "global policy constant unless a variant sets its own (onecycle, step)" in result["setting"]
    assert result["setting"].endswith(" Read me.") and "Read me." in (tmp_path / "report.html").read_text()
    plain = compare_variants("results-blobs", variants[:1], config=config, out=tmp_path / "plain", progress=False)
    assert "global policy constant, 1 seed(s)" in plain["setting"]
