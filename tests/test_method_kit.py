"""A method written with the public kit only: builder, check, snippet and entry in a few lines."""

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from blobs import blobs, blobs_task
from layerwise.compare.methods import METHODS, Build, build_setup, method_snippet, resolve_settings
from layerwise.compare.methods.kit import (
    Method,
    Setup,
    checked,
    optimizer_line,
    policy_only,
    policy_snippet,
    positive_fraction,
    register_method,
)
from layerwise.tasks import TASKS, register_task

# ---- the example method: every group at `share` of the task's LR, under the global policy --------


def _half_lr(context: Build, settings: dict) -> Setup:
    optimizer = context.optimizer()
    for group in optimizer.param_groups:
        group["lr"] *= settings["share"]
    return Setup(optimizer, policy_only(context, optimizer))


def _half_lr_snippet(build: Build, settings: dict) -> str:
    share = settings["share"]
    return f"{optimizer_line(build)}\nfor g in opt.param_groups: g['lr'] *= {share!r}\n{policy_snippet(build)}"


HALF_LR = Method(
    "half-lr",
    "every group at `share` of the task's LR, under the global policy",
    _half_lr,
    {"share": 0.5},
    snippet=_half_lr_snippet,
    check=checked("half-lr", share=positive_fraction),
)

# ---- its test --------------------------------------------------------------------------------

TASK = blobs_task("kit-blobs")
if TASK.name not in TASKS:
    register_task(TASK)


@pytest.fixture
def half_lr() -> Iterator[Method]:
    register_method(HALF_LR)
    yield HALF_LR
    METHODS.unregister(HALF_LR.name)


def _fresh() -> tuple[nn.Module, Build]:
    torch.manual_seed(0)
    model = TASK.make_model()
    return model, Build(TASK, model, TASK.partition_of(model), 2, "cosine")


def test_a_method_from_the_kit_checks_builds_and_its_snippet_trains_the_same(half_lr):
    with pytest.raises(ValueError, match=r"--set half-lr\.share"):
        resolve_settings("half-lr", {"share": 0.0})
    settings = resolve_settings("half-lr")
    data = blobs(None, False)
    loader = [(data.train[0][i : i + 32], data.train[1][i : i + 32]) for i in (0, 32)]
    built, build = _fresh()
    setup = build_setup(build, "half-lr", settings)
    assert {g["lr"] for g in setup.optimizer.param_groups} == {TASK.lr / 2}
    for x, y in loader:
        loss = nn.functional.cross_entropy(built(x), y)
        setup.optimizer.zero_grad()
        loss.backward()
        setup.optimizer.step()
        setup.scheduler.step()
    copied, build = _fresh()
    namespace = {"model": copied, "loader": loader, "x": loader[0][0], "loss_fn": nn.functional.cross_entropy}
    exec(compile(method_snippet(build, "half-lr", settings), "<snippet half-lr>", "exec"), namespace)
    assert [g["lr"] for g in namespace["opt"].param_groups] == [g["lr"] for g in setup.optimizer.param_groups]
    torch.testing.assert_close(dict(copied.named_parameters()), dict(built.named_parameters()))
