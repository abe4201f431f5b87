"""Verdicts that decide: paired seeds, misses counted, Holm's correction over a table's methods."""

import math
from dataclasses import asdict

import pytest
import torch
from scipy import stats

from blobs import blobs_task
from layerwise.compare.methods import resolve_settings
from layerwise.compare.report import summarize
from layerwise.compare.runner import new_run
from layerwise.compare.stats import boundary, sizing
from layerwise.compare.targets import verdict
from layerwise.training import seeded_indices


def _record(seed, final, seconds=(2.0, 4.0, 6.0), values=None):
    values = values or (final - 0.1, final - 0.05, final)
    curve = [{"step": i + 1, "seconds": s, "test_accuracy": v} for i, (s, v) in enumerate(zip(seconds, values))]
    return {
        "seed": seed,
        "wall_clock_s": seconds[-1],
        "test_metric": final,
        "diverged_at": None,
        "final_train_loss": 0.5,
        "steps": 100,
        "curve": curve,
        "budget": {"mode": "steps"},
    }


def test_pairs_by_seed_decide_what_the_unpaired_test_cannot():
    # the baseline's seeds spread 5 points; the method is 4.5-5 points ahead in every seed
    base = [0.77, 0.80, 0.82]
    ahead = [b + d for b, d in zip(base, (0.045, 0.050, 0.048))]
    result = verdict(ahead, base, [None] * 3, [None] * 3, "accuracy", "steps")
    assert result["accuracy"].test == "paired t" and result["accuracy"].low > 0
    assert "4.77 points better at equal steps" in result["text"] and "P(better) 1.00" in result["text"]
    unpaired_seeds = dict(zip((0, 1, 2), ahead)), dict(zip((3, 4, 5), base))
    shuffled = verdict(*unpaired_seeds, [], [], "accuracy")
    assert shuffled["accuracy"].test == "welch" and shuffled["text"].startswith("not judged, the seeds do not pair")


def test_a_method_that_misses_in_two_of_three_seeds_never_reads_as_sooner():
    result = verdict([0.8] * 3, [0.8] * 3, [1.0, None, None], [80.0, 90.0, 85.0], "accuracy")
    assert "sooner" not in result["text"] and "reaches the target in 1/3 seeds" in result["text"]
    assert result["speed"].test == "wilcoxon" and result["speed"].diff < 0


def test_every_pair_reached_compares_log_times_paired():
    result = verdict([0.8] * 3, [0.8] * 3, [10.0, 11.0, 10.5], [20.0, 21.0, 19.5], "accuracy")
    assert result["speed"].test == "paired t" and math.exp(result["speed"].diff) > 1.8
    assert result["text"].startswith("reaches the target 1.9")


def test_holm_correction_over_the_table_and_without_it():
    base = [0.80, 0.81, 0.79, 0.80]
    # two methods each about 2 SE ahead: p between 0.025 and 0.05 alone, not after Holm over both
    ahead_a = [b + d for b, d in zip(base, (0.010, 0.005, 0.012, 0.004))]  # paired t 4.0: p 0.028
    ahead_b = [b + d for b, d in zip(base, (0.011, 0.004, 0.013, 0.004))]  # paired t 3.4: p 0.042
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "a": {"records": [_record(s, v) for s, v in enumerate(ahead_a)], "errors": []},
        "b": {"records": [_record(s, v) for s, v in enumerate(ahead_b)], "errors": []},
    }
    raw = {r["method"]: r for r in summarize(outcomes, budget="steps", correction=False)["rows"]}
    corrected = summarize(outcomes, budget="steps")
    rows = {r["method"]: r for r in corrected["rows"]}
    assert corrected["correction"] == "holm"
    for name in ("a", "b"):
        p = raw[name]["tests"]["accuracy"]["p"]
        assert 0.025 < p < 0.05 and "better" in raw[name]["verdict"]
        assert rows[name]["tests"]["accuracy"]["decided"] is False  # Holm: 2 x 0.028 > 0.05 first, so neither
        assert rows[name]["verdict"].startswith("no significant difference: +") and "accuracy" in rows[name]["open"]
        # what would decide it, at the level Holm tests it at next: both questions of both methods open, 5 % / 4
        diffs = [m - b for m, b in zip({"a": ahead_a, "b": ahead_b}[name], base)]
        expected = sizing(diffs, 0.0125)
        assert rows[name]["sizing"] == {**asdict(expected), "alpha": 0.0125}
        assert f"4 seed pairs detect {expected.detectable * 100:.2f} points" in rows[name]["verdict"]
        assert f"needs {expected.needed} (at 5 %/4 (Holm))" in rows[name]["verdict"]
    assert raw["a"]["sizing"] is None and "seed pairs detect" not in raw["a"]["verdict"]  # decided: nothing to size
    # an open row prints the interval of the level it was tested at: it holds zero, the raw 95 % one did not
    assert raw["a"]["tests"]["accuracy"]["low"] > 0
    decision = rows["a"]["tests"]["accuracy"]["decision"]
    assert decision["low"] < 0 < decision["high"] and decision["alpha"] == 0.0125
    # the JSON's interval is the one printed (Holm's level), the one-look 95 % interval kept apart by name
    tested = rows["a"]["tests"]["accuracy"]
    assert (tested["low"], tested["high"]) == (decision["low"], decision["high"])
    assert tested["unadjusted"]["low"] > 0 and tested["unadjusted"]["test"] == "paired t"
    assert f"[{decision['low'] * 100:+.2f}, {decision['high'] * 100:+.2f}] (paired t, 5 %/4)" in rows["a"]["verdict"]


