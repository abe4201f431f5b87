"""The comparison's report: a results table (terminal and markdown), PNG plots and an HTML page.

``outcomes`` maps each method's label to ``{"records": [...], "errors": [...]}`` (one record per
finished seed, as :func:`layerwise.compare.runner.run_one` returns it).

Example:
    >>> rows = summarize({"baseline": {"records": [rec0, rec1], "errors": []}})  # doctest: +SKIP
    >>> print(markdown_table(rows, "accuracy"))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ..plotting import _pyplot

__all__ = ["markdown_table", "plot_all", "summarize", "write_html"]

Outcomes = dict[str, dict[str, list]]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(outcomes: Outcomes, baseline: str = "baseline") -> list[dict[str, Any]]:
    """One row per method: runs, mean wall-clock, speed-up vs ``baseline``, metric mean and std."""
    base_wall = _mean_std([r["wall_clock_s"] for r in outcomes.get(baseline, {}).get("records", [])])[0]
    rows = []
    for label, outcome in outcomes.items():
        records, errors = outcome["records"], outcome["errors"]
        wall = _mean_std([r["wall_clock_s"] for r in records])[0]
        metric, metric_std = _mean_std([r["test_metric"] for r in records])
        diverged = sum(r["diverged_at"] is not None for r in records)
        notes = []
        if diverged:
            notes.append(f"{diverged} diverged")
        notes.extend(f"failed: {e.splitlines()[-1] if e else ''}"[:160] for e in errors)
        rows.append(
            {
                "method": label,
                "runs": len(records),
                "failed": len(errors),
                "wall_clock_s": wall,
                "speedup": base_wall / wall if base_wall and wall else None,
                "metric": metric,
                "metric_std": metric_std,
                "final_train_loss": _mean_std([r["final_train_loss"] for r in records])[0],
                "notes": "; ".join(notes),
            }
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The results as a markdown table (also readable in a terminal)."""
    scale, unit = (100.0, " %") if metric == "accuracy" else (1.0, "")
    lines = [
        f"| method | runs | wall-clock (s) | speed-up vs baseline | test {metric}{unit} (mean ± std) "
        "| final train loss | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row["metric"] is None:
            metric_text = "—"
        else:
            spec = ".2f" if metric == "accuracy" else ".4g"
            metric_text = f"{row['metric'] * scale:{spec}} ± {row['metric_std'] * scale:{spec}}"
        failed = f" (+{row['failed']} failed)" if row["failed"] else ""
        lines.append(
            f"| {row['method']} | {row['runs']}{failed} "
            f"| {_fmt(row['wall_clock_s'], '.1f')} | {_fmt(row['speedup'], '.2f')} | {metric_text} "
            f"| {_fmt(row['final_train_loss'], '.4f')} | {row['notes']} |"
        )
    return "\n".join(lines)


def _colors(plt, count: int):
    return plt.cm.tab10(np.arange(count) % 10)


def _metric_vs_time(plt, outcomes: Outcomes, metric: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for color, (label, outcome) in zip(_colors(plt, len(outcomes)), outcomes.items()):
        curves = [r["curve"] for r in outcome["records"] if r["curve"]]
        if not curves:
            continue
        points = min(len(c) for c in curves)
        seconds = np.mean([[p["seconds"] for p in c[:points]] for c in curves], 0)
        values = np.array([[p[f"test_{metric}"] for p in c[:points]] for c in curves], float)
        ax.errorbar(seconds, values.mean(0), yerr=values.std(0), marker="o", ms=4, capsize=3, label=label, color=color)
    ax.set_xlabel("training wall-clock (s), evaluation excluded")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"test {metric} vs wall-clock (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
    ax.legend(fontsize=8)
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
        ax.invert_yaxis()
        ax.set_xlim(0, total)
        ax.set_xlabel("step (bar: trainable; blue groups then frozen)", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle("freeze timeline", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_all(outcomes: Outcomes, metric: str, out: Path) -> list[Path]:
    """Write the comparison's PNG plots into ``out``; returns their paths."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metric_vs_wallclock.png", out / "train_loss.png", out / "lr_by_group.png"]
    _metric_vs_time(plt, outcomes, metric, paths[0])
    _train_loss(plt, outcomes, paths[1])
    _lr(plt, outcomes, paths[2])
    if _freeze(plt, outcomes, out / "freeze_timeline.png"):
        paths.append(out / "freeze_timeline.png")
    return paths


def write_html(
    path: Path, title: str, rows: list[dict[str, Any]], metric: str, plots: list[Path], notes: str = ""
) -> Path:
    """One page with the results table and the plots (paths relative to the page)."""
    scale = 100.0 if metric == "accuracy" else 1.0
    head = ["method", "runs", "wall-clock (s)", "speed-up", f"test {metric}", "± std", "final train loss", "notes"]
    body = []
    for row in rows:
        cells = [
            row["method"],
            f"{row['runs']}" + (f" (+{row['failed']} failed)" if row["failed"] else ""),
            _fmt(row["wall_clock_s"], ".1f"),
            _fmt(row["speedup"], ".2f"),
            _fmt(None if row["metric"] is None else row["metric"] * scale, ".4g"),
            _fmt(None if row["metric_std"] is None else row["metric_std"] * scale, ".2g"),
            _fmt(row["final_train_loss"], ".4f"),
            row["notes"],
        ]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    images = "\n".join(
        f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.stem)}'
        "</figcaption></figure>"
        for p in plots
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,td:last-child{{text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(notes)}</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>
{chr(10).join(body)}
</table>
{images}
</body></html>
"""
    path.write_text(page)
    return path
