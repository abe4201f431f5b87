"""Equal time on a shared machine: what each run records of its timing, the process clock, and the clock
bench (pairs timed under different load: test_verdicts.py; the smoke run: test_results.py)."""

import time

import pytest

from blobs import blobs_task
from layerwise import cli
from layerwise.bench.clock_bench import DualClock
from layerwise.bench.suite import BENCHES
from layerwise.compare.budget import Pace, clock_of
from layerwise.compare.request import CompareConfig
from layerwise.compare.runner import RunSpec, run
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


def test_the_clock_bench_sums_both_clocks_over_the_intervals_a_run_counts():
    clock = DualClock()
    clock.readings = [(0.0, 0.0), (1.0, 2.0), (5.0, 2.0), (6.0, 4.0)]  # (wall, process): two counted intervals
    assert clock.totals() == (2.0, 4.0) and "clock" in BENCHES
