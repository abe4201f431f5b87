"""The param-group helpers: one naming rule, writing an LR (float or tensor), what trainers log."""

import pytest
import torch

import layerwise
from layerwise.param_groups import check_partition, group_names, lr_log, set_lr


def _model():
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))


@pytest.mark.parametrize(
    ("groups", "names"),
    [
        ([{"name": "a"}, {"name": "b"}], ["a", "b"]),
        ([{}, {}], ["group0", "group1"]),
        ([{"name": "a"}, {}], ["a", "group1"]),
        ([{"name": "a"}, {"name": "a"}], ["a", "a"]),
    ],
    ids=["named", "unnamed", "mixed", "halves-of-one-group"],
)
def test_group_names_follow_one_rule(groups, names):
    assert group_names(groups) == names


def test_set_lr_writes_floats_and_fills_tensors_in_place():
    plain, tensor = {"lr": 0.1}, {"lr": torch.tensor(0.1)}
    kept = tensor["lr"]
    set_lr(plain, 0.5)
    set_lr(tensor, 0.5)
    assert plain["lr"] == 0.5 and tensor["lr"] is kept and float(kept) == 0.5


def test_lr_log_reports_each_group_once_and_counts_frozen_ones():
    model = _model()
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 2))
    opt = torch.optim.SGD(part.param_groups(lr=0.1, weight_decay=1e-4, no_decay=("bias",)))
    for p in model[0].parameters():
        p.requires_grad_(False)
    log = lr_log(opt.param_groups)
    assert log == {"lr/0": 0.1, "lr/2": 0.1, "frozen_groups": 1.0}


def test_check_partition_names_the_mismatch():
    model = _model()
    part = layerwise.by_layer(model, sample_input=torch.zeros(1, 2))
    check_partition(part, part.param_groups(lr=0.1))
    with pytest.raises(ValueError, match=r"param groups \['group0'\] do not hold the partition's groups"):
        check_partition(part, torch.optim.SGD(model.parameters(), lr=0.1).param_groups)
    with pytest.raises(TypeError, match="expected a Partition"):
        check_partition("nope", [])
