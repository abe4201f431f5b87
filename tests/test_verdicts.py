"""The verdicts (compare/verdicts.py): summarize's rows with their equal-cost columns, paired seeds, misses
counted, Holm's correction over a table's methods, the sequential boundary, the default target, and speed
left unjudged for pairs timed under other load; the A/A noise floor end to end."""

from dataclasses import asdict

import pytest
from scipy import stats

from blobs import blobs_task
from layerwise.compare.stats import boundary, sizing
from layerwise.compare.tables import markdown_table
from layerwise.compare.verdicts import budget_seconds, hardware_gap, load_gap, summarize
from summary_records import seed_record as _record
from summary_records import time_budget_outcomes as _outcomes


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


def test_holm_correction_over_the_table_and_without_it():
    base = [0.80, 0.81, 0.79, 0.80]
    # two methods each about 2 SE ahead: p between 0.025 and 0.05 alone, not after Holm over both
    ahead_a = [b + d for b, d in zip(base, (0.010, 0.005, 0.012, 0.004))]  # paired t 4.0: p 0.028
    ahead_b = [b + d for b, d in zip(base, (0.011, 0.004, 0.013, 0.004))]  # paired t 3.4: p 0.042
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "a": {"records": [_record(s, v) for s, v in enumerate(ahead_a)], "errors": []},
        "b": {"records": [_record(s, v) for s, v in enumerate(ahead_b)], "errors": []},
    }
    raw = {r["method"]: r for r in summarize(outcomes, budget="steps", correction=False)["rows"]}
    corrected = summarize(outcomes, budget="steps")
    rows = {r["method"]: r for r in corrected["rows"]}
    assert corrected["correction"] == "holm"
    for name in ("a", "b"):
        p = raw[name]["tests"]["accuracy"]["p"]
        assert 0.025 < p < 0.05 and "better" in raw[name]["verdict"]
        assert rows[name]["tests"]["accuracy"]["decided"] is False  # Holm: 2 x 0.028 > 0.05 first, so neither
        assert rows[name]["verdict"].startswith("no significant difference: +") and "accuracy" in rows[name]["open"]
        # what would decide it, at the level Holm tests it at next: both questions of both methods open, 5 % / 4
        diffs = [m - b for m, b in zip({"a": ahead_a, "b": ahead_b}[name], base)]
        expected = sizing(diffs, 0.0125)
        assert rows[name]["sizing"] == {**asdict(expected), "alpha": 0.0125}
        assert f"4 seed pairs detect {expected.detectable * 100:.2f} points" in rows[name]["verdict"]
        assert f"needs {expected.needed} (at 5 %/4 (Holm))" in rows[name]["verdict"]
    assert raw["a"]["sizing"] is None and "seed pairs detect" not in raw["a"]["verdict"]  # decided: nothing to size
    # an open row prints the interval of the level it was tested at: it holds zero, the raw 95 % one did not
    assert raw["a"]["tests"]["accuracy"]["low"] > 0
    decision = rows["a"]["tests"]["accuracy"]["decision"]
    assert decision["low"] < 0 < decision["high"] and decision["alpha"] == 0.0125
    # the JSON's interval is the one printed (Holm's level), the one-look 95 % interval kept apart by name
    tested = rows["a"]["tests"]["accuracy"]
    assert (tested["low"], tested["high"]) == (decision["low"], decision["high"])
    assert tested["unadjusted"]["low"] > 0 and tested["unadjusted"]["test"] == "paired t"
    assert f"[{decision['low'] * 100:+.2f}, {decision['high'] * 100:+.2f}] (paired t, 5 %/4)" in rows["a"]["verdict"]


def test_a_method_that_stopped_early_is_printed_with_the_paired_test_that_decided_it():
    # the baseline ran 8 seeds, the method was decided at 3 and stopped: its verdict is the paired t on
    # those 3 pairs with the boundary's interval, never Welch's test over 3 against 8 seeds
    base = [0.80, 0.83, 0.78, 0.81, 0.79, 0.84, 0.77, 0.82]
    ahead = [b + d for b, d in zip(base, (0.031, 0.030, 0.032))]
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "early": {"records": [_record(s, v) for s, v in enumerate(ahead)], "errors": []},
    }
    row = summarize(outcomes, budget="steps", sequential=10)["rows"][1]
    decision = row["tests"]["accuracy"]["decision"]
    assert row["tests"]["accuracy"]["test"] == "paired t" and row["tests"]["accuracy"]["n"] == 3
    critical = boundary(10, 0.025)[1][0]  # the first look, both questions of the one method open: 5 %/2
    half = critical * stats.sem([0.031, 0.030, 0.032])
    assert (decision["low"], decision["high"]) == pytest.approx((0.031 - half, 0.031 + half))
    interval = f"[{decision['low'] * 100:+.2f}, {decision['high'] * 100:+.2f}]"
    assert f"3.10 points better at equal steps {interval} (paired t, sequential, 3 pairs, 5 %/2;" in row["verdict"]
    assert decision["low"] > 0 and "welch" not in row["verdict"]


