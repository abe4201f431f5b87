"""``layerwise compare --executor ray|slurm``: the runs of a round fanned out as jobs, the same records as
in this process, a dead worker retried once, a killed driver resumed, bad input refused before any run."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from layerwise import cli
from layerwise.compare import compare
from layerwise.compare.executors import IN_FLIGHT, RayExecutor, SlurmExecutor
from layerwise.compare.methods import METHODS, resolve_settings
from layerwise.compare.store import RunStore

ray = pytest.importorskip("ray", reason="the cluster extra: pip install 'layerwise[cluster]'")
pytest.importorskip("submitit", reason="the cluster extra: pip install 'layerwise[cluster]'")

TASK = f"{Path(__file__).with_name('executor_task.py')}:make_task"
"""A task file: every worker loads it by its path (and registers its ``dies-once`` method)."""

OPTIONS = {"seeds": 3, "policy": "constant", "progress": False, "eval_points": 2, "budget": "steps"}
SAME = ("seed", "steps", "test_metric", "test_loss", "final_train_loss", "train_loss", "param_norms", "lr")


@pytest.fixture(scope="module", autouse=True)
def _forget_the_task_files_methods():
    """The task file registers its methods in this process too: gone after these tests."""
    yield
    for name in ("dies-once", "fails"):
        if name in METHODS:
            METHODS.unregister(name)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The 2-method, 3-seed comparison in this process, one torch thread per run as on the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compare(TASK, ["baseline", "llr"], out=tmp_path_factory.mktemp("local"), **OPTIONS)["outcomes"]
    finally:
        torch.set_num_threads(threads)


def _records(outcomes, label):
    assert outcomes[label]["errors"] == []
    return outcomes[label]["records"]


def _saves(monkeypatch):
    """Every key a finished run was stored under, in order."""
    saved, real = [], RunStore.save

    def counted(store, key, record):
        saved.append(key)
        return real(store, key, record)

    monkeypatch.setattr(RunStore, "save", counted)
    return saved


def test_ray_gives_the_records_of_this_process(local_ray, in_process, tmp_path, monkeypatch):
    saved = _saves(monkeypatch)
    outcomes = compare(TASK, ["baseline", "llr"], out=tmp_path, executor="ray", **OPTIONS)["outcomes"]
    for label in ("baseline", "llr"):
        here, there = _records(in_process, label), _records(outcomes, label)
        assert [r["seed"] for r in there] == [0, 1, 2]
        for a, b in zip(here, there):
            assert {k: b[k] for k in SAME} == {k: a[k] for k in SAME}
            assert b["node"]["host"] and b["node"]["cpu"] and "node" not in a
    assert len(saved) == len(set(saved)) == 6
    assert json.loads((tmp_path / IN_FLIGHT).read_text()) == {}


def test_a_time_budget_trains_the_baselines_first_and_gives_their_times_to_the_others(local_ray, tmp_path):
    options = {**OPTIONS, "seeds": 2, "budget": "time"}
    outcomes = compare(TASK, ["baseline", "llr"], out=tmp_path, executor=RayExecutor(), **options)["outcomes"]
    base, other = _records(outcomes, "baseline"), _records(outcomes, "llr")
    assert all(r["budget"]["reference"] and r["budget"]["seconds"] == r["wall_clock_s"] for r in base)
    assert [r["budget_s"] for r in other] == [r["wall_clock_s"] for r in base]


def test_the_cli_sends_the_runs_to_ray_and_says_which_runs_an_earlier_driver_left(local_ray, tmp_path, capsys):
    key = RunStore.key("baseline", resolve_settings("baseline"), 0)
    (tmp_path / IN_FLIGHT).write_text(json.dumps({key: {"executor": "ray", "name": "baseline seed 0", "attempt": 0}}))
    argv = ["compare", "--task", TASK, "--methods", "baseline", "--budget", "steps", "--out", str(tmp_path)]
    assert cli.main([*argv, "--executor", "ray", "--cpus-per-run", "1", "--no-progress", "--eval-points", "1"]) == 0
    out, err = capsys.readouterr()
    assert "| baseline | 1 |" in out
    assert "1 run(s) were in flight when the last driver" in err and "(baseline seed 0 on ray); submitted again" in err
    assert json.loads((tmp_path / "runs" / "baseline-seed0.json").read_text())["node"]["cpu"]


def test_a_dead_worker_is_retried_once_and_a_second_death_is_the_runs_error(local_ray, tmp_path, capfd):
    marker = tmp_path / "died"
    settings = {"dies-once": {"marker": str(marker)}}
    options = {**OPTIONS, "seeds": 1}
    outcomes = compare(TASK, ["dies-once"], settings=settings, out=tmp_path / "a", executor="ray", **options)
    assert marker.exists() and len(_records(outcomes["outcomes"], "dies-once")) == 1
    assert "dies-once seed 0: its worker died (" in capfd.readouterr().err
    always = {"dies-once": {"marker": str(tmp_path / "no" / "marker")}}  # a marker it cannot write
    again = compare(TASK, ["dies-once", "fails"], settings=always, out=tmp_path / "b", executor="ray", **options)
    [died] = again["outcomes"]["dies-once"]["errors"]
    assert died.startswith("its worker died twice; the second time: ") and "WorkerCrashedError" in died
    [failed] = again["outcomes"]["fails"]["errors"]
    assert "RuntimeError: this method fails on purpose" in failed
    assert "fails seed 0: its worker died" not in capfd.readouterr().err  # an exception is not retried


def test_submitit_gives_the_records_of_this_process_and_retries_a_dead_worker(in_process, tmp_path, monkeypatch):
    saved = _saves(monkeypatch)
    settings = {"dies-once": {"marker": str(tmp_path / "died")}}
    executor = SlurmExecutor(cluster="local")
    result = compare(TASK, ["baseline", "dies-once"], settings=settings, out=tmp_path, executor=executor, **OPTIONS)
    here = _records(in_process, "baseline")
    for label in ("baseline", "dies-once"):
        for a, b in zip(here, _records(result["outcomes"], label), strict=True):
            assert {k: b[k] for k in SAME} == {k: a[k] for k in SAME}  # dies-once trains as the baseline
    assert len(saved) == len(set(saved)) == 6
    assert len(list((tmp_path / "slurm").glob("*_submitted.pkl"))) == 7  # one job again, after its death


DRIVER = """
import sys
from layerwise.compare import compare
from layerwise.compare.executors import SlurmExecutor
compare(sys.argv[1], ["baseline", "llr"], out=sys.argv[2], executor=SlurmExecutor(cluster="local"), seeds=2,
        policy="constant", progress=False, eval_points=2, budget="steps")