def test_a_method_that_stopped_early_is_printed_with_the_paired_test_that_decided_it():
    # the baseline ran 8 seeds, the method was decided at 3 and stopped: its verdict is the paired t on
    # those 3 pairs with the boundary's interval, never Welch's test over 3 against 8 seeds
    base = [0.80, 0.83, 0.78, 0.81, 0.79, 0.84, 0.77, 0.82]
    ahead = [b + d for b, d in zip(base, (0.031, 0.030, 0.032))]
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "early": {"records": [_record(s, v) for s, v in enumerate(ahead)], "errors": []},
    }
    row = summarize(outcomes, budget="steps", sequential=10)["rows"][1]
    decision = row["tests"]["accuracy"]["decision"]
    assert row["tests"]["accuracy"]["test"] == "paired t" and row["tests"]["accuracy"]["n"] == 3
    critical = boundary(10, 0.025)[1][0]  # the first look, both questions of the one method open: 5 %/2
    half = critical * stats.sem([0.031, 0.030, 0.032])
    assert (decision["low"], decision["high"]) == pytest.approx((0.031 - half, 0.031 + half))
    interval = f"[{decision['low'] * 100:+.2f}, {decision['high'] * 100:+.2f}]"
    assert f"3.10 points better at equal steps {interval} (paired t, sequential, 3 pairs, 5 %/2;" in row["verdict"]
    assert decision["low"] > 0 and "welch" not in row["verdict"]


def test_an_open_question_under_seeds_auto_prints_the_sequential_interval():
    base = [0.80, 0.81, 0.79, 0.80, 0.82]
    noisy = [b + d for b, d in zip(base, (0.010, -0.004, 0.012, 0.002, 0.006))]
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "noisy": {"records": [_record(s, v) for s, v in enumerate(noisy)], "errors": []},
    }
    row = summarize(outcomes, budget="steps", sequential=10)["rows"][1]
    decision = row["tests"]["accuracy"]["decision"]
    assert decision["verdict"] == "undecided" and decision["low"] < 0 < decision["high"]
    critical = boundary(10, 0.025)[1][2]  # 5 pairs: the third look
    diffs = [0.010, -0.004, 0.012, 0.002, 0.006]
    assert decision["high"] - decision["low"] == pytest.approx(2 * critical * stats.sem(diffs))
    assert "(paired t, sequential, 5 pairs, 5 %/2)" in row["verdict"]


def test_the_default_target_is_fixed_by_the_baselines_first_round():
    first = [_record(s, v) for s, v in enumerate((0.80, 0.82, 0.81))]
    later = [_record(s, v) for s, v in ((3, 0.70), (4, 0.72))]  # two low seeds added after looking
    outcomes = {"baseline": {"records": first + later, "errors": []}}
    assert summarize(outcomes, budget="steps", sequential=10)["target"] == pytest.approx(0.81 - 0.005)
    assert summarize(outcomes, budget="steps")["target"] == pytest.approx(0.77 - 0.005)  # one round: every seed


