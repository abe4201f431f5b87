"""Equal-cost plans: step costs measured on a fake clock, and the steps a budget buys."""

import pytest
import torch
from torch import nn

from layerwise.compare.budget import block_length, measure_costs, plan_budget, plan_steps
from layerwise.compare.methods import METHODS, Method, Setup, register_method, resolve_settings
from layerwise.tasks import Task, TaskData


class FakeClock:
    """Seconds that pass only when the model or a method says so."""

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


class TwoMoreSeconds:
    def step(self) -> None:
        CLOCK.now += 2.0


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
BATCHES = [(_data(None, False).train[0][i : i + 16], _data(None, False).train[1][i : i + 16]) for i in (0, 16)]


@pytest.fixture
def triple_cost():
    def build(context, settings):
        del settings
        return Setup(context.optimizer(), TwoMoreSeconds())

    register_method(Method("triple-cost", "a step that costs 3 baseline steps", build, period=lambda s: 5))
    yield
    METHODS.unregister("triple-cost")


def test_plan_steps_fills_the_budget_and_refuses_nonsense():
    assert plan_steps(10.0, 0.3) == 33
    assert plan_steps(0.1, 1.0) == 1  # at least one step
    for budget, step in ((0.0, 1.0), (-1.0, 1.0), (float("inf"), 1.0), (1.0, 0.0), (1.0, float("nan"))):
        with pytest.raises(ValueError, match=r"budget_s|step_s"):
            plan_steps(budget, step)


@pytest.mark.parametrize(
    ("periods", "minimum", "expected"),
    [([], 32, 32), ([1], 10, 10), ([16, 4], 24, 32), ([16, 4, 1], 40, 48), ([3, 4], 5, 12)],
    ids=["none", "one", "hidlr-and-multirate", "rounds-up", "lcm"],
)
def test_block_length_is_a_multiple_of_every_period(periods, minimum, expected):
    assert block_length(periods, minimum) == expected


def test_a_method_of_known_cost_is_measured_exactly_and_its_steps_hit_the_budget(triple_cost):
    entries = [("t", "triple-cost", {}), ("l", "llr", resolve_settings("llr"))]
    costs = measure_costs(TASK, entries, BATCHES, policy="constant", repeats=2, minimum=12, clock=CLOCK)
    assert costs.block == 15  # the method's period 5, at least 12 steps
    assert costs.baseline_step_s == pytest.approx(1.0)
    assert costs.ratios == {"t": pytest.approx(3.0), "l": 1.0}  # llr only moves LRs: not timed
    assert costs.timed == ["t"]
    budget, steps = plan_budget(costs, baseline_steps=30)
    assert budget == pytest.approx(30.0) and steps == {"t": 10, "l": 30}
    budget, steps = plan_budget(costs, baseline_steps=30, budget_seconds=60.0)
    assert budget == 60.0 and steps == {"t": 20, "l": 60}
    for key, count in steps.items():  # the planned steps cost the budget
        assert count * costs.ratios[key] * costs.baseline_step_s == pytest.approx(budget)


def test_hidlr_cost_includes_its_probe_forwards():
    # (prefix reuse traces the model once, one more forward: off here, to count the probes alone)
    settings = resolve_settings("hidlr", {"update_every": 4, "groups": 2, "max_interval": None, "prefix_reuse": False})
    costs = measure_costs(TASK, [("h", "hidlr", settings)], BATCHES, policy="constant", repeats=1, clock=CLOCK)
    assert costs.block == 32
    # per 4 steps: 4 training forwards + 4 K probe forwards (K = 2 groups, v in (-2, -1, 1, 2))
    assert costs.ratios["h"] == pytest.approx((4 + 4 * 2) / 4)


def test_an_adaptive_hidlr_is_timed_over_its_ramp_of_doubling_intervals():
    period = METHODS["hidlr"].period
    assert period(resolve_settings("hidlr")) == 16 + 32 + 64 + 128  # then every 128 steps
    assert period(resolve_settings("hidlr", {"update_every": 8, "max_interval": 8})) == 8
    assert period(resolve_settings("hidlr", {"max_interval": None})) == 16
