"""Peer methods of ``layerwise compare``: checked against timm, fastai and the documented rules."""

import math
import sys
from dataclasses import replace
from importlib.util import find_spec

import pytest
import torch
from torch import nn

import layerwise.compare.runner as runner
from _torchvision_stub import import_without_torchvision
from blobs import blobs, blobs_task, mlp
from layerwise import cli
from layerwise.compare.methods import METHODS, Build, build_setup, check_methods, method_snippet, resolve_settings
from layerwise.compare.peers import composer_frozen_count, even_mults
from layerwise.compare.runner import evaluate_setup, group_lrs, new_run, run_one, train_step
from layerwise.groups import by_layer, explicit
from layerwise.tasks import TASKS, register_task

PEERS = [
    "prodigy",
    "dadapt",
    "dog",
    "schedulefree",
    "lars",
    "lamb",
    "layer-decay",
    "layer-freezing",
    "fine-tune",
    "lp-ft",
]


SCRATCH = blobs_task(
    "peer-blobs", description="three Gaussian blobs, a 3-layer MLP (the peer tests)", weight_decay=5e-4
)
FINE = replace(SCRATCH, name="peer-blobs-ft", regime="fine-tuning", optimizer="adamw", lr=1e-2, weight_decay=0.01)
for _task in (SCRATCH, FINE):
    if _task.name not in TASKS:
        register_task(_task)


def _build(task, steps, model=None, partition=None, policy="constant"):
    model = model or task.make_model()
    return Build(task, model, partition or task.partition_of(model), steps, policy)


def test_peers_are_registered_and_in_no_default_set():
    for name in PEERS:
        method = METHODS[name]
        assert set(method.not_default) == {"scratch", "fine-tuning"}, name
        assert method.snippet is not None and method_snippet(_build(FINE, 30), name, resolve_settings(name))


def test_every_peer_snippet_runs_in_a_plain_loop():
    data = blobs(None, False)
    loader = [(data.train[0][i : i + 32], data.train[1][i : i + 32]) for i in range(0, 96, 32)]
    for task in (SCRATCH, FINE):
        for name in PEERS:
            model = mlp()
            if METHODS[name].applies(task, task.partition_of(model)):
                continue
            text = method_snippet(_build(task, 3, model, policy="cosine"), name, resolve_settings(name))
            namespace = {
                "model": model,
                "loader": loader,
                "x": loader[0][0],
                "loss_fn": nn.functional.cross_entropy,
                "num_examples": 96,
                "indexed_loader": [(torch.arange(i, i + 32), x_, y_) for i, (x_, y_) in zip(range(0, 96, 32), loader)],
            }
            before = [p.detach().clone() for p in model.parameters()]
            exec(compile(text, f"<snippet {name}>", "exec"), namespace)
            assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), name


@pytest.mark.parametrize("task", [SCRATCH, FINE], ids=["sgd-scratch", "adamw-fine-tuning"])
def test_every_peer_trains_a_few_steps(task):
    part = task.partition_of(task.make_model())
    for name in PEERS:
        if METHODS[name].applies(task, part) is not None:
            continue
        record = run_one(task, name, seed=0, policy="cosine", eval_points=2)
        assert record["steps"] == 16 and all(math.isfinite(v) for v in record["train_loss"]), name
        assert 0.0 <= record["test_metric"] <= 1.0, name


def test_fine_tuning_peers_are_refused_from_scratch_and_layer_decay_on_one_group():
    part = SCRATCH.partition_of(mlp())
    for name in ("fine-tune", "lp-ft"):
        with pytest.raises(ValueError, match=rf"{name} does not apply .*a fine-tuning method"):
            check_methods(SCRATCH, [name], part)
    single = explicit(mlp(), {"all": [n for n, _ in mlp().named_parameters()]})
    with pytest.raises(ValueError, match=r"layer-decay does not apply .*at least 2 groups.*has 1"):
        check_methods(FINE, ["layer-decay"], single)


