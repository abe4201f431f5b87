"""Built-in studies: a fixed set of variants on fixed tasks, several seeds, and a statistical reading.

``llr``: L. N. Smith's thought experiment on layer learning rates. Under four global policies
(step drops x0.1 at 50/75/90 %, 1cycle, triangular cycles (CLR) and a constant LR), layer
multipliers are uniform, first-layers-high (1.5 -> 0.5 across depth, reversing linearly by the
end) or the opposite (0.5 -> 1.5, reversing); besides, a staggered 1cycle per group (with equal,
and with per-group maxima 1.5 -> 0.5 and minima), and gradual unfreezing head-first and
input-first under cosine; on a plain CNN and on the same network with residual connections (a
ResNet). Every variant is compared with uniform multipliers under the same policy (staggered with
uniform 1cycle, unfreezing with uniform cosine), seed s with seed s, as ``layerwise compare`` judges
a table: final test accuracy by the paired t (equivalent within 0.5 points by TOST) and steps to a
target accuracy by the paired t on log steps (Wilcoxon's signed rank when a seed misses), both
questions of every variant corrected together by Holm's rule.

Examples:
    $ layerwise study llr --seeds 3
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..tasks import TaskData, get_task
from ..tasks.base import split_examples
from .measures import ACCURACY
from .request import VariantSpec
from .session import CompareConfig, compare_variants
from .stats import Decision, Question, decide_fixed
from .targets import check_margin, decision_label, verdict_questions

__all__ = ["LLR_MODELS", "llr_variants", "run_study"]

LLR_MODELS = {"plain CNN": "fashion-mnist-plain", "ResNet": "fashion-mnist"}
"""Study label -> task: the same network without and with residual shortcuts."""

TARGET_FRACTION = 0.98
"""Steps to target: the first evaluation reaching this fraction of the reference's mean final accuracy."""


def llr_variants() -> list[VariantSpec]:
    """The llr study's variants; the first of each policy is its reference (uniform multipliers)."""
    variants: list[VariantSpec] = []
    for policy in ("step", "onecycle", "triangular", "constant"):
        variants += [
            (f"{policy} uniform", "baseline", {"policy": policy}),
            (f"{policy} first-high", "llr", {"policy": policy, "first": 1.5, "last": 0.5}),
            (f"{policy} first-low", "llr", {"policy": policy, "first": 0.5, "last": 1.5}),
        ]
    spread = {"first_high": 1.5, "last_high": 0.5, "first_low": 0.06, "last_low": 0.02}
    variants += [
        ("staggered 1cycle", "staggered", {}),
        ("staggered 1cycle, per-group min/max", "staggered", spread),
        ("cosine uniform", "baseline", {"policy": "cosine"}),
        ("unfreezing head-first", "gradual-unfreezing", {}),
        ("unfreezing input-first", "gradual-unfreezing", {"order": "input-first"}),
    ]
    return variants


def _reference(label: str) -> str:
    """Each variant's reference: uniform multipliers under the same global policy."""
    for prefix, reference in (("staggered", "onecycle"), ("unfreezing", "cosine")):
        if label.startswith(prefix):
            return f"{reference} uniform"
    return f"{label.split()[0]} uniform"


def _steps_to(record: dict[str, Any], target: float) -> int | None:
    return next((point["step"] for point in record["curve"] if point["test_accuracy"] >= target), None)


def _finals(records: list[dict[str, Any]]) -> dict[int, float | None]:
    """Final test accuracy by seed (runs stored before seeds were: their position)."""
    return {record.get("seed", i): record["test_metric"] for i, record in enumerate(records)}


def _steps(records: list[dict[str, Any]], target: float) -> dict[int, int | None]:
    """Steps to ``target`` by seed (None: never reached)."""
    return {record.get("seed", i): _steps_to(record, target) for i, record in enumerate(records)}


