"""Freezing over composite optimizers (PerGroupOptimizer, Multirate) equals freezing over a plain one;
a parameter is never in two parts; a tied pair given to one group freezes; an optimizer built before
sharding is named as the reason (FSDP2, on 2 gloo processes)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import layerwise
import parallel_cases as cases
from layerwise import FreezeOut, Freezer, GradualUnfreezing, Multirate, Part, PerGroupOptimizer, fsdp
from layerwise.distributed import leave_group
from test_per_group import batch, make_model

STEPS = 10
FREEZE_AT, UNFREEZE_AT = 3, 6


def take_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    x, y = batch(step)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def partition(model: nn.Module) -> layerwise.Partition:
    return layerwise.by_layer(model, sample_input=torch.zeros(1, 4))


def plain(model: nn.Module, cls: type[torch.optim.Optimizer], options: dict) -> torch.optim.Optimizer:
    return cls(partition(model).param_groups(), **options)


def per_group(model: nn.Module, cls: type[torch.optim.Optimizer], options: dict) -> PerGroupOptimizer:
    """The same groups and class, in two parts."""
    return PerGroupOptimizer.from_partition(
        partition(model), {"0": "body", "2": "body", "4": "head"}, {"body": (cls, options), "head": (cls, options)}
    )


def multirate_k1(model: nn.Module, cls: type[torch.optim.Optimizer], options: dict) -> Multirate:
    """Period 1 for both parts: every step is a plain step of every group."""
    options = dict(options)
    return Multirate.from_partition(partition(model), fast=["4"], lr=options.pop("lr"), k=1, base=cls, **options)


def held_state(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[dict]:
    """The state every torch optimizer inside ``opt`` holds for ``params`` (the parts' own, not a merged copy)."""
    inner = getattr(opt, "optimizers", [opt])
    return [o.state[p] for o in inner for p in params if p in o.state]


def freeze_and_unfreeze(build) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Train STEPS steps, group "2" frozen from FREEZE_AT to UNFREEZE_AT: the parameters and, at every
    step while frozen and right after unfreezing, the state held for group "2"."""
    model = make_model()
    opt = build(model)
    freezer = Freezer(model, opt)
    group = list(model[2].parameters())
    seen = []
    for step in range(STEPS):
        if step == FREEZE_AT:
            freezer.freeze("2")
        if step == UNFREEZE_AT:
            freezer.unfreeze("2")
        if FREEZE_AT <= step <= UNFREEZE_AT:
            seen.append(held_state(opt, group))
        take_step(model, opt, step)
    return [p.detach().clone() for p in model.parameters()], seen


OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
]


@pytest.mark.parametrize(("cls", "options"), OPTIMIZERS, ids=["sgd", "adamw"])
@pytest.mark.parametrize("composite", [per_group, multirate_k1], ids=["per-group", "multirate-k1"])
def test_freezing_over_a_composite_equals_freezing_over_a_plain_optimizer(composite, cls, options):
    reference, _ = freeze_and_unfreeze(lambda m: plain(m, cls, options))
    ours, seen = freeze_and_unfreeze(lambda m: composite(m, cls, options))
    assert all(torch.equal(a, b) for a, b in zip(reference, ours))
    assert seen == [[]] * len(seen)  # freed while frozen, fresh right after unfreezing


def test_unfreezing_over_a_composite_starts_from_fresh_state():
    """The documented behaviour by hand: momentum restarts from the first gradient after unfreezing."""
    model = make_model()
    opt = per_group(model, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})
    freezer = Freezer(model, opt)
    for step in range(3):
        take_step(model, opt, step)
    freezer.freeze("2")
    take_step(model, opt, 3)
    freezer.unfreeze("2")
    take_step(model, opt, 4)
    weight = model[2].weight
    assert torch.equal(opt.optimizers[0].state[weight]["momentum_buffer"], weight.grad)


def test_freezeout_and_gradual_unfreezing_over_a_composite_equal_a_plain_optimizer():
    def run(build, technique):
        model = make_model()
        opt = build(model, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})
        scheduled = technique(model, opt)
        for step in range(STEPS):
            take_step(model, opt, step)
            scheduled.step()
        frozen = [p for g in opt.param_groups if scheduled.freezer.is_frozen(g["name"]) for p in g["params"]]
        return [p.detach().clone() for p in model.parameters()], held_state(opt, frozen)

    for technique in (
        lambda m, o: FreezeOut(m, o, STEPS, t0=0.3, strategy="linear"),
        lambda m, o: GradualUnfreezing(Freezer(m, o), every=3),
    ):
        (reference, _), (ours, held) = run(plain, technique), run(per_group, technique)
        assert all(torch.equal(a, b) for a, b in zip(reference, ours))
        assert held == []  # the frozen groups' momentum is freed in the part that held it


def test_a_group_frozen_over_multirate_stays_put_and_unfreezes_with_fresh_state():
    """Multirate sets requires_grad every step and drifts its slow part: a frozen group keeps neither."""
    model = make_model()
    opt = Multirate.from_partition(partition(model), fast=["4"], lr=0.3, k=3, momentum=0.9)
    freezer = Freezer(model, opt)
    slow = list(model[0].parameters())
    for step in range(4):  # mid-cycle: the slow part's drift is under way
        take_step(model, opt, step)
    freezer.freeze("0")
    frozen = [p.detach().clone() for p in slow]
    for step in range(4, 10):
        take_step(model, opt, step)
        assert not any(p.requires_grad for p in slow)
        assert held_state(opt, slow) == []
        assert all(torch.equal(a, b) for a, b in zip(frozen, slow))
    freezer.unfreeze("0")
    assert held_state(opt, slow) == []
    while not opt.refreshes(1):  # the slow part's next refresh
        take_step(model, opt, opt.step_count)
        assert all(torch.equal(a, b) for a, b in zip(frozen, slow))  # no drift left from before the freeze
    take_step(model, opt, opt.step_count)
    assert torch.equal(opt.optimizers[1].state[model[0].weight]["momentum_buffer"], model[0].weight.grad)


# -- a parameter in two parts -------------------------------------------------------------------


def two_parts(model: nn.Module) -> PerGroupOptimizer:
    return PerGroupOptimizer(
        {
            "body": Part(torch.optim.SGD, [{"params": list(model[0].parameters()), "name": "0"}], {"lr": 0.1}),
            "head": Part(torch.optim.SGD, [{"params": list(model[4].parameters()), "name": "4"}], {"lr": 0.1}),
        }
    )


def test_add_param_group_refuses_a_parameter_another_part_holds_and_adds_nothing():
    model = make_model()
    opt = two_parts(model)
    before = [len(o.param_groups) for o in opt.optimizers]
    with pytest.raises(
        ValueError,
        match=r"param_group: a parameter of shape \(8, 4\) is already in a part \(part 'body', group '0'\); each "
        r"parameter is trained by one part, so it would be stepped twice",
    ):
        opt.add_param_group({"params": [model[0].weight], "part": "head"})
    with pytest.raises(
        ValueError, match=r"param_group: parameter '4.bias' is already in a part \(part 'head', group '4'\)"
    ):
        opt.add_param_group({"params": [("2.weight", model[2].weight), ("4.bias", model[4].bias)], "part": "body"})
    assert [len(o.param_groups) for o in opt.optimizers] == before
    opt.add_param_group({"params": list(model[2].parameters()), "part": "body", "name": "2"})
    assert [g["name"] for g in opt.param_groups] == ["0", "2", "4"]


def test_a_parameter_refused_by_another_part_is_stepped_once():
    """What the refusal prevents: a parameter in two parts would move two SGD steps per step."""
    model = make_model()
    opt = two_parts(model)
    weight = model[0].weight
    with pytest.raises(ValueError, match=r"already in a part \(part 'body'"):
        opt.add_param_group({"params": [weight], "part": "head"})
    before = weight.detach().clone()
    take_step(model, opt, 0)
    assert torch.allclose(weight, before - 0.1 * weight.grad)


def test_parts_sharing_a_parameter_are_refused_naming_it():
    model = make_model()
    with pytest.raises(ValueError, match=r"parts\['a'\], parts\['b'\]: a parameter is in both parts \(parameter '4.w"):
        PerGroupOptimizer(
            {
                "a": Part(torch.optim.SGD, model.parameters(), {"lr": 0.1}),
                "b": Part(torch.optim.SGD, model[4].parameters(), {"lr": 0.1}),
            },
            model=model,
        )


def test_multirate_add_param_group_names_the_parameter_and_its_part():
    model = make_model()
    opt = Multirate(model[4].parameters(), model[0].parameters(), lr=0.1, k=2)
    with pytest.raises(
        ValueError, match=r"param_group: a parameter of shape \(3, 8\) is already in a part \(part 'fast'\)"
    ):
        opt.add_param_group({"params": [model[4].weight], "part": "slow"})


# -- a tied pair in one group -------------------------------------------------------------------


class TiedTokens(nn.Module):
    """Embedding, two hidden layers and a bias-less output layer whose only parameter is the embedding's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.b(torch.relu(self.a(self.emb(tokens))))))


def tied_in_one_group(position: int) -> tuple[TiedTokens, torch.optim.Optimizer]:
    model = TiedTokens()
    order = ["a", "b"]
    order.insert(position, "emb+out")
    modules = {"a": [model.a], "b": [model.b], "emb+out": [model.emb, model.out]}
    part = layerwise.explicit(model, {name: modules[name] for name in order})
    return model, torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)


