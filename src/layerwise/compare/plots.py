"""The comparison's PNG plots: the forest plot (the answer in one picture), the test metric against
wall-clock with its Pareto frontier (:func:`pareto_front`), the training loss, each group's learning
rate, the freeze timeline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..plotting import legend, pyplot
from .measures import Metric, metric_of
from .verdicts import AA_LABEL, Outcomes

__all__ = ["FOREST_MARKS", "forest_rows", "pareto_front", "plot_all", "plot_forest"]


def _colors(plt, count: int):
    """One distinct colour per method: tab10 up to 10 methods, tab20 up to 20 (a comparison with peers)."""
    if count <= 10:
        return plt.cm.tab10(np.arange(count))
    return plt.cm.tab20(np.arange(count) % 20)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[tuple[float, float]]:
    """The points no other point beats in both time (lower) and metric, sorted by time.

    Examples:
        >>> pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9)])
        [(1.0, 0.5), (3.0, 0.9)]
    """
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []
    for seconds, value in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if not front or sign * value > sign * front[-1][1]:
            front.append((seconds, value))
    return front


def _metric_vs_time(plt, outcomes: Outcomes, metric: Metric, path: Path, target: float | None) -> None:
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    scale, key = metric.scale, f"test_{metric.name}"
    means: list[tuple[float, float]] = []
    for color, (label, outcome) in zip(_colors(plt, len(outcomes)), outcomes.items()):
        curves = [r["curve"] for r in outcome["records"] if r["curve"]]
        if not curves:
            continue
        for curve in curves:
            ax.plot(
                [p["seconds"] for p in curve],
                [p[key] * scale for p in curve],
                color=color,
                alpha=0.25,
                lw=0.8,
            )
        points = min(len(c) for c in curves)
        seconds = np.mean([[p["seconds"] for p in c[:points]] for c in curves], 0)
        values = np.mean([[p[key] for p in c[:points]] for c in curves], 0) * scale
        ax.plot(seconds, values, marker="o", ms=3.5, lw=2.2, color=color, label=label)
        means += list(zip(seconds.tolist(), values.tolist()))
    if target is not None:
        ax.axhline(target * scale, color="black", ls=":", lw=1.2, label="target")
    front = pareto_front(means, metric.higher_is_better)
    if front:
        ax.step(*zip(*front), where="post", color="black", lw=1.0, ls="--", alpha=0.7, label="Pareto frontier")
    if metric.percent and means:  # the interesting part: from a little below the worst final mean up
        finals = [v for _, v in means]
        ax.set_ylim(max(0.0, np.percentile(finals, 10) - 5), min(100.0, max(finals) + 2))
    ax.set_xlabel("training wall-clock (s), evaluation excluded")
    ax.set_ylabel(f"test {metric.name}" + (" (%)" if metric.percent else ""))
    ax.set_title(f"test {metric.name} vs wall-clock (each seed faint, mean bold)")
    ax.grid(alpha=0.3)
    legend(ax, loc="lower right" if metric.higher_is_better else "upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _train_loss(plt, outcomes: Outcomes, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for color, (label, outcome) in zip(_colors(plt, len(outcomes)), outcomes.items()):
        traces = [np.array([np.nan if v is None else v for v in r["train_loss"]], float) for r in outcome["records"]]
        if not traces:
            continue
        steps = min(len(t) for t in traces)
        mean = np.nanmean(np.stack([t[:steps] for t in traces]), 0)
        window = max(1, steps // 50)
        smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, label=label, color=color, lw=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_yscale("log")
    ax.set_title("training loss vs step (mean over seeds)")
    ax.grid(alpha=0.3)
    legend(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _grid(plt, count: int, height: float = 2.6):
    cols = min(3, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height * rows), dpi=100, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def _lr(plt, outcomes: Outcomes, path: Path) -> None:
    shown = {label: o["records"][0] for label, o in outcomes.items() if o["records"]}
    fig, axes = _grid(plt, max(1, len(shown)))
    for ax, (label, record) in zip(axes, shown.items()):
        names = list(record["lr"])
        colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(names))))
        for color, name in zip(colors, names):
            ax.plot(record["lr_steps"], record["lr"][name], color=color, lw=1.1)
        ax.set_title(f"{label} ({len(names)} groups)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("each group's LR over time (first seed; colour: first group dark -> last group light)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _freeze(plt, outcomes: Outcomes, path: Path) -> bool:
    shown = {label: o["records"][0] for label, o in outcomes.items() if o["records"] and o["records"][0]["frozen_at"]}
    if not shown:
        return False
    fig, axes = _grid(plt, len(shown), height=3.2)
    for ax, (label, record) in zip(axes, shown.items()):
        names, total = record["groups"], record["steps"]
        ends = [record["frozen_at"].get(name, total) for name in names]
        ax.barh(
            range(len(names)),
            ends,
            color=["tab:blue" if name in record["frozen_at"] else "tab:green" for name in names],
        )
        ax.set_yticks(range(len(names)), names, fontsize=6)
        for decision in record.get("freeze_decisions", []):  # AutoFreeze: the signal that froze the group
            row = names.index(decision["group"])
            text = f" {decision['change']:.2g} < {decision['threshold']:.2g}"
            ax.text(decision["step"], row, text, va="center", fontsize=5)
        ax.invert_yaxis()
        ax.set_xlim(0, total)
        ax.set_xlabel("step (bar: trainable; blue groups then frozen)", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle("freeze timeline", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_all(outcomes: Outcomes, metric: Metric | str, out: Path, target: float | None = None) -> list[Path]:
    """Write the comparison's PNG plots into ``out``; returns their paths."""
    metric = metric_of(metric)
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metric_vs_wallclock.png", out / "train_loss.png", out / "lr_by_group.png"]
    _metric_vs_time(plt, outcomes, metric, paths[0], target)
    _train_loss(plt, outcomes, paths[1])
    _lr(plt, outcomes, paths[2])
    if _freeze(plt, outcomes, out / "freeze_timeline.png"):
        paths.append(out / "freeze_timeline.png")
    return paths


