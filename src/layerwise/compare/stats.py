"""The statistics of a verdict: paired differences over seeds, equivalence within a margin (TOST),
time to target with misses, Holm's correction over a table's questions, the group-sequential rule of
``--seeds auto`` with its futility stop, and the seeds an open question needs.

The method card, docs/verdicts.md, states what each test assumes. Every difference is the method
minus the baseline, in the metric's own units; ``higher_is_better`` says which sign wins. Welch's
unpaired test stays the fallback when fewer than 2 seeds of the two sides pair.

Examples:
    >>> test = welch([1.0, 1.2, 1.1], [0.5, 0.6, 0.55])
    >>> round(test["diff"], 3), test["low"] > 0
    (0.55, True)
    >>> compare_seeds({0: 0.85, 1: 0.84, 2: 0.86}, {0: 0.80, 1: 0.81, 2: 0.80}).test
    'paired t'
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import TypeVar

import numpy as np

__all__ = [
    "Adjusted",
    "Comparison",
    "Decision",
    "Question",
    "Reach",
    "Sizing",
    "boundary",
    "compare_seeds",
    "compare_times",
    "decide",
    "decide_all",
    "decide_fixed",
    "decide_rounds",
    "detectable",
    "holm",
    "log_ratios",
    "paired",
    "pairs_needed",
    "reach",
    "sizing",
    "tost",
    "welch",
    "win_share",
]

CONFIDENCE = 0.95
BOOTSTRAP_FROM = 6
"""Pairs from which the paired bootstrap interval is computed too."""
BOOTSTRAP_RESAMPLES = 2000
FIRST_LOOK = 3
"""Seeds of the first look of ``--seeds auto``."""
BOUNDARY_SIMULATIONS = 100_000
POWER = 0.8
ROUNDING = 1e-9
"""A mean difference within this many standard deviations of zero is zero: float rounding of differences
that cancel (accuracies are multiples of one test example), not an effect some number of seeds detects."""
NORMAL_FROM = 2**20
"""From this many pairs :func:`pairs_needed` uses the normal closed form (the t test is the z test there)."""
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Comparison:
    """A method against the baseline over seeds: ``diff`` (method minus baseline), its 95 % interval
    and p-value, from ``test`` ("paired t" or "welch"); for paired runs also the bootstrap interval
    (from 6 pairs on) and ``wins``, the share of pairs the method won (ties half) with its Wilson interval."""

    test: str
    n: int
    diff: float | None
    low: float | None
    high: float | None
    p: float | None
    bootstrap: tuple[float, float] | None = None
    wins: float | None = None
    wins_low: float | None = None
    wins_high: float | None = None


@dataclass(frozen=True)
class Reach:
    """Time to target over seeds: the median (inf when half or more missed) and how many reached it."""

    median: float
    reached: int
    runs: int


@dataclass(frozen=True)
class Adjusted:
    """p-values after a multiple-test correction (``correction``: "holm" or "none"), None where untested."""

    p: tuple[float | None, ...]
    decided: tuple[bool, ...]
    correction: str


@dataclass(frozen=True)
class Decision:
    """A rule's answer to one question: ``verdict`` "better", "worse", "equivalent" (within the margin),
    "futile" (stopped: too little chance of a decision by the seed cap) or "undecided"; ``look`` the
    pairs at which it was claimed or stopped (None: neither); ``value`` the ``statistic`` ("t": paired t,
    "signed rank": Wilcoxon's standardised signed-rank sum) there (else at the last look) and
    ``critical`` its boundary; ``level`` the nominal two-sided level of a look and ``alpha`` the error
    rate the question was tested at (its share after the correction). ``diff``, ``low``, ``high``: the
    effect on the pairs the decision read and the interval of the test that made it (sequential: the
    boundary's repeated-confidence interval); ``power``: an open question's chance of a decision by the
    seed cap; ``rule``: "sequential" or "fixed" (every pair read at once)."""

    verdict: str
    statistic: str
    pairs: int
    look: int | None
    value: float | None
    critical: float | None
    level: float
    alpha: float
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    power: float | None = None
    rule: str = "sequential"

    @property
    def claimed(self) -> bool:
        """Whether the verdict claims something (better, worse or equivalent)."""
        return self.verdict in CLAIMS


@dataclass(frozen=True)
class Sizing:
    """For an open question: the smallest difference ``pairs`` seeds detect with 80 % power, and the
    pairs a fixed-size design needs to detect the observed difference (None: it is zero)."""

    pairs: int
    detectable: float | None
    needed: int | None


def welch(a: list[float], b: list[float]) -> dict[str, float | None]:
    """Mean of ``a`` minus mean of ``b``, its 95 % confidence interval and Welch's two-sided p-value."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return {"diff": None, "low": None, "high": None, "p": None}
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return {"diff": diff, "low": diff, "high": diff, "p": 1.0 if diff == 0 else 0.0}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    with warnings.catch_warnings():  # nearly identical samples: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return {"diff": diff, "low": diff - half, "high": diff + half, "p": p}


def win_share(diffs: Sequence[float], higher_is_better: bool = True) -> tuple[float, float, float]:
    """Share of pairs the method won (a tie counts half) and its 95 % Wilson score interval.

    >>> [round(x, 3) for x in win_share([0.1, 0.2, -0.1, 0.0])]
    [0.625, 0.219, 0.908]
    """
    n = len(diffs)
    sign = 1.0 if higher_is_better else -1.0
    won = sum(1.0 if sign * d > 0 else 0.5 if d == 0 else 0.0 for d in diffs)
    share = won / n
    z = statistics.NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return share, max(0.0, centre - half), min(1.0, centre + half)


def paired(method: Sequence[float], baseline: Sequence[float], higher_is_better: bool = True) -> Comparison:
    """Paired comparison of two lists aligned by seed (at least 2 pairs): the mean of method minus
    baseline, its paired-t 95 % interval, ``scipy.stats.ttest_rel``'s p-value, from 6 pairs on the
    paired bootstrap interval (BCa, fixed seed), and the share of pairs won.

    >>> result = paired([0.85, 0.84, 0.86], [0.80, 0.81, 0.80])
    >>> round(result.diff, 3), result.low > 0, result.wins
    (0.047, True, 1.0)
    """
    from scipy import stats

    if len(method) != len(baseline) or len(method) < 2:
        raise ValueError(f"paired: two lists of the same length >= 2, got {len(method)} and {len(baseline)}")
    diffs = np.asarray(method, dtype=float) - np.asarray(baseline, dtype=float)
    n, diff = len(diffs), float(diffs.mean())
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    wins, wins_low, wins_high = win_share(diffs.tolist(), higher_is_better)
    if se == 0.0:
        return Comparison("paired t", n, diff, diff, diff, 1.0 if diff == 0 else 0.0, None, wins, wins_low, wins_high)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    p = float(stats.ttest_rel(method, baseline).pvalue)
    return Comparison("paired t", n, diff, diff - half, diff + half, p, _bootstrap(diffs), wins, wins_low, wins_high)


def _bootstrap(diffs: np.ndarray) -> tuple[float, float] | None:
    """scipy's paired bootstrap interval of the mean difference (BCa, fixed seed), from 6 pairs on."""
    from scipy import stats

    if len(diffs) < BOOTSTRAP_FROM:
        return None
    result = stats.bootstrap(
        (diffs, np.zeros_like(diffs)),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=CONFIDENCE,
        rng=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_seeds(
    method: Mapping[int, float | None], baseline: Mapping[int, float | None], higher_is_better: bool = True
) -> Comparison:
    """Pair the two sides' values by seed (None: an unfinished run, left out): the paired comparison on
    the seeds both finished when there are at least 2, else Welch's unpaired test (``test="welch"``).

    >>> compare_seeds({0: 0.85, 1: 0.84, 2: 0.86}, {0: 0.80, 1: 0.81}).n  # seeds 0 and 1 pair
    2
    >>> compare_seeds({0: 0.85, 1: 0.84}, {2: 0.80, 3: 0.81}).test
    'welch'
    """
    mine = {seed: v for seed, v in method.items() if v is not None}
    base = {seed: v for seed, v in baseline.items() if v is not None}
    seeds = sorted(mine.keys() & base.keys())
    if len(seeds) >= 2:
        return paired([mine[s] for s in seeds], [base[s] for s in seeds], higher_is_better)
    result = welch(list(mine.values()), list(base.values()))
    return Comparison("welch", min(len(mine), len(base)), result["diff"], result["low"], result["high"], result["p"])


def reach(times: Sequence[float]) -> Reach:
    """Median time to target over seeds, a miss being ``math.inf`` (inf when half or more missed).

    >>> reach([10.0, 12.0, math.inf])
    Reach(median=12.0, reached=2, runs=3)
    >>> reach([10.0, math.inf]).median
    inf
    """
    reached = sum(math.isfinite(t) for t in times)
    median = statistics.median(times) if times and 2 * reached > len(times) else math.inf
    return Reach(float(median), reached, len(times))


def log_ratios(method: Mapping[int, float], baseline: Mapping[int, float]) -> list[float]:
    """Per shared seed (sorted), log of method time over baseline time; a miss is inf: +inf when only
    the method missed, -inf when only the baseline did, 0 when both did.

    >>> log_ratios({0: 10.0, 1: math.inf}, {0: 10.0, 1: 5.0})
    [0.0, inf]
    """
    ratios = []
    for seed in sorted(method.keys() & baseline.keys()):
        mine, base = method[seed], baseline[seed]
        both_missed = math.isinf(mine) and math.isinf(base)
        ratios.append(0.0 if both_missed else math.log(mine) - math.log(base))
    return ratios


def compare_times(method: Mapping[int, float], baseline: Mapping[int, float]) -> Comparison:
    """Speed over seed pairs from times to target (inf: a miss). Wilcoxon's signed-rank test on the
    log time ratios, where a miss outranks every reached time; ``diff`` is their median (``exp(-diff)``
    the typical speed-up), ``low``/``high`` its distribution-free 95 % interval (from 6 pairs on).
    Unpaired seeds fall back to the Mann-Whitney test on the times (``diff``: log of the medians' ratio).

    >>> always = {0: 50.0, 1: 60.0, 2: 55.0}
    >>> compare_times({0: 5.0, 1: math.inf, 2: math.inf}, always).diff  # faster once, missed twice
    inf
    """
    from scipy import stats

    if method.keys() != baseline.keys() or len(method) < 2:
        mine, base = reach(list(method.values())), reach(list(baseline.values()))
        if not method or not baseline:
            return Comparison("mann-whitney", 0, None, None, None, None)
        p = float(stats.mannwhitneyu(list(method.values()), list(baseline.values())).pvalue)
        diff = 0.0 if mine.median == base.median else math.log(mine.median) - math.log(base.median)
        return Comparison("mann-whitney", min(len(method), len(baseline)), diff, None, None, p)
    ratios = log_ratios(method, baseline)
    wins, wins_low, wins_high = win_share(ratios, higher_is_better=False)
    low, high = _median_interval(ratios)
    median, p = float(np.median(ratios)), _signed_rank_p(ratios)
    return Comparison("wilcoxon", len(ratios), median, low, high, p, None, wins, wins_low, wins_high)


def _ranked(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The values (along the last axis) with every infinity replaced by a finite value beyond all
    the others of its row: the same ranks, a miss outranking every reached time."""
    values = np.asarray(values, dtype=float)
    finite = np.where(np.isfinite(values), np.abs(values), 0.0)
    beyond = 2.0 * finite.max(axis=-1, keepdims=True, initial=0.0) + 1.0
    return np.where(np.isfinite(values), values, np.copysign(beyond, values))


def _signed_rank_p(ratios: Sequence[float] | np.ndarray) -> float:
    """Wilcoxon's two-sided signed-rank p-value (scipy, exact for these sample sizes); 1 when every pair ties."""
    from scipy import stats

    values = _ranked(ratios)
    if not values.any():
        return 1.0
    with warnings.catch_warnings():  # zeros: scipy warns that it drops them
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.wilcoxon(values).pvalue)


def _median_interval(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The order-statistic 95 % interval of the median (binomial, distribution-free); None below 6 values."""
    from scipy import stats

    n = len(values)
    k = int(stats.binom.ppf((1 - CONFIDENCE) / 2, n, 0.5))  # P(Bin(n, 1/2) < k) <= 2.5 %
    if k < 1:
        return None, None
    ordered = sorted(values)
    return float(ordered[k - 1]), float(ordered[n - k])


def holm(p_values: Sequence[float | None], alpha: float = 0.05, correct: bool = True) -> Adjusted:
    """Holm's step-down adjusted p-values and the decided flags at ``alpha`` (None: untested, left out
    of the count); ``correct=False`` keeps the raw p-values.

    >>> holm([0.01, 0.04, 0.03, None]).p
    (0.03, 0.06, 0.06, None)
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = list(p_values)
    if correct:
        running = 0.0
        for rank, (p, i) in enumerate(tested):
            running = max(running, min(1.0, (len(tested) - rank) * p))
            adjusted[i] = round(running, 12)
    decided = tuple(p is not None and p <= alpha for p in adjusted)
    return Adjusted(tuple(adjusted), decided, "holm" if correct else "none")


def tost(diffs: Sequence[float], margin: float, alpha: float = 0.05) -> Comparison:
    """Paired equivalence by two one-sided t tests (TOST): ``p`` is the larger p-value of the tests of
    mean <= -``margin`` and of mean >= ``margin``, so the mean difference is within the margin at
    level ``alpha`` when ``p <= alpha``; ``low``/``high``: the (1 - 2 ``alpha``) paired t interval,
    inside (-margin, margin) exactly then.

    >>> result = tost([0.1, -0.2, 0.0, 0.15], margin=0.5)
    >>> round(result.p, 4), result.low > -0.5 and result.high < 0.5
    (0.004, True)
    """
    from scipy import stats

    values = np.asarray(diffs, dtype=float)
    if len(values) < 2 or not margin > 0:
        raise ValueError(f"tost: at least 2 differences and a margin > 0, got {len(values)} and {margin!r}")
    mean, se = _mean_se(values)
    if se == 0.0:
        return Comparison("paired TOST", len(values), mean, mean, mean, 0.0 if abs(mean) < margin else 1.0)
    df = len(values) - 1
    above_low = float(stats.t.sf((mean + margin) / se, df))  # the test of mean <= -margin
    below_high = float(stats.t.cdf((mean - margin) / se, df))  # the test of mean >= margin
    half = float(stats.t.isf(alpha, df)) * se
    return Comparison("paired TOST", len(values), mean, mean - half, mean + half, max(above_low, below_high))


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    """The mean of at least 2 values and its standard error."""
    return float(values.mean()), float(values.std(ddof=1)) / math.sqrt(len(values))


STATISTICS = ("t", "signed rank")
"""The statistics of the sequential rule: the paired t (accuracy) and the signed rank (times with misses)."""

CLAIMS = ("better", "worse", "equivalent")
"""The verdicts that claim something; "futile" (stopped) and "undecided" claim nothing."""

FUTILITY = 0.10
"""An open question stops once its chance of a decision by the seed cap falls below this."""


@dataclass(frozen=True)
class Question:
    """One question of a method against the baseline, as the rules read it: the per-pair differences in
    seed order (method minus baseline; a speed question: log(baseline time / method time), a miss
    infinite), the ``statistic`` ("t": the paired t, "signed rank": Wilcoxon's), which sign wins, and
    the equivalence ``margin`` in the differences' units (the t only; None: no equivalence test)."""

    diffs: tuple[float, ...]
    statistic: str = "t"
    higher_is_better: bool = True
    margin: float | None = None


@cache
def _null_extremes(n_max: int, statistic: str, sides: int) -> np.ndarray:
    """Per path of pair differences under no difference (100,000 standard normal paths, fixed seed):
    the smallest nominal p-value of the paired t over looks 3..``n_max`` (one- or two-sided), or the
    largest |standardised signed rank|. Every boundary of that ``n_max`` is a quantile of it."""
    from scipy import stats

    looks = np.arange(FIRST_LOOK, n_max + 1)
    paths = np.random.default_rng(20240733).standard_normal((BOUNDARY_SIMULATIONS, n_max))
    if statistic == "signed rank":
        return np.abs(np.stack([_signed_rank_z(paths[:, :n]) for n in looks], axis=1)).max(axis=1)
    t = _t_paths(paths)[:, looks - 1]
    return (sides * stats.t.sf(t if sides == 1 else np.abs(t), looks - 1)).min(axis=1)


@cache
def boundary(n_max: int, alpha: float = 0.05, statistic: str = "t", sides: int = 2) -> tuple[float, tuple[float, ...]]:
    """The group-sequential boundary at looks 3..``n_max`` pairs, such that under no difference some
    look crosses with probability ``alpha`` (Monte Carlo, 100,000 paths, fixed seed): the nominal level
    of a look and the critical statistic of each look. Pocock's rule: for the paired t a constant
    nominal level (each look's t has its own degrees of freedom), two-sided (|t| >= critical) or, with
    ``sides=1``, one-sided (t >= critical: TOST's tests); for the signed rank (standardised, nearly
    normal, two-sided) a constant critical value.

    >>> level, critical = boundary(3)
    >>> round(level, 3), len(critical)  # one look: the plain paired t test
    (0.05, 1)
    """
    from scipy import stats

    valid = statistic in STATISTICS and sides in (1, 2) and not (statistic == "signed rank" and sides == 1)
    if n_max < FIRST_LOOK or not valid:
        raise ValueError(
            f"boundary: n_max >= {FIRST_LOOK}, a statistic of {STATISTICS} and 2 sides (1 for the t), "
            f"got {n_max}, {statistic!r}, {sides}"
        )
    looks = np.arange(FIRST_LOOK, n_max + 1)
    if statistic == "signed rank":
        critical = _smallest_crossing(_null_extremes(n_max, statistic, 2), alpha)
        return float(2 * stats.norm.sf(critical)), (critical,) * len(looks)
    level = alpha if len(looks) == 1 else float(np.quantile(_null_extremes(n_max, "t", sides), alpha))
    return level, tuple(float(c) for c in stats.t.isf(level / sides, looks - 1))


def _smallest_crossing(largest: np.ndarray, alpha: float) -> float:
    """The smallest critical value c with share(largest >= c) <= alpha (the statistic is discrete)."""
    ordered = np.sort(largest)
    values = np.unique(ordered)
    shares = (len(ordered) - np.searchsorted(ordered, values, side="left")) / len(ordered)
    return float(values[np.argmax(shares <= alpha)])


def _t_paths(diffs: np.ndarray) -> np.ndarray:
    """The paired t statistic of every prefix of each row (column k: the first k + 1 pairs; nan for k = 0)."""
    n = np.arange(1, diffs.shape[1] + 1)
    mean = np.cumsum(diffs, axis=1) / n
    squares = np.cumsum(diffs * diffs, axis=1) - n * mean * mean
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(np.maximum(squares, 0.0) / (n - 1))
        t = mean / (sd / np.sqrt(n))
    return np.where(sd > 0, t, np.where(mean == 0, 0.0, np.copysign(np.inf, mean)))


def _signed_rank_z(diffs: np.ndarray) -> np.ndarray:
    """Wilcoxon's signed-rank sum of each row, standardised under no difference (average ranks for ties;
    a zero difference adds half its rank, so n stays the number of pairs)."""
    n = diffs.shape[1]
    ranks = _abs_ranks(diffs)
    positive = (ranks * ((diffs > 0) + 0.5 * (diffs == 0))).sum(axis=1)
    return (positive - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)


PAIRWISE_RANKS = 20_000_000
"""Up to this many comparisons, ranks are counted pairwise (fast for a few rows), else scipy's rankdata."""


def _abs_ranks(diffs: np.ndarray) -> np.ndarray:
    """The average rank of every |difference| within its row (ties share the mean of their ranks)."""
    from scipy import stats

    size = np.abs(diffs)
    if size.size * size.shape[1] > PAIRWISE_RANKS:
        return stats.rankdata(size, axis=1)
    below = (size[:, None, :] < size[:, :, None]).sum(axis=2)
    tied = (size[:, None, :] == size[:, :, None]).sum(axis=2)
    return below + (tied + 1) / 2


def _path(diffs: Sequence[float], statistic: str) -> np.ndarray:
    """The statistic at each look 3, 4, ... of these differences in seed order."""
    values = _ranked(diffs)[None, :]
    if statistic == "t":
        return _t_paths(values)[0, FIRST_LOOK - 1 :]
    return np.array([_signed_rank_z(values[:, :n])[0] for n in range(FIRST_LOOK, values.shape[1] + 1)])


def _walsh(values: np.ndarray) -> np.ndarray:
    """The pairwise averages (x_i + x_j) / 2 for i <= j; a miss on each side (+inf with -inf) averages to 0."""
    first, second = np.triu_indices(len(values))
    with np.errstate(invalid="ignore"):
        averages = (values[first] + values[second]) / 2
    return np.where(np.isnan(averages), 0.0, averages)


def _shift_interval(diffs: Sequence[float], rejects: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """The shifts s for which the signed-rank test ``rejects`` (rows of shifted differences -> a bool
    per row) does not reject diffs - s: the interval of that test (Hodges and Lehmann's). The
    statistic changes only at the Walsh averages, so the points between them decide; an end past
    every finite average is infinite."""
    values = np.asarray(diffs, dtype=float)
    averages = _walsh(values)
    steps = np.unique(averages[np.isfinite(averages)])
    if steps.size == 0:
        return (-math.inf, math.inf) if not rejects(values[None, :])[0] else (float(values[0]),) * 2
    probes = np.concatenate([[steps[0] - 1.0], (steps[:-1] + steps[1:]) / 2, [steps[-1] + 1.0]])
    kept = np.flatnonzero(~rejects(values[None, :] - probes[:, None]))
    if kept.size == 0:
        centre = _hodges_lehmann(values)
        return centre, centre
    low = -math.inf if kept[0] == 0 else float(steps[kept[0] - 1])
    high = math.inf if kept[-1] == len(steps) else float(steps[kept[-1]])
    return low, high


def _hodges_lehmann(values: Sequence[float] | np.ndarray) -> float:
    """The median of the Walsh averages: the estimate that goes with the signed-rank test."""
    return float(np.median(_walsh(np.asarray(values, dtype=float))))


def _side(value: float, higher_is_better: bool) -> str:
    return "better" if (value > 0) == higher_is_better else "worse"


def _sequential(question: Question, n_max: int, alpha: float) -> Decision:
    """The group-sequential rule on one question at error rate ``alpha``: better or worse at the first
    look whose statistic crosses the boundary, equivalent at the first look whose TOST crosses the
    one-sided boundary (a margin given), else undecided; an undecided question whose chance of a
    decision by ``n_max`` pairs is below :data:`FUTILITY` is futile. Without its effect (:func:`_effect`)."""
    diffs, statistic = question.diffs, question.statistic
    if len(diffs) > n_max:
        raise ValueError(f"decide: at most n_max={n_max} pairs, got {len(diffs)}")
    level, critical = boundary(n_max, alpha, statistic)
    if len(diffs) < FIRST_LOOK:
        return Decision("undecided", statistic, len(diffs), None, None, None, level, alpha)
    path = _path(diffs, statistic)
    equivalent = _equivalent_looks(question, n_max, alpha)
    for look, (value, c, within) in enumerate(zip(path, critical, equivalent), start=FIRST_LOOK):
        if abs(value) >= c or within:
            verdict = _side(value, question.higher_is_better) if abs(value) >= c else "equivalent"
            return Decision(verdict, statistic, len(diffs), look, float(value), c, level, alpha)
    value, last = float(path[-1]), critical[len(diffs) - FIRST_LOOK]
    power = _conditional_power(question, value, n_max, alpha) if len(diffs) < n_max else None
    futile = power is not None and power < FUTILITY
    verdict, look = ("futile", len(diffs)) if futile else ("undecided", None)
    return Decision(verdict, statistic, len(diffs), look, value, last, level, alpha, power=power)


def _equivalent_looks(question: Question, n_max: int, alpha: float) -> np.ndarray:
    """Per look, whether both of TOST's one-sided paired t tests cross the one-sided boundary."""
    looks = max(0, len(question.diffs) - FIRST_LOOK + 1)
    if question.margin is None or question.statistic != "t":
        return np.zeros(looks, dtype=bool)
    critical = np.asarray(boundary(n_max, alpha, "t", sides=1)[1][:looks])
    values = np.asarray(question.diffs, dtype=float)
    above = _path(values + question.margin, "t")  # rejects mean <= -margin
    below = _path(values - question.margin, "t")  # rejects mean >= margin
    return (above >= critical) & (below <= -critical)


def _rank_test(decision: Decision, sequential: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The signed-rank test a decision used, on rows of differences: the boundary's critical |z|, or
    Wilcoxon's exact p-value at the decision's level."""

    def crosses(rows: np.ndarray) -> np.ndarray:
        return np.abs(_signed_rank_z(_ranked(rows))) >= decision.critical

    def significant(rows: np.ndarray) -> np.ndarray:
        return np.array([_signed_rank_p(row) <= decision.alpha for row in rows])

    return crosses if sequential else significant


def _effect(question: Question, decision: Decision, n_max: int | None) -> Decision:
    """The decision with the effect and interval of the test that made it, on the pairs it read (up to
    its look, or all): the paired t's interval at the decision's level (sequential, ``n_max`` given:
    the boundary's repeated-confidence interval), for equivalence its (1 - 2 alpha) form (TOST's); for
    the signed rank the Hodges-Lehmann estimate and the shifts the test does not reject. Before the
    first look of the sequential rule: the effect alone."""
    from scipy import stats

    pairs = decision.look or decision.pairs
    diffs = np.asarray(question.diffs[:pairs], dtype=float)
    if pairs < 2:
        return decision
    if n_max is not None and pairs < FIRST_LOOK:  # before the first look: no boundary, no interval
        diff = _hodges_lehmann(diffs) if question.statistic == "signed rank" else float(diffs.mean())
        return replace(decision, diff=diff)
    if question.statistic == "signed rank":
        low, high = _shift_interval(diffs, _rank_test(decision, sequential=n_max is not None))
        return replace(decision, diff=_hodges_lehmann(diffs), low=low, high=high)
    sides = 1 if decision.verdict == "equivalent" else 2
    if n_max is None:
        spread = float(stats.t.isf(decision.alpha / sides, pairs - 1))
    else:
        spread = boundary(n_max, decision.alpha, "t", sides)[1][pairs - FIRST_LOOK]
    diff, se = _mean_se(diffs)
    return replace(decision, diff=diff, low=diff - spread * se, high=diff + spread * se)


def _conditional_power(question: Question, value: float, n_max: int, alpha: float) -> float:
    """The chance of a decision at the seed cap ``n_max`` if the trend so far goes on (Lan and Wittes'
    B-value): at n of N pairs with statistic z, the statistic at N is normal with mean z sqrt(N / n)
    and variance 1 - n / N. It decides beyond the normal quantile of the boundary's nominal level, or
    (a margin given) within the region where TOST decides (:func:`_equivalence_reach`)."""
    if not math.isfinite(value):
        return 1.0
    pairs = len(question.diffs)
    final = statistics.NormalDist(value * math.sqrt(n_max / pairs), math.sqrt(1 - pairs / n_max))
    within = _equivalence_reach(question, n_max, alpha)
    outside = max(_normal_critical(boundary(n_max, alpha, question.statistic)[0] / 2), within)
    chance = final.cdf(-outside) + 1.0 - final.cdf(outside)
    return chance + (final.cdf(within) - final.cdf(-within) if within > 0 else 0.0)


def _normal_critical(tail: float) -> float:
    """The standard normal quantile with ``tail`` above it."""
    return statistics.NormalDist().inv_cdf(1.0 - tail)


def _equivalence_reach(question: Question, n_max: int, alpha: float) -> float:
    """The largest |statistic| at the seed cap at which TOST still decides equivalence, at the spread of
    the differences so far: margin sqrt(N) / sd less the normal quantile of the one-sided boundary's
    nominal level (<= 0: out of reach, or not asked; inf: no spread)."""
    if question.margin is None or question.statistic != "t":
        return 0.0
    sd = statistics.stdev(question.diffs)
    if sd == 0:
        return math.inf
    return question.margin * math.sqrt(n_max) / sd - _normal_critical(boundary(n_max, alpha, "t", sides=1)[0])


def _fixed(question: Question, alpha: float) -> Decision:
    """One question tested once at two-sided ``alpha`` on all its pairs (at least 2): the paired t and,
    with a margin, TOST; or Wilcoxon's signed rank. Without its effect (:func:`_effect`)."""
    from scipy import stats

    diffs = np.asarray(question.diffs, dtype=float)
    pairs = len(diffs)
    if question.statistic == "signed rank":
        z = float(_signed_rank_z(_ranked(diffs)[None, :])[0])
        verdict = _side(z, question.higher_is_better) if _signed_rank_p(diffs) <= alpha else "undecided"
        look = pairs if verdict != "undecided" else None
        return Decision(verdict, "signed rank", pairs, look, z, None, alpha, alpha, rule="fixed")
    diff, se = _mean_se(diffs)
    critical = float(stats.t.isf(alpha / 2, pairs - 1))
    t = diff / se if se > 0 else 0.0 if diff == 0 else math.copysign(math.inf, diff)
    if abs(t) >= critical:
        verdict = _side(t, question.higher_is_better)
    elif question.margin is not None and tost(diffs, question.margin, alpha).p <= alpha:
        verdict = "equivalent"
    else:
        verdict = "undecided"
    look = pairs if verdict != "undecided" else None
    return Decision(verdict, "t", pairs, look, t, critical, alpha, alpha, rule="fixed")


def decide(
    diffs: Sequence[float],
    n_max: int,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    statistic: str = "t",
    margin: float | None = None,
) -> Decision:
    """The sequential rule on paired differences in seed order: better or worse once the statistic of
    any look (3, 4, ... pairs, up to the ones given) crosses the boundary for looks up to ``n_max`` at
    ``alpha``; equivalent (``margin`` given, the t only) once TOST crosses; futile when undecided with
    under :data:`FUTILITY` chance of a decision by ``n_max``; else undecided. Looking again after each
    added seed keeps the error rate at ``alpha``. For times use ``statistic="signed rank"``.

    >>> decide([1.1, 0.9, 1.0, 1.2], n_max=10).verdict
    'better'
    >>> decide([0.3, -0.2, 0.1], n_max=10).verdict  # little chance to decide by 10 pairs
    'futile'
    >>> decide([0.02, -0.01, 0.01, 0.0], n_max=10, margin=0.5).verdict
    'equivalent'
    """
    question = Question(tuple(diffs), statistic, higher_is_better, margin)
    return _effect(question, _sequential(question, n_max, alpha), n_max)


def _step_down(
    questions: Mapping[Key, Question],
    alpha: float,
    correct: bool,
    test: Callable[[Question, float], Decision],
    claimed: Mapping[Key, Decision] | None = None,
) -> dict[Key, Decision]:
    """Holm's step-down with Shaffer's count: every open question is tested at ``alpha / h``, h the
    hypotheses that can still be true; repeat while new claims are made (``claimed``: claims already
    made, kept). A question with a margin holds two hypotheses that cannot both be true (no
    difference; a difference of at least the margin), so it counts once, before and after a claim;
    one without counts until claimed."""
    claimed = dict(claimed or {})
    while True:
        open_ = [key for key in questions if key not in claimed]
        held = len(open_) + sum(questions[key].margin is not None for key in claimed)
        level = alpha / held if correct and held else alpha
        found = {key: test(questions[key], level) for key in open_}
        newly = {key: d for key, d in found.items() if d.claimed}
        if not newly:
            return {key: claimed[key] if key in claimed else found[key] for key in questions}
        claimed |= newly


def decide_all(
    questions: Mapping[Key, Question], n_max: int, alpha: float = 0.05, correct: bool = True
) -> dict[Key, Decision]:
    """The sequential rule for a table's questions (both questions of every method) with Holm's
    step-down over all of them (:func:`_step_down`), each at its looks so far; ``correct=False``
    tests each at ``alpha``.

    >>> result = decide_all({"a": Question((1.1, 0.9, 1.0)), "b": Question((0.3, -0.2, 0.1))}, n_max=10)
    >>> result["a"].verdict, result["b"].verdict, result["b"].alpha
    ('better', 'futile', 0.05)
    """
    decisions = _step_down(questions, alpha, correct, lambda question, level: _sequential(question, n_max, level))
    return {key: _effect(questions[key], d, n_max) for key, d in decisions.items()}


def decide_fixed(questions: Mapping[Key, Question], alpha: float = 0.05, correct: bool = True) -> dict[Key, Decision]:
    """A fixed number of seeds: each question tested once on all its pairs (:func:`_fixed`), with the
    same step-down over the table's questions as :func:`decide_all`.

    >>> result = decide_fixed({"a": Question((1.1, 0.9, 1.0)), "b": Question((0.3, -0.2, 0.1))})
    >>> result["a"].verdict, round(result["a"].alpha, 3), result["b"].verdict
    ('better', 0.025, 'undecided')
    """
    decisions = _step_down(questions, alpha, correct, _fixed)
    return {key: _effect(questions[key], d, None) for key, d in decisions.items()}


def decide_rounds(
    questions: Mapping[tuple[str, str], Question], n_max: int, alpha: float = 0.05, correct: bool = True
) -> dict[tuple[str, str], Decision]:
    """``--seeds auto`` replayed from its seeds: questions keyed (method, question); round n (up to
    ``n_max``) reads every question's first n pairs, a method none of whose questions is open any more
    keeps the pairs it had, a claim is final and so is a futility stop (the question keeps the decision
    that stopped it unless a claim is made on the pairs it still gets). The last round's answer is the
    comparison's, however its seeds were run."""
    longest = min(n_max, max((len(q.diffs) for q in questions.values()), default=0))
    stopped: dict[str, int] = {}
    decisions: dict[tuple[str, str], Decision] = {}
    for n in range(FIRST_LOOK, longest + 1) or [longest]:
        seen = {key: replace(q, diffs=q.diffs[: stopped.get(key[0], n)]) for key, q in questions.items()}
        claimed = {key: d for key, d in decisions.items() if d.claimed}
        found = _step_down(seen, alpha, correct, lambda question, level: _sequential(question, n_max, level), claimed)
        decisions = {
            key: decisions[key] if key in decisions and decisions[key].verdict == "futile" and not d.claimed else d
            for key, d in found.items()
        }
        for method in {key[0] for key in questions} - set(stopped):
            if all(d.verdict != "undecided" for key, d in decisions.items() if key[0] == method):
                stopped[method] = n
    return {key: _effect(seen[key], d, n_max) for key, d in decisions.items()}


def detectable(pairs: int, sd: float, alpha: float = 0.05, power: float = POWER) -> float:
    """The smallest true mean difference a paired t test on ``pairs`` pairs with spread ``sd`` detects
    with ``power`` at two-sided ``alpha`` (noncentral t, ``scipy.stats.nct``).

    >>> round(detectable(10, 1.0), 2)  # 1 SD with 10 pairs
    1.0
    """
    from scipy import optimize, stats

    if pairs < 2 or sd <= 0:
        raise ValueError(f"detectable: pairs >= 2 and sd > 0, got {pairs} and {sd}")
    critical = stats.t.isf(alpha / 2, pairs - 1)

    def shortfall(effect: float) -> float:
        return _power(effect * math.sqrt(pairs), pairs - 1, critical) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-9)) * sd


def _power(noncentrality: float, df: int, critical: float) -> float:
    """Two-sided power of a t test: P(|T| >= critical) with T noncentral t."""
    from scipy import stats

    lower = float(stats.nct.cdf(-critical, df, noncentrality))  # scipy gives nan far in this tail: it is 0
    return float(stats.nct.sf(critical, df, noncentrality)) + (0.0 if math.isnan(lower) else lower)


def pairs_needed(diff: float, sd: float, alpha: float = 0.05, power: float = POWER) -> int | None:
    """The pairs a fixed-size paired t test needs to detect a true difference ``diff`` with ``power``
    at two-sided ``alpha`` (noncentral t); None when ``diff`` is zero (no number suffices). Beyond
    :data:`NORMAL_FROM` pairs, the normal closed form ``((z(1 - alpha/2) + z(power)) / effect)**2``.

    >>> pairs_needed(1.0, 1.0)
    10
    >>> pairs_needed(1e-4, 1.0)  # the closed form: no search up to 2**30 pairs
    784887974
    """
    from scipy import stats

    if sd <= 0:
        raise ValueError(f"pairs_needed: sd > 0, got {sd}")
    if diff == 0:
        return None
    effect = abs(diff) / sd

    def enough(n: int) -> bool:
        return _power(effect * math.sqrt(n), n - 1, float(stats.t.isf(alpha / 2, n - 1))) >= power

    low, high = 1, 2  # power grows with n: double until enough, then bisect (low never enough)
    while not enough(high):
        if high >= NORMAL_FROM:
            z = statistics.NormalDist().inv_cdf
            return math.ceil(((z(1 - alpha / 2) + z(power)) / effect) ** 2)
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def sizing(diffs: Sequence[float], alpha: float = 0.05) -> Sizing:
    """What the seeds of an undecided method say: the smallest difference they detect with 80 % power
    (at the observed spread of the differences) and the pairs needed to detect the observed mean (None: the
    mean is zero, to within :data:`ROUNDING` standard deviations).

    >>> sizing([0.4, -0.2, 0.6, 0.1])
    Sizing(pairs=4, detectable=0.744..., needed=21)
    """
    values = np.asarray(diffs, dtype=float)
    if len(values) < 2 or np.ptp(values) == 0:
        return Sizing(len(values), None, None)
    sd, mean = float(values.std(ddof=1)), float(values.mean())
    needed = None if abs(mean) <= ROUNDING * sd else pairs_needed(mean, sd, alpha)
    return Sizing(len(values), detectable(len(values), sd, alpha), needed)
