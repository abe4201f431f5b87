"""The one seeded training loop of tasks/ (layerwise.tasks.loop), shared by compare/ and bench/."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from layerwise.tasks.loop import Batch, seeded_loop, train_step
from layerwise.training import seeded_batches


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 3, generator=g), torch.randint(0, 2, (10,), generator=g)


def test_the_loop_walks_the_seeded_batches_and_times_only_the_step():
    x, y = _data()
    seen: list[Batch] = []
    before: list[int] = []
    step = lambda b: seen.append(b) or torch.tensor(0.0)  # noqa: E731
    seconds = seeded_loop((x, y), 4, step, seed=3, steps=7, before=lambda b: before.append(b.step))
    expected = list(seeded_batches(x, y, 4, seed=3, steps=7))
    assert [(b.step, b.epoch) for b in seen] == [(s, e) for s, e, _, _ in expected]
    assert all(torch.equal(b.x, xb) and torch.equal(b.y, yb) for b, (_, _, xb, yb) in zip(seen, expected))
    assert all(torch.equal(b.x, x[b.index]) for b in seen)
    assert before == list(range(7)) and seconds >= 0.0


def test_after_sees_each_loss_and_ends_the_run():
    x, y = _data()
    losses: list[float] = []

    def after(batch: Batch, loss: torch.Tensor, seconds: float) -> bool:
        losses.append(float(loss))
        return batch.step == 2

    seeded_loop((x, y), 4, lambda b: torch.tensor(float(b.step)), seed=0, steps=10, after=after)
    assert losses == [0.0, 1.0, 2.0]


def test_train_step_steps_the_optimizer_and_the_scheduler_and_probes_with_a_closure():
    x, y = _data()
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    before = model.weight.detach().clone()
    loss = train_step(model, optimizer, nn.functional.cross_entropy, x, y, scheduler=scheduler)
    assert loss.item() > 0 and not torch.equal(model.weight, before)
    assert optimizer.param_groups[0]["lr"] == 0.05

    probes: list[float] = []

    class Probing(torch.optim.SGD):
        def step(self, closure=None):
            with torch.no_grad():
                probes.append(float(closure(0.5)))
            return super().step()

    probing = Probing(model.parameters(), lr=0.1)
    with torch.no_grad():
        expected = 2.0 * float(nn.functional.cross_entropy(model(x[:5]), y[:5]))
    train_step(model, probing, nn.functional.cross_entropy, x, y, weight=2.0, closure=True)
    assert probes == [pytest.approx(expected)]  # the first half of the batch, weighted