FOREST_MARKS = {
    "better": ("better", "^", "#1a9850"),
    "worse": ("worse", "v", "#d73027"),
    "equivalent": ("equivalent", "s", "#4575b4"),
    "undecided": ("open", "o", "#737373"),
    "futile": ("open (stopped)", "X", "#737373"),
    None: ("not judged", "D", "#bdbdbd"),
}
"""A forest row's mark by its accuracy verdict: the word printed beside it, its marker and colour
(the word and the marker keep it readable in greyscale)."""


def forest_rows(rows: list[dict[str, Any]], metric: Metric | str) -> list[dict[str, Any]]:
    """The forest plot's rows: each judged method's paired difference from the baseline in the metric's
    display units, the interval of the test that decided its accuracy question, and its mark."""
    scale = metric_of(metric).scale
    out = []
    for row in rows:
        if row["tests"] is None or row["method"] == AA_LABEL:
            continue
        accuracy = row["tests"]["accuracy"]
        decision = accuracy["decision"] or {}
        values = [decision.get(k) for k in ("diff", "low", "high")]
        diff, low, high = (None if v is None or not math.isfinite(v) else v * scale for v in values)
        mark = FOREST_MARKS[accuracy["verdict"]][0]
        out.append({"method": row["method"], "diff": diff, "low": low, "high": high, "mark": mark})
    return out


def plot_forest(rows: list[dict[str, Any]], metric: Metric | str, margin: float | None, path: Path) -> Path | None:
    """The answer in one picture: one row per method, its difference from the baseline with the deciding
    test's interval, marked better / worse / equivalent / open, the margin (in the metric's stored
    units) a band around zero; None when no method was judged."""
    metric = metric_of(metric)
    data = forest_rows(rows, metric)
    if not data:
        return None
    plt = pyplot()
    scale, unit = metric.scale, metric.unit
    marks = {label: (marker, color) for label, marker, color in FOREST_MARKS.values()}
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.45 * len(data)), dpi=110)
    if margin:
        band = margin * scale
        ax.axvspan(-band, band, color="#e0e0e0", zorder=0, label=f"equivalence margin ±{band:g} {unit}")
    ax.axvline(0.0, color="black", lw=0.8)
    for y, item in enumerate(data):
        marker, color = marks[item["mark"]]
        if item["low"] is not None and item["high"] is not None:
            ax.hlines(y, item["low"], item["high"], color=color, lw=2.2)
        if item["diff"] is not None:
            ax.plot(item["diff"], y, marker=marker, ms=9, color=color, mec="black", ls="none")
        ax.annotate(item["mark"], (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=9)
    ax.set_yticks(range(len(data)), [item["method"] for item in data])
    ax.set_ylim(len(data) - 0.5, -0.5)
    ax.set_xlabel(f"test {metric.name}, method minus baseline ({unit}), paired by seed")
    ax.set_title("against the baseline, with the interval of the test that decided it", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if margin:
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
