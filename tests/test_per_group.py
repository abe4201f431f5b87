"""PerGroupOptimizer: one optimizer per part, equal to each optimizer run alone, schedulable, resumable."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import layerwise
from layerwise import Part, PerGroupOptimizer

STEPS = 6


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def train(model: nn.Module, optimizers: list, steps: range, after=()) -> None:
    for step in steps:
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()
        for sched in after:
            sched.step()


def split(model: nn.Module) -> PerGroupOptimizer:
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 4))
    return PerGroupOptimizer.from_partition(
        part,
        {"0": "body", "2": "body", "4": "head"},
        {"body": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), "head": (torch.optim.AdamW, {"lr": 1e-2})},
    )


def alone(model: nn.Module) -> list[torch.optim.Optimizer]:
    body = [p for m in (model[0], model[2]) for p in m.parameters()]
    return [torch.optim.SGD(body, lr=0.1, momentum=0.9), torch.optim.AdamW(model[4].parameters(), lr=1e-2)]


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_equals_each_optimizer_run_alone_step_for_step():
    ours, theirs = make_model(), make_model()
    opt, separate = split(ours), alone(theirs)
    for step in range(STEPS):
        train(ours, [opt], range(step, step + 1))
        train(theirs, separate, range(step, step + 1))
        assert_same(ours, theirs)


def test_param_groups_are_the_inner_optimizers_own_dicts():
    opt = split(make_model())
    assert [g["name"] for g in opt.param_groups] == ["0", "2", "4"]
    assert all(any(g is h for o in opt.optimizers for h in o.param_groups) for g in opt.param_groups)


def test_an_lr_scheduler_and_layerwise_lr_drive_every_part():
    ours, theirs = make_model(), make_model()
    opt, separate = split(ours), alone(theirs)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    train(ours, [opt], range(STEPS), after=[sched])
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in separate]
    train(theirs, separate, range(STEPS), after=scheds)
    assert_same(ours, theirs)
    assert [g["lr"] for g in opt.param_groups] == [0.0125, 0.0125, 1.25e-3]

    model = make_model()
    opt = split(model)
    layers = layerwise.LayerwiseLR(opt, total_steps=STEPS, layers=layerwise.Discriminative(2.0))
    train(model, [opt], range(2), after=[layers])
    assert [g["lr"] for g in opt.optimizers[0].param_groups] == [0.025, 0.05]
    assert opt.optimizers[1].param_groups[0]["lr"] == 1e-2


def test_freezeout_freezes_across_parts():
    model = make_model()
    opt = split(model)
    freezeout = layerwise.FreezeOut(model, opt, total_steps=STEPS * 2)
    train(model, [opt], range(STEPS * 2), after=[freezeout])
    assert freezeout.freezer.frozen == ("0", "2")
    assert not any(p.requires_grad for p in model[0].parameters())


def test_resumes_bitwise_from_a_saved_checkpoint(tmp_path):
    straight = make_model()
    opt = split(straight)
    train(straight, [opt], range(2 * STEPS))

    first = make_model()
    opt = split(first)
    train(first, [opt], range(STEPS))
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")

    second = make_model()  # fresh objects, loaded from the file
    opt = split(second)
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    second.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    train(second, [opt], range(STEPS, 2 * STEPS))
    assert_same(second, straight)


def test_refuses_a_checkpoint_of_another_split_and_changes_nothing():
    model = make_model()
    opt = split(model)
    train(model, [opt], range(2))
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 4))
    other = PerGroupOptimizer.from_partition(
        part,
        {"0": "body", "2": "head", "4": "head"},
        {"body": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), "head": (torch.optim.AdamW, {"lr": 1e-2})},
    )
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="groups_per_part"):
        other.load_state_dict(opt.state_dict())
    assert other.state_dict() == before
    with pytest.raises(ValueError, match="written by Multirate"):
        opt.load_state_dict({**opt.state_dict(), "technique": "Multirate"})


def test_a_group_without_an_optimizer_is_refused_naming_assign():
    part = layerwise.by_layer(make_model(), sample_input=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"assign: no optimizer for the groups \['4'\]"):
        PerGroupOptimizer.from_partition(part, {"0": "a", "2": "a"}, {"a": (torch.optim.SGD, {"lr": 0.1})})
    with pytest.raises(ValueError, match=r"assign: parts \['b'\] are not in optimizers"):
        PerGroupOptimizer.from_partition(part, {"0": "a", "2": "a", "4": "b"}, {"a": (torch.optim.SGD, {"lr": 0.1})})


def test_bad_parts_are_refused():
    model = make_model()
    with pytest.raises(ValueError, match="a parameter is in both parts"):
        PerGroupOptimizer(
            {
                "a": Part(torch.optim.SGD, model.parameters(), {"lr": 0.1}),
                "b": Part(torch.optim.SGD, model[4].parameters(), {"lr": 0.1}),
            }
        )
    with pytest.raises(ValueError, match="parameters of model in no part"):
        PerGroupOptimizer({"a": Part(torch.optim.SGD, model[0].parameters(), {"lr": 0.1})}, model=model)
    with pytest.raises(TypeError, match=r"parts\['a'\].optimizer"):
        PerGroupOptimizer({"a": Part(nn.Linear, model.parameters())})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"parts\['a'\]: is empty"):
        PerGroupOptimizer({"a": Part(torch.optim.SGD, [], {"lr": 0.1})})


def test_step_calls_the_closure_once():
    model = make_model()
    opt = split(model)
    calls = []

    def closure():
        calls.append(1)
        x, y = batch(0)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)
    assert calls == [1]
