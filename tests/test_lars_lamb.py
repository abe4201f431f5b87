"""LARS and LAMB, the per-layer trust-ratio peers, against their update rules written out by hand."""

import math
from importlib.util import find_spec

import pytest
import torch
from torch import nn

from _torchvision_stub import import_without_torchvision
from layerwise.compare.methods import Build, build_setup, resolve_settings
from layerwise.peers_optim import Lamb
from layerwise.tasks import get_task

W = [[1.0, 2.0], [3.0, -1.0]]
G1 = [[0.5, -1.0], [2.0, 0.0]]
G2 = [[-1.0, 0.5], [0.25, 1.5]]


def _norm(rows):
    return math.sqrt(sum(v * v for row in rows for v in row))


def _flat(rows):
    return [v for row in rows for v in row]


def _apply(rows, fn):
    return [[fn(i, j, v) for j, v in enumerate(row)] for i, row in enumerate(rows)]


def _step(optimizer, params, grads):
    for param, grad in zip(params, grads):
        param.grad = torch.tensor(grad, dtype=torch.float64)
    optimizer.step()


def _params():
    weight = nn.Parameter(torch.tensor(W, dtype=torch.float64))
    return weight, nn.Parameter(torch.tensor([0.5, -0.5], dtype=torch.float64))


def test_lars_scales_each_weight_by_its_trust_ratio():
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="the peers extra")
    lr, eta, wd, mom = 2.0, 0.001, 0.1, 0.9
    w, b = _params()
    opt = pytorch_optimizer.LARS(
        [{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}],
        lr=lr,
        momentum=mom,
        trust_coefficient=eta,
    )
    _step(opt, [w, b], [G1, [1.0, 2.0]])
    _step(opt, [w, b], [G2, [-1.0, 0.5]])

    # by hand: trust = eta ||w|| / (||g|| + wd ||w||); u = trust (g + wd w); buf = mom buf + u; w -= lr buf
    trust1 = eta * _norm(W) / (_norm(G1) + wd * _norm(W))
    buf = _apply(G1, lambda i, j, g: trust1 * (g + wd * W[i][j]))
    w1 = _apply(W, lambda i, j, v: v - lr * buf[i][j])
    trust2 = eta * _norm(w1) / (_norm(G2) + wd * _norm(w1))
    buf = _apply(G2, lambda i, j, g: mom * buf[i][j] + trust2 * (g + wd * w1[i][j]))
    w2 = _apply(w1, lambda i, j, v: v - lr * buf[i][j])
    assert w.flatten().tolist() == pytest.approx(_flat(w2), rel=1e-12)
    # a 1-D tensor (bias) takes plain SGD with momentum: no trust ratio
    b2 = [0.5 - lr * 1.0 - lr * (mom * 1.0 - 1.0), -0.5 - lr * 2.0 - lr * (mom * 2.0 + 0.5)]
    assert b.tolist() == pytest.approx(b2)


def _lamb_by_hand(lr, betas, eps, wd):
    beta1, beta2 = betas
    w, m, v = _flat(W), [0.0] * 4, [0.0] * 4
    for t, grad in enumerate((G1, G2), start=1):
        g = _flat(grad)
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g)]
        m_hat = [mi / (1 - beta1**t) for mi in m]
        v_hat = [vi / (1 - beta2**t) for vi in v]
        r = [mh / (math.sqrt(vh) + eps) + wd * wi for mh, vh, wi in zip(m_hat, v_hat, w)]
        trust = math.sqrt(sum(x * x for x in w)) / math.sqrt(sum(x * x for x in r))
        w = [wi - lr * trust * ri for wi, ri in zip(w, r)]
    return w


def test_lamb_is_adam_with_a_per_tensor_trust_ratio():
    lr, betas, eps, wd = 0.1, (0.9, 0.999), 1e-6, 0.01
    w, _ = _params()
    opt = Lamb([w], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    _step(opt, [w], [G1])
    _step(opt, [w], [G2])
    assert w.flatten().tolist() == pytest.approx(_lamb_by_hand(lr, betas, eps, wd), rel=1e-12)


def test_lamb_takes_the_plain_step_where_a_norm_is_zero():
    zero = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = Lamb([zero], lr=0.5)
    _step(opt, [zero], [G1])
    # ||w|| = 0: trust ratio 1, the step is lr * m_hat / (sqrt(v_hat) + eps) = lr * sign(g) (up to eps)
    assert zero.flatten().tolist() == pytest.approx([-0.5, 0.5, -0.5, 0.0], rel=1e-5)


def test_lamb_equals_timms_lamb():
    if find_spec("timm") is None:  # importorskip would import it, which needs the torchvision stand-ins
        pytest.skip("timm is in the dev extra")
    (lamb_module,) = import_without_torchvision("timm.optim.lamb")
    ours, theirs = _params()[0], _params()[0]
    a = Lamb([ours], lr=0.1, weight_decay=0.01)
    b = lamb_module.Lamb([theirs], lr=0.1, weight_decay=0.01, max_grad_norm=None)
    for grad in (G1, G2, G1):
        _step(a, [ours], [grad])
        _step(b, [theirs], [grad])
    assert ours.flatten().tolist() == pytest.approx(theirs.flatten().tolist(), rel=1e-10)


def test_the_peers_pass_their_settings_to_the_optimizers():
    task = get_task("fashion-mnist")
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    build = Build(task, model, task.partition_of(model), 10, "constant")
    lars = build_setup(build, "lars", resolve_settings("lars")).optimizer
    assert lars.param_groups[0]["trust_coefficient"] == 0.001 and lars.param_groups[0]["lr"] == 1.0
    assert lars.param_groups[0]["weight_decay"] == task.weight_decay
    lamb = build_setup(build, "lamb", resolve_settings("lamb", {"lr": 0.02})).optimizer
    assert isinstance(lamb, Lamb) and lamb.param_groups[0]["lr"] == 0.02 and lamb.param_groups[0]["eps"] == 1e-6
