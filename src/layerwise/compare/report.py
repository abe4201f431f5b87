"""The comparison's report, from its parts: the verdicts (:mod:`.verdicts`), the answer and results table
(:mod:`.tables`), the PNG plots (:mod:`.plots`) and the HTML page (:mod:`.pages`).

This module only gathers their public names, the ones a comparison's session and the main job write
the report with.

``outcomes`` maps each method's label to ``{"records": [...], "errors": [...]}`` (one record per
finished seed, as :func:`layerwise.compare.runner.run_one` returns it).

Examples:
    >>> import tempfile
    >>> from layerwise.compare import compare
    >>> result = compare("ellipse", ["baseline", "hidlr"], budget="steps", out=tempfile.mkdtemp(),
    ...                  progress=False)  # doctest: +SKIP
    >>> print(markdown_table(summarize(result["outcomes"], metric="loss")["rows"], "loss"))  # doctest: +SKIP
"""

from __future__ import annotations

from .pages import html_page, html_section, write_html
from .plots import forest_rows, pareto_front, plot_all, plot_forest
from .tables import SMOKE, answer, markdown_table, smoke_rows
from .verdicts import AA_LABEL, budget_seconds, hardware_gap, load_gap, summarize

__all__ = [
    "AA_LABEL",
    "SMOKE",
    "answer",
    "budget_seconds",
    "forest_rows",
    "hardware_gap",
    "html_page",
    "html_section",
    "load_gap",
    "markdown_table",
    "pareto_front",
    "plot_all",
    "plot_forest",
    "smoke_rows",
    "summarize",
    "write_html",
]
