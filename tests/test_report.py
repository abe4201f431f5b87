"""The comparison report: the equal-cost columns, verdicts, the Pareto frontier and the HTML page."""

import pytest

from layerwise.compare.report import markdown_table, pareto_front, plot_all, summarize, write_html


def _record(final, seconds, curve_values, budget_s=10.0, steps=100):
    curve = [{"step": i + 1, "seconds": s, "test_accuracy": v} for i, (s, v) in enumerate(zip(seconds, curve_values))]
    return {
        "wall_clock_s": seconds[-1],
        "test_metric": final,
        "diverged_at": None,
        "final_train_loss": 0.5,
        "steps": steps,
        "curve": curve,
        "train_loss": [1.0, 0.8, 0.6],
        "lr_steps": [0, 1],
        "lr": {"a": [0.1, 0.05]},
        "groups": ["a"],
        "frozen_at": {},
        "budget": {"mode": "time", "source": "baseline", "seconds": budget_s},
    }


def _outcomes():
    seconds = [2.0, 4.0, 6.0, 8.0, 10.0]
    base = [_record(0.80 + d, seconds, [0.5, 0.6, 0.7, 0.78, 0.80 + d]) for d in (0.0, 0.01, 0.005)]
    fast = [_record(0.81 + d, seconds, [0.7, 0.8, 0.805, 0.81, 0.81 + d], steps=150) for d in (0.0, 0.005, -0.005)]
    slow = [_record(0.70, [s * 1.5 for s in seconds], [0.3, 0.4, 0.5, 0.6, 0.70])]
    return {
        "baseline": {"records": base, "errors": []},
        "fast": {"records": fast, "errors": []},
        "over": {"records": slow, "errors": ["Traceback\nRuntimeError: boom"]},
    }


def test_summary_rows_carry_the_equal_cost_columns_and_verdicts():
    summary = summarize(_outcomes(), metric="accuracy")
    rows = {row["method"]: row for row in summary["rows"]}
    assert summary["target"] == pytest.approx(0.80)
    assert rows["baseline"]["verdict"] == "reference" and rows["baseline"]["reached"] == 3
    assert rows["fast"]["steps"] == 150 and rows["fast"]["budget_ratio"] == pytest.approx(1.0)
    assert rows["fast"]["target_ratio"] > 1.5 and "x sooner [" in rows["fast"]["verdict"]
    assert rows["over"]["reached"] == 0 and rows["over"]["failed"] == 1
    assert "warning: trained 1.50x its budget" in rows["over"]["notes"] and "boom" in rows["over"]["notes"]
    table = markdown_table(summary["rows"], "accuracy")
    assert table.splitlines()[0].startswith("| method | runs | steps | train s | train s / budget |")
    assert "time to target s (reached)" in table and "| over | 1 (+1 failed) | 100 |" in table


def test_an_explicit_target_replaces_the_default():
    summary = summarize(_outcomes(), metric="accuracy", target=0.9)
    assert summary["target"] == 0.9 and all(row["reached"] == 0 for row in summary["rows"])


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


def test_plots_and_page(tmp_path):
    outcomes = _outcomes()
    summary = summarize(outcomes, metric="accuracy")
    plots = plot_all(outcomes, "accuracy", tmp_path, target=summary["target"])
    assert [p.name for p in plots] == ["metric_vs_wallclock.png", "train_loss.png", "lr_by_group.png"]
    assert all(p.stat().st_size > 1000 for p in plots)
    page = write_html(
        tmp_path / "report.html", "t", summary["rows"], "accuracy", plots, "notes", snippets={"fast": "opt = 1 < 2"}
    ).read_text()
    assert "Pareto frontier" in page and "train s / budget" in page and "x sooner" in page
    assert "<pre>opt = 1 &lt; 2</pre>" in page and 'src="metric_vs_wallclock.png"' in page


def test_the_budget_ratio_is_each_runs_time_over_its_own_seeds_budget():
    outcomes = _outcomes()  # the baseline trains 10 s on each seed
    for seed, record in enumerate(outcomes["fast"]["records"]):
        record["seed"] = seed
        record["budget"]["seconds"] = [10.0, 8.0, 12.5][seed]  # its seed's budget: that seed's baseline time
    rows = {row["method"]: row for row in summarize(outcomes, metric="accuracy")["rows"]}
    assert rows["baseline"]["budget_ratio"] == pytest.approx(1.0)
    assert rows["fast"]["budget_ratio"] == pytest.approx((1.0 + 1.25 + 0.8) / 3)
    assert rows["over"]["budget_ratio"] == pytest.approx(1.5)


@pytest.mark.parametrize(("given", "void"), [(8.0, True), (9.5, False)], ids=["off-25pct", "off-5pct"])
def test_a_baseline_off_its_budget_voids_every_speed_comparison_in_the_verdicts(given, void):
    outcomes = _outcomes()  # the baseline trains 10 s
    for outcome in outcomes.values():
        for record in outcome["records"]:
            record["budget"].update(seconds=given, source="given")
    rows = {row["method"]: row for row in summarize(outcomes, metric="accuracy")["rows"]}
    verdict = rows["fast"]["verdict"]
    if void:
        assert "x sooner" not in verdict and rows["fast"]["target_ratio"] is None
        assert "speed not compared: the baseline trained 1.25x its budget" in verdict
        assert rows["fast"]["tests"]["speed"]["diff"] is None
    else:
        assert "x sooner [" in verdict and "speed not compared" not in verdict
