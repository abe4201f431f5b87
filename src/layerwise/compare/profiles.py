"""Several tasks, one score, the way AlgoPerf summarises workloads (Dahl et al. 2023).

Input: per task, per method, the median time to target over seeds (``math.inf`` on a miss; None,
or a method absent from a task: no finished run there, not run or failed). Performance ratio: a
method's time over the fastest method's time on that task. Performance profile: the share of the
tasks it ran with ratio <= tau. Benchmark score: the profile's area over [1, tau_max] divided by
tau_max - 1 (1: fastest on every task it ran; 0: never within tau_max of the fastest). A task
without a finished run of a method is left out of that method's profile and score, never counted
as a miss.

Examples:
    >>> times = {"a": {"base": 10.0, "fast": 5.0}, "b": {"base": 8.0, "fast": math.inf}}
    >>> ratios(times)["fast"]
    {'a': 1.0, 'b': inf}
    >>> round(score(ratios(times))["base"], 3)  # ratios 2 and 1: (2/3 + 3/3) / 2
    0.833
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..plotting import pyplot

__all__ = [
    "TAU_MAX",
    "Speedup",
    "line_styles",
    "plot_profile",
    "profile",
    "profile_figure",
    "ratios",
    "score",
    "speedups",
]

TAU_MAX = 4.0
"""The largest ratio the profile shows and its score integrates over (AlgoPerf's r_max)."""

Times = Mapping[str, Mapping[str, float | None]]
"""Task -> method -> median time to target (inf: missed; None: no finished run)."""

Ratios = dict[str, dict[str, float]]
"""Method -> task -> performance ratio (inf: missed), over the tasks the method ran."""


@dataclass(frozen=True)
class Speedup:
    """Geometric mean of baseline time over method time on the ``tasks`` where both reached, of the ``of``
    tasks both ran."""

    factor: float | None
    tasks: int
    of: int


def _methods(times: Times) -> list[str]:
    """Every method named on any task, in first-seen order."""
    return list(dict.fromkeys(method for per_task in times.values() for method in per_task))


def _ran(per_task: Mapping[str, float | None], method: str) -> bool:
    """Whether the method has a finished run on this task (a time, or a miss)."""
    return per_task.get(method) is not None


def ratios(times: Times) -> Ratios:
    """Each method's time over the fastest time on each task it ran (inf on a miss, or when every method
    missed); a method with no finished run anywhere is left out.

    >>> ratios({"a": {"x": 6.0, "y": 3.0}})
    {'x': {'a': 2.0}, 'y': {'a': 1.0}}
    >>> ratios({"a": {"x": 6.0, "y": 3.0}, "b": {"x": 4.0, "y": None}})["y"]  # y has no run on b
    {'a': 1.0}
    """
    result: Ratios = {}
    for method in _methods(times):
        ran = {task: per_task for task, per_task in times.items() if _ran(per_task, method)}
        if ran:
            result[method] = {task: _ratio(per_task, method) for task, per_task in ran.items()}
    return result


def _ratio(per_task: Mapping[str, float | None], method: str) -> float:
    """The method's time over the fastest finished time on the task (inf: it missed)."""
    fastest = min((t for t in per_task.values() if t is not None), default=math.inf)
    time = per_task[method]
    return time / fastest if math.isfinite(time) else math.inf


def profile(ratio: Ratios, taus: Sequence[float] | np.ndarray) -> dict[str, np.ndarray]:
    """rho_m(tau): the share of the tasks method m ran on which its ratio is at most tau, at each tau.

    >>> profile({"x": {"a": 2.0, "b": 1.0}}, [1.0, 2.0])["x"].tolist()
    [0.5, 1.0]
    """
    grid = np.asarray(taus, dtype=float)
    return {m: (np.array(list(by_task.values()))[:, None] <= grid).mean(axis=0) for m, by_task in ratio.items()}


def score(ratio: Ratios, tau_max: float = TAU_MAX) -> dict[str, float]:
    """AlgoPerf's benchmark score: the area under rho_m over [1, tau_max] divided by tau_max - 1,
    computed exactly (each task adds (tau_max - r) / (tau_max - 1) when its ratio r <= tau_max), over
    the tasks the method ran.

    >>> score({"x": {"a": 1.0, "b": 2.5}})
    {'x': 0.75}
    """
    return {
        method: float(np.mean([max(0.0, tau_max - r) / (tau_max - 1.0) for r in per_task.values()]))
        for method, per_task in ratio.items()
    }


def speedups(times: Times, baseline: str) -> dict[str, Speedup]:
    """Each method's geometric-mean speed-up over ``baseline`` (baseline time / method time), over the
    tasks where both reached the target; a miss on either side leaves that task out (``tasks`` < ``of``),
    and ``of`` counts the tasks both ran.

    >>> speedups({"a": {"b": 10.0, "m": 5.0}, "c": {"b": 9.0, "m": 4.5}}, "b")["m"]
    Speedup(factor=2.0, tasks=2, of=2)
    """
    result = {}
    for method in _methods(times):
        both = [per_task for per_task in times.values() if _ran(per_task, baseline) and _ran(per_task, method)]
        logs = [
            math.log(per_task[baseline] / per_task[method])
            for per_task in both
            if math.isfinite(per_task[baseline]) and math.isfinite(per_task[method])
        ]
        factor = math.exp(math.fsum(logs) / len(logs)) if logs else None
        result[method] = Speedup(factor, len(logs), len(both))
    return result


LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "P", "X")
"""The profile's lines: 4 styles times 7 markers, 28 methods before a (style, marker) pair repeats."""


def line_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Each method's (line style, marker), distinct for up to 28 methods (the style changes fastest).

    >>> line_styles(["a", "b", "c", "d", "e"])["e"]
    ('-', 's')
    """
    return {
        m: (LINE_STYLES[i % len(LINE_STYLES)], MARKERS[(i // len(LINE_STYLES)) % len(MARKERS)])
        for i, m in enumerate(methods)
    }


def profile_figure(ratio: Ratios, tau_max: float = TAU_MAX):
    """The performance profile's figure: every method's steps over [1, tau_max] with its own line style,
    marker and colour, its score in the legend, the legend outside the axes on the right."""
    plt = pyplot()
    taus = np.linspace(1.0, tau_max, 601)
    scores = score(ratio, tau_max)
    profiles = profile(ratio, taus)
    styles = line_styles(list(profiles))
    colors = (
        plt.cm.tab10(np.arange(len(profiles)) % 10)
        if len(profiles) <= 10
        else plt.cm.tab20(np.arange(len(profiles)) % 20)
    )
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for i, ((method, rho), color) in enumerate(zip(profiles.items(), colors)):
        style, marker = styles[method]
        ax.step(
            taus,
            rho,
            where="post",
            ls=style,
            marker=marker,
            markevery=(7 * i % 60, 60),  # each method's markers at other taus, so they do not hide each other
            ms=5,
            lw=1.6,
            color=color,
            label=f"{method} ({scores[method]:.2f})",
        )
    ax.set_xlabel("tau (time over the fastest method's)")
    ax.set_ylabel("share of tasks with ratio <= tau")
    ax.set_xlim(1.0, tau_max)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(
        title="method (score)",
        title_fontsize=8,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )
    fig.tight_layout()
    return fig


def plot_profile(ratio: Ratios, path: str | Path, tau_max: float = TAU_MAX) -> Path:
    """Draw every method's performance profile (:func:`profile_figure`) and save it as PNG."""
    fig = profile_figure(ratio, tau_max)
    fig.savefig(path)
    pyplot().close(fig)
    return Path(path)
