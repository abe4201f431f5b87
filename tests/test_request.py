"""A comparison's request: one frozen value, checked once, its store key as before, bad input refused first."""

import dataclasses
import math

import pytest

import layerwise.compare.request as request_module
import layerwise.compare.results as results
import layerwise.compare.rounds as rounds
import layerwise.compare.session as session
from blobs import blobs_task, mlp
from layerwise.compare import CompareConfig, Request, check_request, compare, compare_variants
from layerwise.compare.verdicts import AA_LABEL
from layerwise.tasks import register_task

BUILT = []


def _counted_mlp():
    BUILT.append(1)
    return mlp()


register_task(blobs_task("request-blobs", make_model=_counted_mlp))

TINY = {"seeds": 1, "policy": "constant", "progress": False, "eval_points": 1, "budget": "steps"}

CHECKS = ("check_methods", "resolve_settings", "check_parallel", "parse_seeds", "check_target", "check_margin")


def _spy(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.mark.parametrize("form", ["compare", "compare_variants"])
def test_a_comparison_checks_its_request_once_and_builds_its_model_once(tmp_path, monkeypatch, form):
    calls = {}
    _spy(monkeypatch, session, "check_request", calls)
    for name in CHECKS:
        _spy(monkeypatch, request_module, name, calls)
    BUILT.clear()
    if form == "compare":
        result = compare("request-blobs", ["baseline", "freezeout"], out=tmp_path, **TINY)
    else:
        variants = [("plain", "baseline", {}), ("frozen", "freezeout", {"t0": 0.5})]
        result = compare_variants("request-blobs", variants, out=tmp_path, **TINY)
    runs = sum(len(outcome["records"]) for outcome in result["outcomes"].values())
    assert runs == 2 and result["snippets"]  # the report's snippets read the check's model
    assert calls == {
        "check_request": 1,
        "resolve_settings": 2,
        **{name: 1 for name in CHECKS if name != "resolve_settings"},
    }
    assert len(BUILT) == 2 + runs  # the check's model, the warm-up's, then each run's own
    for module in (session, rounds, results):  # no later stage holds a check to run again
        assert not any(hasattr(module, name) for name in CHECKS)


def test_a_request_is_frozen_all_the_way_down(tmp_path):
    request = check_request("request-blobs", ["baseline", "freezeout"], out=tmp_path, **TINY)
    assert isinstance(request, Request)
    parts = [request, request.seeds, request.judging, request.options, request.variants[0], request.config]
    for value, name in zip(parts, ["seeds", "start", "margin", "note", "label", "quick"]):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
    assert isinstance(request.variants, tuple)
    assert request == check_request("request-blobs", ["baseline", "freezeout"], out=tmp_path, **TINY)
    assert repr(request).endswith(", nproc=None, engine=None)")  # the model and its partition are left out


def test_the_reference_is_the_baseline_else_the_first_and_the_aa_twin_is_its_copy(tmp_path):
    request = check_request("request-blobs", ["freezeout", "baseline"], out=tmp_path, seeds=2, aa=True)
    labels = [(v.label, v.method, v.reference) for v in request.variants]
    assert labels == [("freezeout", "freezeout", False), ("baseline", "baseline", True), (AA_LABEL, "baseline", False)]
    assert request.baseline.label == "baseline" and request.methods == ["freezeout", "baseline"]
    twin = request.variants[2]
    assert twin.run_key(1) == request.baseline.run_key(1) + "|aa"
    labelled = check_request("request-blobs", variants=[("a", "llr", {"first": 2.0}), ("b", "baseline", None)])
    assert labelled.baseline.label == "a" and labelled.variants[0].settings["first"] == 2.0
    assert request.seeds == request_module.Seeds(2, None)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"methods": ["baseline"], "variants": [("a", "baseline", {})]}, "variants: give variants, or methods"),
        ({"variants": [("a", "baseline", {}), ("a", "llr", {})]}, "need distinct labels"),
        ({"methods": ["baseline"], "config": CompareConfig(), "quick": True}, "config: give a CompareConfig or"),
        ({"methods": ["baseline"], "max_runs": 5}, "--max-runs: only with --seeds auto"),
        ({"methods": ["baseline", "llr"], "seeds": "auto", "max_runs": 5}, "--max-runs: at least one round, 6 runs"),
        ({"methods": ["baseline"], "max_minutes": 0}, "--max-minutes"),
        ({"methods": ["baseline"], "seeds": "auto:2"}, "--seeds: auto or auto:MAX"),
        ({"methods": ["baseline"], "tensorboard": True}, "--tensorboard: needs --telemetry"),
        ({"methods": ["baseline"], "margin": -1.0}, "--margin"),
        ({"methods": ["baseline"], "executor": "carrier-pigeon"}, "--executor"),
        ({"methods": ["baseline"], "sedes": 3}, "compare: unknown option 'sedes'; choose from .*'seeds'"),
    ],
    ids=[
        "both-forms",
        "labels",
        "config-twice",
        "max-runs",
        "max-runs-round",
        "minutes",
        "auto-max",
        "tensorboard",
        "margin",
        "executor",
        "unknown",
    ],
)
def test_bad_input_is_refused_naming_the_flag_before_anything_is_written(tmp_path, arguments, match):
    with pytest.raises(ValueError, match=match):
        check_request("request-blobs", out=tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_the_store_key_is_the_one_every_existing_store_was_written_with(tmp_path):
    request = check_request(
        "request-blobs", ["baseline"], out=tmp_path, quick=True, telemetry_every=2, clock="process", data=object()
    )
    task_settings = {
        "make_model": "test_request._counted_mlp",
        "sample_input": "blobs.blobs_task.<locals>.<lambda>",
        "load_data": "blobs.blobs",
        "loss": "layerwise.tasks.base.cross_entropy",
        "epochs": 2,
        "quick_epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "weight_decay": 0.0,
        "optimizer": "sgd",
        "optimizer_options": {},
        "metric": "accuracy",
        "score": None,
        "partition": None,
        "head": True,
        "train_size": None,
        "quick_train_size": None,
        "quick_test_size": None,
        "regime": "scratch",
        "source_sha256": None,
    }
    assert request.store_key() == {
        "task": "request-blobs",
        "task_settings": task_settings,
        "policy": "cosine",
        "quick": True,
        "eval_points": 3,
        "telemetry_every": 2,
        "budget": "time",
        "budget_seconds": None,
        "clock": "process",
        "epochs": 2,
        "train_size": None,
    }
    plain = check_request("request-blobs", ["baseline", "llr"], out=tmp_path, seeds="auto", target=0.9, aa=True)
    assert plain.store_key() == {  # the judging, the seeds and the variants are no part of it
        "task": "request-blobs",
        "task_settings": task_settings,
        "policy": "cosine",
        "quick": False,
        "eval_points": 10,
        "budget": "time",
        "budget_seconds": None,
        "epochs": 2,
        "train_size": None,
        "test_size": 5000,
    }


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
    from layerwise.compare.request import check_request

    with pytest.raises(ValueError, match=flag):
        check_request("fashion-mnist", ["baseline"], out=tmp_path, **options)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("margin", ["-1", "0", "nan", "150"])
def test_a_bad_margin_is_refused_in_one_line_before_anything_trains(margin, tmp_path, capsys):
    from layerwise import cli
    from layerwise.compare.request import check_request

    with pytest.raises(ValueError, match="--margin: "):
        check_request("fashion-mnist", ["baseline"], out=tmp_path, margin=float(margin))
    argv = ["compare", "--task", "fashion-mnist", "--methods", "baseline", f"--margin={margin}"]
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerwise compare: error: --margin: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


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
    from layerwise.compare.request import check_request

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
