"""Equal wall-clock: runs that stop by their own (fake) clock, with schedules that follow the budget's share."""

import math

import pytest
import torch
from torch import nn

from layerwise import HiDLR, recipes
from layerwise.compare.budget import Pace
from layerwise.compare.runner import RunSpec, run
from layerwise.tasks import Task, TaskData


class FakeClock:
    """Seconds that pass only when the model says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


class Ticking(nn.Module):
    """Two layers; every forward pass costs one fake second."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CLOCK.now += 1.0
        return self.b(torch.relu(self.a(x)))


def _data(data_dir, quick):
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return TaskData((x, y), (x, y))


TASK = Task(
    name="ticking",
    make_model=Ticking,
    sample_input=lambda: torch.zeros(2, 4),
    load_data=_data,
    batch_size=16,
    lr=0.1,
    weight_decay=0.0,
)


def _run(method, **spec):
    return run(TASK, RunSpec(method, **{"policy": "cosine", "eval_points": 4, **spec}), clock=CLOCK)


def test_pace_counts_progress_and_stops_nearest_the_budget():
    pace = Pace(budget_s=1.0, schedule_steps=10)
    assert not pace.done() and pace.progress() == 0.0
    for _ in range(4):
        pace.add(0.2)
    assert pace.progress() == pytest.approx(0.8) and pace.schedule_step() == 8 and not pace.done()
    pace.add(0.2)
    assert pace.done() and pace.progress() == 1.0
    pace.add(0.5)
    assert pace.progress() == 1.0 and pace.schedule_step() == 10  # never past the schedules' end


def test_catch_up_steps_the_scheduler_to_the_budget_share_and_never_back():
    class Counter:
        count = 0

        def step(self):
            self.count += 1

    pace, counter = Pace(budget_s=4.0, schedule_steps=8), Counter()
    for seconds, expected in ((1.0, 2), (0.1, 2), (1.4, 5), (2.0, 8)):
        pace.add(seconds)
        pace.catch_up(counter)
        assert counter.count == expected


@pytest.mark.parametrize(("budget", "steps"), [(0.0, 5), (-1.0, 5), (math.inf, 5), (math.nan, 5), (1.0, 0)])
def test_pace_refuses_a_budget_or_schedule_that_is_not_positive(budget, steps):
    with pytest.raises(ValueError, match=r"budget_s|schedule_steps"):
        Pace(budget, steps)


def test_a_paced_run_stops_at_its_budget_and_its_lr_follows_the_budget_share():
    record = _run("baseline", steps=5, seconds=10.0)  # a step costs 1 fake second: 10 steps over 5 schedule steps
    assert record["steps"] == 10 and record["wall_clock_s"] == 10.0
    assert record["schedule_steps"] == 5 and record["budget_s"] == 10.0
    cosine = recipes.make_policy("cosine")
    expected = [0.1 * cosine((k // 2) / 5) for k in range(10)]  # after k steps the share is k / 10: step floor(k / 2)
    for lrs in record["lr"].values():
        assert lrs == pytest.approx(expected)
    assert [point["step"] for point in record["curve"]] == [3, 5, 8, 10]  # shares 1/4, 1/2, 3/4, the end


def test_a_paced_run_freezes_at_the_same_share_of_its_budget():
    settings = {"t0": 0.5, "strategy": "linear"}
    stepped = _run("freezeout", settings=settings, steps=10)
    paced = _run("freezeout", settings=settings, steps=10, seconds=20.0)  # twice the steps over the same schedule
    assert paced["steps"] == 20 and set(paced["frozen_at"]) == set(stepped["frozen_at"])
    assert paced["frozen_at"] == {name: 2 * step for name, step in stepped["frozen_at"].items()}


def test_a_paced_run_slower_than_its_schedule_still_goes_through_all_of_it():
    record = _run("baseline", steps=20, seconds=4.0)  # 4 steps over 20 schedule steps: 5 at a time
    assert record["steps"] == 4
    cosine = recipes.make_policy("cosine")
    assert record["lr"]["a"] == pytest.approx([0.1 * cosine(k * 5 / 20) for k in range(4)])


def test_hidlr_reads_its_schedule_from_progress_when_given():
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    opt = HiDLR(torch.optim.SGD(model.parameters(), lr=0.1), schedule=recipes.make_policy("cosine"), total_steps=100)

    def closure(fraction=1.0):
        return nn.functional.mse_loss(model(x), y)

    opt.progress = lambda: 1.0  # the end of the budget: the cosine is at 0 whatever the step count
    nn.functional.mse_loss(model(x), y).backward()
    opt.step(closure)
    assert all(group["lr"] == 0.0 for group in opt.param_groups)
    opt.progress = None  # counting steps again: 1 step of 100
    nn.functional.mse_loss(model(x), y).backward()
    opt.step(closure)
    assert all(group["lr"] > 0.0 for group in opt.param_groups)
