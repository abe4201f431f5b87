"""The statistics of a verdict: paired differences over seeds, time to target with misses, Holm's
correction, the group-sequential rule of ``--seeds auto`` and the seeds an open question needs.

The method card, docs/verdicts.md, states what each test assumes. Every difference is the method
minus the baseline, in the metric's own units; ``higher_is_better`` says which sign wins. Welch's
unpaired test stays the fallback when the seeds of the two sides differ.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

__all__ = [
    "Adjusted",
    "Comparison",
    "Decision",
    "Reach",
    "Sizing",
    "boundary",
    "compare_seeds",
    "compare_times",
    "decide",
    "decide_all",
    "detectable",
    "holm",
    "log_ratios",
    "paired",
    "pairs_needed",
    "reach",
    "sizing",
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
    """The sequential rule's answer: ``verdict`` "better", "worse" or "undecided"; ``look`` the pairs at
    which the path crossed (None: never); ``value`` the ``statistic`` ("t": paired t, "signed rank":
    Wilcoxon's standardised signed-rank sum) there (else at the last look); ``critical`` the boundary
    at that look; ``level`` the nominal two-sided level of a look; ``alpha`` the rule's error rate."""

    verdict: str
    statistic: str
    pairs: int
    look: int | None
    value: float | None
    critical: float | None
    level: float
    alpha: float


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
    """Pair the two sides' values by seed (None: an unfinished run, left out): the paired comparison
    when both have the same seeds and at least 2 of them, else Welch's unpaired test (``test="welch"``).

    >>> compare_seeds({0: 0.85, 1: 0.84, 2: 0.86}, {0: 0.80, 1: 0.81}).test
    'welch'
    """
    mine = {seed: v for seed, v in method.items() if v is not None}
    base = {seed: v for seed, v in baseline.items() if v is not None}
    if mine.keys() == base.keys() and len(mine) >= 2:
        seeds = sorted(mine)
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


def _ranked(ratios: Sequence[float]) -> list[float]:
    """The ratios with every infinity replaced by a finite value beyond all others: the same ranks."""
    finite = [abs(r) for r in ratios if math.isfinite(r)]
    beyond = 2.0 * max(finite, default=1.0) + 1.0
    return [r if math.isfinite(r) else math.copysign(beyond, r) for r in ratios]


def _signed_rank_p(ratios: Sequence[float]) -> float:
    """Wilcoxon's two-sided signed-rank p-value (scipy); 1 when every pair ties."""
    from scipy import stats

    values = _ranked(ratios)
    if not any(values):
        return 1.0
    with warnings.catch_warnings():  # ties or zeros: scipy warns and uses the normal approximation
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


STATISTICS = ("t", "signed rank")
"""The statistics of the sequential rule: the paired t (accuracy) and the signed rank (times with misses)."""


@cache
def boundary(n_max: int, alpha: float = 0.05, statistic: str = "t") -> tuple[float, tuple[float, ...]]:
    """The group-sequential boundary at looks 3..``n_max`` pairs, such that under no difference some
    look crosses with probability ``alpha`` (Monte Carlo, 100,000 paths, fixed seed): the nominal
    two-sided level of a look and the critical |statistic| of each look. Pocock's rule: for the paired
    t a constant nominal level (each look's t has its own degrees of freedom), for the signed rank
    (standardised, nearly normal) a constant critical value.

    >>> level, critical = boundary(3)
    >>> round(level, 3), len(critical)  # one look: the plain paired t test
    (0.05, 1)
    """
    from scipy import stats

    if n_max < FIRST_LOOK or statistic not in STATISTICS:
        raise ValueError(f"boundary: n_max >= {FIRST_LOOK} and a statistic of {STATISTICS}, got {n_max}, {statistic!r}")
    looks = np.arange(FIRST_LOOK, n_max + 1)
    paths = np.random.default_rng(20240733).standard_normal((BOUNDARY_SIMULATIONS, n_max))
    if statistic == "signed rank":
        largest = np.abs(np.stack([_signed_rank_z(paths[:, :n]) for n in looks], axis=1)).max(axis=1)
        critical = _smallest_crossing(largest, alpha)
        return float(2 * stats.norm.sf(critical)), (critical,) * len(looks)
    if len(looks) == 1:
        level = alpha
    else:
        t = _t_paths(paths)[:, looks - 1]
        level = float(np.quantile((2 * stats.t.sf(np.abs(t), looks - 1)).min(axis=1), alpha))
    return level, tuple(float(c) for c in stats.t.isf(level / 2, looks - 1))


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
    from scipy import stats

    n = diffs.shape[1]
    ranks = stats.rankdata(np.abs(diffs), axis=1)
    positive = (ranks * ((diffs > 0) + 0.5 * (diffs == 0))).sum(axis=1)
    return (positive - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)


def _path(diffs: Sequence[float], statistic: str) -> np.ndarray:
    """The statistic at each look 3, 4, ... of these differences in seed order."""
    values = np.asarray(_ranked(diffs), dtype=float)[None, :]
    if statistic == "t":
        return _t_paths(values)[0, FIRST_LOOK - 1 :]
    return np.array([_signed_rank_z(values[:, :n])[0] for n in range(FIRST_LOOK, values.shape[1] + 1)])


def decide(
    diffs: Sequence[float], n_max: int, alpha: float = 0.05, higher_is_better: bool = True, statistic: str = "t"
) -> Decision:
    """The sequential rule on paired differences in seed order: better or worse once the statistic of
    any look (3, 4, ... pairs, up to the ones given) crosses the boundary for looks up to ``n_max`` at
    ``alpha``, else undecided. Looking again after each added seed keeps the error rate at ``alpha``.
    For times use ``statistic="signed rank"`` on :func:`log_ratios` (misses are infinite).

    >>> decide([1.1, 0.9, 1.0, 1.2], n_max=10).verdict
    'better'
    >>> decide([0.3, -0.2, 0.1], n_max=10).verdict
    'undecided'
    """
    if len(diffs) > n_max:
        raise ValueError(f"decide: at most n_max={n_max} pairs, got {len(diffs)}")
    level, critical = boundary(n_max, alpha, statistic)
    if len(diffs) < FIRST_LOOK:
        return Decision("undecided", statistic, len(diffs), None, None, None, level, alpha)
    path = _path(diffs, statistic)
    for look, (value, c) in enumerate(zip(path, critical), start=FIRST_LOOK):
        if abs(value) >= c:
            wins = (value > 0) == higher_is_better
            return Decision("better" if wins else "worse", statistic, len(diffs), look, float(value), c, level, alpha)
    return Decision("undecided", statistic, len(diffs), None, float(path[-1]), critical[len(path) - 1], level, alpha)


def decide_all(
    diffs: Mapping[str, Sequence[float]],
    n_max: int,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    statistic: str = "t",
    correct: bool = True,
) -> dict[str, Decision]:
    """The sequential rule for several methods against one baseline with Holm's step-down: while k
    methods are decided, every other one is tested with the boundary at ``alpha / (m - k)`` (at all
    its looks so far), until no more is decided; ``correct=False`` tests each at ``alpha``.

    >>> result = decide_all({"a": [1.1, 0.9, 1.0], "b": [0.3, -0.2, 0.1]}, n_max=10)
    >>> result["a"].verdict, result["b"].verdict, result["b"].alpha
    ('better', 'undecided', 0.05)
    """
    decisions: dict[str, Decision] = {}
    while True:
        open_ = [name for name in diffs if name not in decisions]
        level = alpha / len(open_) if correct and open_ else alpha
        found = {name: decide(diffs[name], n_max, level, higher_is_better, statistic) for name in open_}
        newly = {name: d for name, d in found.items() if d.verdict != "undecided"}
        if not newly:
            return {name: decisions.get(name, found.get(name)) for name in diffs}
        decisions |= newly


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
    at two-sided ``alpha`` (noncentral t); None when ``diff`` is zero (no number suffices).

    >>> pairs_needed(1.0, 1.0)
    10
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
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def sizing(diffs: Sequence[float], alpha: float = 0.05) -> Sizing:
    """What the seeds of an undecided method say: the smallest difference they detect with 80 % power
    (at the observed spread of the differences) and the pairs needed to detect the observed mean.

    >>> sizing([0.4, -0.2, 0.6, 0.1])
    Sizing(pairs=4, detectable=0.744..., needed=21)
    """
    values = np.asarray(diffs, dtype=float)
    if len(values) < 2 or np.ptp(values) == 0:
        return Sizing(len(values), None, None)
    sd = float(values.std(ddof=1))
    return Sizing(len(values), detectable(len(values), sd, alpha), pairs_needed(float(values.mean()), sd, alpha))
