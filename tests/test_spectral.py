"""TempBalance: the spectrum and alpha of known power laws, the Hill estimate against numpy and scipy, the linear
map by hand, composition with schedulers and Muon's split, exact resume, bad input."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import layerwise
from layerwise import LayerwiseLR, TempBalance
from layerwise.schedules import Cosine
from layerwise.spectral import hill_alpha, linear_map, spectrum


def _power_law_matrix(rows: int, cols: int, alpha: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``W = U diag(sqrt(lambda)) V^T``, U and V orthonormal, the eigenvalues of ``W^T W`` drawn from a Pareto
    of density ``p(lambda) ~ lambda^-alpha`` on ``lambda >= 1``."""
    rng = np.random.default_rng(seed)
    lam = 1.0 + rng.pareto(alpha - 1.0, size=cols)  # numpy's Lomax shape a: density exponent a + 1
    u, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    return torch.tensor((u * np.sqrt(lam)) @ v.T, dtype=torch.float32), lam


def test_the_spectrum_of_a_power_law_matrix_gives_its_exponent():
    w, lam = _power_law_matrix(512, 384, alpha=3.0, seed=0)
    eigs = spectrum(w)
    np.testing.assert_allclose(eigs.numpy(), np.sort(lam), rtol=1e-4)
    np.testing.assert_allclose(spectrum(w.T).numpy(), np.sort(lam), rtol=1e-4)  # a wide matrix: W W^T
    # the Hill estimate over k = 192 tail eigenvalues has standard deviation (alpha - 1) / sqrt(k): 0.14 here,
    # 0.07 for alpha 2; the tolerances are about 3 of them
    assert hill_alpha(eigs) == pytest.approx(3.0, abs=0.45)
    heavy, _ = _power_law_matrix(512, 384, alpha=2.0, seed=1)
    assert hill_alpha(spectrum(heavy)) == pytest.approx(2.0, abs=0.22)


def test_a_convolution_kernel_pools_the_spectra_of_its_kernel_positions():
    mats = [_power_law_matrix(8, 6, alpha=3.0, seed=s) for s in range(4)]
    kernel = torch.stack([m for m, _ in mats], dim=-1).reshape(8, 6, 2, 2)  # [out, in, kh, kw]
    pooled = np.sort(np.concatenate([lam for _, lam in mats]))
    np.testing.assert_allclose(spectrum(kernel).numpy(), pooled, rtol=1e-4)


def test_hill_alpha_by_hand_and_by_scipys_pareto_fit():
    assert hill_alpha([16.0, 1.0, 8.0, 2.0, 4.0]) == pytest.approx(1 + 3 / (3 * math.log(2)), rel=1e-12)
    eigs = np.random.default_rng(2).lognormal(size=101)
    tail = np.sort(eigs)[50:]  # x_min: the median (index N // 2)
    hand = 1 + len(tail) / sum(math.log(x / tail[0]) for x in tail)
    assert hill_alpha(eigs) == pytest.approx(hand, rel=1e-12)
    shape, _, _ = stats.pareto.fit(tail, floc=0, fscale=tail[0])  # the maximum-likelihood exponent, x_min fixed
    assert hill_alpha(torch.tensor(eigs)) == pytest.approx(1 + shape, rel=1e-6)
    assert hill_alpha([2.0, 2.0, 2.0]) == math.inf and math.isnan(hill_alpha([]))


def test_spectrum_drops_zero_eigenvalues_and_caps_long_sides():
    rank_two = torch.randn(40, 2) @ torch.randn(2, 30)
    assert len(spectrum(rank_two)) == 2
    w = torch.randn(300, 60)
    sampled = spectrum(w, max_dim=100, generator=torch.Generator().manual_seed(0))
    assert len(sampled) == 60 and not torch.allclose(sampled, spectrum(w))  # 100 of the 300 rows
    again = spectrum(w, max_dim=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, again)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 6))


def _groups(model: nn.Module, lr: float = 0.1):
    return layerwise.by_layer(model, sample_input=torch.zeros(1, 12)).param_groups(lr=lr)