"""


def test_a_killed_driver_resumes_taking_up_the_jobs_in_flight(tmp_path):
    command = [sys.executable, "-c", DRIVER, TASK, str(tmp_path)]
    driver = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    in_flight = tmp_path / IN_FLIGHT
    deadline = time.monotonic() + 60
    while not (in_flight.exists() and len(json.loads(in_flight.read_text())) == 4):
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "4 run(s) an earlier driver left in flight" in again.stderr and "taken up" in again.stderr
    assert len(list((tmp_path / "slurm").glob("*_submitted.pkl"))) == 4  # none submitted twice
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs WHERE status = 'ok'").fetchone() == (4, 4)
    assert json.loads(in_flight.read_text()) == {}


def _refused(capsys, out, *flags):
    argv = ["compare", "--task", TASK, "--methods", "baseline", "--budget", "steps", "--out", str(out), *flags]
    assert cli.main(argv) == 2
    assert not out.exists()  # nothing written to --out
    return capsys.readouterr().err.strip().splitlines()


def test_bad_input_is_one_line_naming_the_flag_before_any_run(local_ray, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        cli.main(["compare", "--task", TASK, "--executor", "spark", "--out", str(out)])
    assert "--executor: invalid choice: 'spark'" in capsys.readouterr().err
    [line] = _refused(capsys, out, "--executor", "ray", "--cpus-per-run", "64")
    assert line.endswith("--cpus-per-run: 64 per run, but a node of the Ray cluster has at most 2")
    [line] = _refused(capsys, out, "--executor", "ray", "--gpus-per-run", "1")
    assert "--gpus-per-run: 1 per run, but a node of the Ray cluster has at most 0" in line
    [line] = _refused(capsys, out, "--executor", "ray", "--ray-address", "127.0.0.1:9")
    assert "--ray-address: nothing answers at 127.0.0.1:9" in line
    [line] = _refused(capsys, out, "--cpus-per-run", "2")
    assert "--cpus-per-run: only with --executor ray or slurm, got --executor local" in line
    [line] = _refused(capsys, out, "--executor", "ray", "--slurm-minutes", "5")
    assert "--slurm-minutes: only with --executor slurm, got --executor ray" in line
    [line] = _refused(capsys, out, "--executor", "ray", "--nproc", "2")
    assert "--nproc: a data-parallel run trains on this machine's processes" in line
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    [line] = _refused(capsys, out, "--executor", "slurm")
    assert "--executor slurm: no Slurm here (sbatch and sinfo not found)" in line
    monkeypatch.setitem(sys.modules, "ray", None)  # the extra not installed
    [line] = _refused(capsys, out, "--executor", "ray")
    assert line.endswith("--executor ray: needs ray, which is not installed; pip install 'layerwise[cluster]'")
    with pytest.raises(ValueError, match="--cpus-per-run: 64 per run, but this machine has at most"):
        compare(TASK, ["baseline"], out=out, executor=SlurmExecutor(cpus_per_run=64, cluster="local"), **OPTIONS)
    assert not out.exists()


def test_slurm_resources_are_checked_against_its_largest_node(tmp_path, monkeypatch):
    for name, text in (("sbatch", ""), ("sinfo", "echo '32+ (null)'; echo '64 gpu:a100:4(S:0-1),tmpdisk:100'")):
        script = tmp_path / name
        script.write_text(f"#!/bin/sh\n{text}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/bin:/usr/bin")
    SlurmExecutor(cpus_per_run=64, gpus_per_run=4).check()
    with pytest.raises(ValueError, match="--cpus-per-run: 65 per run, but a node of the Slurm cluster has at most 64"):
        SlurmExecutor(cpus_per_run=65).check()
    with pytest.raises(ValueError, match="--gpus-per-run: 5 per run, but a node of the Slurm cluster has at most 4"):
        SlurmExecutor(gpus_per_run=5).check()
