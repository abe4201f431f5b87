"""Tests of :mod:`layerwise.compare.engines`: the processes that train each run of ``compare --nproc N``.

Every run on N gloo processes (a forked :class:`~layerwise.compare.engines.Pool`, or torchrun's
ranks) equals one process with the global batch. The task's batch of 27 splits 13 / 14 over two
ranks, and its 244 examples leave a last batch of one example (rank 0 gets none and joins with
weight 0), so the loss weighting is exercised. Tolerance: the per-step training losses, the final
test loss and each group's final parameter norm agree to rtol 1e-5 (float reduction order differs;
measured differences are ~1e-7), and the test accuracy, frozen steps and step counts are equal.

The worker tests start a real ``layerwise compare --nproc 2`` on the blobs task (a task file), wait
until its two workers exist, kill the parent and require every worker gone 10 s later.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import layerwise
import layerwise.compare.engines as engines
import layerwise.compare.session as session
from blobs import blobs_task, blobs_task_file
from layerwise import cli
from layerwise.compare import compare
from layerwise.compare.methods import METHODS, Method, register_method
from layerwise.compare.parallel import Parallel
from layerwise.tasks import TASKS, register_task

# tests/test_parallel.py registers the same task
TASK = (
    TASKS.get("nproc-blobs")
    if "nproc-blobs" in TASKS
    else register_task(blobs_task("nproc-blobs", batch_size=27, train_size=244))
)
RTOL = 1e-5


def _run(out, methods, **options):
    options = {"seeds": 1, "progress": False, "eval_points": 2, "budget": "steps", **options}
    return compare("nproc-blobs", methods, out=out, **options)


def _records(result):
    assert not [label for label, outcome in result["outcomes"].items() if outcome["errors"]], result["outcomes"]
    return {label: outcome["records"][0] for label, outcome in result["outcomes"].items()}


def _assert_same_runs(parallel, single, nproc, engine):
    assert parallel.keys() == single.keys()
    for label, record in parallel.items():
        alone = single[label]
        assert (record["nproc"], record["engine"]) == (nproc, engine), label
        assert (alone["nproc"], alone["engine"]) == (1, "single")
        assert record["steps"] == alone["steps"] and record["frozen_at"] == alone["frozen_at"], label
        assert record["train_loss"] == pytest.approx(alone["train_loss"], rel=RTOL), label
        assert record["test_loss"] == pytest.approx(alone["test_loss"], rel=RTOL), label
        assert record["test_metric"] == alone["test_metric"], label
        assert record["param_norms"] == pytest.approx(alone["param_norms"], rel=RTOL), label
        for group, lrs in alone["lr"].items():
            assert record["lr"][group] == pytest.approx(lrs, rel=RTOL), (label, group)


CHECKED = ["baseline", "freezeout", "gradual-unfreezing", "multirate", "hidlr", "llr"]
"""The methods both engines are checked with: plain, freezing (two ways), slow parts, probes, per-group LRs."""


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Every method once, in this process alone, with the global batch."""
    return _records(_run(tmp_path_factory.mktemp("single"), CHECKED))


def test_nproc_two_gloo_processes_equal_one_with_the_global_batch(tmp_path, single):
    result = _run(tmp_path, CHECKED, nproc=2)
    _assert_same_runs(_records(result), single, 2, "ddp")
    assert "Data-parallel: every run on 2 processes with DDP" in result["setting"]
    assert all("data-parallel: 2 processes (ddp)" in row["notes"] for row in result["rows"])
    stored = json.loads((tmp_path / "runs" / "freezeout-seed0.json").read_text())
    assert stored["nproc"] == 2 and stored["frozen_at"] == single["freezeout"]["frozen_at"]


def test_nproc_1_is_one_process_and_the_same_store(tmp_path, monkeypatch, single):
    _run(tmp_path, ["baseline"])
    calls = []
    monkeypatch.setattr(session, "run_one", lambda *a, **k: calls.append(a) or {})
    records = _records(_run(tmp_path, ["baseline"], nproc=1))  # the same configuration: nothing reruns
    assert calls == [] and records["baseline"]["engine"] == "single"
    with pytest.raises(ValueError, match="different configuration"):
        _run(tmp_path, ["baseline"], nproc=2)  # data-parallel runs are another configuration


