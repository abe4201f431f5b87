"""What a demanding user broke in the library, kept fixed: each case failed before its fix."""

import copy
import warnings

import pytest
import torch
from torch import nn

import layerwise
from layerwise import FreezeOut, Freezer, GradualUnfreezing, HiDLR, LayerwiseLR, Multirate, SecantLR, recipes


class WithUnused(nn.Module):
    """``a -> relu -> b``, with ``unused`` registered between them and never called."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 8)
        self.unused = nn.Linear(8, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Tied(nn.Module):
    """A token model whose output layer is tied to its embedding (``out.weight = emb.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.relu(self.mid(self.emb(tokens))))


X, Y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.randint(0, 2, (16,))
TOKENS = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(2))


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _train(model, opt, steps, technique=None):
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if technique is not None:
            technique.step()


# ---- 1. an unused module never becomes the head ------------------------------------------


def test_unused_modules_are_reported_and_kept_out_of_the_groups():
    model = WithUnused()
    with pytest.warns(UserWarning, match=r"used no parameter of modules \['unused'\].*Partition\.unused"):
        part = layerwise.by_layer(model, sample_input=X)
    assert part.names == ("a", "b")
    assert part.unused == ("unused.weight", "unused.bias")
    head = _quiet(layerwise.by_head, model, sample_input=X)
    assert head["head"].param_names == ("b.weight", "b.bias")
    assert _quiet(layerwise.by_block, model, sample_input=X).names == ("a", "b")
    assert _quiet(layerwise.by_depth_buckets, model, 2, sample_input=X).unused == ("unused.weight", "unused.bias")


@pytest.mark.parametrize("technique", ["freezeout", "gradual-unfreezing", "multirate"])
def test_techniques_act_on_the_real_head_of_a_model_with_an_unused_module(technique):
    model = WithUnused()
    b_before = model.b.weight.detach().clone()
    if technique == "multirate":
        opt = Multirate.from_partition(_quiet(layerwise.by_head, model, sample_input=X), fast="head", lr=0.1, k=4)
        _train(model, opt, 3)  # only fast steps after the first: the head must move on each
        assert not torch.equal(model.b.weight, b_before)
        assert [g["name"] for g in opt.optimizers[0].param_groups] == ["head"]
        return
    opt = torch.optim.SGD(_quiet(layerwise.by_layer, model, sample_input=X).param_groups(lr=0.1))
    stepper = (
        FreezeOut(model, opt, total_steps=20)
        if technique == "freezeout"
        else GradualUnfreezing(Freezer(model, opt), every=5)
    )
    _train(model, opt, 20, stepper)  # failed at step 15 (FreezeOut) or 1 (unfreezing) before the fix
    assert not torch.equal(model.b.weight, b_before)
    assert model.b.weight.requires_grad


# ---- 2. tied weights ---------------------------------------------------------------------


def test_the_partition_records_tied_weights_and_freezing_their_group_early_is_refused():
    model = Tied()
    part = layerwise.by_layer(model, sample_input=TOKENS)
    assert part.tied == {"emb.weight": ("emb", "out")}
    opt = torch.optim.SGD(part.param_groups(lr=0.1))
    with pytest.raises(ValueError, match=r"'emb' holds 'emb.weight', which module 'out' .*tied weights"):
        FreezeOut(model, opt, total_steps=20)
    with pytest.raises(ValueError, match="tied weights"):
        Freezer(model, opt).freeze("emb")
    assert model.emb.weight.requires_grad and model.out.training  # nothing changed


def test_tied_modules_in_one_group_freeze_together():
    model = Tied()
    part = layerwise.explicit(model, {"mid": [model.mid], "tied": [model.emb, model.out]})
    opt = torch.optim.SGD(part.param_groups(lr=0.1))
    freezeout = FreezeOut(model, opt, total_steps=10)
    targets = torch.randint(0, 10, (20,), generator=torch.Generator().manual_seed(3))
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(TOKENS).reshape(-1, 10), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        freezeout.step()
    assert freezeout.freezer.frozen == ("mid",) and model.emb.weight.requires_grad


def test_a_tied_module_with_its_own_group_must_freeze_first_or_with_it():
    class TiedWithBias(Tied):
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(8, 10)
            self.out.weight = self.emb.weight

    model = TiedWithBias()
    part = layerwise.by_layer(model, sample_input=TOKENS)
    freezer = Freezer(model, torch.optim.SGD(part.param_groups(lr=0.1)))
    with pytest.raises(ValueError, match=r"module 'out' \(in group 'out'\)"):
        freezer.freeze("emb")
    freezer.freeze("emb", "out")
    assert not model.out.weight.requires_grad


# ---- 3, 4. added param groups ------------------------------------------------------------


