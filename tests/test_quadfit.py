"""Hi-DLR's quadratic fit: the closed form it recovers, and one named case per rejection reason."""

import numpy as np
import pytest

from layerwise.quadfit import REJECTION_REASONS, fit_quadratic, probe_plan

PLAN = probe_plan(2)
ETA = np.array([0.1, 0.2])
U1, U2 = PLAN[:, 0], PLAN[:, 1]
GOOD = 1 - U1 + U1**2 - 2 * U2 + 3 * U2**2  # L(eta + u eta) with slopes 1, 2 and curvatures 1, 3 (in u)


def test_an_exact_quadratic_is_accepted_with_the_closed_form_lrs():
    fit = fit_quadratic(PLAN, GOOD, ETA)
    assert fit.accepted and fit.reason is None and fit.r2 == pytest.approx(1.0)
    assert fit.eta_star == pytest.approx([0.1 * 1 / 2, 0.2 * 2 / 6])  # eta * beta / (2 alpha)


def test_the_probe_plans():
    assert PLAN.shape == (8, 2) and probe_plan(2, full_matrix=True).shape == (10, 2)
    assert sorted(PLAN[:4, 0].tolist()) == [-2.0, -1.0, 1.0, 2.0] and not PLAN[:4, 1].any()


REJECTIONS = {
    "nonfinite": (GOOD * np.array([1] * 7 + [np.nan]), {}),
    "singular": (np.ones(len(GOOD)), {}),
    "curvature": (1 - U1 - U1**2 - U2 + U2**2, {}),
    "slope": (1 + U1 + U1**2 - U2 + U2**2, {}),
    "r2": (GOOD + np.random.default_rng(0).normal(0, 3, len(GOOD)), {"min_r2": 0.99}),
}


def test_every_rejection_reason_has_a_case():
    assert set(REJECTIONS) == set(REJECTION_REASONS)


@pytest.mark.parametrize("reason", REJECTION_REASONS)
def test_each_rejection(reason):
    losses, options = REJECTIONS[reason]
    fit = fit_quadratic(PLAN, losses, ETA, **options)
    assert fit.reason == reason and not fit.accepted


def test_a_noisy_fit_passes_a_looser_r2():
    losses, _ = REJECTIONS["r2"]
    assert fit_quadratic(PLAN, losses, ETA, min_r2=0.9).accepted
    assert 0.9 < fit_quadratic(PLAN, losses, ETA, min_r2=0.99).r2 < 0.99


def test_per_group_keeps_the_groups_that_pass_and_clip_bounds_them():
    mixed = 1 - U1 - U1**2 - 2 * U2 + 3 * U2**2  # group 0 concave, group 1 fine
    fit = fit_quadratic(PLAN, mixed, ETA, per_group=True)
    assert fit.accepted and fit.groups.tolist() == [False, True] and fit.eta_star[1] == pytest.approx(0.2 * 2 / 6)
    clipped = fit_quadratic(PLAN, GOOD, ETA, clip=(0.0, 0.06))
    assert clipped.eta_star == pytest.approx([0.05, 0.06])


def test_the_anchored_fit_is_the_papers_no_intercept_least_squares():
    noise = np.random.default_rng(0).normal(0, 0.05, len(GOOD))
    losses = GOOD + noise
    anchored = fit_quadratic(PLAN, losses, ETA, anchor=1.0, min_r2=0.5)
    # by hand: least squares of L_j - L_0 on (-u_k, u_k^2 / 2), 2K unknowns
    design = np.stack([-U1, -U2, 0.5 * U1**2, 0.5 * U2**2], 1)
    beta1, beta2, a1, a2 = np.linalg.lstsq(design, losses - 1.0, rcond=None)[0]
    assert anchored.accepted
    assert anchored.b == pytest.approx([beta1 / 0.1, beta2 / 0.2])
    assert anchored.eta_star == pytest.approx([0.1 * beta1 / a1, 0.2 * beta2 / a2])
    free = fit_quadratic(PLAN, losses, ETA, min_r2=0.5)
    assert not np.allclose(free.eta_star, anchored.eta_star)  # the intercept is no longer free
    exact = fit_quadratic(PLAN, GOOD, ETA, anchor=1.0)  # noiseless: both fits are the closed form
    assert exact.eta_star == pytest.approx(fit_quadratic(PLAN, GOOD, ETA).eta_star)
    assert fit_quadratic(PLAN, GOOD, ETA, anchor=float("nan")).reason == "nonfinite"
