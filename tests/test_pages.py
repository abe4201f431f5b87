"""The report's HTML (compare/pages.py): the page around the table, the plots and the snippets, escaped.

The first test imports through ``layerwise.compare.report``, the path that gathers the report's parts."""

from layerwise.compare.report import plot_all, summarize, write_html
from summary_records import time_budget_outcomes as _outcomes


def test_plots_and_page(tmp_path):
    outcomes = _outcomes()
    summary = summarize(outcomes, metric="accuracy")
    plots = plot_all(outcomes, "accuracy", tmp_path, target=summary["target"])
    assert [p.name for p in plots] == ["metric_vs_wallclock.png", "train_loss.png", "lr_by_group.png"]
    assert all(p.stat().st_size > 1000 for p in plots)
    page = write_html(
        tmp_path / "report.html", "t", summary["rows"], "accuracy", plots, "notes", snippets={"fast": "opt = 1 < 2"}
    ).read_text()
    assert "Pareto frontier" in page and "train s / budget" in page and "x sooner" in page
    assert "<pre>opt = 1 &lt; 2</pre>" in page and 'src="metric_vs_wallclock.png"' in page