def test_multirate_add_param_group_needs_a_part_and_then_trains_the_group():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    extra = nn.Linear(4, 2)
    opt = Multirate([model[2].weight, model[2].bias], [model[0].weight, model[0].bias], lr=0.1, k=2)
    with pytest.raises(ValueError, match=r"needs a 'part' key .*\['fast', 'slow'\]"):
        opt.add_param_group({"params": list(extra.parameters())})
    assert len(opt.param_groups) == 2  # the refused group left nothing behind
    with pytest.raises(ValueError, match="already in a part"):
        opt.add_param_group({"params": [model[0].weight], "part": "fast"})
    opt.add_param_group({"params": list(extra.parameters()), "part": "fast"})
    assert len(opt.param_groups) == 3
    before = extra.weight.detach().clone()
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(X) + extra(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(extra.weight, before)


def test_secant_adopts_added_groups():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    extra = nn.Linear(4, 2)
    part = layerwise.by_layer(model, sample_input=X)
    opt = SecantLR(torch.optim.SGD(part.param_groups(lr=0.05)), mode="line", clip=(0, 1.0))

    def step():
        loss = nn.functional.cross_entropy(model(X) + extra(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    opt.add_param_group({"params": list(extra.parameters()), "name": "extra", "lr": 0.05})
    for _ in range(4):
        step()  # raised IndexError in _observe before the fix
    assert opt.names == ["0", "2", "extra"] and opt.curvature["extra"] is not None


def test_a_failed_layerwise_step_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    part = layerwise.by_layer(model, sample_input=X)
    opt = torch.optim.SGD(part.param_groups(lr=0.1, weight_decay=1e-4, no_decay=("bias",)))
    sched = LayerwiseLR(opt, 10, policy=recipes.make_policy("cosine"))
    opt.step()
    sched.step()
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "lr": 0.1})  # no depth: position 4, a gap
    lrs, epoch = [g["lr"] for g in opt.param_groups], sched.last_epoch
    with pytest.raises(ValueError, match="'depth' keys must cover"):
        sched.step()
    assert sched.last_epoch == epoch and [g["lr"] for g in opt.param_groups] == lrs


# ---- 7. checkpoints that would load partway ----------------------------------------------


def _two_layer(width):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))


def _trained(kind, width):
    model = _two_layer(width)
    part = layerwise.by_layer(model, sample_input=X)
    if kind == "multirate":
        opt = Multirate.from_partition(part, fast="2", lr=0.1, k=3, momentum=0.9)
    elif kind == "hidlr":
        opt = HiDLR(torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9), update_every=2, model=model)
    else:
        opt = SecantLR(torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9), mode="line")
    for _ in range(4):
        loss = nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step(lambda: nn.functional.cross_entropy(model(X), Y)) if kind == "hidlr" else opt.step()
    return model, opt


@pytest.mark.parametrize("kind", ["multirate", "hidlr", "secant"])
def test_a_state_of_a_model_with_other_shapes_is_refused_before_anything_loads(kind):
    _, other = _trained(kind, width=6)
    _, opt = _trained(kind, width=8)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="another model"):
        opt.load_state_dict(other.state_dict())
    after = opt.state_dict()
    assert str(after) == str(before)


def test_hand_corrupted_states_fail_before_they_load():
    _, opt = _trained("multirate", width=8)
    state = opt.state_dict()
    bad = copy.deepcopy(state)
    bad["drift"][1][0] = (999, bad["drift"][1][0][1])
    step_count = opt.step_count
    with pytest.raises(ValueError, match="index 999 out of range"):
        opt.load_state_dict(bad)
    assert opt.step_count == step_count

    sched_opt = torch.optim.SGD(layerwise.by_layer(_two_layer(8), sample_input=X).param_groups(lr=0.1))
    sched = LayerwiseLR(sched_opt, 10, policy=recipes.make_policy("cosine"))
    saved = sched.state_dict()
    for key, value in (("last_epoch", "x"), ("base_lrs", [0.1])):
        with pytest.raises(ValueError, match=key):
            sched.load_state_dict({**saved, key: value})
        assert sched.last_epoch == 0 and sched.base_lrs == saved["base_lrs"]


def test_settings_resuming_depends_on_are_recorded_and_checked():
    model = _two_layer(8)
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=X).param_groups(lr=0.1))
    cosine = LayerwiseLR(opt, 10, policy=recipes.make_policy("cosine")).state_dict()
    with pytest.raises(ValueError, match="schedule="):
        LayerwiseLR(opt, 10, policy=recipes.make_policy("onecycle")).load_state_dict(cosine)
    _, hidlr = _trained("hidlr", width=8)
    fresh = HiDLR(torch.optim.SGD(layerwise.by_layer(model, sample_input=X).param_groups(lr=0.05), momentum=0.9))
    with pytest.raises(ValueError, match="update_every=2, this HiDLR has update_every=8"):
        fresh.load_state_dict(hidlr.state_dict())


# ---- 8. Hi-DLR's probes leave BatchNorm and gradients as they were -----------------------


def test_hidlr_without_model_restores_batchnorm_statistics_and_grads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = HiDLR(torch.optim.SGD(model.parameters(), lr=0.01), update_every=1)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    stats = [b.clone() for b in model[1].buffers()]
    opt.step(lambda: nn.functional.mse_loss(model(x), y))  # 4 probe forwards in train mode
    assert all(torch.equal(a, b) for a, b in zip(model[1].buffers(), stats))

    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]

    def torch_style():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="must only compute the loss"):
        opt.step(torch_style)
    assert all(p.grad is not None and torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


# ---- 9. minor ----------------------------------------------------------------------------


def test_multirate_from_partition_takes_one_name_as_a_string():
    model = _two_layer(8)
    part = layerwise.by_head(model, sample_input=X)
    opt = Multirate.from_partition(part, fast="head", lr=0.1, k=2)
    assert [g["name"] for g in opt.optimizers[0].param_groups] == ["head"]
