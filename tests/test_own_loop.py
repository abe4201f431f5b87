"""The techniques inside a user's own loop: other schedulers beside them, warm-ups before them."""

import warnings

import pytest
import torch
from torch import nn

import layerwise
from layerwise import FreezeOut, LayerwiseLR
from layerwise.param_groups import ForeignLRWarning
from layerwise.schedules import Cosine

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1))


def _setup(lr=1.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    part = layerwise.by_layer(model, sample_input=X)
    return model, torch.optim.SGD(part.param_groups(lr=lr, lr_mult=[1.0, 1 / 3]))


def _train(model, opt, epochs, batches, per_batch, per_epoch=()):
    for _ in range(epochs):
        for _ in range(batches):
            loss = nn.functional.cross_entropy(model(X), Y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for technique in per_batch:
                technique.step()
        for technique in per_epoch:
            technique.step()


def _foreign(caught):
    return [w for w in caught if issubclass(w.category, ForeignLRWarning)]


def test_a_steplr_kept_beside_layerwise_lr_is_reported_once_naming_the_group_and_the_fix():
    model, opt = _setup()
    sched = LayerwiseLR(opt, 12)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)  # pytorch/examples' mnist
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(model, opt, epochs=3, batches=4, per_batch=[sched], per_epoch=[step_lr])
    [warning] = _foreign(caught)
    text = str(warning.message)
    assert "LayerwiseLR: param group '0' has lr 0.7, but LayerwiseLR wrote 1" in text
    assert "policy=" in text and "SequentialLR" in text


def test_a_steplr_kept_beside_freezeout_is_reported_once():
    model, opt = _setup(lr=0.05)
    freezeout = FreezeOut(model, opt, 12)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(model, opt, epochs=3, batches=4, per_batch=[freezeout], per_epoch=[step_lr])
    [warning] = _foreign(caught)
    assert str(warning.message).startswith("FreezeOut: param group '0' has lr")
    assert "drop the other scheduler" in str(warning.message)


def test_an_assignment_is_reported_and_the_warning_can_be_made_an_error():
    model, opt = _setup()
    sched = LayerwiseLR(opt, 10)
    _train(model, opt, 1, 2, [sched])
    opt.param_groups[1]["lr"] = 0.01
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=ForeignLRWarning)
        with pytest.raises(ForeignLRWarning, match=r"group '2' has lr 0.01, but LayerwiseLR wrote 0.333333"):
            sched.step()


def test_a_sequential_warmup_before_it_is_silent_and_hands_over_exactly():
    model, opt = _setup()
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
    sched = LayerwiseLR(opt, 9, policy=Cosine())
    chained = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, sched], milestones=[3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(model, opt, 1, 12, [chained])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(sched.lr_at(9))


def test_own_writes_and_resumes_are_not_foreign():
    model, opt = _setup()
    opt.param_groups[0]["lr"] = torch.tensor(1.0)  # a tensor LR (float32 rounding is not a change)
    sched = LayerwiseLR(opt, 10, policy=Cosine())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(model, opt, 1, 4, [sched])
        state = sched.state_dict()
        again = LayerwiseLR(opt, 10, policy=Cosine())
        again.load_state_dict(state)
        _train(model, opt, 1, 3, [again])
    assert "_foreign_warned" not in state and "owner" not in state
