"""Equal time on a shared machine: what each run records of its timing, pairs timed under different
load, the process clock, and the smoke run that claims nothing."""

import time

import pytest

from blobs import blobs_task
from layerwise import cli
from layerwise.bench.clock_bench import DualClock
from layerwise.bench.suite import BENCHES
from layerwise.compare import compare
from layerwise.compare.budget import Pace, clock_of
from layerwise.compare.report import SMOKE, markdown_table, summarize
from layerwise.compare.runner import RunSpec, run
from layerwise.compare.session import CompareConfig
from layerwise.tasks import register_task

TASK = register_task(blobs_task("clock-blobs"))


def test_a_run_records_its_clock_its_load_and_its_step_times():
    record = run(TASK, RunSpec("baseline", steps=6, eval_points=2))
    assert record["clock"] == "wall"
    assert set(record["load"]) == {"start", "end", "mean", "cpus"} and record["load"]["cpus"] >= 1
    assert record["load"]["mean"] is not None and record["load"]["start"] >= 0
    assert 0 < record["step_s"]["median"] <= record["step_s"]["p90"]


def test_the_process_clock_times_a_run_by_its_own_cpu_seconds():
    record = run(TASK, RunSpec("baseline", steps=4, eval_points=1, clock="process"))
    assert record["clock"] == "process" and clock_of("process") == (time.process_time, "process")
    assert clock_of("wall") == (time.perf_counter, "wall")


class _SleepingScheduler:
    def step(self) -> None:
        time.sleep(0.2)


def test_a_sleeping_scheduler_does_not_spend_a_process_clock_budget():
    process, wall = Pace(budget_s=1.0, schedule_steps=10), Pace(budget_s=1.0, schedule_steps=10)
    for pace in (process, wall):
        pace.add(0.1)  # one step: the schedules are due one step
    assert process.catch_up(_SleepingScheduler(), clock_of("process")[0]) < 0.05
    assert wall.catch_up(_SleepingScheduler(), clock_of("wall")[0]) >= 0.2


def test_an_unknown_clock_is_refused_naming_the_flag(capsys):
    with pytest.raises(ValueError, match=r"^--clock: must be one of \('wall', 'process'\), got 'sundial'$"):
        CompareConfig(clock="sundial")
    with pytest.raises(ValueError, match=r"^--clock: must be one of \('wall', 'process'\), got 'sundial'$"):
        clock_of("sundial")
    assert cli.main(["compare", "--task", "clock-blobs", "--clock", "sundial", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "layerwise compare: error: --clock: must be one of ('wall', 'process'), got 'sundial'\n"


def _record(seed, seconds, load, clock="wall"):
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


def _outcomes(method_loads, base_loads, clock="wall"):
    # the method reaches the target at 2 s, the baseline at 4 s, on every seed: 2x sooner if timed alike
    base = [_record(s, (2.0, 4.0), load, clock) for s, load in enumerate(base_loads)]
    fast = [_record(s, (1.0, 2.0), load, clock) for s, load in enumerate(method_loads)]
    return {"baseline": {"records": base, "errors": []}, "fast": {"records": fast, "errors": []}}


def _row(outcomes):
    rows = summarize(outcomes, metric="accuracy", budget="steps", target=0.75)["rows"]
    return rows[1]


def test_pairs_timed_under_different_load_get_no_speed_verdict_and_the_row_says_why():
    row = _row(_outcomes([0.5, 0.4, 0.6], [6.5, 0.3, 0.5]))
    assert row["timed_under_other_load"] == [0]
    assert row["tests"]["speed"]["n"] == 2  # seeds 1 and 2 only
    assert row["notes"] == (
        "timed under different load: 1 of 3 seed pairs, load average seed 0 (0.5 vs the baseline's 6.5); their "
        "speed is left out, and their accuracy at equal time came from unequal steps (--clock process, or --retime "
        "on an idle machine)"
    )


def test_a_method_timed_under_other_load_on_every_seed_is_not_judged_on_speed():
    row = _row(_outcomes([0.5, 0.4, 0.6], [6.5, 7.0, 5.0]))
    assert row["target_ratio"] is None and "x sooner" not in row["verdict"]
    assert row["verdict"].endswith("; speed not judged: timed under different load")
    assert row["tests"]["speed"]["decided"] is None


def test_the_process_clock_and_unknown_loads_are_never_flagged():
    alike = _row(_outcomes([0.5, 0.4, 0.6], [0.5, 0.4, 0.6]))
    for row in (_row(_outcomes([0.5, 0.4, 0.6], [6.5, 7.0, 5.0], "process")), _row(_outcomes([None] * 3, [None] * 3))):
        assert row["timed_under_other_load"] == [] and row["notes"] == ""
        assert row["target_ratio"] == alike["target_ratio"] == pytest.approx(2.0)


def test_a_quick_comparison_is_a_smoke_run_with_no_speed_ratio_or_verdict(tmp_path):
    result = compare("clock-blobs", ["baseline", "freezeout"], out=tmp_path, quick=True, progress=False, seeds=1)
    assert result["answer"] == SMOKE
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["freezeout"]["verdict"] == "smoke run" and rows["freezeout"]["target_ratio"] is None
    assert rows["freezeout"]["metric"] is not None
    text = result["answer"] + result["setting"] + markdown_table(result["rows"], "accuracy")
    assert "x sooner" not in text and "x the baseline" not in text and "x later" not in text
    assert "Verdicts:" not in result["setting"]


def test_the_clock_bench_sums_both_clocks_over_the_intervals_a_run_counts():
    clock = DualClock()
    clock.readings = [(0.0, 0.0), (1.0, 2.0), (5.0, 2.0), (6.0, 4.0)]  # (wall, process): two counted intervals
    assert clock.totals() == (2.0, 4.0) and "clock" in BENCHES
