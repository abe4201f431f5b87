"""The report's plots (compare/plots.py): the Pareto frontier, the forest plot's rows and marks, and where
the report puts the forest."""

import math

import pytest

from layerwise.compare.pages import write_html
from layerwise.compare.plots import forest_rows, pareto_front, plot_forest
from layerwise.compare.tables import answer
from layerwise.compare.verdicts import AA_LABEL, summarize

BASE = (0.80, 0.78, 0.82)

SHIFTS = {
    "up": (0.050, 0.052, 0.049),
    "down": (-0.050, -0.049, -0.052),
    "same": (0.0001, 0.0002, 0.0),
    "noisy": (0.02, -0.03, 0.01),
}


def _record(seed, final):
    curve = [
        {"step": 1, "seconds": 1.0, "test_accuracy": final - 0.1},
        {"step": 2, "seconds": 2.0, "test_accuracy": final},
    ]
    return {
        "seed": seed,
        "wall_clock_s": 2.0,
        "test_metric": final,
        "diverged_at": None,
        "final_train_loss": 0.5,
        "steps": 10,
        "curve": curve,
        "budget": {"mode": "steps"},
    }


def _rows():
    outcomes = {"baseline": {"records": [_record(s, b) for s, b in enumerate(BASE)], "errors": []}}
    for label, shifts in SHIFTS.items():
        outcomes[label] = {"records": [_record(s, b + d) for s, (b, d) in enumerate(zip(BASE, shifts))], "errors": []}
    return summarize(outcomes, metric="accuracy", budget="steps", margin=0.5)["rows"]


def test_the_forest_has_one_row_per_method_with_the_deciding_tests_interval_and_its_mark():
    rows = _rows()
    data = forest_rows(rows, "accuracy")
    assert [(item["method"], item["mark"]) for item in data] == [
        ("up", "better"),
        ("down", "worse"),
        ("same", "equivalent"),
        ("noisy", "open"),
    ]
    up = next(row for row in rows if row["method"] == "up")["tests"]["accuracy"]["decision"]
    assert (data[0]["diff"], data[0]["low"], data[0]["high"]) == pytest.approx(
        (up["diff"] * 100, up["low"] * 100, up["high"] * 100)
    )
    assert data[0]["low"] > 0 and data[1]["high"] < 0 and -0.5 < data[2]["low"] < data[2]["high"] < 0.5
    assert data[3]["low"] < 0 < data[3]["high"]


def test_the_forest_plot_is_written_and_the_report_opens_with_it(tmp_path):
    pytest.importorskip("matplotlib")
    rows = _rows()
    path = plot_forest(rows, "accuracy", 0.005, tmp_path / "forest.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    page = write_html(
        tmp_path / "report.html", "t", rows, "accuracy", [path], "SETTING", answer=answer(rows, "accuracy")
    )
    text = page.read_text()
    assert text.index('<ul class="answer">') < text.index('src="forest.png"') < text.index("SETTING")


def test_no_judged_method_draws_no_forest(tmp_path):
    rows = [row for row in _rows() if row["method"] == "baseline"]
    assert forest_rows(rows, "accuracy") == [] and plot_forest(rows, "accuracy", None, tmp_path / "f.png") is None


@pytest.mark.parametrize(
    ("points", "higher", "expected"),
    [
        ([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9)], True, [(1.0, 0.5), (3.0, 0.9)]),
        ([(1.0, 0.5), (1.0, 0.6)], True, [(1.0, 0.6)]),
        ([(1.0, 2.0), (2.0, 1.0), (3.0, 1.5)], False, [(1.0, 2.0), (2.0, 1.0)]),
        ([], True, []),
    ],
    ids=["accuracy", "same-time", "loss", "empty"],
)
def test_pareto_front(points, higher, expected):
    assert pareto_front(points, higher) == expected


def test_the_forest_leaves_out_the_aa_twin_and_marks_a_stop_and_an_unjudged_row(tmp_path):
    def judged(method, verdict, decision):
        return {"method": method, "tests": {"accuracy": {"verdict": verdict, "decision": decision}}}

    rows = [
        {"method": "baseline", "tests": None},
        judged(AA_LABEL, "equivalent", {"diff": 0.0, "low": -0.001, "high": 0.001}),
        judged("stopped", "futile", {"diff": -0.5, "low": -math.inf, "high": 0.25}),
        judged("unjudged", None, None),
    ]
    assert forest_rows(rows, "loss") == [  # a loss in its own units; an unbounded end has no number
        {"method": "stopped", "diff": -0.5, "low": None, "high": 0.25, "mark": "open (stopped)"},
        {"method": "unjudged", "diff": None, "low": None, "high": None, "mark": "not judged"},
    ]
    assert forest_rows(rows[2:3], "accuracy")[0]["diff"] == pytest.approx(-50.0)  # accuracy in points
    pytest.importorskip("matplotlib")
    assert plot_forest(rows, "loss", None, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
