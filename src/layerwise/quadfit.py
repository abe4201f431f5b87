"""Probing plans and the least-squares quadratic fit behind Hi-DLR.

Around the current weights ``w`` and per-group update directions ``d_k`` (the base
optimizer's step at learning rate 1), the loss along ``w + sum_k xi_k d_k`` is modelled as

    L(xi) = c - xi . b + 1/2 xi^T A xi            (Hi-DLR paper, eq. 2.3 / 3.1)

so ``b_k = G_k . g_k`` and ``A_kl = g_k^T H_kl g_l``. Probes sit at ``xi = u * eta`` for the
rows ``u`` of a plan (multiples of the previous learning rates ``eta``). The intercept ``c``
is fitted with the rest, so no extra forward pass at ``w`` is needed; the paper's anchored fit
(``anchor``: the loss at ``w``) fits ``L_j - L(w)`` with no intercept instead. The fit runs in
the plan's units ``u`` (well conditioned whatever the scale of ``eta``) and is converted back.

Examples:
    >>> import numpy as np
    >>> plan = probe_plan(1)
    >>> losses = np.array([(1 - 0.5 * u) ** 2 for u in plan[:, 0]])  # minimum at xi = 2
    >>> fit = fit_quadratic(plan, losses, np.array([1.0]))
    >>> fit.accepted, round(float(fit.eta_star[0]), 6)
    (True, 2.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ._checks import clip_range

__all__ = [
    "PROBES",
    "REJECTION_ADVICE",
    "REJECTION_REASONS",
    "FitOptions",
    "QuadraticFit",
    "fit_quadratic",
    "probe_plan",
]

PROBES: tuple[float, ...] = (-2.0, -1.0, 1.0, 2.0)
"""The paper's probing vector v (Algorithm 1, line 6)."""

REJECTION_REASONS = ("nonfinite", "singular", "curvature", "slope", "r2")
"""Why a fit is rejected, in the order they are checked."""

REJECTION_ADVICE = {
    "nonfinite": "nonfinite: a probe at 2x the current LR diverged; start from smaller LRs.",
    "singular": "singular: the probe losses do not determine a quadratic (a group whose update is zero).",
    "curvature": (
        "curvature: the loss is not convex along some group's update at 1-2x its LR (the LR is already past "
        "that minimum, or the probes are noise); try per_group=True (the groups that fit move), smaller "
        "starting LRs or larger batches."
    ),
    "slope": "slope: the loss rises along some group's own update on this batch; try per_group=True or larger batches.",
    "r2": (
        "r2: the probe losses are too noisy for a quadratic; dropout in training mode draws new masks for "
        "every probe (a closure that runs the model with fixed masks or in eval mode removes that noise), "
        "or lower min_r2."
    ),
    "joint": "joint: the line fit along the combined step failed; try joint_scale=False.",
}
"""What each rejection reason (and HiDLR's ``joint``) means and what to try, for HiDLR's warning."""


