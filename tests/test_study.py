"""Built-in studies (layerwise study llr): the variants paired by seed, Holm over every question, --margin."""

import pytest
from scipy import stats


def test_the_llr_study_pairs_seeds_and_corrects_over_every_variants_questions():
    from layerwise.compare.study import _analyse, llr_variants

    def record(seed, final):
        curve = [{"step": s, "test_accuracy": final if s >= 20 else 0.1} for s in (10, 20, 30)]
        return {"seed": seed, "test_metric": final, "curve": curve}

    spread = (0.74, 0.80, 0.86)  # the seeds differ by 6 points: Welch's unpaired test sees only that
    outcomes = {
        label: {"records": [record(s, v) for s, v in enumerate(spread)], "errors": []} for label, _, _ in llr_variants()
    }
    ahead = [v + d for v, d in zip(spread, (0.020, 0.021, 0.019))]  # 2 points ahead in every seed: t 34.6
    outcomes["step first-high"]["records"] = [record(s, v) for s, v in enumerate(ahead)]
    findings = _analyse(outcomes)[1]
    decided = {f["variant"]: f["accuracy"] for f in findings}
    assert decided["step first-high"]["verdict"] == "better"
    assert decided["step first-high"]["alpha"] == pytest.approx(0.05 / 24)  # 12 variants, 2 questions each
    assert stats.ttest_ind(ahead, spread, equal_var=False).pvalue > 0.5  # what the study reported before
    assert all(f["accuracy"]["verdict"] == "equivalent" for f in findings if f["variant"] != "step first-high")
    # --margin reaches the study: a variant within a few points, noisily, is open at 0.5 points, equivalent at 5
    outcomes["step first-low"]["records"] = [
        record(s, v + d / 1000) for s, (v, d) in enumerate(zip(spread, (4, -3, 2)))
    ]
    by_margin = {m: {f["variant"]: f["accuracy"] for f in _analyse(outcomes, margin=m)[1]} for m in (None, 5.0)}
    assert by_margin[None]["step first-low"]["verdict"] == "undecided"
    assert by_margin[5.0]["step first-low"]["verdict"] == "equivalent"


def test_the_study_honours_margin_and_test_size_and_refuses_flags_it_would_ignore(monkeypatch, capsys):
    from layerwise import cli
    from layerwise.compare import study

    seen, run_study = {}, study.run_study
    monkeypatch.setattr(study, "run_study", lambda name, **kw: seen.update(kw) or {"text": "done"})
    assert cli.main(["compare", "--study", "llr", "--margin", "1", "--test-size", "0", "--no-progress"]) == 0
    assert seen["margin"] == 1 and seen["test_size"] == 0
    for flag in (["--target", "0.8"], ["--clock", "process"], ["--max-runs", "9"], ["--aa"], ["--budget", "steps"]):
        seen.clear()
        assert cli.main(["compare", "--study", "llr", *flag]) == 2
        err = capsys.readouterr().err
        assert f"--study: does not take {flag[0]}" in err and "--margin" in err and not seen
    with pytest.raises(ValueError, match="--margin"):
        run_study("llr", margin=-1.0)
