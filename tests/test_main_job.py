"""The main job and --tasks: each regime's own sizes and methods, settings to the regime that compares
the method, one comparison per task and AlgoPerf's summary over them."""

from types import SimpleNamespace

import pytest

from blobs import blobs_task


def test_tasks_run_one_comparison_each_and_summarise_them_as_algoperf(tmp_path, capsys):
    from layerwise import cli
    from layerwise.tasks import TASKS, register_task

    for name in ("algo-a", "algo-b"):
        if name not in TASKS:
            register_task(blobs_task(name))
    argv = ["compare", "--tasks", "algo-a,algo-b", "--methods", "baseline,llr", "--budget", "steps"]
    argv += ["--eval-points", "2", "--policy", "constant", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "## algo-a" in printed and "## algo-b" in printed and "Over the tasks (AlgoPerf's summary)" in printed
    text = (tmp_path / "results.md").read_text()
    assert "algo-a: median s to target (ratio)" in text and " | score | speed-up over baseline |" in text
    assert (tmp_path / "performance_profile.png").stat().st_size > 1000
    assert (tmp_path / "algo-a" / "results.md").exists() and (tmp_path / "algo-b" / "report.html").exists()


@pytest.mark.parametrize(
    ("tasks", "match"),
    [("algo-a", "two or more distinct"), ("algo-a,algo-a", "two or more distinct"), ("algo-a,nope", "unknown 'nope'")],
)
def test_bad_tasks_are_refused_in_one_line_before_anything_loads(tasks, match, tmp_path, capsys):
    from layerwise import cli
    from layerwise.tasks import TASKS, register_task

    if "algo-a" not in TASKS:
        register_task(blobs_task("algo-a"))
    assert cli.main(["compare", "--tasks", tasks, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--tasks" in err or match in err
    assert match in err and not (tmp_path / "out").exists()


def test_the_main_job_keeps_each_regimes_evaluations_unless_the_flag_is_given(monkeypatch):
    import layerwise.compare.main_job as main_job
    from layerwise import cli

    seen = []

    def fake_run_main(**options):
        seen.append(options)
        return {"sections": [], "summary": {"table": ""}, "paths": {"markdown": "m", "html": "h"}, "minutes": 0.0}

    monkeypatch.setattr(main_job, "run_main", fake_run_main)
    assert cli.main(["compare", "--no-progress"]) == 0
    assert "eval_points" not in seen[-1]  # None would have replaced the regimes' own 6 and 4 with 10
    assert cli.main(["compare", "--no-progress", "--eval-points", "3"]) == 0
    assert seen[-1]["eval_points"] == 3


def test_the_quick_main_job_takes_the_quick_slices_and_the_regimes_own_sizes_otherwise(monkeypatch, tmp_path):
    import layerwise.compare.main_job as main_job

    seen = []

    def fake_check(task, methods, **options):
        seen.append((task, methods, options))
        options["out"].mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(task=SimpleNamespace(name=task))

    def fake_compare(request):
        return {"rows": [], "answer": "", "setting": "", "table": "", "metric": "accuracy", "paths": {"plots": []},
                "snippets": {}, "budget": "time"}  # fmt: skip

    monkeypatch.setattr(main_job, "check_request", fake_check)
    monkeypatch.setattr(main_job, "run_request", fake_compare)
    monkeypatch.setattr(main_job, "html_section", lambda *args, **kwargs: "")
    quick = main_job.run_main(out=tmp_path / "quick", quick=True)
    assert all("train_size" not in options and options["quick"] for _, _, options in seen)
    assert quick["summary"] is main_job.SMOKE_SUMMARY
    assert "no summary over the tasks" in (tmp_path / "quick" / "results.md").read_text()
    seen.clear()
    main_job.run_main(out=tmp_path / "full")
    assert [options["train_size"] for _, _, options in seen] == [r.options["train_size"] for r in main_job.REGIME_RUNS]
    assert [methods for _, methods, _ in seen] == [r.methods for r in main_job.REGIME_RUNS]


def test_the_main_jobs_settings_go_to_the_regime_that_compares_the_method(monkeypatch, tmp_path):
    import layerwise.compare.main_job as main_job

    seen = []

    def fake_check(task, methods, settings=None, **options):
        seen.append(settings)
        raise RuntimeError("checked")  # nothing below the checks is needed

    monkeypatch.setattr(main_job, "check_request", fake_check)
    scratch, finetune = (set(r.methods) for r in main_job.REGIME_RUNS)
    only_scratch = sorted(scratch - finetune)[0]
    with pytest.raises(RuntimeError, match="checked"):
        main_job.run_main(out=tmp_path, settings={only_scratch: {"x": 1}})
    assert seen == [{only_scratch: {"x": 1}}]
    compared_nowhere = sorted({"llr", "staggered", "head-only"} - scratch - finetune)[0]
    refusal = rf"--set: settings for methods that are not compared: \['{compared_nowhere}'\]"
    with pytest.raises(ValueError, match=refusal):
        main_job.run_main(out=tmp_path, settings={compared_nowhere: {"x": 1}})
