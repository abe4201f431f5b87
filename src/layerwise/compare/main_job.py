"""The main job (``make main`` = ``layerwise compare``): two regimes at equal wall-clock, one report.

* From scratch: the Fashion-MNIST ResNet (``fashion-mnist``): the baseline, FreezeOut and SecantLR,
  eight paired seeds of 150 steps.
* Fine-tuning: ImageNet-pretrained EfficientNet-Lite0 on Fashion-MNIST (``effnet-finetune``): full
  fine-tuning against Multirate (fast = head) and discriminative LRs, four paired seeds.

Each regime is a :func:`~layerwise.compare.session.compare` into its own folder (``scratch/``,
``finetune/``, each resumable); ``report.html`` and ``results.md`` put both in one page. The whole
job takes about 14 minutes on a 2-core CPU, set-up included, inside its 15-minute budget
(BENCHMARKS.md: what it decides).

Examples:
    >>> from layerwise.compare.main_job import run_main
    >>> result = run_main(out="runs/compare", quick=True)  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..tasks import resolve_task
from .profiles import TAU_MAX, plot_profile, ratios, score, speedups
from .report import AA_LABEL, html_page, html_section
from .session import check_request, run_request

__all__ = [
    "REGIME_RUNS",
    "SMOKE_SUMMARY",
    "RegimeRun",
    "check_tasks",
    "run_main",
    "run_sections",
    "run_tasks",
    "summarize_tasks",
]


@dataclass(frozen=True)
class RegimeRun:
    """One section of the main job: a task, its folder, the options that size it for the budget (left out
    with ``quick``, which takes the task's quick slice) and the methods it runs when the user names none
    (None: the regime's default set)."""

    heading: str
    task: str
    folder: str
    options: Mapping[str, Any]
    why: str
    methods: tuple[str, ...] | None = None


REGIME_RUNS = (
    RegimeRun(
        "From scratch: small ResNet on Fashion-MNIST",
        "fashion-mnist",
        "scratch",
        {"test_size": 2000, "eval_points": 4, "train_size": 9600, "seeds": 8},
        "9,600 training images x 2 epochs (150 steps of 128) train in about 11 s here, and 4 evaluations of 2,000 "
        "test images stay under a second each: three methods x 8 paired seeds fit about 6 minutes. Eight seeds of "
        "three methods, not four seeds of more: from scratch the methods differ by 0-2.4 points while one seed "
        "varies by about 1.3, so four pairs decide nothing here (2026-12-07) and eight can. Hi-DLR and the other "
        "methods of the regime run with --task fashion-mnist --seeds auto (README).",
        ("baseline", "freezeout", "secant"),
    ),
    RegimeRun(
        "Fine-tuning: ImageNet-pretrained EfficientNet-Lite0 on Fashion-MNIST",
        "effnet-finetune",
        "finetune",
        {"test_size": 1000, "eval_points": 4, "train_size": 2400, "seeds": 4},
        "32x32 inputs (a quarter of the pixels of 64x64) and 2,400 training images x 2 epochs (150 steps of 32) "
        "keep full fine-tuning near 25 s here, and 4 evaluations of 1,000 test images (2 s each) keep the "
        "evaluations short: three methods x 4 paired seeds fit about 6 minutes; the pretrained features still "
        "transfer at this size. The other methods of the regime run with --task effnet-finetune --seeds auto.",
        ("baseline", "multirate", "discriminative"),
    ),
)
"""The main job's two regimes, in report order."""


def run_main(
    *,
    out: str | Path = "runs/compare",
    methods: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run both regimes (``options``: as :func:`compare`, applied to each, over the regime's own) and report.

    ``methods`` and ``settings`` are used in both regimes (default: each regime's own default set).
    Returns ``{"sections": [...], "summary", "paths": {...}, "minutes"}``.
    """
    return run_sections(REGIME_RUNS, "layerwise: the main job", out=out, methods=methods, settings=settings, **options)


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """``--tasks A,B,...``: at least two distinct registered tasks (or task files), checked before anything loads."""
    names = [t.strip() for t in tasks if t.strip()]
    repeated = sorted({t for t in names if names.count(t) > 1})
    if len(names) < 2 or repeated:
        raise ValueError(f"--tasks: two or more distinct tasks, comma-separated, got {list(tasks)}")
    for name in names:
        resolve_task(name)  # unknown: one line naming the task and the choices
    return names


def run_tasks(
    tasks: Sequence[str],
    *,
    out: str | Path = "runs/compare-tasks",
    methods: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One comparison per task (each its own baseline, budget and target), then AlgoPerf's summary over them."""
    runs = [RegimeRun(name, name, re.sub(r"[^A-Za-z0-9_.-]+", "_", name), {}, "") for name in check_tasks(tasks)]
    return run_sections(runs, "layerwise: several tasks", out=out, methods=methods, settings=settings, **options)


def run_sections(
    runs: Sequence[RegimeRun],
    heading: str,
    *,
    out: str | Path,
    methods: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Every section's comparison (all requests checked before the first trains), one report with the summary."""
    out = Path(out)
    start = time.perf_counter()
    requests = [
        check_request(
            run.task,
            methods if methods is not None else run.methods,
            settings=_settings_for(run, methods, settings, runs),
            **{**({} if options.get("quick") else run.options), **options, "out": out / run.folder},
        )
        for run in runs
    ]
    sections = []
    for run, request in zip(runs, requests):
        result = run_request(request)
        sections.append({"regime": run, "heading": run.heading, "task": request.task.name, **result})
    minutes = (time.perf_counter() - start) / 60
    summary = SMOKE_SUMMARY if options.get("quick") else summarize_tasks(sections, out)
    _write(out, heading, sections, summary, minutes)
    return {
        "sections": sections,
        "summary": summary,
        "paths": {"markdown": out / "results.md", "html": out / "report.html"},
        "minutes": minutes,
    }


SMOKE_SUMMARY: Mapping[str, Any] = {
    "table": "Smoke run (--quick): no summary over the tasks; a few steps per run say nothing about speed.",
    "plot": None,
}
"""The summary of a ``--quick`` job: none (its runs are too short for times to target to mean anything)."""


def _settings_for(
    run: RegimeRun,
    methods: Sequence[str] | None,
    settings: Mapping[str, Mapping[str, Any]] | None,
    runs: Sequence[RegimeRun],
) -> Mapping[str, Mapping[str, Any]] | None:
    """The ``--set`` settings of the methods ``run`` compares: where each section runs its own set, a
    setting for a method of another section is that section's (one compared by no section is refused)."""
    if settings is None or methods is not None or run.methods is None:
        return settings
    compared = {name for each in runs for name in (each.methods or ())}
    stray = sorted(set(settings) - compared)
    if stray and all(each.methods is not None for each in runs):
        raise ValueError(f"--set: settings for methods that are not compared: {stray}; compared: {sorted(compared)}")
    return {name: values for name, values in settings.items() if name in run.methods or name in stray}


def summarize_tasks(sections: Sequence[Mapping[str, Any]], out: Path) -> dict[str, Any]:
    """AlgoPerf's summary over the sections' tasks: per task and method the median time to target
    (a miss: infinite; no finished run, not run or failed: left out of that method's profile and score,
    with a note), performance ratios, the profile's score, speed-ups over the baseline, and the profile
    plot (``out/performance_profile.png``)."""
    times = {
        section["task"]: {row["method"]: _median_time(row) for row in section["rows"] if row["method"] != AA_LABEL}
        for section in sections
    }
    ratio = ratios(times)
    scores = score(ratio)
    ups = speedups(times, "baseline")
    columns = [f"{task}: median s to target (ratio)" for task in times]
    lines = ["| method | " + " | ".join([*columns, "score", "speed-up over baseline"]) + " |"]
    lines.append("|---|" + "---:|" * (len(times) + 2))
    for method in dict.fromkeys(m for per_task in times.values() for m in per_task):
        ran = ratio.get(method, {})
        cells = [_time_cell(times[task], method, ran.get(task)) for task in times]
        up = ups.get(method)
        speed = "—" if up is None or up.factor is None else f"{up.factor:.2f}x ({up.tasks} of {up.of} tasks)"
        rated = "—" if method not in scores else f"{scores[method]:.2f}" + _share(len(ran), len(times))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {rated} | {speed} |")
    plot = plot_profile(ratio, out / "performance_profile.png")
    table = "\n".join(lines)
    return {"times": times, "ratios": ratio, "scores": scores, "speedups": ups, "table": table, "plot": plot}


def _median_time(row: Mapping[str, Any]) -> float | None:
    """A row's median time to target: inf on a miss, None without a finished run (not run or failed)."""
    if row["runs"] == 0:
        return None
    return math.inf if row["time_to_target_s"] is None else row["time_to_target_s"]


def _share(ran: int, tasks: int) -> str:
    """The tasks a score rests on, when the method has no finished run on some."""
    return "" if ran == tasks else f" (over the {ran} of {tasks} tasks it ran)"


def _time_cell(per_task: Mapping[str, float | None], method: str, ratio: float | None) -> str:
    if method not in per_task:
        return "not run"
    seconds = per_task[method]
    if seconds is None:
        return "no finished run"
    return "missed" if math.isinf(seconds) else f"{seconds:.1f} ({ratio:.2f})"


def _write(
    out: Path, heading: str, sections: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], minutes: float
) -> None:
    """``results.md`` and ``report.html``: the summary over tasks first, then every section."""
    intro = (
        f"Every section in {minutes:.1f} minutes. Over the tasks, as AlgoPerf scores workloads: each method's median "
        "time to its task's target (a miss is infinite), its ratio to the fastest method there, the performance "
        f"profile's normalised area over ratios 1 to {TAU_MAX:g} (the score: 1 is fastest everywhere), and the "
        "geometric-mean speed-up over the baseline where both reached. A task where a method has no finished run "
        "(not run, or failed) is left out of its profile and score, never counted as a miss."
    )
    if summary["plot"] is None:  # a smoke run: its note instead of the summary
        markdown = [f"# {heading}", "", summary["table"], ""]
        html_parts = [f"<h1>{html.escape(heading)}</h1><p>{html.escape(summary['table'])}</p>"]
    else:
        figure = "![performance profile](performance_profile.png)"
        markdown = [f"# {heading}", "", intro, "", summary["table"], "", figure, ""]
        html_parts = [
            f"<h1>{html.escape(heading)}</h1><p>{html.escape(intro)}</p>",
            _html_table(summary["table"]),
            '<figure><img src="performance_profile.png" alt="performance profile"></figure>',
        ]
    for section in sections:
        regime = section["regime"]
        why = f"Why this size: {regime.why}" if regime.why else ""
        markdown += [
            f"## {regime.heading}",
            "",
            section["answer"],
            "",
            section["setting"],
            "",
            *([why, ""] if why else []),
            section["table"],
            "",
            f"Details, plots and each method's code: `{regime.folder}/report.html`.",
            "",
        ]
        html_parts.append(
            html_section(
                regime.heading,
                section["rows"],
                section["metric"],
                section["paths"]["plots"],
                f"{section['setting']} {why}".strip(),
                snippets=section["snippets"],
                budget=section["budget"],
                base=out,
                level=2,
                answer=section["answer"],
            )
        )
    (out / "results.md").write_text("\n".join(markdown))
    (out / "report.html").write_text(html_page(heading, "\n".join(html_parts)))


def _html_table(markdown: str) -> str:
    """A markdown table (header, rule, rows) as HTML."""
    rows = [line.strip("|").split(" | ") for line in markdown.splitlines()]
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in rows[2:])
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