def test_median_time_to_target_counts_a_miss_as_infinite():
    base = [_record(s, 0.8) for s in range(3)]
    late = [_record(0, 0.8), _record(1, 0.6, values=(0.5, 0.55, 0.6)), _record(2, 0.6, values=(0.5, 0.55, 0.6))]
    outcomes = {"baseline": {"records": base, "errors": []}, "late": {"records": late, "errors": []}}
    rows = {r["method"]: r for r in summarize(outcomes, budget="steps")["rows"]}
    assert rows["late"]["reached"] == 1 and rows["late"]["time_to_target_s"] is None
    assert rows["baseline"]["reached"] == 3 and rows["baseline"]["time_to_target_s"] is not None


def test_seed_s_of_two_methods_starts_from_the_same_weights_and_batches():
    task = blobs_task("paired-blobs")
    methods = ("baseline", "freezeout", "multirate")
    runs = {m: new_run(task, m, resolve_settings(m, {}), 20, "constant", seed=4) for m in methods}
    weights = {m: {k: v.clone() for k, v in model.state_dict().items()} for m, (model, _) in runs.items()}
    for method in ("freezeout", "multirate"):
        assert weights[method].keys() == weights["baseline"].keys()
        for key, value in weights["baseline"].items():
            torch.testing.assert_close(weights[method][key], value, rtol=0, atol=0)
    examples = len(task.load_data(None, False).train[1])
    first = [index for _, epoch, index in seeded_indices(examples, task.batch_size, seed=4, steps=20) if epoch == 0]
    again = [index for _, epoch, index in seeded_indices(examples, task.batch_size, seed=4, steps=5) if epoch == 0]
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_seeds_added_until_decided_are_judged_by_the_sequential_boundary():
    base = [0.80, 0.81, 0.79]
    ahead = [b + d for b, d in zip(base, (0.010, 0.005, 0.012))]  # paired t 3.4 at 3 pairs: p 0.08
    clear = [b + d for b, d in zip(base, (0.050, 0.051, 0.049))]  # paired t 86.6
    outcomes = {
        "baseline": {"records": [_record(s, v) for s, v in enumerate(base)], "errors": []},
        "ahead": {"records": [_record(s, v) for s, v in enumerate(ahead)], "errors": []},
        "clear": {"records": [_record(s, v) for s, v in enumerate(clear)], "errors": []},
    }
    summary = summarize(outcomes, budget="steps", sequential=10)
    rows = {r["method"]: r for r in summary["rows"]}
    assert summary["rule"] == "sequential"
    assert rows["clear"]["tests"]["accuracy"]["decided"] is True and "better" in rows["clear"]["verdict"]
    assert "accuracy" in rows["ahead"]["open"] and rows["ahead"]["sizing"]["needed"] > 3


def test_seeds_auto_adds_seeds_to_undecided_methods_only(tmp_path, monkeypatch):
    import layerwise.compare.session as session
    from layerwise.compare import compare
    from layerwise.tasks import TASKS, register_task

    if "auto-blobs" not in TASKS:
        register_task(blobs_task("auto-blobs"))
    real = session.run_one
    calls = []

    def synthetic(task, method, settings, *, seed, **kwargs):
        # real runs, then a controlled outcome: llr is 20 points ahead and 3x sooner in every seed,
        # staggered is the baseline's twin up to a little noise (never decided)
        calls.append((method, seed))
        record = real(task, "baseline", {}, seed=seed, **kwargs)
        ahead = method == "llr"
        noise = 0.01 * ((seed * 7 + len(method)) % 5 - 2) if method == "staggered" else 0.0
        final = 0.7 + (0.2 + 0.001 * seed if ahead else noise)
        first = 0.3 + 0.01 * seed if ahead else 1.0
        record["curve"] = [
            {"step": 1, "seconds": first, "test_accuracy": final},
            {"step": 2, "seconds": 2 * first, "test_accuracy": final},
        ]
        return {**record, "method": method, "test_metric": final}

    monkeypatch.setattr(session, "run_one", synthetic)
    options = {"policy": "constant", "progress": False, "eval_points": 2, "budget": "steps", "target": 0.5}
    result = compare("auto-blobs", ["baseline", "llr", "staggered"], seeds="auto:5", out=tmp_path, **options)
    seeds = {m: sorted(s for name, s in calls if name == m) for m in ("baseline", "llr", "staggered")}
    assert seeds["llr"] == [0, 1, 2]  # both questions decided at the first look
    assert seeds["baseline"] == seeds["staggered"] == [0, 1, 2, 3, 4]  # open to MAX
    rows = {r["method"]: r for r in result["rows"]}
    assert "better" in rows["llr"]["verdict"] and "sooner" in rows["llr"]["verdict"] and not rows["llr"]["open"]
    assert rows["staggered"]["open"] and rows["staggered"]["runs"] == 5
    assert "seeds added until decided (3 to 5)" in result["setting"] and "llr 3" in result["setting"]
    family = "both questions of the 2 methods corrected together by Holm's rule, so the chance of any false claim"
    assert f"{family} in the table is at most 5 %" in result["setting"] and "falls under 10 %" in result["setting"]
    calls.clear()
    compare("auto-blobs", ["baseline", "llr", "staggered"], seeds="auto:5", out=tmp_path, **options)
    assert calls == []  # resumed: the same decisions from the stored runs, nothing trained again


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"seeds": "auto:1"}, "--seeds"),
        ({"seeds": "auto:0"}, "--seeds"),
        ({"seeds": "auto:x"}, "--seeds"),
        ({"seeds": "many"}, "--seeds"),
        ({"seeds": "auto", "max_minutes": 0}, "--max-minutes"),
        ({"seeds": "auto", "max_minutes": math.inf}, "--max-minutes"),
    ],
)
def test_bad_seed_rules_are_refused_before_anything_loads(options, flag, tmp_path):
    from layerwise.compare.session import check_request

    with pytest.raises(ValueError, match=flag):
        check_request("fashion-mnist", ["baseline"], out=tmp_path, **options)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("margin", ["-1", "0", "nan", "150"])
