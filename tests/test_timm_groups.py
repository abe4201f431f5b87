"""timm's layer-decay groups read back into a partition; timm's layer decay and layerwise's ``discriminative``
train the same model the same way."""

from __future__ import annotations

import copy
from importlib.util import find_spec

import pytest
import torch

from _torchvision_stub import import_without_torchvision
from layerwise import partition_from_timm_groups
from layerwise.compare import setup

DECAY, LR, STEPS = 0.75, 1e-3, 6


def _timm():
    if find_spec("timm") is None:  # importorskip would import it, which needs the torchvision stand-ins
        pytest.skip("timm is in the dev extra")
    return import_without_torchvision("timm", "timm.optim", "timm.scheduler")


MODELS = {"vit": 5, "resnet": 6}
"""The layers timm finds: the embedding, 3 blocks and the head; the stem, 4 one-block stages and the head."""


def _model(timm, which):
    torch.manual_seed(0)
    if which == "vit":
        return timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=3)
    resnet = timm.models.resnet  # a narrow ResNet-10: timm's class, its group_matcher
    return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=3, channels=(8, 16, 32, 64), stem_width=8)


@pytest.mark.parametrize("which", sorted(MODELS))
def test_timm_layer_decay_and_discriminative_give_every_parameter_the_same_lr_and_weights(which):
    timm, timm_optim, timm_scheduler = _timm()
    theirs_model = _model(timm, which)
    ours_model = copy.deepcopy(theirs_model)
    timm_groups = timm_optim.param_groups_layer_decay(theirs_model, weight_decay=0.0, layer_decay=DECAY)
    theirs = torch.optim.AdamW(timm_groups, lr=LR, weight_decay=0.0)
    timm_sched = timm_scheduler.CosineLRScheduler(theirs, t_initial=STEPS, t_in_epochs=False)

    part = partition_from_timm_groups(ours_model, timm_optim.param_groups_layer_decay(ours_model, layer_decay=DECAY))
    run = setup(
        ours_model,
        "discriminative",
        optimizer="adamw",
        lr=LR,
        total_steps=STEPS,
        partition=part,
        policy="cosine",
        ratio=1 / DECAY,
    )
    scales = sorted({g["lr_scale"] for g in timm_groups})
    assert len(part) == len(scales) == MODELS[which] and scales[0] == pytest.approx(DECAY ** (len(part) - 1))

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
    for step in range(STEPS):
        timm_sched.step_update(step)
        lr_theirs = {id(p): g["lr"] for g in theirs.param_groups for p in g["params"]}
        lr_ours = {id(p): g["lr"] for g in run.optimizer.param_groups for p in g["params"]}
        params = list(zip(theirs_model.parameters(), ours_model.parameters()))
        assert [lr_ours[id(o)] for _, o in params] == pytest.approx([lr_theirs[id(t)] for t, _ in params], rel=1e-9)
        for model, optimizer in ((theirs_model, theirs), (ours_model, run.optimizer)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        run.scheduler.step()
    for (name, t), o in zip(theirs_model.named_parameters(), ours_model.parameters()):
        assert torch.allclose(t, o, rtol=1e-5, atol=1e-6), name
    moved = [not torch.equal(t, o) for t, o in zip(theirs_model.parameters(), _model(timm, which).parameters())]
    assert all(moved)  # every parameter trained, none was left at its start


def test_the_partition_is_timms_layers_in_depth_order():
    timm, timm_optim, _ = _timm()
    model = _model(timm, "vit")
    part = partition_from_timm_groups(model, timm_optim.param_groups_layer_decay(model, layer_decay=DECAY))
    assert part.names == ("layer_0", "layer_1", "layer_2", "layer_3", "layer_4")
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(part["layer_0"].param_names)
    assert all(n.startswith("blocks.1.") for n in part["layer_2"].param_names)
    assert part["layer_3"].param_names[-2:] == ("norm.weight", "norm.bias")  # the final norm: with the last block
    assert part["layer_4"].param_names == ("head.weight", "head.bias")
    # an optimizer built from them (create_optimizer_v2's route) gives the same partition
    opt = torch.optim.AdamW(timm_optim.param_groups_layer_decay(model, layer_decay=DECAY), lr=LR)
    assert partition_from_timm_groups(model, opt.param_groups) == part


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_equal_scales_share_a_group_and_frozen_parameters_stay_out():
    net = _net()
    net[0].bias.requires_grad_(False)
    groups = [{"params": [net[0].weight], "lr_scale": 0.5}, {"params": list(net[2].parameters()), "lr_scale": 0.5}]
    part = partition_from_timm_groups(net, groups)
    assert part.names == ("layer_0",) and part.excluded == ("0.bias",)


@pytest.mark.parametrize(
    ("groups", "error", "match"),
    [
        (lambda n: {"params": list(n.parameters())}, TypeError, r"param_groups: expected a non-empty list"),
        (lambda n: [], TypeError, r"param_groups: expected a non-empty list"),
        (lambda n: [{"params": list(n.parameters())}], ValueError, r"param_groups\[0\]: has no 'lr_scale'"),
        (lambda n: [{"params": list(n.parameters()), "lr_scale": -1.0}], ValueError, r"param_groups\[0\]: lr_scale"),
        (lambda n: [list(n.parameters())], TypeError, r"param_groups\[0\]: expected a param-group dict"),
        (
            lambda n: [{"params": list(n.parameters()), "lr_scale": 1.0}, {"params": [n[0].bias], "lr_scale": 0.5}],
            ValueError,
            r"param_groups\[1\]: parameter '0.bias' is also in a group with lr_scale 1",
        ),
        (
            lambda n: [{"params": [*n.parameters(), torch.nn.Parameter(torch.zeros(1))], "lr_scale": 1.0}],
            ValueError,
            r"param_groups\[0\]: holds a parameter that is not a trainable parameter of model",
        ),
        (
            lambda n: [{"params": list(n[2].parameters()), "lr_scale": 1.0}],
            ValueError,
            r"param_groups: trainable parameters of model in no group: 0.weight, 0.bias",
        ),
    ],
    ids=["a-dict", "empty", "no-scale", "bad-scale", "not-a-dict", "twice", "foreign", "missing"],
)
def test_bad_groups_are_refused_naming_the_dict(groups, error, match):
    net = _net()
    with pytest.raises(error, match=match):
        partition_from_timm_groups(net, groups(net))