def test_a_missing_package_names_the_extra_before_anything_is_built(monkeypatch, tmp_path):
    from layerwise.compare import compare

    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # find_spec answers None, import fails
    with pytest.raises(ValueError, match=r"prodigy: needs the package 'prodigyopt'.*layerwise\[peers\]"):
        resolve_settings("prodigy")
    monkeypatch.setattr("layerwise.compare.session.run_one", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"pip install -c constraints.txt 'layerwise\[peers\]'"):
        compare("peer-blobs", ["baseline", "prodigy"], out=tmp_path / "x", progress=False, budget="steps")
    assert not (tmp_path / "x").exists()


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match=r"--set layer-decay.decay: must be a per-layer decay in \(0, 1\]"):
        resolve_settings("layer-decay", {"decay": 1.5})
    with pytest.raises(ValueError, match=r"--set lp-ft.probe: must be a fraction of training in \(0, 1\)"):
        resolve_settings("lp-ft", {"probe": 1.0})
    with pytest.raises(ValueError, match=r"--set lars.momentum: must be in \[0, 1\)"):
        resolve_settings("lars", {"momentum": 1.0})


# ---- layer decay against timm -----------------------------------------------------------------


def _timm():
    if find_spec("timm") is None:  # importorskip would import it, which needs the torchvision stand-ins
        pytest.skip("timm is in the dev extra")
    return import_without_torchvision("timm", "timm.optim", "timm.models")


def test_layer_decay_equals_timm_param_groups_layer_decay():
    timm, timm_optim, timm_models = _timm()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3)
    # our partition from timm's own layer ids (patch embedding, each block, the head)
    layer_of = timm_models.group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    layers = sorted(set(layer_of.values()))
    part = explicit(model, {f"layer{i}": [n for n, at in layer_of.items() if at == i] for i in layers})
    task = replace(FINE, name="vit", optimizer="adamw", lr=1e-3)
    setup = build_setup(_build(task, 10, model, part), "layer-decay", resolve_settings("layer-decay"))
    ours = {id(p): g["lr"] / task.lr for g in setup.optimizer.param_groups for p in g["params"]}
    theirs = {
        id(p): g["lr_scale"]
        for g in timm_optim.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
        for p in g["params"]
    }
    assert set(ours) == set(theirs) and len(theirs) == len(list(model.parameters()))
    for key, scale in theirs.items():
        assert ours[key] == pytest.approx(scale, rel=1e-12)
    assert len(layers) == 5 and sorted(set(theirs.values()))[0] == pytest.approx(0.75**4)


# ---- fastai's fine_tune ----------------------------------------------------------------------


def _fastai_fine_tune_lrs(epochs, base_lr):
    pytest.importorskip("fastai", reason="fastai is in the dev extra")
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401  (Learner.fine_tune)
    from fastai.basics import Callback, DataLoaders, Learner

    torch.manual_seed(0)
    model = mlp()
    data = list(zip(torch.randn(64, 20), torch.randint(0, 3, (64,))))
    dls = DataLoaders.from_dsets(data, data[:16], bs=16, device=torch.device("cpu"))
    seen: list[tuple[list[float], list[bool]]] = []

    class RecordLRs(Callback):
        order, run_valid = 70, False  # after fastai's ParamScheduler (60) has set this batch's LRs

        def before_batch(self):
            lrs = [h["lr"] for h in self.opt.hypers]
            trains = [all(p.requires_grad for p in group) for group in self.opt.param_lists]
            seen.append((lrs, trains))

    def splitter(m):
        return [list(m[i].parameters()) for i in (0, 2, 4)]

    learn = Learner(dls, model, loss_func=nn.functional.cross_entropy, splitter=splitter)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs, base_lr=base_lr, cbs=[RecordLRs()])
    return seen, len(dls.train)


