"""``layerwise compare --nproc N`` / ``--fsdp``: every run on N gloo processes equals one process with the global batch.

The task's batch of 27 splits 13 / 14 over two ranks, and its 244 examples leave a last batch of
one example (rank 0 gets none and joins with weight 0), so the loss weighting is exercised.
Tolerance: the per-step training losses, the final test loss and each group's final parameter
norm agree to rtol 1e-5 (float reduction order differs; measured differences are ~1e-7), and the
test accuracy, frozen steps and step counts are equal.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import layerwise
import layerwise.compare.session as session
from blobs import blobs_task
from layerwise import cli
from layerwise.compare import compare
from layerwise.compare.methods import METHODS, Method, Setup, register_method
from layerwise.compare.parallel import check_parallel
from layerwise.compare.session import check_request
from layerwise.tasks import register_task

TASK = register_task(blobs_task("nproc-blobs", batch_size=27, train_size=244))
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


# ---- bad input, refused before anything loads ----------------------------------------------------


def _sgd(build, settings):
    return Setup(build.optimizer())


def test_nproc_bad_input_is_refused_naming_the_flag(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--task", "nproc-blobs", "--nproc", "0"])
    assert "--nproc: must be an int >= 1, got '0'" in capsys.readouterr().err
    for bad in (0, -2, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="--nproc"):
            check_request("nproc-blobs", ["baseline"], nproc=bad)
    with pytest.raises(ValueError, match="--fsdp: needs --nproc N"):
        check_request("nproc-blobs", ["baseline"], fsdp=True)
    assert cli.main(["compare", "--task", "nproc-blobs", "--fsdp"]) == 2
    assert "--fsdp: needs --nproc N" in capsys.readouterr().err
    with pytest.raises(TypeError, match="--fsdp"):
        check_request("nproc-blobs", ["baseline"], nproc=2, fsdp="yes")
    with pytest.raises(ValueError, match="--nproc: 28 processes share each batch of 27 examples"):
        check_request("nproc-blobs", ["baseline"], nproc=28)
    register_method(Method("serial-only", "no data parallelism", _sgd, not_parallel={"ddp": "it cannot"}))
    try:
        with pytest.raises(
            ValueError, match="--nproc: method 'serial-only' cannot run data-parallel with ddp: it cannot"
        ):
            check_request("nproc-blobs", ["baseline", "serial-only"], nproc=2)
        check_request("nproc-blobs", ["serial-only"], nproc=1)  # one process: no engine, nothing refused
    finally:
        METHODS.unregister("serial-only")
    with pytest.raises(ValueError, match=r"--fsdp: method 'dog' cannot run data-parallel with fsdp: .*deep-copies"):
        check_parallel(2, True, None, ["baseline", "dog"])
    with pytest.raises(ValueError, match="--study: runs in one process"):
        cli._compare(cli_args(["compare", "--study", "llr", "--nproc", "2"]))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="--nproc: 3, but this process is one of a group of 2"):
        check_request("nproc-blobs", ["baseline"], nproc=3)
    with pytest.raises(ValueError, match="torchrun: launch one comparison"):
        cli._compare(cli_args(["compare", "--methods", "baseline"]))


def cli_args(argv):
    """The parsed arguments of ``layerwise ARGV`` (to call a handler without its error printing)."""
    parser = argparse.ArgumentParser(prog="layerwise")
    sub = parser.add_subparsers(dest="command", required=True)
    cli._add_compare(sub)
    return parser.parse_args(argv)


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
