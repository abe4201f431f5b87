"""torch.compile: compiled training equals eager training for every technique; recompiles are budgeted."""

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

import layerwise
from layerwise import FreezeOut, Freezer, Multirate
from layerwise.compiling import allow_recompiles, trainable_sets
from resume_case import CASES, TOTAL, _batch, build, take_step


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 8  # torch's default (importing timm.optim sets it to 1,000,000)
    yield
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.reset()


def _train(case: str, backend: str | None):
    model, opt, techniques = build(case)
    forward = torch.compile(model, backend=backend) if backend else model
    model.train()
    for step in range(TOTAL):
        take_step(forward, opt, *_batch(step))
        for technique in techniques.values():
            technique.step()
    return model, opt, techniques


@pytest.mark.parametrize("case", [c for c in CASES if c != "random-subsets"])
def test_a_compiled_model_trains_exactly_what_the_eager_model_trains(case):
    compiled, opt, techniques = _train(case, "aot_eager")
    graphs = counters["stats"]["unique_graphs"]
    eager, *_ = _train(case, None)
    for (name, a), b in zip(compiled.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    holder = next(iter(techniques.values()), opt)
    probes = 1 if case == "hidlr" else 0  # Hi-DLR's no-grad forwards are one more graph
    assert graphs == trainable_sets(holder) + probes


def _deep(groups: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [m for _ in range(groups - 1) for m in (nn.Linear(8, 8), nn.Tanh())]
    return nn.Sequential(*layers, nn.Linear(8, 2))


def _freezeout_run(groups: int, budget: bool):
    model = _deep(groups)
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 8))
    opt = torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9)
    fo = FreezeOut(model, opt, 3 * groups, t0=0.2, strategy="linear")
    if budget:
        allow_recompiles(fo, modes=1)
    forward = torch.compile(model, backend="eager")
    g = torch.Generator().manual_seed(0)
    for _ in range(3 * groups):
        x, y = torch.randn(4, 8, generator=g), torch.randint(0, 2, (4,), generator=g)
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        fo.step()
    return model, fo


def test_past_the_recompile_limit_training_stays_right_and_allow_recompiles_keeps_it_compiled():
    model, fo = _freezeout_run(12, budget=False)
    assert trainable_sets(fo) == 12 > torch._dynamo.config.recompile_limit
    assert counters["stats"]["unique_graphs"] == torch._dynamo.config.recompile_limit  # then eager
    torch._dynamo.reset()
    counters.clear()
    budgeted, fo = _freezeout_run(12, budget=True)
    assert torch._dynamo.config.recompile_limit == 12
    assert counters["stats"]["unique_graphs"] == 12
    for a, b in zip(model.parameters(), budgeted.parameters()):
        assert torch.equal(a, b)
    assert len(fo.frozen) == 11


def test_trainable_sets_of_multirate_levels():
    model = _deep(3)
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 8))
    levels = Multirate.levels([part[n].params for n in part.names[::-1]], lr=0.1, ratios=(2, 2))
    assert trainable_sets(levels) == 3  # all, fast+middle, fast
    with pytest.raises(ValueError, match="extra: must be an int >= 0, got -1"):
        allow_recompiles(levels, extra=-1)
    with pytest.raises(ValueError, match="modes: must be an int >= 1, got 0"):
        allow_recompiles(levels, modes=0)


def test_evaluation_between_freezes_is_budgeted_and_train_after_a_freeze_costs_no_graph():
    model, opt, techniques = build("freezeout")
    fo = techniques["freezeout"]
    assert allow_recompiles(fo) >= 2 * trainable_sets(fo)
    forward = torch.compile(model, backend="eager")
    for step in range(TOTAL):
        model.train()  # frozen modules stay in eval: no guard on their mode fails
        take_step(forward, opt, *_batch(step))
        fo.step()
        model.eval()
        with torch.no_grad():
            forward(_batch(step)[0])
    assert counters["stats"]["unique_graphs"] == 2 * trainable_sets(fo)


def test_a_graph_recorded_before_a_freeze_does_not_train_the_frozen_groups():
    model, opt, _ = build("llr")
    freezer = Freezer(model, opt)
    x, y = _batch(0)
    loss = nn.functional.cross_entropy(model(x), y)  # recorded while conv still trains
    freezer.freeze("conv", "bn")
    loss.backward()  # autograd skips leaves that stopped requiring grad
    before = [p.detach().clone() for p in (model.conv.weight, model.bn.weight)]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, (model.conv.weight, model.bn.weight)))
    assert not torch.equal(model.mid.weight, build("llr")[0].mid.weight)


def test_a_gradient_written_into_a_frozen_group_is_refused_and_nothing_steps():
    model, opt, _ = build("llr")
    freezer = Freezer(model, opt)
    freezer.freeze("conv", "bn")
    take_step(model, opt, *_batch(0))
    loss = nn.functional.cross_entropy(model(_batch(1)[0]), _batch(1)[1])
    opt.zero_grad()
    loss.backward()
    model.conv.weight.grad = torch.zeros_like(model.conv.weight)  # as code outside autograd might
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"frozen groups \['conv'\] got gradients"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
