import copy

import pytest
import torch
from torch import nn

import layerwise
from layerwise.freezing import Freezer, GradualUnfreezing


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
        self.block2 = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.block3 = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block3(self.block2(self.block1(x))))


def setup(cls=torch.optim.SGD, **kwargs):
    torch.manual_seed(0)
    model = Net()
    part = layerwise.by_block(model, sample_input=torch.zeros(2, 6))
    kwargs = kwargs or {"lr": 0.1, "momentum": 0.9}
    optimizer = cls(part.param_groups(), **kwargs)
    return model, optimizer, Freezer(model, optimizer)


def train_steps(model, optimizer, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_frozen_prefix_is_not_traversed_by_autograd():
    model, optimizer, freezer = setup()
    train_steps(model, optimizer, 2)
    freezer.freeze("block1", "block2")
    seen = {}
    model.block2.register_forward_hook(lambda m, i, out: seen.setdefault("act", out))
    called = []
    model.block1.register_full_backward_hook(lambda *a: called.append("block1"))
    loss = model(torch.randn(4, 6)).sum()
    assert seen["act"].requires_grad is False and seen["act"].grad_fn is None  # no graph recorded
    loss.backward()
    assert called == []
    assert all(p.grad is None for p in model.block1.parameters())
    assert all(p.grad is None for p in model.block2.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_frozen_middle_group_computes_no_weight_gradient():
    model, _optimizer, freezer = setup()
    freezer.freeze("block2")
    model(torch.randn(4, 6)).sum().backward()
    assert all(p.grad is None for p in model.block2.parameters())
    assert all(p.grad is not None for p in model.block1.parameters())


def test_norm_and_dropout_stay_in_inference_mode_after_model_train():
    model, optimizer, freezer = setup()
    train_steps(model, optimizer, 3)
    freezer.freeze("block1")
    model.train()
    stats = model.block1[1].running_mean.clone(), model.block1[1].num_batches_tracked.clone()
    x = torch.randn(8, 6)
    first = model.block1(x)
    second = model.block1(x)
    assert torch.equal(first, second)  # dropout off, BN from running statistics
    assert torch.equal(model.block1[1].running_mean, stats[0])
    assert torch.equal(model.block1[1].num_batches_tracked, stats[1])
    assert model.block2.training and model.block2[1].training  # others keep training
    train_steps(model, optimizer, 2)
    assert torch.equal(model.block1[1].running_mean, stats[0])


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
        (torch.optim.Adam, {"lr": 0.01}),
        (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
        (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5}),
        (torch.optim.Adagrad, {"lr": 0.1}),
    ],
)
def test_any_optimizer_frozen_params_stay_put_and_state_is_released(cls, kwargs):
    model, optimizer, freezer = setup(cls, **kwargs)
    train_steps(model, optimizer, 3)

    def state_bytes():
        return sum(
            t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
        )

    before = state_bytes()
    frozen_params = list(model.block1.parameters()) + list(model.block2.parameters())
    freezer.freeze("block1", "block2")
    assert state_bytes() < before
    assert all(p not in optimizer.state for p in frozen_params)
    snapshot = [p.detach().clone() for p in frozen_params]
    train_steps(model, optimizer, 3)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, frozen_params))
    state = optimizer.state_dict()  # never breaks after freezing
    fresh = cls(copy.deepcopy(optimizer.param_groups), **kwargs)
    fresh.load_state_dict(state)


def test_unfreeze_restores_training_with_fresh_state():
    model, optimizer, freezer = setup()
    train_steps(model, optimizer, 2)
    freezer.freeze("block1")
    model.train()
    train_steps(model, optimizer, 1)
    freezer.unfreeze("block1")
    assert all(p.requires_grad for p in model.block1.parameters())
    assert all(p not in optimizer.state for p in model.block1.parameters())  # fresh momentum
    assert model.block1.training and model.block1[1].training
    before = model.block1[0].weight.detach().clone()
    stats = model.block1[1].running_mean.clone()
    train_steps(model, optimizer, 1)
    assert not torch.equal(before, model.block1[0].weight)
    assert not torch.equal(stats, model.block1[1].running_mean)
    assert freezer.frozen == ()


