"""Hi-DLR's prefix reuse: the same losses, LRs and weights as recomputing every probe from the input."""

import pytest
import torch
from torch import nn

import layerwise
from layerwise import HiDLR
from layerwise.tasks.models import ResNetCNN

X = torch.randn(32, 1, 12, 12, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))


def _run(reuse, steps=6, **options):
    torch.manual_seed(0)
    model = ResNetCNN(width=4)
    part = layerwise.by_block(model, sample_input=X[:2])  # stem, layer1, layer2, layer3, fc
    base = torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9)
    opt = HiDLR(base, update_every=2, model=model, prefix_reuse=reuse, **options)
    model.train()  # BatchNorm on batch statistics during the probes too
    closure = lambda: nn.functional.cross_entropy(model(X), Y)  # noqa: E731
    for _ in range(steps):
        opt.zero_grad()
        closure().backward()
        opt.step(closure)
    return model, opt


@pytest.mark.parametrize("options", [{}, {"joint_scale": True}, {"direction": "step"}])
def test_prefix_reuse_gives_bitwise_the_same_training(options):
    plain, plain_opt = _run(False, **options)
    reused, opt = _run(True, **options)
    assert opt.history == plain_opt.history and opt.eta == plain_opt.eta
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), reused.state_dict().values()))
    # 4 probes per group; every group after the first starts from a cut (its first probe records it)
    assert opt.stats["prefix_reused"] >= opt.stats["probe_rounds"] * 4 * 3
    assert opt.stats["forward_passes"] == plain_opt.stats["forward_passes"]


def test_a_crossing_skip_connection_falls_back_with_a_warning_or_is_refused():
    def by_layer_run(reuse):
        torch.manual_seed(0)
        model = ResNetCNN(width=4)
        part = layerwise.by_layer(model, sample_input=X[:2])  # layer1.bn1 etc: inside residual blocks
        opt = HiDLR(torch.optim.SGD(part.param_groups(lr=0.05)), update_every=2, model=model, prefix_reuse=reuse)
        closure = lambda: nn.functional.cross_entropy(model(X), Y)  # noqa: E731
        closure().backward()
        return model, opt, closure

    model, opt, closure = by_layer_run(True)
    with pytest.warns(
        UserWarning, match="prefix_reuse: the probes of group .* shallower cut: .*skip connection"
    ) as said:
        opt.step(closure)
    assert {w.filename for w in said} == {__file__}  # the step's line, not Hi-DLR's nor torch's
    model, opt, closure = by_layer_run("strict")
    before = [p.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="prefix_reuse='strict'"):
        opt.step(closure)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert opt.step_count == 0 and not opt.optimizer.state


def test_bad_prefix_reuse_arguments():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="prefix_reuse: must be one of"):
        HiDLR(opt, model=model, prefix_reuse="yes")
    with pytest.raises(ValueError, match="prefix_reuse: needs model="):
        HiDLR(opt, prefix_reuse=True)