def test_a_bad_margin_is_refused_in_one_line_before_anything_trains(margin, tmp_path, capsys):
    from layerwise import cli
    from layerwise.compare.session import check_request

    with pytest.raises(ValueError, match="--margin: "):
        check_request("fashion-mnist", ["baseline"], out=tmp_path, margin=float(margin))
    argv = ["compare", "--task", "fashion-mnist", "--methods", "baseline", f"--margin={margin}"]
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerwise compare: error: --margin: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_aa_runs_the_baseline_twice_and_reports_the_noise_floor_first(tmp_path, monkeypatch):
    import layerwise.compare.session as session
    from layerwise.compare import compare
    from layerwise.compare.report import AA_LABEL
    from layerwise.tasks import TASKS, register_task

    if "aa-blobs" not in TASKS:
        register_task(blobs_task("aa-blobs"))
    calls = []
    real = session.run_one

    def counted(task, method, *args, seed, **kwargs):
        calls.append((method, seed))
        return real(task, method, *args, seed=seed, **kwargs)

    monkeypatch.setattr(session, "run_one", counted)
    options = {"policy": "constant", "progress": False, "eval_points": 2, "budget": "steps", "seeds": 2}
    result = compare("aa-blobs", ["baseline", "llr"], out=tmp_path, aa=True, **options)
    assert sorted(calls) == [("baseline", 0), ("baseline", 0), ("baseline", 1), ("baseline", 1), ("llr", 0), ("llr", 1)]
    rows = {r["method"]: r for r in result["rows"]}
    assert rows[AA_LABEL]["runs"] == 2 and rows[AA_LABEL]["tests"] is not None
    assert result["answer"].startswith("- Best model at equal steps:")
    floor = rows[AA_LABEL]["verdict"]
    assert f"Noise floor (the baseline against its own second run, --aa): {floor}" in result["answer"]
    text = (tmp_path / "results.md").read_text()
    assert text.index("Noise floor") < text.index("| method |")
    assert "Noise floor" in (tmp_path / "report.html").read_text()


def test_one_seed_answers_that_nothing_can_be_decided():
    from layerwise.compare.report import answer

    outcomes = {
        "baseline": {"records": [_record(0, 0.8)], "errors": []},
        "m": {"records": [_record(0, 0.9)], "errors": []},
        "broken": {"records": [], "errors": ["Traceback\nRuntimeError: boom"]},
    }
    text = answer(summarize(outcomes, budget="steps")["rows"], "accuracy", "steps")
    assert text.startswith("- One seed per method: no verdict can be decided")
    assert "- No finished run: broken." in text


def _raced(seed, final, seconds):
    curve = [{"step": 1, "seconds": seconds, "test_accuracy": final}]
    return {**_record(seed, final), "curve": curve, "wall_clock_s": 3.0}