def _step(model, opt, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 12, generator=gen), torch.randint(0, 6, (16,), generator=gen)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_multipliers_are_the_linear_map_of_each_groups_alpha():
    model = _net()
    opt = torch.optim.SGD(_groups(model), lr=0.1)
    tb = TempBalance(opt, every=1, s_min=0.3, s_max=2.0, min_eigs=2)
    # alpha is computed in the step's pre-hook, from the weights before the update
    want_alpha = [hill_alpha(np.linalg.svd(m.weight.detach().numpy(), compute_uv=False) ** 2) for m in model[::2]]
    _step(model, opt, 0)
    assert list(tb.alpha.values()) == pytest.approx(want_alpha, rel=1e-5)  # float32 Gram matrix vs float32 SVD
    want = np.interp(want_alpha, [min(want_alpha), max(want_alpha)], [0.3, 2.0])
    assert list(tb.multipliers.values()) == pytest.approx(want.tolist(), rel=1e-6)
    assert linear_map([1.0, 2.0, 4.0], 0.5, 1.5) == pytest.approx([0.5, 0.5 + 1 / 3, 1.5])
    assert linear_map([3.0, 3.0]) == [1.0, 1.0]


def test_a_group_with_several_matrices_takes_their_mean_alpha_and_skipped_groups_keep_the_lr():
    model = _net()
    body = [n for n, _ in model.named_parameters() if not n.startswith("4.")]
    part = layerwise.explicit(model, {"body": body, "head": ["4.weight", "4.bias"]})
    opt = torch.optim.SGD(part.param_groups(lr=0.1), lr=0.1)
    weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    tb = TempBalance(opt, every=1, skip=["head"], min_eigs=2)
    _step(model, opt, 0)
    alphas = [hill_alpha(spectrum(w)) for w in weights]
    assert tb.alpha == {"body": pytest.approx(float(np.mean(alphas)), rel=1e-12), "head": None}
    assert tb.multipliers == {"body": 1.0, "head": 1.0}  # one estimate: the midpoint of [0.5, 1.5]; skipped: 1


def test_norm_groups_follow_the_matrix_group_before_them_and_small_spectra_give_no_estimate():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.BatchNorm1d(12), nn.Linear(12, 24), nn.BatchNorm1d(24), nn.Linear(24, 24), nn.Linear(24, 6)
    )
    opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=torch.zeros(2, 12)).param_groups(lr=0.1))
    with pytest.raises(ValueError, match=r"add \['0', '2'\], or follow=True"):
        TempBalance(opt, every=1, min_eigs=2)
    tb = TempBalance(opt, every=1, follow=True, min_eigs=8)  # the head's 6 eigenvalues: no estimate
    tb.update()
    assert tb.alpha["4"] is None and tb.alpha["1"] is not None and tb.alpha["3"] is not None
    m = tb.multipliers
    assert m["0"] == 1.0 and m["2"] == m["1"] and {m["1"], m["3"]} == {0.5, 1.5} and m["4"] == 1.0
    assert set(TempBalance(opt, every=1, follow=True).multipliers.values()) == {1.0}  # 50 by default: none here


@pytest.mark.parametrize("scheduler", ["layerwise", "steplr"])
def test_each_step_uses_the_scheduler_lr_times_the_multiplier(scheduler):
    model = _net()
    opt = torch.optim.SGD(_groups(model), lr=0.1)
    if scheduler == "layerwise":
        sched = LayerwiseLR(opt, total_steps=8, policy=Cosine(), layers=layerwise.Discriminative(2.0))
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    tb = TempBalance(opt, every=3, min_eigs=2)
    for step in range(8):
        scheduled = list(sched.get_last_lr())
        before = [p.detach().clone() for p in model.parameters()]
        grads_seed = step
        _step(model, opt, grads_seed)
        factors = [tb.multipliers[g["name"]] for g in opt.param_groups]
        for group, lr, factor in zip(opt.param_groups, scheduled, factors):
            assert group["lr"] == lr  # written back after the step: the scheduler's own value
            for p in group["params"]:
                old = before[[id(q) for q in model.parameters()].index(id(p))]
                torch.testing.assert_close(p.detach(), old - lr * factor * p.grad, rtol=1e-6, atol=1e-7)
        sched.step()
    assert tb.step_count == 8 and sorted(set(tb.multipliers.values()))[::2] == [0.5, 1.5]


