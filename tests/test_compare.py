"""``layerwise compare``: same seeds and data for every method, stored runs, resume, failures, bad input."""

import json
import math

import pytest
import torch
from torch import nn

import layerwise.compare.session as compare_module
from blobs import blobs, blobs_task, mlp
from layerwise import cli
from layerwise.compare import compare
from layerwise.compare.methods import METHODS, Method, Setup, register_method
from layerwise.compare.runner import run_one
from layerwise.tasks import TASKS, register_task

TINY = register_task(blobs_task("tiny-blobs"))


def _run(out, methods, **options):
    options = {"seeds": 1, "policy": "constant", "progress": False, "eval_points": 2, "budget": "steps", **options}
    return compare("tiny-blobs", methods, out=out, **options)


def test_baseline_equals_a_hand_written_loop():
    record = run_one("tiny-blobs", "baseline", seed=3, policy="constant", eval_points=1)
    data = blobs(None, False)
    torch.manual_seed(3)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    order = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(2):
        perm = torch.randperm(256, generator=order)
        for i in range(8):
            idx = perm[i * 32 : (i + 1) * 32]
            loss = nn.functional.cross_entropy(model(data.train[0][idx]), data.train[1][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert record["train_loss"] == pytest.approx(losses, rel=1e-6)
    with torch.no_grad():
        accuracy = (model(data.test[0]).argmax(1) == data.test[1]).float().mean().item()
    assert record["test_metric"] == pytest.approx(accuracy)
    assert record["steps"] == 16 and len(record["curve"]) == 1


def test_methods_see_the_same_batches_and_differ_only_in_lrs():
    a = run_one("tiny-blobs", "baseline", seed=1, policy="constant")
    b = run_one("tiny-blobs", "llr", {"first": 1.0, "last": 1.0}, seed=1, policy="constant")
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)  # llr with flat multipliers = baseline
    c = run_one("tiny-blobs", "llr", seed=1, policy="constant")
    assert c["train_loss"][0] == pytest.approx(a["train_loss"][0])  # same init and first batch
    assert c["lr"]["0"][0] == pytest.approx(0.05 * 1.5) and c["lr"]["4"][0] == pytest.approx(0.05 * 0.5)


def test_every_method_runs_on_the_tiny_task():
    part = TINY.partition_of(mlp())
    for name in [n for n, method in METHODS.items() if method.applies(TINY, part) is None]:  # lp-ft: fine-tuning
        record = run_one("tiny-blobs", name, seed=0, policy="cosine")
        assert record["test_metric"] is not None and 0.0 <= record["test_metric"] <= 1.0, name
        assert record["steps"] == 16 and len(record["train_loss"]) == 16
    freeze = run_one("tiny-blobs", "freezeout", seed=0)
    assert sorted(freeze["frozen_at"]) == ["0", "2"]  # the head (4) trains to the end
    multirate = run_one("tiny-blobs", "multirate", {"k": 4}, seed=0, policy="constant")
    assert multirate["lr"]["4"][0] == pytest.approx(0.05) and multirate["lr"]["0"][0] == pytest.approx(0.2)
    hidlr = run_one("tiny-blobs", "hidlr", {"update_every": 4, "max_interval": None}, seed=0)
    assert hidlr["found_lr_stats"]["probe_rounds"] == 4  # a fixed interval: steps 0, 4, 8, 12
    adaptive = run_one("tiny-blobs", "hidlr", {"update_every": 4}, seed=0)
    assert adaptive["found_lr_stats"]["probe_rounds"] == 2  # the default: the interval grows, 4 -> 8 -> 16


def test_compare_writes_table_records_plots_and_html(tmp_path):
    result = _run(tmp_path, ["baseline", "freezeout", "hidlr"], seeds=2)
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["baseline", "freezeout", "hidlr"]
    assert rows["baseline"]["speedup"] == pytest.approx(1.0) and rows["baseline"]["runs"] == 2
    for row in rows.values():
        assert 0.0 <= row["metric"] <= 1.0 and row["metric_std"] >= 0.0 and row["failed"] == 0
    assert "| freezeout | 2 |" in (tmp_path / "results.md").read_text()
    records = sorted(p.name for p in (tmp_path / "runs").glob("*.json"))
    assert records == [f"{m}-seed{s}.json" for m in ("baseline", "freezeout", "hidlr") for s in (0, 1)]
    assert json.loads((tmp_path / "runs" / "hidlr-seed1.json").read_text())["seed"] == 1
    for name in ("metric_vs_wallclock.png", "train_loss.png", "lr_by_group.png", "freeze_timeline.png"):
        assert (tmp_path / name).stat().st_size > 1000
    page = (tmp_path / "report.html").read_text()
    assert "<table>" in page and 'src="freeze_timeline.png"' in page and "hidlr" in page


def test_interrupted_comparison_resumes_without_redoing_finished_runs(tmp_path, monkeypatch):
    calls = []
    real = compare_module.run_one

    def interrupted(task, method, *args, **kwargs):
        calls.append(method)
        if method == "llr":
            raise KeyboardInterrupt
        return real(task, method, *args, **kwargs)

    monkeypatch.setattr(compare_module, "run_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, ["baseline", "llr", "freezeout"])
    assert calls == ["baseline", "llr"]
    assert (tmp_path / "runs.sqlite").exists()
    calls.clear()

    def counted(task, method, *args, **kwargs):
        calls.append(method)
        return real(task, method, *args, **kwargs)

    monkeypatch.setattr(compare_module, "run_one", counted)
    result = _run(tmp_path, ["baseline", "llr", "freezeout"])
    assert calls == ["llr", "freezeout"]  # baseline was kept
    assert [row["runs"] for row in result["rows"]] == [1, 1, 1]
    calls.clear()
    _run(tmp_path, ["baseline", "llr", "freezeout"])
    assert calls == []


def test_runs_go_seed_major_and_an_interrupted_one_resumes_where_it_stopped(tmp_path, monkeypatch):
    calls = []
    real = compare_module.run_one

    def interrupted(task, method, *args, seed, **kwargs):
        calls.append((method, seed))
        if (method, seed) == ("llr", 1):
            raise KeyboardInterrupt
        return real(task, method, *args, seed=seed, **kwargs)

    monkeypatch.setattr(compare_module, "run_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, ["baseline", "llr"], seeds=2)
    assert calls == [("baseline", 0), ("llr", 0), ("baseline", 1), ("llr", 1)]
    calls.clear()

    def counted(task, method, *args, seed, **kwargs):
        calls.append((method, seed))
        return real(task, method, *args, seed=seed, **kwargs)

    monkeypatch.setattr(compare_module, "run_one", counted)
    result = _run(tmp_path, ["baseline", "llr"], seeds=2)
    assert calls == [("llr", 1)]
    assert [row["runs"] for row in result["rows"]] == [2, 2]


def _broken(build, settings):
    raise RuntimeError("this method is broken on purpose")


def test_a_failed_run_is_reported_and_the_others_complete(tmp_path):
    register_method(Method("broken", "fails on purpose", _broken))
    try:
        result = _run(tmp_path, ["baseline", "broken", "llr"])
    finally:
        METHODS.unregister("broken")
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["broken"]["runs"] == 0 and rows["broken"]["failed"] == 1
    assert "this method is broken on purpose" in rows["broken"]["notes"]
    assert rows["llr"]["runs"] == 1 and rows["baseline"]["runs"] == 1
    assert "failed" in (tmp_path / "results.md").read_text()


def test_a_user_method_is_compared_like_the_built_in_ones(tmp_path):
    def adam(build, settings):
        return Setup(torch.optim.Adam(build.model.parameters(), lr=settings["lr"]))

    register_method(Method("adam", "plain Adam", adam, {"lr": 1e-3}))
    try:
        result = compare(
            "tiny-blobs",
            ["baseline", "adam"],
            settings={"adam": {"lr": 0.01}},
            out=tmp_path,
            progress=False,
            eval_points=1,
            budget="steps",
        )
    finally:
        METHODS.unregister("adam")
    record = result["outcomes"]["adam"]["records"][0]
    assert record["settings"] == {"lr": 0.01} and record["lr"]["group0"][0] == 0.01  # one naming rule: group<i>


def test_another_configuration_in_the_same_directory_is_refused(tmp_path):
    _run(tmp_path, ["baseline"])
    with pytest.raises(ValueError, match="different configuration"):
        _run(tmp_path, ["baseline"], epochs=3)


def test_bad_input_fails_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "run_one", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"unknown \['nope'\]; choose from .*baseline"):
        _run(tmp_path / "a", ["baseline", "nope"])
    with pytest.raises(ValueError, match="task: unknown 'nope'; choose from"):
        compare("nope", ["baseline"], out=tmp_path / "b")
    with pytest.raises(ValueError, match=r"multirate does not apply to task 'ellipse'.*no output head"):
        compare("ellipse", ["baseline", "multirate"], out=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match=r"--set freezeout.t9: unknown setting"):
        compare("tiny-blobs", ["freezeout"], settings={"freezeout": {"t9": 1}}, out=tmp_path / "d")
    with pytest.raises(ValueError, match="settings for methods that are not compared"):
        compare("tiny-blobs", ["baseline"], settings={"llr": {"first": 2}}, out=tmp_path / "e")
    with pytest.raises(ValueError, match="seeds: must be an int >= 1"):
        _run(tmp_path / "f", ["baseline"], seeds=0)
    assert not (tmp_path / "a").exists()


def test_cli_compare_errors_and_listing(tmp_path, capsys):
    assert cli.main(["compare", "--methods", "baseline,bogus", "--task", "tiny-blobs", "--out", str(tmp_path)]) == 2
    assert "unknown ['bogus']" in capsys.readouterr().err
    assert cli.main(["compare", "--set", "freezeout", "--task", "tiny-blobs"]) == 2
    assert "METHOD.KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["compare", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-blobs" in listing and "freezeout+hidlr" in listing and "nam-synthetic" in listing


def test_cli_compare_runs_and_prints_the_table(tmp_path, capsys):
    argv = [
        "compare",
        "--task",
        "tiny-blobs",
        "--methods",
        "baseline,staggered",
        "--set",
        "staggered.first_peak=0.1",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--budget",
        "steps",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| staggered | 1 |" in out and "report.html" in out
    record = json.loads((tmp_path / "runs" / "staggered-seed0.json").read_text())
    assert record["settings"]["first_peak"] == 0.1


def test_diverging_runs_are_marked_not_crashed():
    record = run_one("tiny-blobs", "llr", {"first": 1e6, "last": 1e6}, seed=0, policy="constant")
    assert record["diverged_at"] is not None and record["test_metric"] is None
    assert all(v is None or math.isfinite(v) for v in record["train_loss"])


def test_registered_tasks_are_available():
    assert {
        "fashion-mnist",
        "fashion-mnist-plain",
        "minilm-sentiment",
        "effnet-fashion",
        "nam-synthetic",
        "ellipse",
        "beale-rosenbrock",
    } <= set(TASKS)


def test_welch_matches_scipy_and_the_study_reads_its_outcomes():
    from scipy import stats

    from layerwise.compare.stats import welch
    from layerwise.compare.study import _analyse, llr_variants

    a, b = [0.81, 0.83, 0.82], [0.78, 0.80, 0.79]
    test = welch(a, b)
    assert test["diff"] == pytest.approx(0.03)
    assert test["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (test["low"], test["high"]) == pytest.approx((interval.low, interval.high))
    assert welch([1.0], [2.0, 3.0])["p"] is None

    def record(final, reach_step):
        curve = [{"step": s, "test_accuracy": final if s >= reach_step else 0.1} for s in (10, 20, 30)]
        return {"test_metric": final, "curve": curve}

    labels = [label for label, _, _ in llr_variants()]
    assert labels[0] == "step uniform" and labels[-1] == "unfreezing input-first"
    outcomes = {label: {"records": [record(0.80 + 0.001 * s, 20) for s in range(3)], "errors": []} for label in labels}
    outcomes["step first-high"]["records"] = [record(0.90 + 0.001 * s, 10) for s in range(3)]
    lines, findings = _analyse(outcomes)
    by_variant = {f["variant"]: f for f in findings}
    assert by_variant["step first-high"]["accuracy"]["verdict"] == "better"  # paired: 10 points in every seed
    assert by_variant["step first-high"]["accuracy"]["diff"] == pytest.approx(0.10)
    assert by_variant["step first-high"]["steps"]["verdict"] == "better"  # 10 steps, not 20: fewer
    assert by_variant["step first-low"]["accuracy"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert by_variant["step first-low"]["accuracy"]["verdict"] == "equivalent"
    assert by_variant["step first-low"]["accuracy"]["alpha"] == pytest.approx(0.05 / 24)  # 12 variants x 2 questions
    assert by_variant["staggered 1cycle"]["reference"] == "onecycle uniform"
    references = {f["variant"]: f["reference"] for f in findings}
    assert references["triangular first-low"] == "triangular uniform"
    assert references["constant first-high"] == "constant uniform"
    assert references["staggered 1cycle, per-group min/max"] == "onecycle uniform"
    assert references["unfreezing input-first"] == references["unfreezing head-first"] == "cosine uniform"
    first_high = next(line for line in lines if line.startswith("| step first-high |"))
    assert "| +10.00 [+10.00, +10.00] | better (paired t, 5 %/24) |" in first_high
    assert "| 0.50x [0.50, 0.50] | fewer steps (paired t, 5 %/24) |" in first_high
