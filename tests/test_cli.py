import json
import subprocess
import sys

import pytest

from layerwise.cli import main


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_schedule_llr_json_matches_smiths_example(capsys):
    out = run_json(
        capsys,
        "schedule",
        "llr",
        "--groups",
        "3",
        "--steps",
        "100",
        "--start",
        "2,1,0.5",
        "--end",
        "0.5,1,2",
        "--windows",
        "0-0.1,0-1,0-1",
        "--json",
    )
    assert out["groups"] == ["group0", "group1", "group2"]
    assert out["steps"] == 100
    assert len(out["lr"]) == 3 and all(len(row) == 100 for row in out["lr"])
    assert [row[0] for row in out["lr"]] == [2.0, 1.0, 0.5]
    assert [row[10] for row in out["lr"]] == pytest.approx([0.5, 1.0, 0.65])
    assert out["lr"][2][99] == pytest.approx(0.5 + 1.5 * 0.99)
    assert out["frozen_at"] == [None, None, None]


def test_schedule_with_model_lr_and_plot(capsys, tmp_path):
    png = tmp_path / "lr.png"
    out = run_json(
        capsys,
        "schedule",
        "discriminative",
        "--model",
        "resnet-cnn",
        "--steps",
        "20",
        "--lr",
        "0.1",
        "--policy",
        "step",
        "--json",
        "--plot",
        str(png),
    )
    assert out["groups"][0] == "stem.0" and out["groups"][-1] == "fc"
    assert out["lr"][-1][0] == pytest.approx(0.1)
    assert out["lr"][-2][0] == pytest.approx(0.1 / 2.6)
    assert out["lr"][-1][19] == pytest.approx(0.1 * 0.001)
    assert png.stat().st_size > 10_000


def test_staggered_json_peaks(capsys):
    out = run_json(capsys, "schedule", "staggered", "--groups", "5", "--steps", "50", "--json")
    assert [row.index(max(row)) for row in out["lr"]] == [10, 15, 20, 25, 30]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["schedule", "nope", "--steps", "10"], "recipe"),
        (["schedule", "llr", "--groups", "3", "--steps", "10", "--windows", "0-2,0-1,0-1"], "windows"),
        (["schedule", "llr", "--groups", "3", "--steps", "10", "--windows", "0.5-0.1,0-1,0-1"], "windows"),
        (["schedule", "llr", "--groups", "2", "--steps", "10", "--start", "1,1,1", "--end", "1,1,1"], "groups"),
        (["schedule", "constant", "--groups", "2", "--steps", "10", "--lr", "-1"], "--lr"),
        (["schedule", "constant", "--groups", "2", "--steps", "10", "--lr", "nan"], "--lr"),
        (["schedule", "constant", "--groups", "2", "--steps", "0"], "--steps"),
        (["schedule", "constant", "--groups", "0", "--steps", "10"], "--groups"),
        (["schedule", "constant", "--groups", "2", "--steps", "10", "--policy", "exp"], "policy"),
        (["schedule", "constant", "--model", "vgg", "--steps", "10"], "model"),
    ],
)
def test_bad_input_exits_2_with_the_argument_named(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_console_script_bench_scheduler_json():
    proc = subprocess.run(
        [sys.executable, "-m", "layerwise.cli", "bench", "scheduler", "--quick", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "scheduler" and result["groups"] == 100
    assert result["step_overhead_ms"] > 0
    assert set(result["per_recipe_ms"]) == {"constant", "discriminative", "llr", "staggered"}


def test_schedule_freezeout_json_and_predicted_saving(capsys):
    out = run_json(capsys, "schedule", "freezeout", "--groups", "5", "--steps", "100", "--json")
    assert out["frozen_at"] == [52, 62, 73, 86, None]  # cubic, t0 = 0.8 -> 0.512 of training
    assert out["lr"][0][0] == pytest.approx(1 / 0.512)  # scaled
    assert out["lr"][0][52] == 0.0 and out["lr"][4][99] > 0
    linear = run_json(
        capsys,
        "schedule",
        "freezeout",
        "--groups",
        "3",
        "--steps",
        "10",
        "--t0",
        "0.5",
        "--strategy",
        "linear",
        "--no-scale-lr",
        "--json",
    )
    assert linear["frozen_at"] == [5, 8, None]
    assert [row[0] for row in linear["lr"]] == [1.0, 1.0, 1.0]
    model = run_json(
        capsys, "schedule", "freezeout", "--model", "resnet-cnn", "--depth", "1", "--steps", "50", "--json"
    )
    assert model["groups"] == ["stem", "layer1", "layer2", "layer3", "fc"]
    assert 0.05 < model["predicted_saving_paper"] < 0.5
    # with the frozen forwards served too: eq. (2)-(3) with a frozen group costing nothing
    assert model["predicted_saving_paper"] < model["predicted_saving_paper_cached"] < 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["schedule", "freezeout", "--groups", "3", "--steps", "10", "--t0", "1.5"], "t0"),
        (["schedule", "freezeout", "--groups", "3", "--steps", "10", "--t0", "0"], "t0"),
        (["schedule", "freezeout", "--groups", "3", "--steps", "10", "--strategy", "quadratic"], "strategy"),
        (["schedule", "freezeout", "--groups", "3", "--steps", "10", "--policy", "cosine"], "policy"),
        (["schedule", "freezeout", "--groups", "3", "--steps", "10", "--measure"], "--model"),
        (["bench", "scheduler", "--set", "nope=1"], "no such option"),
        (["bench", "scheduler", "--set", "nope"], "KEY=VALUE"),
    ],
)
def test_freezeout_and_bench_bad_input(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
