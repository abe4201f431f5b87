"""Every flag and every method setting of ``layerwise compare`` is checked before anything runs.

A bad value exits with code 2 and one line naming the flag, with no traceback and nothing written
to ``--out``; a run that fails for another reason is reported and the command exits 1.
"""

import json
import sqlite3

import pytest

from layerwise import cli
from layerwise.compare import METHODS
from layerwise.compare.store import RunStore

BAD_FLAGS = [
    ("--seeds", "0"),
    ("--seeds", "-1"),
    ("--seeds", "x"),
    ("--epochs", "0"),
    ("--epochs", "-1"),
    ("--train-size", "0"),
    ("--train-size", "-5"),
    ("--test-size", "-5"),
    ("--test-size", "x"),
    ("--eval-points", "0"),
    ("--telemetry", "0"),
    ("--budget-seconds", "0"),
    ("--budget-seconds", "inf"),
    ("--budget-seconds", "-3"),
    ("--target", "nan"),
    ("--target", "2"),
    ("--target-tolerance", "-1"),
    ("--policy", "nosuch"),
    ("--budget", "nosuch"),
    ("--methods", ""),
    ("--methods", ","),
    ("--methods", "nosuch"),
    ("--set", "freezeout"),
    ("--set", "freezeout.nosuch=1"),
    ("--set", "nosuch.t0=1"),
]

SETTINGS = [(name, key) for name, method in METHODS.items() for key in method.defaults]


def _run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.err


def _assert_refused(argv, flag, capsys, out):
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert flag in err, err
    assert "Traceback" not in err
    assert not out.exists(), f"{out} was written"


@pytest.mark.parametrize(("flag", "value"), BAD_FLAGS, ids=[f"{f}={v}" for f, v in BAD_FLAGS])
def test_every_bad_flag_is_refused_before_anything_runs(flag, value, capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["compare", "--task", "fashion-mnist", "--quick", "--no-progress", "--out", str(out)]
    if flag != "--methods":
        argv += ["--methods", "baseline,freezeout"]
    named = flag if flag != "--set" or "nosuch." not in value else "--set"
    _assert_refused([*argv, flag, value], named, capsys, out)


@pytest.mark.parametrize("bad", [-1, "abc"])
@pytest.mark.parametrize(("method", "key"), SETTINGS, ids=[f"{m}.{k}" for m, k in SETTINGS])
def test_every_bad_method_setting_is_refused_before_anything_runs(method, key, bad, capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["compare", "--task", "fashion-mnist", "--quick", "--no-progress", "--out", str(out)]
    argv += ["--methods", method, "--set", f"{method}.{key}={json.dumps(bad)}"]
    _assert_refused(argv, f"--set {method}.{key}", capsys, out)


@pytest.mark.parametrize("regime_flag", [[], ["--task", "fashion-mnist"]], ids=["main-job", "one-task"])
def test_a_bad_setting_fails_before_the_main_job_trains_either_regime(regime_flag, capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["compare", *regime_flag, "--quick", "--no-progress", "--out", str(out), "--set", "freezeout.t0=-1"]
    _assert_refused(argv, "--set freezeout.t0", capsys, out)


def test_out_paths_that_cannot_hold_a_comparison_are_refused(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "runs.sqlite").write_text("not a database")
    base = ["compare", "--task", "ellipse", "--methods", "baseline", "--budget", "steps", "--no-progress"]
    for out, problem in ((afile, "is a file"), (afile / "sub", "is a file"), (corrupt, "not a readable run store")):
        code, err = _run([*base, "--out", str(out)], capsys)
        assert code == 2 and "--out" in err and problem in err and "Traceback" not in err


def test_schedule_and_plot_paths_fail_with_one_line(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    code, err = _run(["schedule", "llr", "--groups", "3", "--steps", "10", "--plot", str(afile / "x.png")], capsys)
    assert code == 2 and "--plot" in err and "is a file" in err
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "telemetry.json").write_text(json.dumps({"steps": [1]}))
    code, err = _run(["plot", str(tmp_path / "keys")], capsys)
    assert code == 2 and "telemetry.json is not LayerMonitor telemetry" in err
    (tmp_path / "broken" / "runs").mkdir(parents=True)
    (tmp_path / "broken" / "runs" / "a.json").write_text("{x")
    code, err = _run(["plot", str(tmp_path / "broken")], capsys)
    assert code == 2 and "a.json is not valid JSON" in err and "Traceback" not in err


ELLIPSE = ["compare", "--task", "ellipse", "--budget", "steps", "--no-progress"]


def test_a_run_that_fails_is_reported_and_the_command_exits_1(monkeypatch, capsys, tmp_path):
    from layerwise.compare import session

    real = session.run_one

    def failing(task, method, *args, **kwargs):
        if method == "hidlr":
            raise RuntimeError("boom")
        return real(task, method, *args, **kwargs)

    monkeypatch.setattr(session, "run_one", failing)
    code = cli.main([*ELLIPSE, "--methods", "baseline,hidlr", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and "1 run(s) failed" in captured.err
    assert "failed: RuntimeError: boom" in (tmp_path / "results.md").read_text()


def test_a_finished_run_that_cannot_be_stored_is_kept_and_reported(monkeypatch, capsys, tmp_path):
    def refuse(self, key, record):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(RunStore, "save", refuse)
    with pytest.warns(UserWarning, match="could not store the finished run baseline seed 0"):
        code = cli.main([*ELLIPSE, "--methods", "baseline", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and "could not be stored" in captured.err
    record = json.loads((tmp_path / "runs" / "baseline-seed0.json").read_text())  # written atomically
    assert record["method"] == "baseline" and not list((tmp_path / "runs").glob(".*.tmp"))


def test_runs_timed_by_different_invocations_are_flagged_and_retime_reruns_them(capsys, tmp_path):
    out = ["--out", str(tmp_path)]
    assert cli.main([*ELLIPSE, "--methods", "baseline", *out]) == 0
    assert cli.main([*ELLIPSE, "--methods", "baseline,hidlr", *out]) == 0
    assert "timed apart: 2 invocations" in (tmp_path / "results.md").read_text()
    first = json.loads((tmp_path / "runs" / "baseline-seed0.json").read_text())["timing"]
    assert set(first) == {"invocation", "host", "cpus", "threads", "load"}
    assert cli.main([*ELLIPSE, "--methods", "baseline,hidlr", "--retime", *out]) == 0
    assert "timed apart" not in (tmp_path / "results.md").read_text()
    capsys.readouterr()