def _target(outcomes: dict[str, dict[str, list]], label: str) -> float:
    """The target of a variant's steps: a fraction of its reference's mean final accuracy (inf: no run)."""
    finals = [v for v in _finals(outcomes.get(_reference(label), {}).get("records", [])).values() if v is not None]
    return TARGET_FRACTION * statistics.fmean(finals) if finals else math.inf


def _questions(outcomes: dict[str, dict[str, list]], margin: float | None) -> dict[tuple[str, str], Question]:
    """Both questions of every variant against its reference, paired by seed, keyed (variant, question):
    ``accuracy`` (equivalent within ``margin`` points, default 0.5) and ``steps`` to the reference's target."""
    questions = {}
    for label, outcome in outcomes.items():
        reference = _reference(label)
        if label == reference or reference not in outcomes:
            continue
        target, records = _target(outcomes, label), outcomes[reference]["records"]
        steps = _steps(outcome["records"], target), _steps(records, target)
        asked = verdict_questions(_finals(outcome["records"]), _finals(records), *steps, ACCURACY, margin)
        for question, key in (("accuracy", "accuracy"), ("speed", "steps")):
            if asked[question] is not None:
                questions[(label, key)] = asked[question]
    return questions


def _effect(question: str, decision: Decision) -> str:
    """A decision's effect with its test's interval: accuracy points, or steps over the reference's
    (the steps question's differences are log(reference steps / variant steps))."""
    if question == "accuracy":
        diff, low, high = (value * ACCURACY.scale for value in (decision.diff, decision.low, decision.high))
        return f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"
    low, high = (math.exp(-max(-50.0, min(50.0, v))) for v in (decision.high, decision.low))
    return f"{math.exp(-decision.diff):.2f}x [{low:.2f}, {high:.2f}]"


STEPS_VERDICTS = {"better": "fewer steps", "worse": "more steps"}
ACCURACY_VERDICTS = {"better": "better final accuracy", "worse": "worse final accuracy"}
"""How the claims of a difference read."""


def _cells(question: str, decision: Decision | None) -> str:
    """A question's two table cells: the effect and the verdict with the test that made it."""
    if decision is None:
        return "— | too few paired seeds"
    verdict = STEPS_VERDICTS.get(decision.verdict, decision.verdict) if question == "steps" else decision.verdict
    return f"{_effect(question, decision)} | {verdict} ({decision_label(decision)})"


def _reach_text(steps: list[int | None]) -> str:
    """The mean steps to target of the runs that reached it, and how many did."""
    reached = [s for s in steps if s is not None]
    return f"{statistics.fmean(reached):.0f} ({len(reached)}/{len(steps)})" if reached else f"— (0/{len(steps)})"