def test_nproc_budget_time_paces_every_rank_by_the_baselines_time(tmp_path):
    records = _records(_run(tmp_path, ["baseline", "freezeout"], nproc=2, budget="time"))
    budget = records["baseline"]["wall_clock_s"]
    assert records["baseline"]["budget"]["reference"] and "seconds" not in records["freezeout"]["budget"]  # once
    assert records["freezeout"]["budget_s"] == budget  # the ranks kept the slowest rank's pace and stopped together
    for record in records.values():
        assert record["nproc"] == 2


def _broken(build, settings):
    raise RuntimeError("this method is broken on purpose")


def test_nproc_a_failed_run_is_reported_and_the_others_complete(tmp_path):
    register_method(Method("broken-nproc", "fails on purpose", _broken))
    try:
        result = _run(tmp_path, ["baseline", "broken-nproc", "llr"], nproc=2)
    finally:
        METHODS.unregister("broken-nproc")
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["broken-nproc"]["failed"] == 1 and "broken on purpose" in rows["broken-nproc"]["notes"]
    assert "rank 0 failed" in result["outcomes"]["broken-nproc"]["errors"][0]
    assert rows["baseline"]["runs"] == 1 and rows["llr"]["runs"] == 1


def test_nproc_cli_run_writes_a_data_parallel_report(tmp_path, capsys):
    argv = ["compare", "--task", "nproc-blobs", "--methods", "baseline,freezeout", "--nproc", "2"]
    argv += ["--budget", "steps", "--eval-points", "1", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 0
    text = (tmp_path / "results.md").read_text()
    assert "Data-parallel: every run on 2 processes" in text and "data-parallel: 2 processes (ddp)" in text
    assert "| freezeout | 1 |" in capsys.readouterr().out


# ---- FSDP2 ---------------------------------------------------------------------------------------


def test_nproc_fsdp_two_gloo_processes_equal_one_with_the_global_batch(tmp_path, single):
    result = _run(tmp_path, CHECKED, nproc=2, fsdp=True)
    _assert_same_runs(_records(result), {m: single[m] for m in CHECKED}, 2, "fsdp")
    assert "with FSDP2 (layerwise.fsdp.shard)" in result["setting"]


# ---- torchrun ------------------------------------------------------------------------------------


def test_nproc_under_torchrun_every_rank_runs_the_cli_and_rank_0_reports(tmp_path, single):
    factory = tmp_path / "task.py"
    factory.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom blobs import blobs_task\n\n"
        "def make():\n    return blobs_task('nproc-blobs', batch_size=27, train_size=244)\n"
    )
    out = tmp_path / "out"
    source = str(Path(layerwise.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    methods = ["baseline", "freezeout", "multirate"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    command += ["layerwise.cli", "compare", "--task", f"{factory}:make", "--methods", ",".join(methods)]
    command += ["--budget", "steps", "--eval-points", "2", "--out", str(out), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| freezeout | 1 |") == 1  # rank 0 alone reports
    records = {m: json.loads((out / "runs" / f"{m}-seed0.json").read_text()) for m in methods}
    _assert_same_runs(records, {m: single[m] for m in methods}, 2, "ddp")


# ---- forked workers end with their session ------------------------------------------------------

TESTS = Path(__file__).parent
SOURCE = str(Path(layerwise.__file__).parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, str(TESTS), os.environ.get("PYTHONPATH", "")])}

_READS_PROC = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc")


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:  # the thread or the process ended
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no reaper collected counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


def _start_compare(tmp_path: Path, nproc: int = 2) -> subprocess.Popen:
    command = [sys.executable, "-m", "layerwise.cli", "compare", "--task", f"{blobs_task_file(tmp_path)}:make"]
    command += ["--methods", "baseline", "--budget", "steps", "--epochs", "5000", "--eval-points", "1"]
    command += ["--nproc", str(nproc), "--out", str(tmp_path / "out"), "--no-progress"]
    with open(tmp_path / "stderr.txt", "w") as stderr:  # a file, not a pipe: leaked workers would hold a pipe open
        return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)


def _stderr(tmp_path: Path) -> str:
    return (tmp_path / "stderr.txt").read_text()[-3000:]


def _wait_for_workers(parent: subprocess.Popen, count: int, tmp_path: Path, timeout: float = 180.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert parent.poll() is None, _stderr(tmp_path)
        workers = _children(parent.pid)
        if len(workers) >= count:
            time.sleep(2.0)  # into the first run
            return _children(parent.pid)
        time.sleep(0.2)
    raise AssertionError(f"no {count} workers after {timeout} s: {_stderr(tmp_path)}")


@_READS_PROC
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_nproc_workers_end_when_the_parent_is_killed(tmp_path, signum):
    parent, workers = _start_compare(tmp_path), set()
    try:
        workers = _wait_for_workers(parent, 2, tmp_path)
        assert len(workers) == 2
        os.kill(parent.pid, signum)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10.0  # they should end at once; a worker alive after 10 s outlived it
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in workers if _alive(pid)]
        assert left == [], f"workers {left} outlived their parent"
        assert parent.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signal.SIGTERM)
    finally:
        for pid in {parent.pid, *_children(parent.pid), *workers}:
            _kill_if_compare(pid)
        parent.wait()