def test_an_open_question_under_seeds_auto_prints_the_sequential_interval():
    base = [0.80, 0.81, 0.79, 0.80, 0.82]
    noisy = [b + d for b, d in zip(base, (0.010, -0.004, 0.012, 0.002, 0.006))]
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "noisy": {"records": [_record(s, v) for s, v in enumerate(noisy)], "errors": []},
    }
    row = summarize(outcomes, budget="steps", sequential=10)["rows"][1]
    decision = row["tests"]["accuracy"]["decision"]
    assert decision["verdict"] == "undecided" and decision["low"] < 0 < decision["high"]
    critical = boundary(10, 0.025)[1][2]  # 5 pairs: the third look
    diffs = [0.010, -0.004, 0.012, 0.002, 0.006]
    assert decision["high"] - decision["low"] == pytest.approx(2 * critical * stats.sem(diffs))
    assert "(paired t, sequential, 5 pairs, 5 %/2)" in row["verdict"]


def test_the_default_target_is_fixed_by_the_baselines_first_round():
    first = [_record(s, v) for s, v in enumerate((0.80, 0.82, 0.81))]
    later = [_record(s, v) for s, v in ((3, 0.70), (4, 0.72))]  # two low seeds added after looking
    outcomes = {"baseline": {"records": first + later, "errors": []}}
    assert summarize(outcomes, budget="steps", sequential=10)["target"] == pytest.approx(0.81 - 0.005)
    assert summarize(outcomes, budget="steps")["target"] == pytest.approx(0.77 - 0.005)  # one round: every seed


def test_median_time_to_target_counts_a_miss_as_infinite():
    base = [_record(s, 0.8) for s in range(3)]
    late = [_record(0, 0.8), _record(1, 0.6, values=(0.5, 0.55, 0.6)), _record(2, 0.6, values=(0.5, 0.55, 0.6))]
    outcomes = {"baseline": {"records": base, "errors": []}, "late": {"records": late, "errors": []}}
    rows = {r["method"]: r for r in summarize(outcomes, budget="steps")["rows"]}
    assert rows["late"]["reached"] == 1 and rows["late"]["time_to_target_s"] is None
    assert rows["baseline"]["reached"] == 3 and rows["baseline"]["time_to_target_s"] is not None


def test_seeds_added_until_decided_are_judged_by_the_sequential_boundary():
    base = [0.80, 0.81, 0.79]
    ahead = [b + d for b, d in zip(base, (0.010, 0.005, 0.012))]  # paired t 3.4 at 3 pairs: p 0.08
    clear = [b + d for b, d in zip(base, (0.050, 0.051, 0.049))]  # paired t 86.6
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "ahead": {"records": [_record(s, v) for s, v in enumerate(ahead)], "errors": []},
        "clear": {"records": [_record(s, v) for s, v in enumerate(clear)], "errors": []},
    }
    summary = summarize(outcomes, budget="steps", sequential=10)
    rows = {r["method"]: r for r in summary["rows"]}
    assert summary["rule"] == "sequential"
    assert rows["clear"]["tests"]["accuracy"]["decided"] is True and "better" in rows["clear"]["verdict"]
    assert "accuracy" in rows["ahead"]["open"] and rows["ahead"]["sizing"]["needed"] > 3


def _load_record(seed, seconds, load, clock="wall"):
    curve = [{"step": i + 1, "seconds": s, "test_accuracy": v} for i, (s, v) in enumerate(zip(seconds, (0.7, 0.8)))]
    record = {
        "seed": seed,
        "wall_clock_s": seconds[-1],
        "test_metric": 0.8,
        "diverged_at": None,
        "final_train_loss": 0.5,
        "steps": 100,
        "curve": curve,
        "budget": {"mode": "steps"},
        "clock": clock,
    }
    return record if load is None else {**record, "load": {"start": load, "end": load, "mean": load, "cpus": 2}}


