"""The comparison's HTML: one section per comparison (the answer, its setting, the table, the plots with
their captions, each method's snippet) and the page around one or several sections."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from .measures import Budget, Metric, budget_of, metric_of
from .tables import table_cells, table_head

__all__ = ["CAPTIONS", "html_page", "html_section", "write_html"]


CAPTIONS = {
    "forest": "The answer in one picture: each method's test metric minus the baseline's, paired by seed, with the "
    "interval of the test that decided it (the sequential boundary's under --seeds auto); marked better (triangle "
    "up), worse (triangle down), equivalent (square) or open (circle; a cross when stopped for futility); the grey "
    "band is the equivalence margin.",
    "metric_vs_wallclock": "Test metric against training wall-clock: every seed faint, the mean bold; the dotted line "
    "is the target, the dashed line the Pareto frontier (the best metric reached by any method at each time).",
    "train_loss": "Training loss against step (moving average, mean over seeds).",
    "lr_by_group": "Every group's learning rate over the run (first seed).",
    "freeze_timeline": "When each group froze (bar: trainable); for AutoFreeze, the gradient-norm change that froze it "
    "against the percentile of the groups still training.",
}


def html_section(
    title: str,
    rows: list[dict[str, Any]],
    metric: Metric | str,
    plots: list[Path],
    notes: str = "",
    *,
    snippets: dict[str, str] | None = None,
    budget: Budget | str = "time",
    base: Path | None = None,
    level: int = 1,
    answer: str = "",
) -> str:
    """The body of one comparison's report: heading, the answer, setting, table, plots, snippets.

    ``base``: the folder the page lives in (image paths are relative to it; default: the plots' folder).
    """
    metric, budget = metric_of(metric), budget_of(budget)
    head = table_head(metric, budget)
    body = [
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in table_cells(row, metric, budget)) + "</tr>"
        for row in rows
    ]

    def src(p: Path) -> str:
        return html.escape(str(p.relative_to(base)) if base is not None else p.name)

    def figure(p: Path) -> str:
        return (
            f'<figure><img src="{src(p)}" alt="{html.escape(p.stem)}">'
            f"<figcaption>{html.escape(CAPTIONS.get(p.stem, p.stem))}</figcaption></figure>"
        )

    forest = "".join(figure(p) for p in plots if p.stem == "forest")
    images = "\n".join(figure(p) for p in plots if p.stem != "forest")
    code = "".join(
        f"<details><summary>{html.escape(label)}</summary><pre>{html.escape(text)}</pre></details>"
        for label, text in (snippets or {}).items()
    )
    code = f"<h{level + 1}>Each method in a plain PyTorch loop</h{level + 1}>{code}" if code else ""
    answered = "".join(f"<li>{html.escape(line.removeprefix('- '))}</li>" for line in answer.splitlines())
    answered = f'<ul class="answer">{answered}</ul>' if answered else ""
    return f"""<h{level}>{html.escape(title)}</h{level}>
{answered}
{forest}
<p>{html.escape(notes)}</p>
<div class="scroll"><table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>
{chr(10).join(body)}
</table></div>
{images}
{code}"""


def html_page(title: str, sections: str) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px;line-height:1.4}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}}th{{background:#f3f3f3}}
td:first-child,td:nth-last-child(-n+2){{text-align:left}}td:nth-last-child(2){{min-width:16em}}
.scroll{{overflow-x:auto}}img{{max-width:100%}}figure{{margin:1.5em 0}}figcaption{{color:#444;font-size:90%}}
pre{{background:#f6f8fa;padding:0.8em;overflow-x:auto;font-size:85%}}summary{{cursor:pointer;margin:0.3em 0}}</style>
</head>
<body>
{sections}
</body></html>
"""


def write_html(
    path: Path,
    title: str,
    rows: list[dict[str, Any]],
    metric: Metric | str,
    plots: list[Path],
    notes: str = "",
    *,
    snippets: dict[str, str] | None = None,
    budget: Budget | str = "time",
    answer: str = "",
) -> Path:
    """One page with the answer, the results table, the plots and each method's snippet (paths relative to the page)."""
    section = html_section(title, rows, metric, plots, notes, snippets=snippets, budget=budget, answer=answer)
    path.write_text(html_page(title, section))
    return path
