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
    costs = measure_costs(TASK, entries, BATCHES, policy="constant", steps=30, repeats=2, minimum=12, clock=CLOCK)
    assert costs.blocks == {"t": 15}  # the method's period 5, at least 12 steps
    assert costs.timing_steps == 2 * (15 + 15)  # two repeats of the baseline's block and the method's
    assert costs.baseline_step_s == pytest.approx(1.0)
    assert costs.ratios == {"t": pytest.approx(3.0), "l": 1.0}  # llr only moves LRs: not timed
    assert costs.timed == ["t"]
    budget, steps = plan_budget(costs, baseline_steps=30)
    assert budget == pytest.approx(30.0) and steps == {"t": 10, "l": 30}
    budget, steps = plan_budget(costs, baseline_steps=30, budget_seconds=60.0)
    assert budget == 60.0 and steps == {"t": 20, "l": 60}
    for key, count in steps.items():  # the planned steps cost the budget
        assert count * costs.ratios[key] * costs.baseline_step_s == pytest.approx(budget)


@pytest.fixture
def long_period():
    def build(context, settings):
        del settings
        return Setup(context.optimizer())

    register_method(Method("long-period", "a baseline step whose cost repeats every 40", build, period=lambda s: 40))
    yield
    METHODS.unregister("long-period")


def test_a_methods_block_does_not_grow_with_another_methods_period(triple_cost, long_period):
    entries = [("t", "triple-cost", {}), ("p", "long-period", {})]
    costs = measure_costs(TASK, entries, BATCHES, policy="constant", steps=30, repeats=1, minimum=12, clock=CLOCK)
    assert costs.blocks == {"t": 15, "p": 40}  # not lcm(5, 40) = 40 for both
    assert costs.timing_steps == 40 + 15 + 40  # the baseline runs the longest block, beside both
    assert costs.ratios["t"] == pytest.approx(3.0) and costs.ratios["p"] == pytest.approx(1.0)


HIDLR_COUNTED = {"groups": 2, "prefix_reuse": False}  # prefix reuse traces once more: off, to count probes alone


def test_a_fixed_interval_hidlr_costs_its_probe_forwards_per_step():
    settings = resolve_settings("hidlr", {**HIDLR_COUNTED, "update_every": 4, "max_interval": None})
    costs = measure_costs(TASK, [("h", "hidlr", settings)], BATCHES, policy="constant", steps=400, clock=CLOCK)
    assert costs.blocks == {"h": 16}
    # a round every 4 steps: 1 training forward + 4 K probe forwards (K = 2 groups, v in (-2, -1, 1, 2));
    # a run of 400 / 3 = 133 steps makes 34 rounds (steps 0, 4, ..., 132)
    assert costs.ratios["h"] == pytest.approx(1 + 8 * 34 / 133)


def test_an_adaptive_hidlr_pays_for_the_rounds_of_its_ramp_not_of_the_timing_block():
    settings = resolve_settings("hidlr", {**HIDLR_COUNTED, "update_every": 16, "max_interval": 128})
    costs = measure_costs(TASK, [("h", "hidlr", settings)], BATCHES, policy="constant", steps=250, clock=CLOCK)
    assert costs.blocks == {"h": 16}  # timed with a round every 4 steps, not over its 240-step ramp
    # 250 baseline steps: about 216 Hi-DLR steps, with rounds at steps 0, 16, 48, 112
    assert costs.ratios["h"] == pytest.approx(1 + 8 * 4 / 216)
    budget, steps = plan_budget(costs, baseline_steps=250)
    assert steps["h"] == 218 and steps["h"] * costs.ratios["h"] == pytest.approx(budget, rel=0.01)


def test_hidlr_counts_the_rounds_a_run_makes():
    rounds = METHODS["hidlr"].rounds
    assert rounds(resolve_settings("hidlr")).count(250) == 5  # steps 0, 16, 48, 112, 240
    assert rounds(resolve_settings("hidlr")).count(240) == 4
    assert rounds(resolve_settings("hidlr", {"max_interval": None})).count(250) == 16  # every 16 steps
    timed = rounds(resolve_settings("hidlr")).timed
    assert timed["update_every"] == 4 and timed["max_interval"] is None
