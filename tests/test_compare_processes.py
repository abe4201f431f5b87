"""`layerwise compare` as processes: one comparison per --out (a lock), and --nproc workers that die with it.

The worker tests start a real ``layerwise compare --nproc 2`` on the blobs task (a task file), wait
until its two workers exist, kill the parent and require every worker gone 10 s later.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import layerwise
from layerwise import cli
from layerwise.compare.store import locked

TESTS = Path(__file__).parent
SOURCE = str(Path(layerwise.__file__).parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, str(TESTS), os.environ.get("PYTHONPATH", "")])}

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc")


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


def _task_file(tmp_path: Path) -> Path:
    path = tmp_path / "task.py"
    path.write_text(
        "from blobs import blobs_task\n\n"
        "def make():\n    return blobs_task('proc-blobs', batch_size=27, train_size=244)\n"
    )
    return path


def _start_compare(tmp_path: Path, nproc: int = 2) -> subprocess.Popen:
    command = [sys.executable, "-m", "layerwise.cli", "compare", "--task", f"{_task_file(tmp_path)}:make"]
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


# ---- one comparison per --out --------------------------------------------------------------------

_HOLD = "import sys, time\nfrom layerwise.compare.store import locked\nwith locked(sys.argv[1]):\n"
_HOLD += "    print('held', flush=True)\n    time.sleep(600)\n"


def _hold(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_compare_on_one_out_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    holder = _hold(out)
    try:
        argv = ["compare", "--task", f"{_task_file(tmp_path)}:make", "--methods", "baseline"]
        argv += ["--budget", "steps", "--out", str(out), "--no-progress"]
        sys.path.insert(0, str(TESTS))
        try:
            assert cli.main(argv) == 2
        finally:
            sys.path.remove(str(TESTS))
        error = capsys.readouterr().err
        assert f"--out: {out} is in use by another layerwise compare (PID {holder.pid})" in error
        assert not (out / "runs.sqlite").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_lock(tmp_path):
    holder = _hold(tmp_path)
    with pytest.raises(ValueError, match=f"PID {holder.pid}"), locked(tmp_path):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locked(tmp_path), locked(tmp_path):  # re-entered by the same process (the CLI and the session both)
        pass
    with locked(tmp_path):  # released
        pass
