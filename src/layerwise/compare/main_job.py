"""The main job (``make main`` = ``layerwise compare``): two regimes at equal wall-clock, one report.

* From scratch: the Fashion-MNIST ResNet (``fashion-mnist``), the methods that make sense there.
* Fine-tuning: ImageNet-pretrained EfficientNet-Lite0 on Fashion-MNIST (``effnet-finetune``):
  full fine-tuning against head only, discriminative LRs, gradual unfreezing, FreezeOut,
  Multirate (fast = head; head + last block) and Hi-DLR.

Each regime is a :func:`~layerwise.compare.session.compare` into its own folder (``scratch/``,
``finetune/``, each resumable); ``report.html`` and ``results.md`` put both in one page. The whole
job takes 8 to 13 minutes on a 2-core CPU, inside its 15-minute budget (BENCHMARKS.md: what it buys).

Examples:
    >>> from layerwise.compare.main_job import run_main
    >>> result = run_main(out="runs/compare", quick=True)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import html_page, html_section
from .session import check_request, compare_variants

__all__ = ["REGIME_RUNS", "RegimeRun", "run_main"]


@dataclass(frozen=True)
class RegimeRun:
    """One section of the main job: a task, its folder and the options that size it for the budget."""

    heading: str
    task: str
    folder: str
    options: Mapping[str, Any]
    why: str


REGIME_RUNS = (
    RegimeRun(
        "From scratch: small ResNet on Fashion-MNIST",
        "fashion-mnist",
        "scratch",
        {"test_size": 2000},
        "the task's 16,000 training images x 2 epochs (250 steps of 128) train in about 11 s here, and 2,000 "
        "test images keep each of the 10 evaluations under a second, so seven methods fit about 3 minutes.",
    ),
    RegimeRun(
        "Fine-tuning: ImageNet-pretrained EfficientNet-Lite0 on Fashion-MNIST",
        "effnet-finetune",
        "finetune",
        {"test_size": 1000, "eval_points": 6},
        "32x32 inputs (a quarter of the pixels of 64x64) and 4,000 training images x 2 epochs (250 steps of 32) "
        "keep full fine-tuning near 22 s here, and 6 evaluations of 1,000 test images keep the evaluations short, "
        "so eight methods fit about 5 minutes; the pretrained features still transfer at this size (head only "
        "reaches about 75 %).",
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
    Returns ``{"sections": [...], "paths": {...}, "minutes"}``.
    """
    out = Path(out)
    start = time.perf_counter()
    requests = [  # every regime's request is checked before the first one trains
        check_request(
            regime.task, methods, settings=settings, **{**regime.options, **options, "out": out / regime.folder}
        )
        for regime in REGIME_RUNS
    ]
    sections = []
    for regime, request in zip(REGIME_RUNS, requests):
        result = compare_variants(**request)
        sections.append({"regime": regime, "heading": regime.heading, **result})
    minutes = (time.perf_counter() - start) / 60
    markdown = ["# layerwise: the main job", "", f"Both regimes in {minutes:.1f} minutes.", ""]
    html_parts = [f"<h1>layerwise: the main job</h1><p>Both regimes in {minutes:.1f} minutes on this machine.</p>"]
    for section in sections:
        regime = section["regime"]
        markdown += [
            f"## {regime.heading}",
            "",
            section["answer"],
            "",
            section["setting"],
            "",
            f"Why this size: {regime.why}",
            "",
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
                f"{section['setting']} Why this size: {regime.why}",
                snippets=section["snippets"],
                budget=section["budget"],
                base=out,
                level=2,
                answer=section["answer"],
            )
        )
    (out / "results.md").write_text("\n".join(markdown))
    (out / "report.html").write_text(html_page("layerwise: the main job", "\n".join(html_parts)))
    return {
        "sections": sections,
        "paths": {"markdown": out / "results.md", "html": out / "report.html"},
        "minutes": minutes,
    }
