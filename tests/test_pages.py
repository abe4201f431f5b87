"""The report's HTML (compare/pages.py): the page around the table, the plots and the snippets, escaped.

The first test imports through ``layerwise.compare.report``, the path that gathers the report's parts."""

from layerwise.compare.pages import html_page, html_section
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


ROW = {
    "method": "<b>m</b>",
    "runs": 3,
    "failed": 0,
    "steps": 100.0,
    "wall_clock_s": 9.5,
    "budget_ratio": None,
    "speedup": 1.25,
    "metric": 0.8,
    "metric_std": 0.01,
    "time_to_target_s": None,
    "reached": 0,
    "target_ratio": None,
    "verdict": "open & noisy",
    "notes": "",
}


def test_a_section_escapes_every_text_and_links_its_plots_from_the_pages_folder(tmp_path):
    plots = [tmp_path / "one" / "train_loss.png", tmp_path / "one" / "forest.png"]
    text = html_section(
        "a < b",
        [ROW],
        "accuracy",
        plots,
        "x & y",
        snippets={"<label>": "if a < b: pass"},
        budget="steps",
        base=tmp_path,
        level=2,
        answer="- better <m> (+1.00 points).\n- Soonest to the target: no method compared.",
    )
    assert "<h2>a &lt; b</h2>" in text and "<td>&lt;b&gt;m&lt;/b&gt;</td>" in text and "<b>" not in text
    assert "<td>open &amp; noisy</td>" in text and "<th>speed-up vs baseline</th>" in text
    assert '<ul class="answer"><li>better &lt;m&gt; (+1.00 points).</li><li>Soonest' in text
    assert "<h3>Each method in a plain PyTorch loop</h3>" in text
    assert "<summary>&lt;label&gt;</summary><pre>if a &lt; b: pass</pre>" in text
    # the forest first (after the answer), then the setting, the table, and the other plots
    order = ['src="one/forest.png"', "<p>x &amp; y</p>", "<table>", 'src="one/train_loss.png"']
    assert [text.index(part) for part in order] == sorted(text.index(part) for part in order)
    assert "<figcaption>Training loss against step" in text


def test_a_section_without_an_answer_or_snippets_leaves_them_out_and_the_page_escapes_its_title():
    text = html_section("t", [], "loss", [])
    assert '<ul class="answer">' not in text and "plain PyTorch loop" not in text and "<h1>t</h1>" in text
    page = html_page("<t>", text)
    assert page.startswith("<!doctype html>") and "<title>&lt;t&gt;</title>" in page and page.count("<h1>t</h1>") == 1
