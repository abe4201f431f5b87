"""A comparison's rounds (compare/rounds.py): the runs due, how long each trains under a time budget, the
stored outcomes, and which methods get the next round under --seeds auto; the rounds end to end."""

import pytest

import layerwise.compare.session as session
from blobs import blobs_task
from layerwise.compare import compare
from layerwise.compare.request import check_request
from layerwise.compare.rounds import collect_outcomes, due_runs, first_round, next_round, plan_round
from layerwise.compare.store import RunStore
from layerwise.compare.verdicts import AA_LABEL, summarize
from layerwise.tasks import register_task
from summary_records import seed_record as _record

register_task(blobs_task("rounds-blobs"))
register_task(blobs_task("rounds-timed-blobs", regime="fine-tuning"))


def _raced(seed, final, seconds):
    curve = [{"step": 1, "seconds": seconds, "test_accuracy": final}]
    return {**_record(seed, final), "curve": curve, "wall_clock_s": 3.0}


def test_the_next_round_goes_to_the_open_method_and_the_baseline_only():
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
    def row(method, power):
        return {"method": method, "open": ["accuracy"], "tests": {"accuracy": {"decision": {"power": power}}}}

    rows = [row("far", 0.2), row("near", 0.8)]
    seeds = {"baseline": 4, "far": 4, "near": 4}
    assert plan_round(rows, seeds, "baseline", 10, room=2) == {"near": 5, "baseline": 5}
    assert plan_round(rows, seeds, "baseline", 10, room=3) == {"near": 5, "far": 5, "baseline": 5}


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


def _open(method):
    return {"method": method, "open": ["accuracy"], "tests": None}


@pytest.mark.parametrize(
    ("rows", "seeds", "room", "expected"),
    [
        ([_open(AA_LABEL)], {"baseline": 3, AA_LABEL: 3}, None, {}),  # the A/A twin is never grown
        ([_open("m")], {"baseline": 5, "m": 3}, None, {"m": 4}),  # the baseline is ahead: it waits
        ([_open("m")], {"baseline": 3, "m": 3}, 1, {}),  # the method's seed needs the baseline's too
        ([_open("m")], {"baseline": 5, "m": 3}, 1, {"m": 4}),
        ([_open("m")], {"baseline": 3, "m": 3}, 0, {}),
        ([], {"baseline": 3}, None, {}),
    ],
    ids=["aa-twin", "baseline-ahead", "no-room-for-both", "room-for-one", "no-room", "nothing-open"],
)
def test_plan_round_edge_cases(rows, seeds, room, expected):
    assert plan_round(rows, seeds, "baseline", 10, room) == expected


def test_the_first_and_next_rounds_and_the_runs_due_read_the_request_and_the_store(tmp_path):
    variants = [("lr / 2", "baseline", {}), ("plain", "baseline", {"policy": "constant"})]
    request = check_request("rounds-blobs", variants=variants, seeds="auto:4", max_runs=8, out=tmp_path)
    counts = first_round(request)
    assert counts == {"lr / 2": 3, "plain": 3}  # the first variant is the reference, as no label is baseline
    rows = [{"method": "plain", "open": ["accuracy"], "tests": None}]
    assert next_round(rows, request, counts) == {"plain": 4, "lr / 2": 4}  # 8 - 6 runs leave room for both
    assert next_round(rows, request, {"lr / 2": 4, "plain": 3}) == {"plain": 4}
    assert next_round(rows, request, {"lr / 2": 4, "plain": 4}) == {}  # 8 runs: the cap
    reference, plain = request.variants
    with RunStore(tmp_path / "runs.sqlite", request.store_key()) as store:
        record = {
            "method": "baseline",
            "seed": 0,
            "wall_clock_s": 1.0,
            "test_metric": 0.5,
            "timing": {"invocation": "a"},
        }
        store.save(reference.run_key(0), record)
        store.fail(plain.run_key(0), "baseline", 0, "Traceback\nRuntimeError: boom")
        two = {"lr / 2": 2, "plain": 1}
        assert due_runs(store, request, two, None) == [(plain, 0), (reference, 1)]  # seed-major; a failure is due
        assert due_runs(store, request, two, "b") == [(reference, 0), (plain, 0), (reference, 1)]  # timed by another
        assert due_runs(store, request, two, "a") == [(plain, 0), (reference, 1)]
        outcomes = collect_outcomes(store, request, two, {})
    assert outcomes == {
        "lr / 2": {"records": [record], "errors": ["not run"]},
        "plain": {"records": [], "errors": ["Traceback\nRuntimeError: boom"]},
    }
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["lr_2-seed0.json"]


