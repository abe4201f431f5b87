"""layerwise.compare.setup: one call from a method's name to its Setup on a user's model.

That it builds what the comparison's builder builds, for every method, is checked in
test_method_snippets.py; here: its arguments (optimizer names, lr, weight decay, warm-up, partition,
regime, head) and the refusals, each before anything is built.
"""

import math

import pytest
import torch
from torch import nn

import layerwise
from layerwise.compare import setup
from layerwise.compare.setup import OPTIMIZER_NAMES, method_settings, optimizer_choice

X = torch.zeros(2, 4)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def _lrs(run, steps: int) -> list[float]:
    """The first group's LR at each of ``steps`` steps (no gradients: the weights stay)."""
    lrs = []
    for _ in range(steps):
        lrs.append(run.optimizer.param_groups[0]["lr"])
        run.optimizer.step()
        run.scheduler.step()
    return lrs


def _state(model: nn.Module) -> dict:
    """What a refused call must leave as it was: weights, requires_grad, modes, hooks."""
    return {
        "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
        "trainable": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "grad_hooks": [len(p._backward_hooks or {}) for p in model.parameters()],
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _state(model)
    torch.testing.assert_close(after.pop("weights"), before.pop("weights"), rtol=0, atol=0)
    assert after == before


BAD = [
    (
        {"method": "freezout"},
        ValueError,
        r"^method: unknown 'freezout'; choose from \['adamw', 'autofreeze', 'baseline', .*'staggered'.*\]$",
    ),
    ({"method": 3}, TypeError, r"^method: expected a method's name \(a str\), got int$"),
    ({"t1": 0.5}, ValueError, r"^freezeout: unknown setting 't1'; freezeout takes \['scale_lr', 'strategy', 't0'\]$"),
    ({"t0": 2.0}, ValueError, r"^freezeout\.t0: must be a fraction of training in \(0, 1\], got 2\.0$"),
    (
        {"optimizer": "adamm"},
        ValueError,
        r"^optimizer: expected one of \['adadelta', 'adafactor', 'adagrad', 'adam', .*'sgd'\] \(any case\) "
        r"or a torch\.optim\.Optimizer subclass taking lr and weight_decay, got 'adamm'$",
    ),
    ({"optimizer": nn.Linear}, ValueError, r"^optimizer: expected one of .* got <class 'torch\.nn\..*Linear'>$"),
    ({"optimizer": "LBFGS"}, ValueError, r"^optimizer: torch\.optim\.LBFGS takes no weight_decay, .*; choose from"),
    ({"lr": 0}, ValueError, r"^lr: must be a finite number > 0, got 0$"),
    ({"lr": -0.1}, ValueError, r"^lr: must be a finite number > 0, got -0\.1$"),
    ({"lr": math.nan}, ValueError, r"^lr: must be a finite number > 0, got nan$"),
    ({"lr": math.inf}, ValueError, r"^lr: must be a finite number > 0, got inf$"),
    ({"lr": True}, ValueError, r"^lr: must be a finite number > 0, got True$"),
    ({"total_steps": 0}, ValueError, r"^total_steps: must be an int >= 1, got 0$"),
    ({"total_steps": 2.5}, ValueError, r"^total_steps: must be an int >= 1, got float 2\.5$"),
    ({"weight_decay": -1.0}, ValueError, r"^weight_decay: must be finite and >= 0, got -1\.0$"),
    ({"policy": "cosin"}, ValueError, r"^policy: must be one of \('constant', .*'cosine'.*\), got 'cosin'$"),
    ({"warmup": 1.0}, ValueError, r"^warmup: must be a fraction of training in \[0, 1\), got 1\.0$"),
    ({"regime": "pretrained"}, ValueError, r"^regime: must be one of \('scratch', 'fine-tuning'\), got 'pretrained'$"),
    ({"head": "yes"}, TypeError, r"^head: expected True or False, got 'yes'$"),
    (
        {"optimizer_options": {"lr": 1.0}},
        ValueError,
        r"^optimizer_options: \['lr'\] are setup\(\)'s own arguments; pass them as lr= and weight_decay=$",
    ),
    (
        {"optimizer_options": {"momentm": 0.9}, "optimizer": "sgd"},
        ValueError,
        r"^optimizer_options: SGD got an unexpected keyword argument 'momentm'$",
    ),
    (
        {"sample_input": None},
        ValueError,
        r"^sample_input: the default partition puts the model's layers in the order data flows through them, "
        r"traced on one forward: pass sample_input= \(a batch of inputs\) or partition=$",
    ),
    (
        {"partition": "layers"},
        TypeError,
        r"^partition: expected a layerwise\.Partition or None, got str$",
    ),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD, ids=[str(sorted(c)) for c, _, _ in BAD])
def test_bad_input_is_refused_in_one_line_naming_the_argument_before_anything_is_built(change, error, message):
    model = _model()
    before = _state(model)
    arguments = {"method": "freezeout", "lr": 0.1, "total_steps": 10, "sample_input": X, **change}
    method = arguments.pop("method")
    with pytest.raises(error, match=message):
        setup(model, method, **arguments)
    _assert_unchanged(model, before)


def test_a_partition_of_another_model_is_refused():
    model, other = _model(), _model()
    before = _state(model)
    with pytest.raises(ValueError, match=r"^partition: holds parameters that are not the model's; build it from"):
        setup(model, "freezeout", lr=0.1, total_steps=10, partition=layerwise.by_layer(other, sample_input=X))
    _assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("method", "arguments", "message"),
    [
        (
            "lp-ft",
            {},
            r"^method: lp-ft does not apply to this model: a fine-tuning method: from scratch there are no "
            r"pretrained features to probe or keep; pass regime='fine-tuning' if the model starts from pretrained "
            r"weights$",
        ),
        (
            "multirate",
            {"head": False},
            r"^method: multirate does not apply to this model: .*no output head.*; pass head=True if the last "
            r"group \('4'\) is the model's output head$",
        ),
        (
            "lp-ft",
            {"regime": "scratch"},
            r"^method: lp-ft does not apply to this model: a fine-tuning method: from scratch there are no "
            r"pretrained features to probe or keep$",
        ),
    ],
)
def test_a_method_that_needs_what_the_call_does_not_say_names_the_argument(method, arguments, message):
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match=message):
        setup(model, method, lr=0.1, total_steps=10, sample_input=X, **arguments)
    _assert_unchanged(model, before)
    assert setup(model, method, lr=0.1, total_steps=10, sample_input=X, regime="fine-tuning").scheduler is not None


