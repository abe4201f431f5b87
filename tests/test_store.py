"""The run store: records, failures and the configuration it belongs to; one comparison per ``--out`` (a lock)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import layerwise
from blobs import blobs_task_file
from layerwise import cli
from layerwise.compare.store import RunStore, locked

TESTS = Path(__file__).parent
SOURCE = str(Path(layerwise.__file__).parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, str(TESTS), os.environ.get("PYTHONPATH", "")])}


def test_runs_and_failures_survive_reopening(tmp_path):
    path = tmp_path / "runs.sqlite"
    key = RunStore.key("freezeout", {"t0": 0.5}, 2)
    assert key == RunStore.variant_key("freezeout", {"t0": 0.5}) + "|2"
    with RunStore(path, {"task": "x"}) as store:
        assert store.finished(key) is None
        store.save(key, {"method": "freezeout", "seed": 2, "steps": 7})
        store.fail("other", "llr", 0, "boom")
    with RunStore(path, {"task": "x"}) as store:
        assert store.finished(key)["steps"] == 7 and store.error("other") == "boom"
        assert store.finished("other") is None


def test_another_configuration_is_refused(tmp_path):
    with RunStore(tmp_path / "runs.sqlite", {"task": "x"}) as store:
        store.save(RunStore.key("baseline", {}, 0), {"method": "baseline", "seed": 0})
    with pytest.raises(ValueError, match="holds runs of a different configuration"):
        RunStore(tmp_path / "runs.sqlite", {"task": "y"})


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
        argv = ["compare", "--task", f"{blobs_task_file(tmp_path)}:make", "--methods", "baseline"]
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