def test_fine_tune_lrs_and_freezing_equal_fastai_at_every_step():
    epochs, base_lr = 2, 1e-2
    theirs, per_epoch = _fastai_fine_tune_lrs(epochs, base_lr)
    total = len(theirs)
    assert total == (1 + epochs) * per_epoch
    settings = resolve_settings("fine-tune", {"base_lr": base_lr, "freeze_fraction": 1 / (1 + epochs)})
    build = _build(FINE, total)
    setup = build_setup(build, "fine-tune", settings)
    model, names = build.model, build.partition.names
    for step, (lrs, trains) in enumerate(theirs):
        ours = group_lrs(setup.optimizer)
        assert [ours[n] for n in names] == pytest.approx(lrs, rel=1e-6), step  # fastai: float32 positions
        assert [all(p.requires_grad for p in build.partition[n].params) for n in names] == trains, step
        train_step(model, setup, FINE, torch.randn(8, 20), torch.randint(0, 3, (8,)))
    assert even_mults(1e-4, 1e-2, 3) == pytest.approx([1e-4, 1e-3, 1e-2])


# ---- Composer's layer freezing ---------------------------------------------------------------


def test_layer_freezing_follows_composers_documented_rule():
    # the docs: nothing frozen until freeze_start of training; the frozen fraction then grows linearly
    # to freeze_level at the end, earliest layers first. 3 groups, 20 steps, freeze_start 0.5:
    # after step s, floor(level * (s/20 - 0.5) / 0.5 * 3) groups (the head always trains)
    record = run_one("peer-blobs", "layer-freezing", steps=20, seed=0, eval_points=1)
    assert record["frozen_at"] == {"0": 14, "2": 17}  # 3 * 4/10 = 1.2 at step 14; 3 * 7/10 = 2.1 at 17
    half = run_one("peer-blobs", "layer-freezing", {"freeze_level": 0.5}, steps=20, seed=0, eval_points=1)
    assert half["frozen_at"] == {"0": 17}  # 1.5 * 7/10 = 1.05 at step 17; at most 1.5 groups
    assert [composer_frozen_count(s, 10, 4, 0.2, 1.0) for s in range(1, 11)] == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]


# ---- evaluation at the averaged weights ------------------------------------------------------


def _capture_evaluation(monkeypatch):
    seen = []

    def evaluate(model, split, task):
        seen.append([p.detach().clone() for p in model.parameters()])
        return {"loss": 0.0, "accuracy": 0.0}

    monkeypatch.setattr(runner, "evaluate", evaluate)
    return seen


def _train(model, setup, steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        train_step(model, setup, SCRATCH, torch.randn(16, 20, generator=g), torch.randint(0, 3, (16,), generator=g))


def test_schedulefree_evaluates_at_the_averaged_weights(monkeypatch):
    model, setup = new_run(SCRATCH, "schedulefree", resolve_settings("schedulefree"), 20, "constant", 0)
    _train(model, setup, 5)
    params = list(model.parameters())
    y = [p.detach().clone() for p in params]  # the gradient point training steps at
    beta = setup.optimizer.param_groups[0]["momentum"]
    # y = (1 - beta) z + beta x, so the averaged x = (y - (1 - beta) z) / beta
    x = [(yi - (1 - beta) * setup.optimizer.state[p]["z"]) / beta for yi, p in zip(y, params)]
    seen = _capture_evaluation(monkeypatch)
    evaluate_setup(model, setup, blobs(None, False).test, SCRATCH)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(seen[0], x))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(seen[0], y))
    assert all(torch.allclose(p, b, atol=1e-6) for p, b in zip(params, y))  # back at y to train on
    _train(model, setup, 1)  # still in train mode: a step would raise otherwise