def test_a_methods_own_lr_and_weight_decay_are_setups_arguments():
    run = setup(_model(), "adamw", lr=0.003, weight_decay=0.1, total_steps=3, sample_input=X)
    assert {(g["lr"], g["weight_decay"]) for g in run.optimizer.param_groups} == {(0.003, 0.1), (0.003, 0.0)}
    with pytest.raises(ValueError, match=r"^adamw: unknown setting 'lr'; adamw takes none \(its lr and weight_decay"):
        method_settings("adamw", {"lr": 0.1})


def test_optimizer_names_in_any_case_presets_first():
    assert optimizer_choice("ADADELTA") is torch.optim.Adadelta
    assert optimizer_choice("RMSprop") is torch.optim.RMSprop
    assert optimizer_choice(torch.optim.NAdam) is torch.optim.NAdam
    assert {"sgd", "gd", "adamw", "adam", "adadelta", "rmsprop"} <= set(OPTIMIZER_NAMES)
    assert not {"lbfgs", "rprop", "sparseadam"} & set(OPTIMIZER_NAMES)
    sgd = setup(_model(), "baseline", optimizer="SGD", lr=0.1, total_steps=3, sample_input=X).optimizer
    assert type(sgd) is torch.optim.SGD and (sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.9, True)
    plain = setup(_model(), "baseline", optimizer="gd", lr=0.1, total_steps=3, sample_input=X).optimizer
    assert (plain.defaults["momentum"], plain.defaults["nesterov"]) == (0.0, False)
    adam = setup(_model(), "baseline", lr=0.1, total_steps=3, sample_input=X, optimizer_options={"betas": (0.8, 0.9)})
    assert type(adam.optimizer) is torch.optim.AdamW and adam.optimizer.defaults["betas"] == (0.8, 0.9)


def test_policy_and_warmup_shape_every_groups_lr_as_transformers_linear_warmup_does():
    run = setup(_model(), "baseline", lr=1.0, total_steps=10, policy="linear", warmup=0.2, sample_input=X)
    # get_linear_schedule_with_warmup(2 warm-up steps of 10): k/2, then (10 - k) / 8
    expected = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    assert _lrs(run, 10) == pytest.approx(expected)
    assert _lrs(setup(_model(), "baseline", lr=0.5, total_steps=3, sample_input=X), 3) == [0.5, 0.5, 0.5]


def test_the_given_partition_is_the_methods_groups():
    model = _model()
    part = layerwise.by_block(model, sample_input=X)
    run = setup(model, "discriminative", lr=1.0, total_steps=4, partition=part, ratio=2.0)
    assert [g["name"] for g in run.optimizer.param_groups[::2]] == list(part.names)
    assert [g["lr"] for g in run.optimizer.param_groups[::2]] == [0.25, 0.5, 1.0]
