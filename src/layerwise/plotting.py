"""Schedule plots (matplotlib, from the ``plot`` or ``bench`` extra).

Examples:
    >>> from layerwise.plotting import plot_schedule
    >>> plot_schedule([[1.0, 0.5], [0.5, 1.0]], ["conv", "fc"], "lr.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["legend", "plot_schedule", "plot_telemetry", "pyplot"]


def pyplot():
    """matplotlib's ``pyplot`` on the non-interactive Agg backend (an ImportError saying how to install it)."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'layerwise[plot]' (or pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LEGEND_INSIDE = 6
"""A plot with more labelled lines than this has its legend beside the axes, off the curves."""


def legend(ax: Any, **inside: Any) -> None:
    """``ax``'s legend: inside (at ``inside``'s place) for a few lines, beside the axes for many, none for none."""
    labels = ax.get_legend_handles_labels()[1]
    if not labels:
        return
    if len(labels) <= LEGEND_INSIDE:
        ax.legend(fontsize=8, **inside)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def plot_schedule(
    lr: Sequence[Sequence[float]] | np.ndarray,
    names: Sequence[str],
    path: str | Path,
    *,
    frozen_at: Sequence[int | None] | None = None,
    title: str = "learning rate per group",
    xlabel: str = "step",
) -> Path:
    """Draw every group's LR over the run (one curve per group) and save it as PNG.

    Args:
        lr: shape (groups, steps).
        names: one legend entry per group.
        frozen_at: per group, the step from which its LR stays 0 (marked with a dot).
    """
    table = np.asarray(lr, dtype=float)
    if table.ndim != 2 or table.shape[0] != len(names):
        raise ValueError(f"lr: expected shape (len(names)={len(names)}, steps), got {table.shape}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    steps = np.arange(table.shape[1])
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(names)))
    for g, (row, name) in enumerate(zip(table, names)):
        ax.plot(steps, row, label=name, color=colors[g], lw=1.6)
        if frozen_at is not None and frozen_at[g] is not None:
            ax.plot([frozen_at[g]], [0.0], "o", color=colors[g], ms=5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, len(names) // 20), loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


_LOG_SCALED = {"lr", "grad_norm", "weight_norm", "relative_update", "adam_step"}


def _telemetry_rows(values: dict[str, list], groups: Sequence[str], pick: int | None) -> np.ndarray:
    """Groups x samples; quantile lists reduced to entry ``pick``; missing values are NaN."""
    rows = []
    for name in groups:
        row = [np.nan if v is None else (v[pick] if isinstance(v, list) else v) for v in values[name]]
        rows.append(np.asarray(row, dtype=float))
    return np.stack(rows) if rows else np.zeros((0, 0))


def plot_telemetry(data: dict, out: str | Path, title: str = "") -> list[Path]:
    """One PNG per quantity of a :class:`~layerwise.telemetry.LayerMonitor` record: a heatmap
    (groups x time) above one line per group. ``adam_step`` shows its middle quantile."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps, groups = np.asarray(data["steps"]), data["groups"]
    middle = len(data.get("quantiles", [0.5])) // 2
    paths = []
    for quantity, values in data["history"].items():
        table = _telemetry_rows(values, groups, middle if quantity == "adam_step" else None)
        if table.size == 0 or np.all(np.isnan(table)):
            continue
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), dpi=100, height_ratios=(1, 1))
        positive = table[np.isfinite(table) & (table > 0)]
        log = quantity in _LOG_SCALED and positive.size and positive.min() < positive.max()
        norm = LogNorm(positive.min(), positive.max()) if log else None
        image = top.imshow(
            np.where(table > 0, table, np.nan) if log else table,
            aspect="auto",
            norm=norm,
            cmap="viridis",
            interpolation="nearest",
            extent=(steps[0], steps[-1] if len(steps) > 1 else steps[0] + 1, len(groups) - 0.5, -0.5),
        )
        top.set_yticks(range(len(groups)), groups, fontsize=max(4, 9 - len(groups) // 8))
        top.set_xlabel("step")
        fig.colorbar(image, ax=top)
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(groups)))
        for color, name, row in zip(colors, groups, table):
            bottom.plot(steps, row, color=color, lw=1.1, label=name)
        if log:
            bottom.set_yscale("log")
        bottom.set_xlabel("step")
        bottom.set_ylabel(quantity + (" (median)" if quantity == "adam_step" else ""))
        bottom.grid(alpha=0.3)
        if len(groups) <= 12:
            bottom.legend(fontsize=7, ncol=2)
        fig.suptitle(f"{title} {quantity} per group (first group dark)".strip(), fontsize=10)
        fig.tight_layout()
        path = out / f"{quantity}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
