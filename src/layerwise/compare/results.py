"""A comparison's report: ``results.md`` (the answer first, then the setting in words, the table and each
method's lines for a plain loop), its plots and ``report.html``, from the last round's summary
(:func:`~layerwise.compare.report.summarize`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .measures import metric_of
from .methods import METHODS, OPTIMIZER_USES, Build, method_snippet
from .pages import write_html
from .plots import plot_all, plot_forest
from .request import Request
from .tables import SMOKE, answer, markdown_table, smoke_rows
from .targets import margin_of, scale_of
from .verdicts import AA_LABEL

__all__ = ["PACED_SNIPPET", "write_report"]

Outcomes = dict[str, dict[str, list]]
"""Each label's finished ``records`` and the ``errors`` of the others."""

PACED_SNIPPET = (
    "# paced by its clock in the comparison (its schedules followed its share of the time budget);\n"
    "# in a plain loop, the same schedules over the steps it took:\n"
)
"""The first lines of a snippet of a run that a time budget paced (:mod:`.budget`)."""


def write_report(
    request: Request, counts: Mapping[str, int], outcomes: Outcomes, summary: Mapping[str, Any]
) -> dict[str, Any]:
    """``results.md`` (the answer first), the plots and ``report.html`` from the last round's ``summary``
    (``counts``: each label's seeds); the report's parts."""
    task, config, out = request.task, request.config, request.out
    rows, target_value = summary["rows"], summary["target"]
    rows = smoke_rows(rows) if config.quick else rows
    table = markdown_table(rows, task.metric, budget=config.budget)
    title = request.options.title or f"layerwise compare: {task.name}"
    verdicts = "" if config.quick else " " + _verdicts_text(rows, request, task.metric)
    setting = _setting_text(request, counts, outcomes, target_value) + verdicts
    setting += f" {request.options.note}" if request.options.note else ""
    snippets = _snippets(request, rows)
    answered = SMOKE if config.quick else answer(rows, task.metric, config.budget)
    if request.seeds.most is not None and not config.quick:
        answered += "\n" + _race_text(request, counts, rows)
    (out / "results.md").write_text(
        f"# {title}\n\n{answered}\n\n{setting}\n\n{table}\n\n{_snippets_markdown(snippets)}"
    )
    margin = margin_of(task.metric, request.judging.margin)
    forest = None if config.quick else plot_forest(rows, task.metric, margin, out / "forest.png")
    plots = [*([forest] if forest else []), *plot_all(outcomes, task.metric, out, target=target_value)]
    html_path = write_html(
        out / "report.html",
        title,
        rows,
        task.metric,
        plots,
        setting,
        snippets=snippets,
        budget=config.budget,
        answer=answered,
    )
    return {
        "answer": answered,
        "rows": rows,
        "table": table,
        "setting": setting,
        "target": target_value,
        "snippets": snippets,
        "metric": task.metric,
        "budget": config.budget,
        "paths": {"markdown": out / "results.md", "html": html_path, "plots": plots, "runs": out / "runs"},
    }


def _race_text(request: Request, counts: Mapping[str, int], rows: Sequence[Mapping[str, Any]]) -> str:
    """Under ``--seeds auto``: the runs made against every method to the seed cap, and what stays open."""
    most, max_runs = request.seeds.most, request.judging.max_runs
    assert most is not None
    full = sum(most if label != AA_LABEL else n for label, n in counts.items())
    runs = sum(counts.values())
    text = (
        f"- Seeds: {runs} runs, of the {full} that every method to {most} seeds would take: "
        f"the stops saved {full - runs}."
    )
    still = [row["method"] for row in rows if row["open"] and row["method"] != AA_LABEL]
    if still:
        capped = max_runs is not None and any(counts[label] < most for label in still)
        where = f"at the cap (--max-runs {max_runs})" if capped else f"at {most} seeds"
        text += f" Open {where}: {', '.join(still)}."
    return text


def _verdicts_text(rows: Sequence[dict[str, Any]], request: Request, metric: str) -> str:
    """How the verdicts were reached: pairing, equivalence, the correction over the table's questions,
    the sequential rule and its futility stop."""
    judging, most = request.judging, request.seeds.most
    accuracy = {r["method"]: (r["tests"] or {}).get("accuracy") for r in rows}
    unpaired = [m for m, test in accuracy.items() if test and test["test"] == "welch" and test["diff"] is not None]
    judged = sum(r["tests"] is not None and r["method"] != AA_LABEL for r in rows)
    fallback = f" (Welch's unpaired test for {', '.join(unpaired)}, not judged: seeds differ)" if unpaired else ""
    margin = margin_of(metric, judging.margin)
    scale, unit = scale_of(metric)
    equivalence = f", equivalent when TOST puts it within ±{margin * scale:.2f} {unit}" if margin else ""
    corrected = (
        f"both questions of the {judged} methods corrected together by Holm's rule, so the chance of any false "
        "claim in the table is at most 5 %"
        if judging.correction
        else "no correction (--no-correction): each question at 5 % alone, so the chance of some false claim "
        "in the table grows with its size"
    )
    if most is not None:
        corrected = (
            f"seeds added until decided (3 to {most}), each question decided by the group-sequential "
            f"boundary for up to {most} pairs and stopped once its chance of a decision by {most} "
            f"seeds falls under 10 %; {corrected}"
        )
    return (
        f"Verdicts: seed s of every method paired with the baseline's seed s{fallback}; accuracy by the paired "
        f"t{equivalence}; speed by the paired t on log times (Wilcoxon's signed rank when a seed misses the target "
        f"or seeds are added); {corrected}; each verdict names the test that decided it, with that test's interval "
        "(docs/verdicts.md)."
    )


