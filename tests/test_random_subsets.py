"""RandomSubsetMultirate (Multirate §5.1): against a hand-written loop of the text, exact resume, evaluation with
every weight in place, bad input, and the ``random-subset`` compare method."""

import io

import pytest
import torch

import layerwise
from blobs import blobs_task, mlp
from layerwise.compare.methods import Build, build_setup, resolve_settings
from layerwise.tasks import TASKS, register_task
from test_multirate import assert_close, batches, loss_of, make, run

FINE = blobs_task("subset-blobs-ft", regime="fine-tuning", optimizer="adamw", lr=1e-3)
if FINE.name not in TASKS:
    register_task(FINE)


def reference_random_subsets(model, data, h, k, probs, seed=0, slow_lr=None):
    """§5.1 from the text: k fast steps with the slow entries at zero, then restore and one joint step."""
    params = [model.body[0].weight, model.head.weight]
    g = torch.Generator().manual_seed(seed)
    slow_step = h * k if slow_lr is None else slow_lr
    t = 0
    while t < len(data):
        masks = [torch.rand(p.shape, generator=g) < prob for p, prob in zip(params, probs)]
        with torch.no_grad():
            kept = [torch.where(m, p, torch.zeros_like(p)) for p, m in zip(params, masks)]
            for p, m in zip(params, masks):
                p[m] = 0.0
        for i in range(k + 1):
            if t == len(data):
                break
            if i == k:
                with torch.no_grad():
                    for p, m, v in zip(params, masks, kept):
                        p[m] = v[m]
            x, y = data[t]
            grads = torch.autograd.grad(loss_of(model, x, y), list(model.parameters()))
            with torch.no_grad():
                for p, grad in zip(model.parameters(), grads):
                    mask = next((m for q, m in zip(params, masks) if q is p), None)
                    if mask is None:
                        p -= h * grad
                    elif i < k:
                        p -= h * grad * (~mask)
                    else:
                        p -= h * grad * (~mask) + slow_step * grad * mask
            t += 1
    return model


@pytest.mark.parametrize("slow_lr", [None, 0.05])
def test_random_subsets_match_the_text(slow_lr):
    data = batches(17)
    ref = reference_random_subsets(make(), data, 0.1, 3, (0.8, 0.5), slow_lr=slow_lr)
    model = make()
    opt = layerwise.RandomSubsetMultirate(
        model.parameters(),
        lr=0.1,
        k=3,
        probabilities={model.body[0].weight: 0.8, model.head.weight: 0.5},
        slow_lr=slow_lr,
    )
    run(opt, model, data)
    # 17 steps = 4 cycles of 4 and 1 fast step: slow entries are zero now; the reference matches that
    assert_close(model, ref, rtol=1e-10, atol=1e-12)
    zeros = (model.body[0].weight == 0).float().mean()
    assert 0.7 < float(zeros) < 0.9
    with opt.full_weights():
        assert (model.body[0].weight == 0).float().mean() < 0.05
    assert torch.equal((model.body[0].weight == 0).float().mean(), zeros)


def test_random_subsets_resume_mid_cycle_with_rng_state():
    data = batches(14)

    def fresh(seed=0):
        model = make(seed)
        return model, layerwise.RandomSubsetMultirate(
            model.parameters(), lr=0.1, k=4, probabilities={model.body[0].weight: 0.8}, momentum=0.5, seed=7
        )

    straight, opt = fresh()
    run(opt, straight, data)
    first, opt = fresh()
    run(opt, first, data[:6])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed, opt = fresh(seed=5)
    resumed.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    run(opt, resumed, data[6:])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_random_subsets_bad_input():
    model = make()
    with pytest.raises(ValueError, match="k"):
        layerwise.RandomSubsetMultirate(model.parameters(), lr=0.1, k=0, probabilities={model.head.weight: 0.5})
    with pytest.raises(ValueError, match="probabilities"):
        layerwise.RandomSubsetMultirate(model.parameters(), lr=0.1, k=2, probabilities={model.head.weight: 1.5})
    with pytest.raises(ValueError, match="probabilities"):
        layerwise.RandomSubsetMultirate(model.head.parameters(), lr=0.1, k=2, probabilities={model.body[0].weight: 0.5})
    assert not (model.head.weight == 0).any()


def test_eval_puts_every_weight_in_place_until_train_and_no_step_runs_in_between():
    data = batches(6)
    model = make()
    opt = layerwise.RandomSubsetMultirate(model.parameters(), lr=0.1, k=3, probabilities={model.body[0].weight: 0.8})
    run(opt, model, data[:5])  # mid-cycle: the slow entries are zero
    training = model.body[0].weight.detach().clone()
    with opt.full_weights():
        full = model.body[0].weight.detach().clone()
    opt.eval()
    opt.eval()  # twice: still the same evaluation
    assert torch.equal(model.body[0].weight, full) and not torch.equal(full, training)
    with opt.full_weights():  # inside an evaluation: stays in it
        pass
    assert torch.equal(model.body[0].weight, full)
    with pytest.raises(ValueError, match=r"optimizer: evaluating .*call train\(\)"):
        opt.step()
    opt.train()
    opt.train()  # not evaluating: nothing to do
    assert torch.equal(model.body[0].weight, training)
    run(opt, model, data[5:])  # trains on


def test_the_random_subset_method_slows_the_middle_groups_weights_and_evaluates_them_in_place():
    torch.manual_seed(0)
    model = mlp()
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 20))
    setup = build_setup(Build(FINE, model, part, 10, "cosine"), "random-subset", resolve_settings("random-subset"))
    opt = setup.optimizer
    assert isinstance(opt, layerwise.RandomSubsetMultirate) and opt.k == 5 and opt.lr == 0.1  # its own SGD and LR
    assert [p for p, _ in opt.probabilities] == [model[2].weight]  # of the three groups, the middle one's weight
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0] * 6  # the task's decay (0 here)
    x, y = torch.randn(8, 20), torch.randint(0, 3, (8,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    setup.scheduler.step()
    assert (model[2].weight == 0).float().mean() > 0.3
    setup.eval_mode()
    assert (model[2].weight == 0).float().mean() < 0.05
    setup.train_mode()
    assert (model[2].weight == 0).float().mean() > 0.3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"p": 1.5}, r"--set random-subset\.p: .*a probability"),
        ({"k": 0}, r"--set random-subset\.k: must be an int >= 1"),
        ({"lr": 0}, r"--set random-subset\.lr: must be a finite number > 0"),
        ({"momentum": 1.0}, r"--set random-subset\.momentum: must be in \[0, 1\)"),
    ],
)
def test_the_random_subset_methods_bad_settings_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        resolve_settings("random-subset", settings)
