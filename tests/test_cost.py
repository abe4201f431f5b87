"""Per-group FLOPs and FreezeOut's saving predictions (the paper's formula and the timed one)."""

import pytest
import torch

import layerwise
from layerwise.cost import group_flops, paper_saving, prefix_step_times, timed_saving, train_fractions
from test_freezeout import Net


def test_cost_predictions():
    model = Net()
    part = layerwise.by_block(model, sample_input=torch.zeros(2, 6))
    flops = group_flops(model, part, torch.zeros(4, 6))
    assert flops == [2 * 4 * 6 * 16, 2 * 4 * 16 * 16, 2 * 4 * 16 * 16, 2 * 4 * 16 * 3]
    assert paper_saving([0.5, 1.0], [3.0, 1.0]) == pytest.approx(1 - (1.5 * 3 + 2 * 1) / 8)
    assert paper_saving([1.0, 1.0], [3.0, 1.0]) == 0.0
    assert timed_saving([0.25, 0.5, 1.0], [1.0, 0.8, 0.5]) == pytest.approx(1 - (0.25 + 0.25 * 0.8 + 0.5 * 0.5))
    with pytest.raises(ValueError, match="order"):
        timed_saving([0.5, 0.25], [1.0, 0.9])
    opt = torch.optim.SGD(part.param_groups(lr=0.1))
    times = prefix_step_times(model, opt.param_groups, (torch.randn(8, 6), torch.randint(0, 3, (8,))), repeats=1)
    assert len(times) == 4 and all(t > 0 for t in times)
    assert all(p.requires_grad for p in model.parameters())  # measured on a copy


@pytest.mark.parametrize(
    ("frozen_at", "total", "expected"),
    [([25, None], 100, [0.25, 1.0]), ([None, None], 10, [1.0, 1.0]), ([10, 10], 10, [1.0, 1.0])],
    ids=["one-frozen", "none-frozen", "at-the-end"],
)
def test_train_fractions(frozen_at, total, expected):
    assert train_fractions(frozen_at, total) == expected


def test_predictions_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="lengths differ"):
        paper_saving([0.5], [1.0, 2.0])
    with pytest.raises(ValueError, match="no forward cost"):
        paper_saving([0.5], [0.0])
    with pytest.raises(ValueError, match="one entry per group"):
        timed_saving([0.5], [1.0, 0.5])


def test_the_authors_estimate_scales_the_linear_schedule_only_and_refuses_other_strategies():
    from layerwise.cost import authors_saving

    assert authors_saving(0.2, "linear") == pytest.approx(0.26) and authors_saving(0.2, "cubic") == 0.2
    with pytest.raises(ValueError, match="strategy: must be 'linear' or 'cubic'"):
        authors_saving(0.2, "quadratic")


def test_predict_saving_against_a_hand_computation():
    from layerwise.cost import predict_saving

    # three groups of 2, 1 and 1 forward FLOPs training 1/4, 1/2 and all of the run; a step costs 1.0 s with
    # nothing frozen, 0.7 s with the first group frozen, 0.5 s with two; 0.6 s and 0.3 s served from a cache
    saving = predict_saving(
        [0.25, 0.5, 1.0],
        [2.0, 1.0, 1.0],
        strategy="linear",
        step_times=[1.0, 0.7, 0.5],
        cached_step_times=[1.0, 0.6, 0.3],
    )
    assert saving == pytest.approx(
        {
            "predicted_saving_paper": 1 - ((1 + 0.25) * 2 + (1 + 0.5) * 1 + (1 + 1) * 1) / 8,  # eq. (2)-(3): 0.25
            "predicted_saving_paper_cached": 1 - (2 * 0.25 * 2 + 2 * 0.5 * 1 + 2 * 1 * 1) / 8,  # 0.5
            "predicted_saving_authors": 1.3 * 0.25,  # the authors' code, linear
            "predicted_saving_timed": 1 - (0.25 * 1.0 + 0.25 * 0.7 + 0.5 * 0.5),  # 0.325
            "predicted_saving_timed_cached": 1 - (0.25 * 1.0 + 0.25 * 0.6 + 0.5 * 0.3),  # 0.45
        }
    )
    assert set(predict_saving([0.5, 1.0], [1.0, 1.0])) == {"predicted_saving_paper", "predicted_saving_paper_cached"}