def _analyse(
    outcomes: dict[str, dict[str, list]], margin: float | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The study's table and its findings: every variant's questions decided together (:func:`decide_fixed`,
    Holm's correction over all of them); ``margin``: the accuracy question's equivalence margin in points."""
    questions = _questions(outcomes, margin)
    decisions = decide_fixed(questions)
    lines = [
        "| variant | runs | final test accuracy % | vs reference: diff [interval] | | steps to target "
        "(reached) | vs reference: steps ratio [interval] | |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    findings = []
    for label, outcome in outcomes.items():
        mine = [r["test_metric"] for r in outcome["records"] if r["test_metric"] is not None]
        steps = list(_steps(outcome["records"], _target(outcomes, label)).values())
        mean = f"{100 * statistics.fmean(mine):.2f} ± {100 * statistics.stdev(mine):.2f}" if len(mine) > 1 else "—"
        head = f"| {label} | {len(mine)} | {mean} |"
        if label == _reference(label):
            lines.append(f"{head} reference | | {_reach_text(steps)} | | |")
            continue
        judged = {question: decisions.get((label, question)) for question in ("accuracy", "steps")}
        accuracy, speed = (_cells(question, decision) for question, decision in judged.items())
        lines.append(f"{head} {accuracy} | {_reach_text(steps)} | {speed} |")
        findings.append(
            {
                "variant": label,
                "reference": _reference(label),
                "target": _target(outcomes, label),
                **{q: None if d is None else {**asdict(d), "effect": _effect(q, d)} for q, d in judged.items()},
                "reached": sum(s is not None for s in steps),
                "runs": len(steps),
            }
        )
    return lines, findings


def _summary(model: str, findings: list[dict[str, Any]]) -> str:
    claims = [
        f"{f['variant']} vs {f['reference']}: {words[f[key]['verdict']]} ({f[key]['effect']})"
        for f in findings
        for key, words in (("accuracy", ACCURACY_VERDICTS), ("steps", STEPS_VERDICTS))
        if f[key] is not None and f[key]["verdict"] in words
    ]
    if not claims:
        return (
            f"**{model}: no variant differs from uniform multipliers** in final accuracy or in steps to the "
            "target (paired by seed, both questions of every variant corrected together by Holm's rule); with "
            "this many seeds a small effect cannot be ruled out."
        )
    return f"**{model}: decided differences** (Holm over every variant's two questions) — " + "; ".join(claims) + "."


def run_study(
    name: str,
    *,
    seeds: int = 3,
    epochs: int | None = None,
    train_size: int | None = None,
    quick: bool = False,
    out: str | Path | None = None,
    progress: bool = True,
    test_size: int | None = 2000,
    margin: float | None = None,
) -> dict[str, Any]:
    """Run a built-in study (``llr``); writes ``study.md`` and one comparison report per model in ``out``.

    ``test_size``: evaluations use the first this many test images (10 evaluations per run; None or 0: all).
    ``margin``: a variant within this many accuracy points of its reference is equivalent (default 0.5).
    """
    if name != "llr":
        raise ValueError(f"--study: unknown {name!r}; choose from ['llr']")
    check_margin(margin, ACCURACY)
    out = Path(out or f"runs/study-{name}")
    train_size = train_size or (None if quick else 10000)
    tested = f"the first {test_size}" if test_size else "all the"
    sections = [
        "# Smith's layer learning rates, run for real",
        "",
        f"Fashion-MNIST, {seeds} seeds per variant, {epochs or ('quick' if quick else 2)} epoch(s) on "
        f"{train_size or 'the quick slice of'} training images, test accuracy on {tested} test images, "
        f"evaluated 10 times per run. Target for 'steps to target': {TARGET_FRACTION:.0%} of the reference's "
        "mean final accuracy (reference: uniform multipliers under the same policy; staggered 1cycle against "
        "uniform 1cycle). "
        "Differences are variant minus reference, seed s against seed s, each with the interval of the test "
        "that decided it at its level after Holm's correction over both questions of every variant; "
        f"equivalent: within ±{margin or ACCURACY.margin:g} points.",
    ]
    results = {}
    for model, task_name in LLR_MODELS.items():
        task = get_task(task_name)
        data = task.load_data(None, quick)
        data = TaskData(data.train, split_examples(data.test, test_size or None))
        config = CompareConfig(epochs=epochs, train_size=train_size, quick=quick, eval_points=10, budget="steps")
        report = compare_variants(
            task,
            llr_variants(),
            config=config,
            seeds=seeds,
            out=out / task_name,
            progress=progress,
            title=f"llr study: {model}",
            data=data,
            note="Verdicts here are against the first variant; study.md compares each variant with uniform "
            "multipliers under its own policy.",
        )
        lines, findings = _analyse(report["outcomes"], margin)
        results[model] = findings
        sections += [
            "",
            f"## {model} (`{task_name}`; report: {task_name}/report.html)",
            "",
            *lines,
            "",
            _summary(model, findings),
        ]
    text = "\n".join(sections) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text)
    return {"text": text, "findings": results, "path": out / "study.md"}