def test_the_next_round_goes_to_the_open_method_and_the_baseline_only():
    from layerwise.compare.session import plan_round

    # up and down: accuracy decided at the first look, speed futile (times alike); noisy: accuracy open
    base = (0.80, 0.78, 0.82)
    shifts = {"up": (0.050, 0.0501, 0.0499), "down": (-0.050, -0.0501, -0.0499), "noisy": (0.03, 0.01, 0.05)}
    outcomes = {"baseline": {"records": [_raced(s, b, 2.0) for s, b in enumerate(base)], "errors": []}}
    for label, shift in shifts.items():
        records = [_raced(s, b + d, t) for s, (b, d, t) in enumerate(zip(base, shift, (1.9, 2.1, 2.0)))]
        outcomes[label] = {"records": records, "errors": []}
    rows = summarize(outcomes, metric="accuracy", budget="steps", margin=0.5, sequential=10, target=0.5)["rows"]
    assert {r["method"]: r["open"] for r in rows} == {"baseline": [], "up": [], "down": [], "noisy": ["accuracy"]}
    seeds = dict.fromkeys(outcomes, 3)
    assert plan_round(rows, seeds, "baseline", 10) == {"noisy": 4, "baseline": 4}
    assert plan_round(rows, seeds, "baseline", 10, room=1) == {}  # the baseline and noisy need 2 runs
    assert plan_round(rows, {**seeds, "noisy": 10, "baseline": 10}, "baseline", 10) == {}  # at MAX


def test_a_cap_that_fits_part_of_a_round_gives_it_to_the_method_nearest_a_decision():
    from layerwise.compare.session import plan_round

    def row(method, power):
        return {"method": method, "open": ["accuracy"], "tests": {"accuracy": {"decision": {"power": power}}}}

    rows = [row("far", 0.2), row("near", 0.8)]
    seeds = {"baseline": 4, "far": 4, "near": 4}
    assert plan_round(rows, seeds, "baseline", 10, room=2) == {"near": 5, "baseline": 5}
    assert plan_round(rows, seeds, "baseline", 10, room=3) == {"near": 5, "far": 5, "baseline": 5}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"seeds": "auto", "max_runs": 5},
            "--max-runs: at least one round, 9 runs (3 seeds of each of the 3 methods, the baseline included), got 5",
        ),
        (
            {"seeds": 3, "max_runs": 20},
            "--max-runs: only with --seeds auto (it caps the runs that added seeds may take)",
        ),
        ({"seeds": "auto", "max_runs": 9.5}, "--max-runs: a whole number of runs, got 9.5"),
    ],
)
def test_a_bad_run_cap_is_refused_in_one_line_naming_the_flag(options, message, tmp_path):
    from layerwise.compare.session import check_request

    with pytest.raises(ValueError) as refused:
        check_request("fashion-mnist", ["baseline", "llr", "freezeout"], out=tmp_path, **options)
    assert str(refused.value) == message and not any(tmp_path.iterdir())


def test_the_cli_refuses_a_run_cap_below_one_round_before_anything_trains(tmp_path, capsys):
    from layerwise import cli

    argv = ["compare", "--task", "fashion-mnist", "--methods", "baseline,llr", "--seeds", "auto", "--max-runs", "4"]
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        "layerwise compare: error: --max-runs: at least one round, 6 runs (3 seeds of each of the 2 methods, "
        "the baseline included), got 4\n"
    )
    assert not (tmp_path / "out").exists()


def test_the_answer_says_what_the_stops_saved_and_what_stays_open_at_the_cap(tmp_path):
    from layerwise.compare import compare
    from layerwise.tasks import TASKS, register_task

    if "race-blobs" not in TASKS:
        register_task(blobs_task("race-blobs"))
    options = {"policy": "constant", "progress": False, "eval_points": 2, "budget": "steps"}
    result = compare(
        "race-blobs", ["baseline", "freezeout", "llr"], seeds="auto:4", max_runs=10, out=tmp_path, **options
    )
    lines = result["answer"].splitlines()
    seeds_line = next(line for line in lines if line.startswith("- Seeds:"))
    assert seeds_line.startswith(
        "- Seeds: 9 runs, of the 12 that every method to 4 seeds would take: the stops saved 3."
    )
    still = [row["method"] for row in result["rows"] if row["open"]]
    assert seeds_line.endswith(f" Open at the cap (--max-runs 10): {', '.join(still)}." if still else "saved 3.")