@dataclass(frozen=True)
class FitOptions:
    """How probes are placed and a fit is accepted; checked on construction.

    Attributes:
        probes: the probing vector v (at least three distinct non-zero values).
        min_r2: a fit is accepted only when its R^2 exceeds this (a number < 1).
        full_matrix: also probe pairs of groups and fit the full K x K curvature.
        clip: optional ``(low, high)`` range for ``eta*``.
        per_group: accept each group whose own curvature and slope are positive (diagonal fit only).
        joint_scale: after an accepted fit, rescale ``eta*`` by a 1-D fit along the combined step.
        anchored: fit ``L_j - L_0`` with ``L_0`` the loss at the current weights (the paper's eq. 3.2;
            one more forward pass per round) instead of a free intercept.

    Examples:
        >>> FitOptions(clip=(0, 1)).clip
        (0.0, 1.0)
        >>> FitOptions(probes=(1.0, 2.0))
        Traceback (most recent call last):
        ...
        ValueError: probes: need at least 3 distinct non-zero values, got (1.0, 2.0)
    """

    probes: tuple[float, ...] = PROBES
    min_r2: float = 0.95
    full_matrix: bool = False
    clip: tuple[float, float] | None = None
    per_group: bool = False
    joint_scale: bool = False
    anchored: bool = False

    def __post_init__(self) -> None:
        try:
            probes = tuple(float(v) for v in self.probes)
        except (TypeError, ValueError):
            raise ValueError(f"probes: need at least 3 distinct non-zero numbers, got {self.probes!r}") from None
        if len(set(probes)) < 3 or 0.0 in probes or len(set(probes)) != len(probes):
            raise ValueError(f"probes: need at least 3 distinct non-zero values, got {probes}")
        min_r2 = self.min_r2
        if isinstance(min_r2, bool) or not isinstance(min_r2, (int, float)) or not min_r2 < 1.0:
            raise ValueError(f"min_r2: must be a number < 1, got {min_r2!r}")
        for flag in ("full_matrix", "per_group", "joint_scale", "anchored"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise TypeError(f"{flag}: expected a bool, got {type(getattr(self, flag)).__name__}")
        if self.per_group and self.full_matrix:
            raise ValueError("per_group: needs the diagonal fit (full_matrix=False)")
        object.__setattr__(self, "probes", probes)
        object.__setattr__(self, "min_r2", float(min_r2))
        object.__setattr__(self, "clip", clip_range("clip", self.clip))


def probe_plan(num_groups: int, probes: Sequence[float] = PROBES, *, full_matrix: bool = False) -> np.ndarray:
    """Rows of probe multipliers ``u`` (shape ``(J, K)``), each a probe at ``xi = u * eta``.

    The diagonal plan is the paper's ``E = [e_k (x) v]``: each probe moves one group. With
    ``full_matrix``, two probes per pair of groups, ``(+1, +1)`` and ``(-1, -1)``, add the
    off-diagonal curvature (``4K + K(K-1)`` probes in all).
    """
    rows = [np.eye(num_groups)[k] * v for k in range(num_groups) for v in probes]
    if full_matrix:
        for i, j in combinations(range(num_groups), 2):
            for sign in (1.0, -1.0):
                row = np.zeros(num_groups)
                row[[i, j]] = sign
                rows.append(row)
    return np.array(rows, dtype=float).reshape(-1, num_groups)


@dataclass(frozen=True)
class QuadraticFit:
    """Result of one fit, in learning-rate units.

    Attributes:
        b: slopes ``G_k . g_k`` (positive when ``-d_k`` is a descent direction), or None.
        A: curvature matrix (diagonal unless ``full_matrix``), or None.
        r2: coefficient of determination of the fit over the probe losses (nan if not fitted).
        eta_star: the minimiser ``A^-1 b`` (``b_k / A_kk`` for the diagonal fit), clipped; or None.
        reason: None when accepted, else one of :data:`REJECTION_REASONS`.
        groups: with ``per_group``, which groups passed (their ``eta_star`` entries are valid).
    """

    b: np.ndarray | None
    A: np.ndarray | None
    r2: float
    eta_star: np.ndarray | None
    reason: str | None
    groups: np.ndarray | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


def _design(plan: np.ndarray, full_matrix: bool, intercept: bool = True) -> np.ndarray:
    """Columns: intercept (unless anchored), -u_k, u_k^2 / 2, and u_i u_j for i < j when ``full_matrix``."""
    cols = [*([np.ones(len(plan))] if intercept else []), *(-plan.T), *(0.5 * plan.T**2)]
    if full_matrix:
        cols += [plan[:, i] * plan[:, j] for i, j in combinations(range(plan.shape[1]), 2)]
    return np.stack(cols, 1)


def fit_quadratic(
    plan: np.ndarray,
    losses: np.ndarray,
    eta: np.ndarray,
    *,
    full_matrix: bool = False,
    min_r2: float = 0.95,
    clip: tuple[float, float] | None = None,
    per_group: bool = False,
    anchor: float | None = None,
) -> QuadraticFit:
    """Least-squares fit of the probe losses and the acceptance test of Algorithm 1.

    ``anchor``: the loss at the current weights; the fit is then the paper's, of ``losses - anchor``
    with no intercept (2K unknowns instead of 2K + 1).

    Accepted when the fit has full rank, ``A`` is positive definite, every ``b_k > 0``, every
    ``eta*_k > 0`` and ``R^2 > min_r2``. With ``per_group`` (diagonal fit only) the groups with
    ``A_kk > 0`` and ``b_k > 0`` pass on their own (``groups``); it is rejected when none does.
    """
    losses = np.asarray(losses, dtype=float)
    eta = np.asarray(eta, dtype=float)
    num_groups = plan.shape[1]
    if not np.isfinite(losses).all() or (anchor is not None and not np.isfinite(anchor)):
        return QuadraticFit(None, None, float("nan"), None, "nonfinite")
    design = _design(plan, full_matrix, intercept=anchor is None)
    target = losses if anchor is None else losses - float(anchor)
    coef, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
    total = float(((losses - losses.mean()) ** 2).sum())
    if rank < design.shape[1] or total == 0.0 or not np.isfinite(coef).all():
        return QuadraticFit(None, None, float("nan"), None, "singular")
    r2 = 1.0 - float(((design @ coef - target) ** 2).sum()) / total
    first = 1 if anchor is None else 0
    beta, alpha = coef[first : first + num_groups], coef[first + num_groups : first + 2 * num_groups]
    curvature = np.diag(alpha)
    if full_matrix:
        for value, (i, j) in zip(coef[first + 2 * num_groups :], combinations(range(num_groups), 2)):
            curvature[i, j] = curvature[j, i] = value
    b = beta / eta
    A = curvature / np.outer(eta, eta)
    if per_group and not full_matrix:
        passed = (alpha > 0) & (beta > 0)
        if not passed.any():
            return QuadraticFit(b, A, r2, None, "curvature" if (alpha <= 0).any() else "slope")
        eta_star = np.where(passed, b / np.where(passed, np.diag(A), 1.0), 0.0)
        if clip is not None:
            eta_star = np.where(passed, np.clip(eta_star, *clip), 0.0)
        return QuadraticFit(b, A, r2, eta_star, None if r2 > min_r2 else "r2", passed)
    if np.linalg.eigvalsh(curvature).min() <= 0:
        return QuadraticFit(b, A, r2, None, "curvature")
    if (b <= 0).any():
        return QuadraticFit(b, A, r2, None, "slope")
    eta_star = np.linalg.solve(A, b) if full_matrix else b / np.diag(A)
    if (eta_star <= 0).any():
        return QuadraticFit(b, A, r2, None, "slope")
    if clip is not None:
        eta_star = np.clip(eta_star, *clip)
    passed = np.ones(num_groups, dtype=bool)
    return QuadraticFit(b, A, r2, eta_star, None if r2 > min_r2 else "r2", passed)