def test_muon_split_groups_take_the_multiplier_in_both_parts():
    def run(with_tb: bool):
        model = _net()
        opt = layerwise.muon_split(model, sample_input=torch.zeros(1, 12))
        tb = TempBalance(opt, every=1, min_eigs=2) if with_tb else None
        return model, opt, tb

    model, opt, tb = run(True)
    _step(model, opt, 0)
    ref, ref_opt, _ = run(False)
    for group in ref_opt.param_groups:
        group["lr"] *= tb.multipliers[group["name"]]
    _step(ref, ref_opt, 0)
    assert sorted(set(tb.multipliers.values())) != [1.0]
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def _train(steps: int, state=None, save_at=None, also_step=False):
    model = _net()
    opt = torch.optim.Adam(_groups(model, lr=1e-2))
    sched = LayerwiseLR(opt, total_steps=12, policy=Cosine())
    tb = TempBalance(opt, every=3, max_dim=8, min_eigs=2, seed=5)  # 24-wide layers: sampled, so the seeding matters
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        tb.load_state_dict(state["tb"])
        start = state["step"]
    saved = None
    for step in range(start, steps):
        if step == save_at:
            saved = copy.deepcopy(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "tb": tb.state_dict(),
                    "step": step,
                }
            )
        _step(model, opt, step)
        sched.step()
        for _ in range(step % 3 if also_step else 0):  # zero, one or two times: TempBalance.step changes nothing
            tb.step()
    return model, tb, saved


def test_resume_is_exact():
    whole, whole_tb, saved = _train(12, save_at=5)
    resumed, resumed_tb, _ = _train(12, state=saved)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert resumed_tb.state_dict() == whole_tb.state_dict()
    other = TempBalance(torch.optim.SGD(_groups(_net())), every=4)
    with pytest.raises(ValueError, match="every=3"):
        other.load_state_dict(saved["tb"])


def test_it_is_a_technique_whose_step_changes_nothing():
    """A harness steps every technique after the optimizer (tests/resume_case.py, trainer callbacks): TempBalance
    acts from the optimizer's hooks, so stepping it too, any number of times, changes nothing."""
    whole, whole_tb, _ = _train(6)
    stepped, stepped_tb, _ = _train(6, also_step=True)
    assert isinstance(stepped_tb, layerwise.Technique) and stepped_tb.state_dict() == whole_tb.state_dict()
    for p, q in zip(whole.parameters(), stepped.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0}, "every: must be an int >= 1"),
        ({"every": 2, "s_min": 1.5, "s_max": 0.5}, r"s_max: must be a number >= s_min \(1.5\)"),
        ({"every": 2, "s_min": 0.0}, "s_min: must be a finite number > 0"),
        ({"every": 2, "s_max": -1.0}, "s_max: must be finite and >= 0"),
        ({"every": 2, "max_dim": 1}, "max_dim: must be an int >= 2"),
        ({"every": 2, "min_eigs": 0}, "min_eigs: must be an int >= 1"),
        ({"every": 2, "follow": 1}, "follow: must be true or false"),
        ({"every": 2, "skip": ["nope"]}, r"skip: names groups \['nope'\]"),
        ({"every": 2, "skip": ["0", "2", "4", "bias"]}, "skip: leaves no group"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(kwargs, match):
    model = _net()
    groups = _groups(model)
    bias = {"params": [groups[-1]["params"].pop()], "name": "bias", "lr": 0.1}  # the head's bias: no matrix
    opt = torch.optim.SGD([*groups, bias], lr=0.1)
    before = [dict(g) for g in opt.param_groups]
    if "skip" not in kwargs:
        with pytest.raises(ValueError, match=r"skip: must name every group without a weight .* add \['bias'\]"):
            TempBalance(opt, every=2)
        kwargs = {**kwargs}
    with pytest.raises(ValueError, match=match):
        TempBalance(opt, **kwargs)
    assert opt.param_groups == before and not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_an_optimizer_that_writes_its_own_lrs_is_refused():
    with pytest.raises(ValueError, match="optimizer: a SecantLR writes every group's LR itself"):
        TempBalance(layerwise.SecantLR(torch.optim.SGD(_groups(_net()))), every=2)