def _seeds_text(request: Request, counts: Mapping[str, int]) -> str:
    start = request.seeds.start
    if len(set(counts.values())) == 1:
        return f"{start} seed(s)" if set(counts.values()) == {start} else f"{next(iter(counts.values()))} seeds"
    return "seeds per method: " + ", ".join(f"{label} {n}" for label, n in counts.items())


def _setting_text(request: Request, counts: Mapping[str, int], outcomes: Outcomes, target: float | None) -> str:
    """The report's description of the setting: data, optimizer, policy, seeds, budget, target, evaluations."""
    task, config = request.task, request.config
    budget_text = _budget_text(request, outcomes)
    if request.engine is not None:
        budget_text += " " + _parallel_text(request.nproc or 1, request.engine, task.batch_size)
    used = next((r["train_size"] for o in outcomes.values() for r in o["records"]), request.train_size)
    tested = next((r["test_examples"] for o in outcomes.values() for r in o["records"]), "the")
    target_text = "no target (no finished baseline run)" if target is None else _target_text(task.metric, target)
    own = sorted({str(v.settings["policy"]) for v in request.variants if v.settings.get("policy")})
    policy = f"global policy {config.policy}" + (f" unless a variant sets its own ({', '.join(own)})" if own else "")
    return (
        f"{task.description or task.name}. {used or 'all'} training examples, {tested} test examples, batch "
        f"{task.batch_size}, {task.optimizer_name} at LR {task.lr:g}, {policy}, {_seeds_text(request, counts)}. "
        f"{_optimizers_text(request)}{budget_text} {target_text} Training time excludes the "
        f"{config.eval_points} evaluations per run."
    )


def _optimizers_text(request: Request) -> str:
    """Which methods do not train with the task's optimizer, and what they do instead (empty: none)."""
    uses: dict[str, list[str]] = {}
    for variant in request.variants:
        use = METHODS[variant.method].optimizer_use
        if use != "task":
            uses.setdefault(use, []).append(variant.label)
    return "".join(f"{', '.join(labels)}: {OPTIMIZER_USES[use]}. " for use, labels in uses.items())


def _budget_text(request: Request, outcomes: Outcomes) -> str:
    if not request.config.paced:
        return f"Equal steps: every method trains {request.epochs} epoch(s)."
    return _time_budget_text(request, outcomes) + _clock_text(request.config.clock)


def _clock_text(clock: str) -> str:
    """What timed the runs, when it is not the wall clock."""
    if clock == "wall":
        return ""
    return (
        " Timed by the process clock (--clock process): the training process's CPU seconds over all its threads "
        "(CUDA events on a GPU), which other processes on the machine do not move; every 'seconds' is on it."
    )


def _time_budget_text(request: Request, outcomes: Outcomes) -> str:
    """The equal-time budget: given, or the baseline's training time on each seed."""
    config = request.config
    paced = (
        "stopping by its own clock at the step nearest the budget; its schedules (the LR policy, freeze times, "
        "Hi-DLR's schedule) follow its share of the budget, so a faster method takes more steps over the same "
        "schedules (docs/ARCHITECTURE.md, compare/budget.py)"
    )
    if config.budget_seconds is not None:
        return f"Equal wall-clock: every run, the baseline's included, trains for {config.budget_seconds:g} s, {paced}."
    budgets = [r["wall_clock_s"] for r in outcomes.get(request.baseline.label, {}).get("records", [])]
    measured = f" ({min(budgets):.1f}-{max(budgets):.1f} s over its seeds)" if budgets else ""
    return (
        f"Equal wall-clock: the baseline trains {request.epochs} epoch(s), and every other run of a seed trains for "
        f"the baseline's training time on that seed{measured}, {paced}; 'train s / budget' is over that time."
    )


def _parallel_text(nproc: int, engine: str, batch_size: int) -> str:
    how = "FSDP2 (layerwise.fsdp.shard)" if engine == "fsdp" else "DDP (layerwise.distributed.wrap)"
    return (
        f"Data-parallel: every run on {nproc} process{'es' if nproc > 1 else ''} with {how}, each rank training "
        f"on its slice of every "
        f"global batch of {batch_size}; training time is rank 0's, communication included."
    )


def _target_text(metric: str, target: float) -> str:
    measure = metric_of(metric)
    value = f"{measure.scale * target:{measure.spec}}" + (" %" if measure.percent else "")
    return f"Target for 'time to target': test {metric} {value}."


def _paced(request: Request) -> set[str]:
    """The labels whose runs stopped by their clock: under a time budget all, but the baseline that set it."""
    if not request.config.paced:
        return set()
    labels = {variant.label for variant in request.variants}
    return labels if request.config.budget_seconds is not None else labels - {request.baseline.label}


def _snippets(request: Request, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each method's lines for a plain loop, for the steps it took (those a time budget paced say so)."""
    steps = {row["method"]: row.get("steps") for row in rows}
    paced = _paced(request)
    snippets = {}
    for variant in request.variants:
        total = int(steps.get(variant.label) or 1)
        build = Build(request.task, request.model, request.partition, total, request.config.policy)
        text = method_snippet(build, variant.method, variant.settings)
        if text is not None:
            snippets[variant.label] = (PACED_SNIPPET if variant.label in paced else "") + text
    return snippets


def _snippets_markdown(snippets: dict[str, str]) -> str:
    if not snippets:
        return ""
    parts = ["## Each method in a plain PyTorch loop", ""]
    for label, text in snippets.items():
        parts += [f"**{label}**", "", "```python", text, "```", ""]
    return "\n".join(parts)