def test_schedulefree_refreshes_batchnorm_statistics_at_the_averaged_weights():
    task = replace(SCRATCH, make_model=lambda: nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)))
    model, setup = new_run(task, "schedulefree", resolve_settings("schedulefree", {"bn_batches": 3}), 20, "constant", 0)
    _train(model, setup, 5)
    bn = model[1]
    before = bn.running_mean.clone()
    setup.eval_mode()
    refreshed = bn.running_mean.clone()
    # three momentum-0.1 updates from the training statistics, with the first layer at x
    expected = before.clone()
    g = torch.Generator().manual_seed(1)  # the batches _train drew
    inputs = [(torch.randn(16, 20, generator=g), torch.randint(0, 3, (16,), generator=g))[0] for _ in range(5)]
    for x in inputs[-3:]:
        expected = 0.9 * expected + 0.1 * model[0](x).detach().mean(0)
    assert not torch.allclose(refreshed, before)
    assert torch.allclose(refreshed, expected, atol=1e-6)
    setup.train_mode()


def test_dog_evaluates_at_its_iterate_average(monkeypatch):
    import dog

    made = []

    class Kept(dog.PolynomialDecayAverager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(dog, "PolynomialDecayAverager", Kept)
    model, setup = new_run(SCRATCH, "dog", resolve_settings("dog"), 20, "constant", 0)
    _train(model, setup, 5)
    trained = [p.detach().clone() for p in model.parameters()]
    (averager,) = made
    averaged = [p.detach().clone() for p in averager.averaged_model.parameters()]
    seen = _capture_evaluation(monkeypatch)
    evaluate_setup(model, setup, blobs(None, False).test, SCRATCH)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], averaged))
    assert not all(torch.equal(a, b) for a, b in zip(seen[0], trained))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), trained))


def test_lp_ft_trains_the_head_then_everything_with_a_restarted_policy():
    build = _build(FINE, 20, policy="cosine")
    setup = build_setup(build, "lp-ft", resolve_settings("lp-ft"))
    head = build.partition.names[-1]
    lrs, frozen = [], []
    for _ in range(20):
        lrs.append(group_lrs(setup.optimizer)[head])
        frozen.append(setup.freezer.frozen)
        train_step(build.model, setup, FINE, torch.randn(8, 20), torch.randint(0, 3, (8,)))
    assert frozen[:10] == [("0", "2")] * 10 and frozen[10:] == [()] * 10
    assert lrs[0] == lrs[10] == pytest.approx(FINE.lr)  # the cosine starts again at the task LR
    assert lrs[9] < 0.05 * FINE.lr and lrs[19] < 0.05 * FINE.lr


def test_compare_list_shows_every_peer_with_its_source(capsys):
    assert cli.main(["compare", "--list"]) == 0
    listing = capsys.readouterr().out
    for name, source in [("prodigy", "prodigyopt"), ("schedulefree", "schedulefree."), ("fine-tune", "fastai")]:
        line = next(line for line in listing.splitlines() if line.strip().startswith(name + " "))
        assert source in line and "settings" in line
    assert all(f"  {name} " in listing for name in PEERS)


def test_by_layer_partition_of_the_blobs_model_is_what_the_tests_assume():
    assert by_layer(mlp(), sample_input=torch.zeros(1, 20)).names == ("0", "2", "4")


def test_hidlr_with_one_group_is_hi_ulr_even_on_a_task_with_its_own_groups():
    from layerwise.compare.methods.found_lrs import hidlr_partition as _hidlr_partition

    own = replace(FINE, name="peer-own-groups", partition=lambda model, sample: by_layer(model, sample_input=sample))
    build = _build(own, 10)
    assert len(build.partition) == 3
    one = _hidlr_partition(build, 1)
    assert list(one.names) == ["all"] and len(one.groups[0].params) == len(list(build.model.parameters()))
    assert len(_hidlr_partition(build, 3)) == 3  # more buckets keep the task's own groups
    halves = _hidlr_partition(build, 1, "head")  # a split wins over the bucket count
    assert list(halves.names) == ["rest", "head"]
    setup = build_setup(build, "hidlr", resolve_settings("hidlr", {"groups": 1}))
    assert {group["name"] for group in setup.optimizer.param_groups} == {"all"}  # decay and no-decay halves
    assert "Hi-ULR" in method_snippet(build, "hidlr", resolve_settings("hidlr", {"groups": 1}))
