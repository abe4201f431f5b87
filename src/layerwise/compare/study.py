"""Built-in studies: a fixed set of variants on fixed tasks, several seeds, and a statistical reading.

``llr``: L. N. Smith's thought experiment on layer learning rates. Under four global policies
(step drops x0.1 at 50/75/90 %, 1cycle, triangular cycles (CLR) and a constant LR), layer
multipliers are uniform, first-layers-high (1.5 -> 0.5 across depth, reversing linearly by the
end) or the opposite (0.5 -> 1.5, reversing); besides, a staggered 1cycle per group (with equal,
and with per-group maxima 1.5 -> 0.5 and minima), and gradual unfreezing head-first and
input-first under cosine; on a plain CNN and on the same network with residual connections (a
ResNet). Every variant is compared with uniform multipliers under the same policy (staggered with
uniform 1cycle, unfreezing with uniform cosine): final test accuracy and steps to a target
accuracy, each as a mean difference with a 95 % confidence interval and Welch's t-test.

Examples:
    $ layerwise compare --study llr --seeds 3
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ..tasks import TaskData, get_task
from ..tasks.base import split_examples
from .session import CompareConfig, Variant, compare_variants
from .stats import welch

__all__ = ["LLR_MODELS", "llr_variants", "run_study", "welch"]

LLR_MODELS = {"plain CNN": "fashion-mnist-plain", "ResNet": "fashion-mnist"}
"""Study label -> task: the same network without and with residual shortcuts."""

TARGET_FRACTION = 0.98
"""Steps to target: the first evaluation reaching this fraction of the reference's mean final accuracy."""


def llr_variants() -> list[Variant]:
    """The llr study's variants; the first of each policy is its reference (uniform multipliers)."""
    variants: list[Variant] = []
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


def _verdict(test: dict[str, float | None]) -> str:
    if test["p"] is None:
        return "too few runs"
    return "significant (p < 0.05)" if test["p"] < 0.05 else "no significant difference"


def _ci(test: dict[str, Any] | None, scale: float = 1.0, spec: str = ".2f") -> tuple[str, str]:
    """A comparison as table cells: the difference with its interval, and the verdict."""
    if test is None:
        return "reference", ""
    if test["diff"] is None:
        return "—", "too few runs"
    return (
        f"{test['diff'] * scale:+{spec}} [{test['low'] * scale:+{spec}}, {test['high'] * scale:+{spec}}]",
        f"{_verdict(test)}, p = {test['p']:.2g}",
    )


def _analyse(outcomes: dict[str, dict[str, list]]) -> tuple[list[str], list[dict[str, Any]]]:
    finals = {
        label: [r["test_metric"] for r in o["records"] if r["test_metric"] is not None] for label, o in outcomes.items()
    }
    lines = [
        "| variant | runs | final test accuracy % | vs reference: diff [95 % CI] | | steps to target "
        "(reached) | vs reference: diff [95 % CI] | |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    findings = []
    for label, outcome in outcomes.items():
        reference = _reference(label)
        ref_final = finals.get(reference) or []
        target = TARGET_FRACTION * statistics.fmean(ref_final) if ref_final else math.inf
        steps = [_steps_to(r, target) for r in outcome["records"]]
        ref_steps = [_steps_to(r, target) for r in outcomes[reference]["records"]] if reference in outcomes else []
        reached = [s for s in steps if s is not None]
        mine = finals[label]
        acc = welch(mine, ref_final) if label != reference else None
        speed = (
            welch([float(s) for s in reached], [float(s) for s in ref_steps if s is not None])
            if label != reference
            else None
        )
        mean = f"{100 * statistics.fmean(mine):.2f} ± {100 * statistics.stdev(mine):.2f}" if len(mine) > 1 else "—"
        step_text = (
            f"{statistics.fmean(reached):.0f} ({len(reached)}/{len(steps)})" if reached else f"— (0/{len(steps)})"
        )

        acc_ci, acc_v = _ci(acc, 100.0)
        speed_ci, speed_v = _ci(speed, 1.0, ".0f")
        lines.append(f"| {label} | {len(mine)} | {mean} | {acc_ci} | {acc_v} | {step_text} | {speed_ci} | {speed_v} |")
        if label != reference:
            findings.append(
                {
                    "variant": label,
                    "reference": reference,
                    "target": target,
                    "accuracy": acc,
                    "steps": speed,
                    "reached": len(reached),
                    "runs": len(steps),
                }
            )
    return lines, findings


def _summary(model: str, findings: list[dict[str, Any]]) -> str:
    significant = [
        f
        for f in findings
        if any(t is not None and t["p"] is not None and t["p"] < 0.05 for t in (f["accuracy"], f["steps"]))
    ]
    if not significant:
        return (
            f"**{model}: no variant differs significantly from uniform multipliers** in final accuracy or in steps "
            "to the target (Welch's t-test, 95 %); with this many seeds a small effect cannot be ruled out."
        )
    parts = []
    for f in significant:
        for what, test, unit in (("final accuracy", f["accuracy"], 100.0), ("steps to target", f["steps"], 1.0)):
            if test is not None and test["p"] is not None and test["p"] < 0.05:
                parts.append(
                    f"{f['variant']} vs {f['reference']}: {what} {test['diff'] * unit:+.2f} (p = {test['p']:.2g})"
                )
    return f"**{model}: significant differences** — " + "; ".join(parts) + "."


def run_study(
    name: str,
    *,
    seeds: int = 3,
    epochs: int | None = None,
    train_size: int | None = None,
    quick: bool = False,
    out: str | Path | None = None,
    progress: bool = True,
    test_size: int = 2000,
) -> dict[str, Any]:
    """Run a built-in study (``llr``); writes ``study.md`` and one comparison report per model in ``out``.

    ``test_size``: evaluations use the first this many test images (10 evaluations per run).
    """
    if name != "llr":
        raise ValueError(f"--study: unknown {name!r}; choose from ['llr']")
    out = Path(out or f"runs/study-{name}")
    train_size = train_size or (None if quick else 10000)
    sections = [
        "# Smith's layer learning rates, run for real",
        "",
        f"Fashion-MNIST, {seeds} seeds per variant, {epochs or ('quick' if quick else 2)} epoch(s) on "
        f"{train_size or 'the quick slice of'} training images, test accuracy on the first {test_size} test images, "
        f"evaluated 10 times per run. Target for 'steps to target': {TARGET_FRACTION:.0%} of the reference's "
        "mean final accuracy (reference: uniform multipliers under the same policy; staggered 1cycle against "
        "uniform 1cycle). "
        "Differences are variant minus reference, with 95 % Welch confidence intervals.",
    ]
    results = {}
    for model, task_name in LLR_MODELS.items():
        task = get_task(task_name)
        data = task.load_data(None, quick)
        data = TaskData(data.train, split_examples(data.test, test_size))
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
        lines, findings = _analyse(report["outcomes"])
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
