"""The LR sweep: every method at each factor on the task's LR; methods with their own LR run once."""

import json

import pytest

from layerwise import cli
from layerwise.compare.sweep import check_factors, lr_sweep


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