def _compare(out, methods, **options):
    defaults = {"progress": False, "eval_points": 4, "policy": "constant"}
    return compare("rounds-timed-blobs", methods, out=out, **{**defaults, **options})


def test_a_time_budget_gives_every_method_the_baselines_training_time_on_its_seed(tmp_path):
    result = _compare(tmp_path, ["freezeout", "baseline", "hidlr"], settings={"hidlr": {"update_every": 4}}, seeds=2)
    outcomes = result["outcomes"]
    budgets = {r["seed"]: r["wall_clock_s"] for r in outcomes["baseline"]["records"]}
    for record in outcomes["baseline"]["records"]:  # the reference: the task's epochs, its time the budget
        reference = {"mode": "time", "source": "baseline", "reference": True, "schedule_steps": 16}
        assert record["steps"] == 16 and record["budget"] == {**reference, "seconds": record["wall_clock_s"]}
    for label in ("freezeout", "hidlr"):
        for record in outcomes[label]["records"]:
            assert record["budget"] == {"mode": "time", "source": "baseline"}  # the seconds once: budget_s
            assert record["schedule_steps"] == 16 and record["budget_s"] == budgets[record["seed"]]
            step = record["wall_clock_s"] / record["steps"]
            assert record["wall_clock_s"] >= budgets[record["seed"]] - step  # it stopped at its budget, not before
            assert len(record["curve"]) <= 4
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["baseline"]["verdict"] == "reference" and rows["freezeout"]["verdict"]
    assert result["target"] == pytest.approx(rows["baseline"]["metric"] - 0.005)
    text = (tmp_path / "results.md").read_text()
    assert "train s / budget" in text and "time to target" in text and "Equal wall-clock" in text
    assert "stopping by its own clock" in text
    assert "layerwise.FreezeOut(model, opt, total_steps=" in text  # the copy-paste snippets
    assert result["snippets"]["freezeout"].startswith("# paced by its clock")
    assert not result["snippets"]["baseline"].startswith("# paced")  # the baseline set the budget


def test_an_interrupted_time_budget_comparison_resumes_with_its_baselines_time(tmp_path, monkeypatch):
    real_run = session.run_one
    calls = []

    def interrupted(task, method, *args, **kwargs):
        calls.append(method)
        if method == "freezeout":
            raise KeyboardInterrupt
        return real_run(task, method, *args, **kwargs)

    monkeypatch.setattr(session, "run_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _compare(tmp_path, ["baseline", "freezeout", "multirate"])
    assert calls == ["baseline", "freezeout"]

    def counted(task, method, *args, **kwargs):
        calls.append((method, kwargs.get("seconds")))
        return real_run(task, method, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(session, "run_one", counted)
    result = _compare(tmp_path, ["baseline", "freezeout", "multirate"])
    budget = result["outcomes"]["baseline"]["records"][0]["wall_clock_s"]
    assert calls == [("freezeout", budget), ("multirate", budget)]  # the baseline kept, its time the budget


def test_a_run_whose_baseline_failed_has_no_budget_and_says_why(tmp_path, monkeypatch):
    real_run = session.run_one

    def failing(task, method, *args, **kwargs):
        if method == "baseline":
            raise RuntimeError("baseline broke")
        return real_run(task, method, *args, **kwargs)

    monkeypatch.setattr(session, "run_one", failing)
    result = _compare(tmp_path, ["baseline", "freezeout"])
    assert not result["outcomes"]["freezeout"]["records"]
    assert "no budget: the baseline's seed 0 has no finished run" in result["outcomes"]["freezeout"]["errors"][0]


def test_budget_seconds_sets_the_budget_of_every_run_the_baselines_included(tmp_path):
    result = _compare(tmp_path, ["baseline", "freezeout"], budget_seconds=0.05)
    for outcome in result["outcomes"].values():
        record = outcome["records"][0]
        assert record["budget"] == {"mode": "time", "source": "given"}
        assert record["budget_s"] == 0.05 and record["schedule_steps"] == 16
    assert "every run, the baseline's included, trains for 0.05 s" in result["setting"]