def test_state_dict_resume_after_freezing_equals_uninterrupted_run():
    model, optimizer, freezer = setup()
    train_steps(model, optimizer, 3, seed=1)
    freezer.freeze("block1")
    train_steps(model, optimizer, 3, seed=2)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "freezer": freezer.state_dict()}
    )
    train_steps(model, optimizer, 3, seed=3)
    reference = [p.detach().clone() for p in model.parameters()]

    model2, optimizer2, freezer2 = setup()
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    freezer2.load_state_dict(saved["freezer"])
    assert freezer2.frozen == ("block1",)
    train_steps(model2, optimizer2, 3, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(reference, model2.parameters()))


def test_bad_names_change_nothing():
    model, _optimizer, freezer = setup()
    with pytest.raises(ValueError, match="no group named"):
        freezer.freeze("block1", "block9")
    assert freezer.frozen == () and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="not frozen"):
        freezer.unfreeze("block2")
    with pytest.raises(TypeError, match="strings"):
        freezer.freeze(0)
    with pytest.raises(ValueError, match="state_dict"):
        freezer.load_state_dict({"frozen": ["nope"]})
    anonymous = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="name"):
        Freezer(model, anonymous)
    with pytest.raises(TypeError, match="optimizer"):
        Freezer(model, "sgd")


def test_gradual_unfreezing_head_first():
    model, optimizer, freezer = setup()
    unfreezing = GradualUnfreezing(freezer, every=2)
    assert set(freezer.frozen) == {"block1", "block2", "block3"}
    seen = []
    for _ in range(7):
        seen.append(len(freezer.frozen))
        train_steps(model, optimizer, 1)
        unfreezing.step()
    assert seen == [3, 3, 2, 2, 1, 1, 0]
    state = unfreezing.state_dict()
    _model2, _optimizer2, freezer2 = setup()
    again = GradualUnfreezing(freezer2, every=2)
    again.load_state_dict(state)
    assert freezer2.frozen == freezer.frozen == ()
    with pytest.raises(ValueError, match="every"):
        GradualUnfreezing(freezer, every=0)
    with pytest.raises(ValueError, match="start"):
        GradualUnfreezing(freezer, every=1, start=9)


class TiedTokens(nn.Module):
    """Embedding, two hidden layers, and an output layer (with a bias) whose weight is the embedding's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.relu(self.b(torch.relu(self.a(self.emb(tokens))))))


def _tied_in_one_group(position):
    model = TiedTokens()
    groups = {"a": [model.a], "b": [model.b]}
    order = list(groups)
    order.insert(position, "emb+out")
    groups["emb+out"] = [model.emb, model.out]
    part = layerwise.explicit(model, {name: groups[name] for name in order})
    assert part.names[position] == "emb+out"
    return model, torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_tied_modules_in_one_group_freeze_with_freezer_in_any_position(position):
    model, opt = _tied_in_one_group(position)
    Freezer(model, opt).freeze("emb+out")
    assert not model.emb.weight.requires_grad and not model.out.bias.requires_grad
    assert model.a.weight.requires_grad and model.b.weight.requires_grad


@pytest.mark.parametrize("position", [0, 1, 2])
def test_tied_modules_in_one_group_freeze_with_freezeout_in_any_position(position):
    model, opt = _tied_in_one_group(position)
    freezeout = layerwise.FreezeOut(model, opt, total_steps=12, t0=0.3, strategy="linear")
    tokens = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 10, (20,), generator=torch.Generator().manual_seed(3))
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 10), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        freezeout.step()
    tied_frozen = position < 2  # the last group (the head) trains to the end
    assert freezeout.freezer.is_frozen("emb+out") == tied_frozen
    assert model.out.bias.requires_grad != tied_frozen


def test_a_tied_module_without_other_parameters_is_refused_with_a_fix_that_applies():
    model = TiedTokens()
    model.out = nn.Linear(8, 10, bias=False)
    model.out.weight = model.emb.weight
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 2, dtype=torch.long))
    freezer = Freezer(model, torch.optim.SGD(part.param_groups(lr=0.1)))
    with pytest.raises(ValueError, match=r"'out' has no other parameter.*Freeze 'emb' last"):
        freezer.freeze("emb")
    freezer.freeze("a", "b", "emb")
    assert not model.emb.weight.requires_grad
