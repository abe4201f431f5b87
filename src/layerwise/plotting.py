"""Schedule plots (matplotlib, from the ``plot`` or ``bench`` extra).

Example:
    >>> from layerwise.plotting import plot_schedule
    >>> plot_schedule([[1.0, 0.5], [0.5, 1.0]], ["conv", "fc"], "lr.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_schedule"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'layerwise[plot]' (or pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
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