def test_param_groups_record_their_modules():
    _model, opt = tied_in_one_group(0)
    assert [(g["name"], g["modules"]) for g in opt.param_groups] == [
        ("emb+out", ["emb", "out"]),
        ("a", ["a"]),
        ("b", ["b"]),
    ]


@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_tied_pair_without_other_parameters_freezes_when_one_group_holds_both(position):
    model, opt = tied_in_one_group(position)
    Freezer(model, opt).freeze("emb+out")
    assert not model.emb.weight.requires_grad
    assert model.a.weight.requires_grad and model.b.weight.requires_grad


def test_the_refusal_for_a_tied_module_without_other_parameters_offers_the_group_that_works():
    model = TiedTokens()
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"give 'out' to 'emb' too \(layerwise.explicit with both modules"):
        Freezer(model, torch.optim.SGD(part.param_groups(lr=0.1))).freeze("emb")
    part = layerwise.explicit(model, {"emb": [model.emb, model.out], "a": [model.a], "b": [model.b]})
    Freezer(model, torch.optim.SGD(part.param_groups(lr=0.1))).freeze("emb")
    assert not model.emb.weight.requires_grad


def test_freezeout_freezes_a_tied_pair_held_by_one_group():
    model, opt = tied_in_one_group(0)
    freezeout = FreezeOut(model, opt, total_steps=12, t0=0.3, strategy="linear")
    tokens = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 10, (20,), generator=torch.Generator().manual_seed(3))
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 10), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        freezeout.step()
    assert freezeout.freezer.frozen == ("emb+out", "a")


# -- an optimizer built before sharding ---------------------------------------------------------


def _technique_after_sharding(rank: int, world: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    net = cases.net()
    opt = torch.optim.SGD(layerwise.by_layer(net, sample_input=torch.zeros(2, 6)).param_groups(lr=0.1))
    fsdp.shard(net)  # after the optimizer took the parameters: the misuse
    for name, build in (
        ("freezeout", lambda: FreezeOut(net, opt, cases.STEPS)),
        ("unfreezing", lambda: GradualUnfreezing(Freezer(net, opt), every=3)),
    ):
        try:
            build()
            out[(name, rank)] = ("", "")
        except Exception as err:
            out[(name, rank)] = (type(err).__name__, str(err))
    leave_group()


def test_a_technique_on_an_optimizer_built_before_sharding_names_the_reason():
    out = mp.Manager().dict()
    mp.spawn(_technique_after_sharding, args=(2, cases.free_port(), out), nprocs=2, join=True)
    for key, (kind, message) in dict(out).items():
        assert kind == "ValueError", (key, kind, message)
        assert message.startswith("optimizer: holds parameters that fully_shard has replaced"), (key, message)
        assert "build the optimizer and the technique after layerwise.fsdp.shard / fully_shard" in message
