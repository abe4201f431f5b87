"""Warnings raised inside layerwise name the user's line (this file), whatever path inside led to them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import layerwise
from layerwise import ForeignLRWarning, FreezeOut, Freezer, FrozenPrefixCache, HiDLR, LayerwiseLR, SecantLR
from layerwise._registry import Registry
from layerwise.tasks.models import ResNetCNN


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def _groups(net):
    return layerwise.by_layer(net, sample_input=torch.zeros(1, 4)).param_groups(lr=0.1)


def _here(record) -> None:
    assert [w.filename for w in record] == [__file__] * len(record) and len(record) >= 1


def _scheduled(kind):
    net = _net()
    opt = torch.optim.SGD(_groups(net), lr=0.1)
    return opt, (LayerwiseLR(opt, 10) if kind == "LayerwiseLR" else FreezeOut(net, opt, 10))


@pytest.mark.parametrize("kind", ["LayerwiseLR", "FreezeOut"])  # FreezeOut steps a LayerwiseLR inside its own step
def test_a_foreign_lr_is_warned_at_the_schedulers_step(kind):
    opt, scheduler = _scheduled(kind)
    opt.step()  # no gradients: nothing moves
    scheduler.step()
    opt.param_groups[0]["lr"] = 123.0
    with pytest.warns(ForeignLRWarning) as record:
        scheduler.step()
    _here(record)


@pytest.mark.parametrize("technique", [HiDLR, SecantLR])
def test_a_foreign_lr_is_warned_at_the_optimizers_step_through_torchs_wrapper(technique):
    net = _net()
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    opt = technique(torch.optim.SGD(_groups(net)))
    closure = lambda: nn.functional.cross_entropy(net(x), y)  # noqa: E731
    for _ in range(2):
        opt.zero_grad()
        closure().backward()
        opt.step(closure)
    opt.param_groups[1]["lr"] = 123.0
    opt.zero_grad()
    closure().backward()
    with pytest.warns(ForeignLRWarning) as record:
        opt.step(closure)
    _here(record)


def test_hidlr_says_at_the_step_that_no_fit_was_accepted():
    w = nn.Parameter(torch.tensor([1.0, -0.5]))
    opt = HiDLR(torch.optim.SGD([w], lr=0.01), update_every=1)
    with pytest.warns(UserWarning, match="none of") as record:
        for _ in range(layerwise.hidlr.NEVER_ACCEPTED_ROUNDS):
            opt.zero_grad()
            (-(w**2).sum()).backward()  # concave: every fit is rejected
            opt.step(lambda: -(w**2).sum())
    _here([w for w in record if "none of" in str(w.message)])


@pytest.mark.parametrize(
    "build",
    [
        lambda net: layerwise.by_layer(net),
        lambda net: layerwise.by_block(net),
        lambda net: layerwise.by_depth_buckets(net, 2),
        lambda net: layerwise.muon_split(layerwise.by_layer(net), head="4"),
    ],
    ids=["by_layer", "by_block", "by_depth_buckets", "inside-another-call"],
)
def test_a_partition_without_sample_input_is_warned_at_the_builders_call(build):
    with pytest.warns(UserWarning, match="no sample_input given") as record:
        build(_net())
    _here(record)


def test_rules_that_match_nothing_and_a_registered_name_again_are_warned_at_the_call():
    with pytest.warns(UserWarning, match="matched no parameters") as record:
        layerwise.by_patterns(_net(), {r"^0\.": "first", r"^9\.": "none"}, rest="rest")
    _here(record)
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1)
    with pytest.warns(UserWarning, match="already registered") as record:
        registry.register("a", 2)
    _here(record)


def test_the_prefix_cache_warns_at_the_models_call():
    torch.manual_seed(0)
    model, x = ResNetCNN(width=4), torch.randn(16, 1, 12, 12)
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=x[:2]).param_groups(lr=0.05))
    freezer = Freezer(model, opt)
    freezer.freeze("stem.0", "stem.1", "layer1.conv1")  # layer1's shortcut reads the stem's output past conv1
    cache = FrozenPrefixCache(model, freezer, 16, same_inputs=True)
    with pytest.warns(UserWarning, match="skip connection") as record, cache.batch(torch.arange(16)):
        model(x)
    _here(record)