def _load_outcomes(method_loads, base_loads, clock="wall"):
    # the method reaches the target at 2 s, the baseline at 4 s, on every seed: 2x sooner if timed alike
    base = [_load_record(s, (2.0, 4.0), load, clock) for s, load in enumerate(base_loads)]
    fast = [_load_record(s, (1.0, 2.0), load, clock) for s, load in enumerate(method_loads)]
    return {"baseline": {"records": base, "errors": []}, "fast": {"records": fast, "errors": []}}


def _load_row(outcomes):
    rows = summarize(outcomes, metric="accuracy", budget="steps", target=0.75)["rows"]
    return rows[1]


def test_pairs_timed_under_different_load_get_no_speed_verdict_and_the_row_says_why():
    row = _load_row(_load_outcomes([0.5, 0.4, 0.6], [6.5, 0.3, 0.5]))
    assert row["timed_under_other_load"] == [0]
    assert row["tests"]["speed"]["n"] == 2  # seeds 1 and 2 only
    assert row["notes"] == (
        "timed under different load: 1 of 3 seed pairs, load average seed 0 (0.5 vs the baseline's 6.5); their "
        "speed is left out, and their accuracy at equal time came from unequal steps (--clock process, or --retime "
        "on an idle machine)"
    )


def test_a_method_timed_under_other_load_on_every_seed_is_not_judged_on_speed():
    row = _load_row(_load_outcomes([0.5, 0.4, 0.6], [6.5, 7.0, 5.0]))
    assert row["target_ratio"] is None and "x sooner" not in row["verdict"]
    assert row["verdict"].endswith("; speed not judged: timed under different load")
    assert row["tests"]["speed"]["decided"] is None


def test_the_process_clock_and_unknown_loads_are_never_flagged():
    alike = _load_row(_load_outcomes([0.5, 0.4, 0.6], [0.5, 0.4, 0.6]))
    for row in (
        _load_row(_load_outcomes([0.5, 0.4, 0.6], [6.5, 7.0, 5.0], "process")),
        _load_row(_load_outcomes([None] * 3, [None] * 3)),
    ):
        assert row["timed_under_other_load"] == [] and row["notes"] == ""
        assert row["target_ratio"] == alike["target_ratio"] == pytest.approx(2.0)


def _timed(seed, seconds, host, cuda):
    curve = [
        {"step": 1, "seconds": seconds / 2, "test_accuracy": 0.7},
        {"step": 2, "seconds": seconds, "test_accuracy": 0.8},
    ]
    node = {"host": host, "cpu": "EPYC", "cuda": cuda}
    record = {"seed": seed, "wall_clock_s": seconds, "test_metric": 0.8, "diverged_at": None, "final_train_loss": 0.5}
    return {**record, "steps": 2, "curve": curve, "budget": {"mode": "steps"}, "node": node}


def test_pairs_timed_on_different_hardware_are_left_out_of_the_speed_verdict():
    base = [_timed(s, 4.0, f"n{s}", "A100") for s in range(3)]
    fast = [_timed(0, 2.0, "n9", "H100"), *(_timed(s, 2.0, f"n{s + 5}", "A100") for s in (1, 2))]
    outcomes = {"baseline": {"records": base, "errors": []}, "fast": {"records": fast, "errors": []}}
    row = summarize(outcomes, metric="accuracy", budget="steps", target=0.75)["rows"][1]
    assert row["timed_on_other_hardware"] == [0] and row["timed_under_other_load"] == []
    assert row["tests"]["speed"]["n"] == 2  # seeds 1 and 2: other hosts, the same CPU and GPU
    assert (
        "timed on different hardware: 1 of 3 seed pairs, seed 0 (n9 (EPYC, H100) vs the baseline's n0 (EPYC, A100))"
        in row["notes"]
    )
    everywhere = [_timed(s, 2.0, "n9", "H100") for s in range(3)]
    outcomes["fast"]["records"] = everywhere
    row = summarize(outcomes, metric="accuracy", budget="steps", target=0.75)["rows"][1]
    assert row["verdict"].endswith("; speed not judged: timed on different hardware")


