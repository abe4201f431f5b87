"""The LR sweep: every method at each factor on the task's LR; methods with their own LR run once."""

import json

import pytest

from blobs import blobs_task
from layerwise import cli
from layerwise.compare.sweep import check_factors, lr_sweep, tune_baseline
from layerwise.tasks import resolve_task

TASK = blobs_task("tune-blobs")
TASK_LR = {"ellipse": resolve_task("ellipse").lr}


def test_a_sweep_reports_each_method_at_each_factor_and_own_lr_methods_once(tmp_path):
    result = lr_sweep(
        "ellipse", ["baseline", "hidlr", "adamw"], [0.1, 1.0], budget="steps", out=tmp_path, progress=False
    )
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows["baseline"]["by_factor"]) == {"0.1", "1"}
    assert set(rows["adamw"]["by_factor"]) == {"1"}  # its own LR: run once, at the factor nearest 1
    low, high = (rows["baseline"]["by_factor"][k]["mean"] for k in ("0.1", "1"))
    assert low != high  # the factor reached the optimizer
    assert "(own LR)" in result["table"] and "own LR" in result["table"]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["factors"] == [0.1, 1.0] and (tmp_path / "sweep.png").is_file()
    assert (tmp_path / "lr0.1" / "results.md").is_file() and (tmp_path / "lr1" / "results.md").is_file()


@pytest.mark.parametrize("factors", [[], [0.0], [1.0, 1.0], [float("inf")], [-1.0]])
def test_bad_factors_are_refused(factors):
    with pytest.raises(ValueError, match="--lr-sweep"):
        check_factors(factors)


def test_the_cli_refuses_a_sweep_without_a_task_before_anything_runs(capsys, tmp_path):
    assert cli.main(["compare", "--lr-sweep", "0.1,1", "--out", str(tmp_path / "o")]) == 2
    assert "--lr-sweep: needs --task" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tune_baseline_keeps_the_best_factor_and_reports_its_cost(tmp_path):
    tuned = tune_baseline(TASK, [0.01, 1.0, 30.0], out=tmp_path, budget="steps", progress=False, eval_points=1)
    assert set(tuned.means) == {0.01, 1.0, 30.0} and tuned.runs == 3
    best = max(tuned.means, key=lambda f: tuned.means[f])
    assert tuned.factor == best and tuned.task.lr == pytest.approx(TASK.lr * best)
    assert tuned.means[0.01] < tuned.means[best]  # a hundredth of the LR learns too little in 2 epochs
    assert f"x{best:g}" in tuned.note() and "3 runs" in tuned.note()
    assert (tmp_path / "tune" / "tuning.md").read_text().startswith("# The baseline's LR, tuned")
    assert (tmp_path / "tune" / "lr30" / "results.md").exists()


def test_tune_baseline_refuses_bad_factors_before_training(tmp_path):
    with pytest.raises(ValueError, match="--tune-baseline: distinct finite factors"):
        tune_baseline(TASK, [1.0, 1.0], out=tmp_path)
    assert not (tmp_path / "tune").exists()


def test_the_cli_tunes_the_baseline_then_compares_every_method_at_its_lr(capsys, tmp_path):
    out = tmp_path / "o"
    flags = ["--task", "ellipse", "--methods", "baseline,freezeout", "--budget", "steps", "--eval-points", "1"]
    assert cli.main(["tune", *flags, "--factors", "0.1,1", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--tune-baseline: x" in printed and "The baseline's LR was tuned first" in printed
    kept = float(printed.split("--tune-baseline: x")[1].split()[0])
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert {r["method"] for r in records} == {"baseline", "freezeout"}
    assert (out / "tune" / "lr0.1" / "results.md").exists() and (out / "tune" / "tuning.md").exists()
    assert f"LR {TASK_LR['ellipse'] * kept:g}" in printed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tune-baseline", "1,1", "--task", "ellipse"], "--tune-baseline: distinct finite factors"),
        (["--tune-baseline", "0.5,1"], "--tune-baseline: tunes one comparison's baseline; needs --task"),
    ],
)
def test_the_cli_refuses_a_bad_tuning_before_anything_runs(capsys, tmp_path, flags, message):
    assert cli.main(["compare", *flags, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_sweep_tune_and_study_are_commands_and_compares_old_flags_say_so_and_still_run(monkeypatch, capsys, tmp_path):
    from layerwise.compare import study, sweep

    calls = []
    sweep_result = {"table": "t", "paths": {"markdown": "m", "plot": "p"}, "results": {}}
    monkeypatch.setattr(sweep, "lr_sweep", lambda task, methods, factors, **kw: calls.append(factors) or sweep_result)
    monkeypatch.setattr(study, "run_study", lambda name, **kw: calls.append((name, kw["seeds"])) or {"text": "s"})
    task = ["--task", "ellipse", "--out", str(tmp_path / "o")]
    assert cli.main(["sweep", "--factors", "0.5,2", *task]) == 0
    assert capsys.readouterr().err == "" and calls[-1] == [0.5, 2.0]
    assert cli.main(["compare", "--lr-sweep", "0.5,2", *task]) == 0  # the old form: a line, then the same run
    err = capsys.readouterr().err
    assert "--lr-sweep is deprecated, use `layerwise sweep --factors" in err and calls[-1] == [0.5, 2.0]
    assert cli.main(["study", "llr", "--seeds", "4"]) == 0 and calls[-1] == ("llr", 4)
    assert cli.main(["compare", "--study", "llr"]) == 0 and calls[-1] == ("llr", 3)
    assert "--study is deprecated, use `layerwise study NAME`" in capsys.readouterr().err
    # each command takes its own flags: a sweep names its factors, and the main job's flags are not its
    assert cli.main(["sweep", "--factors", "0.5,2", "--out", str(tmp_path / "p")]) == 2
    assert "--factors: needs --task (a sweep runs one task)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--factors", "0.5,2", "--tasks", "ellipse,blobs"])
    with pytest.raises(SystemExit):
        cli.main(["tune", "--task", "ellipse"])  # --factors is required
    assert cli.main(["tune", "--factors", "1,1", "--task", "ellipse"]) == 2
    assert "--factors: distinct finite factors" in capsys.readouterr().err