def _kill_if_compare(pid: int) -> None:
    """SIGKILL ``pid`` if it still is one of this test's ``layerwise compare`` processes."""
    with contextlib.suppress(OSError):
        if b"layerwise.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


# ---- the group that executes a comparison's runs, without starting a process -------------------


@pytest.mark.parametrize("nproc", [None, 1])
def test_group_for_one_process_is_none(nproc, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert engines.group_for(nproc, False) is None


@pytest.mark.parametrize(("fsdp", "engine"), [(False, "ddp"), (True, "fsdp")])
def test_group_for_n_processes_is_an_unstarted_pool(fsdp, engine, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = engines.group_for(2, fsdp)
    assert isinstance(group, engines.Pool) and (group.nproc, group.engine, group.rank) == (2, engine, 0)
    assert group._processes == []  # the workers fork on the first run, not before


def test_group_for_under_torchrun_is_this_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(engines, "Launched", lambda engine: ("launched", engine))  # joining needs the other rank
    assert engines.group_for(None, False) == ("launched", "ddp")
    assert engines.group_for(2, True) == ("launched", "fsdp")


@pytest.mark.parametrize(("nproc", "engine", "message"), [(0, "ddp", "--nproc"), (2, "horovod", "engine: one of")])
def test_a_pool_refuses_bad_input_naming_the_argument(nproc, engine, message):
    with pytest.raises(ValueError, match=message):
        engines.Pool(nproc, engine)


def test_an_unstarted_pool_closes_and_restores_the_sigterm_handler():
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with engines.Pool(2, "ddp") as pool:
            pool._exit_on_sigterm()  # what starting the workers does
            assert signal.getsignal(signal.SIGTERM) is engines._raise_exit
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and pool._folder is None
        with pytest.raises(SystemExit) as stopped:
            engines._raise_exit(signal.SIGTERM, None)
        assert stopped.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_unknown_request_is_refused_and_a_failure_names_its_rank():
    with pytest.raises(ValueError, match="data parallel: unknown request 'probe'"):
        engines._execute("probe", None, Parallel(0, 2), TASK, None)
    error = engines._failure(1, "Traceback ...\nboom\n")
    assert str(error) == "data-parallel rank 1 failed:\nTraceback ...\nboom"


def test_a_run_request_on_a_follower_writes_no_tensorboard_log(monkeypatch):
    seen = []
    monkeypatch.setattr(engines, "run", lambda task, spec, **kw: seen.append((spec.tensorboard, kw["parallel"].rank)))
    spec = engines.RunSpec("baseline", {}, tensorboard="logs")
    for rank in (0, 1):
        engines._execute("run", spec, Parallel(rank, 2), TASK, None)
    assert seen == [("logs", 0), (None, 1)]