def test_aa_runs_the_baseline_twice_and_reports_the_noise_floor_first(tmp_path, monkeypatch):
    import layerwise.compare.session as session
    from layerwise.compare import compare
    from layerwise.compare.verdicts import AA_LABEL
    from layerwise.tasks import TASKS, register_task

    if "aa-blobs" not in TASKS:
        register_task(blobs_task("aa-blobs"))
    calls = []
    real = session.run_one

    def counted(task, method, *args, seed, **kwargs):
        calls.append((method, seed))
        return real(task, method, *args, seed=seed, **kwargs)

    monkeypatch.setattr(session, "run_one", counted)
    options = {"policy": "constant", "progress": False, "eval_points": 2, "budget": "steps", "seeds": 2}
    result = compare("aa-blobs", ["baseline", "llr"], out=tmp_path, aa=True, **options)
    assert sorted(calls) == [("baseline", 0), ("baseline", 0), ("baseline", 1), ("baseline", 1), ("llr", 0), ("llr", 1)]
    rows = {r["method"]: r for r in result["rows"]}
    assert rows[AA_LABEL]["runs"] == 2 and rows[AA_LABEL]["tests"] is not None
    assert result["answer"].startswith("- Best model at equal steps:")
    floor = rows[AA_LABEL]["verdict"]
    assert f"Noise floor (the baseline against its own second run, --aa): {floor}" in result["answer"]
    text = (tmp_path / "results.md").read_text()
    assert text.index("Noise floor") < text.index("| method |")
    assert "Noise floor" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("record", "base", "gap"),
    [
        ({"timing": {"host": "n2"}}, {"timing": {"host": "n1"}}, ("n2", "n1")),  # hosts only: they decide
        ({"timing": {"host": "n1"}}, {"timing": {"host": "n1"}}, None),
        ({"node": {"host": "n2", "cpu": "EPYC"}}, {"node": {"host": "n1", "cpu": "EPYC"}}, None),  # one kind
        ({"node": {"host": "n2", "cpu": "EPYC"}}, {"timing": {"host": "n1"}}, ("n2 (EPYC)", "n1")),
        ({}, {"timing": {"host": "n1"}}, None),  # unknown: never flagged
    ],
    ids=["other-host", "same-host", "same-cpu", "cpu-against-host", "unknown"],
)
def test_hardware_gap_reads_the_node_else_the_host_of_the_invocation(record, base, gap):
    assert hardware_gap(record, base) == gap


def test_load_gap_flags_a_difference_over_one_runnable_thread_only():
    assert load_gap({"load": {"mean": 1.5}}, {"load": {"mean": 0.5}}) is None  # LOAD_GAP itself: alike
    assert load_gap({"load": {"mean": 0.3}}, {"load": {"mean": 1.4}}) == (0.3, 1.4)
    assert load_gap({"load": {"mean": 6.0}, "clock": "process"}, {"load": {"mean": 0.4}}) is None  # one unmoved


@pytest.mark.parametrize(
    ("record", "seconds"),
    [
        ({"budget_s": 8.0, "budget": {"mode": "time", "source": "baseline"}}, 8.0),  # a paced run
        ({"budget": {"mode": "time", "reference": True, "seconds": 9.5}}, 9.5),  # the baseline's reference run
        ({"budget": {"mode": "steps"}}, None),
        ({}, None),
    ],
    ids=["paced", "reference", "steps", "old-record"],
)
def test_budget_seconds_is_the_paced_budget_or_the_reference_runs_own_time(record, seconds):
    assert budget_seconds(record) == seconds


def test_a_method_level_with_the_baseline_gets_its_verdict_not_a_crash():
    """Accuracies on 400 test examples whose differences cancel (-0.25, +0.75, -0.5 points): their float
    mean is 3.7e-17, not 0. Sizing that as an effect overflowed the search for the pairs it needs (a
    TypeError from scipy after every run of the comparison had trained); it is a zero difference."""
    base, level = [0.6575, 0.6525, 0.6625], [0.655, 0.66, 0.6575]
    assert sum(m - b for m, b in zip(level, base)) != 0.0  # the float rounding this is about
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "level": {"records": [_record(s, v) for s, v in enumerate(level)], "errors": []},
    }
    row = summarize(outcomes, budget="steps", sequential=10)["rows"][1]
    assert row["tests"]["accuracy"]["decision"]["verdict"] in ("undecided", "futile")
    assert row["sizing"]["needed"] is None and "+0.00 points" in row["verdict"]
