"""LoRA as a method: ``lora`` (PEFT adapters put on any fine-tuning task's model) and LoRA+ (PEFT's
``create_loraplus_optimizer``): ``loraplus``, lora_B at ``ratio`` x lora_A's LR, on a model that has adapters.

``lora`` adds the adapters itself: PEFT's ``get_peft_model`` injects them into the model's own layers
in place (the model object the comparison trains and evaluates is the one adapted; the ``PeftModel``
wrapper it returns is not needed) and freezes every other weight but the head's. So the method needs
no hook to replace the model: it builds its groups (``lora_A``, ``lora_B``, ``head``) and the task's
optimizer over them after adapting.

Examples:
    >>> from layerwise.compare.methods import resolve_settings
    >>> resolve_settings("lora")
    {'lr': 0.001, 'r': 8, 'alpha': 16.0, 'targets': None}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer

from ..._checks import optional, positive_int, positive_number
from ...groups import Partition, by_lora
from ...tasks import Task, make_optimizer, optimizer_preset
from ...tasks.lora import has_lora, linear_targets, peft_lora
from ..methods.kit import Build, Method, Setup, checked, policy_only, policy_snippet, register_method
from .shared import NOT_DEFAULT, all_of, needs_package, policy_loop

__all__ = ["LORAPLUS_GROUPS", "register_lora"]

LORAPLUS_GROUPS = ("groupA", "embedding", "groupB", "groupB_no_decay")
"""The param groups of PEFT's ``create_loraplus_optimizer``, in its order (named here for the records)."""


def _lora_applies(task: Task, partition: Partition) -> str | None:
    del task
    if has_lora([n for group in partition for n in group.param_names]):
        return None
    return (
        "a LoRA method: the task's model has no LoRA adapters (no lora_A / lora_B parameters); "
        "minilm-sentiment-lora has them"
    )


def _adaptable(task: Task, partition: Partition) -> str | None:
    if task.regime != "fine-tuning":
        return "LoRA adapts pretrained weights, which stay frozen; from scratch they are random (a fine-tuning method)"
    if has_lora([n for group in partition for n in group.param_names]):
        return "the task's model has LoRA adapters already (run loraplus or hidlr on it)"
    return None


def _head(context: Build) -> list[str]:
    """The modules of the partition's last group, trained in full (none when the task has no output head)."""
    return list(context.partition[-1].modules) if context.task.head else []


def _lora(context: Build, settings: dict[str, Any]) -> Setup:
    model, head = context.model, _head(context)
    targets = settings["targets"] or linear_targets(model, head)
    peft_lora(model, targets=targets, r=settings["r"], alpha=settings["alpha"], head=head)  # in place, in model
    task, lr = context.task, settings["lr"]
    groups = by_lora(model, rest="head").param_groups(lr=lr, weight_decay=task.weight_decay, no_decay=("bias", "norm"))
    optimizer = make_optimizer(task, groups)
    return Setup(optimizer, policy_only(context, optimizer))


def _lora_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    task, lr = build.task, settings["lr"]
    preset = optimizer_preset(task)
    options = "".join(f", {k}={v!r}" for k, v in preset.options.items())
    head = "head = list(part[-1].modules)   # the head trains in full\n" if task.head else "head = []\n"
    targets = (
        repr(list(settings["targets"]))
        if settings["targets"]
        else "layerwise.tasks.lora.linear_targets(model, head)   # every nn.Linear outside the head"
    )
    return (
        "import layerwise.tasks.lora\n"
        f"{head}"
        f"targets = {targets}\n"
        f"layerwise.tasks.lora.peft_lora(model, targets=targets, r={settings['r']!r}, alpha={settings['alpha']!r}, "
        "head=head)   # adapters put into model's own layers\n"
        'part = layerwise.by_lora(model, rest="head")\n'
        f"opt = {preset.class_path}(part.param_groups(lr={lr!r}, weight_decay={task.weight_decay:g}, "
        f'no_decay=("bias", "norm")), lr={lr!r}{options})\n'
        f"{policy_snippet(build)}"
    )


def _targets(flag: str, value: Any) -> list[str]:
    names = isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)
    if not names or not value:
        raise ValueError(f"{flag}: expected a list of module names (or name endings such as 'query'), got {value!r}")
    return list(value)


_LORA = Method(
    "lora",
    "LoRA (Hu et al. 2022; PEFT's get_peft_model): rank-`r` adapters (scale `alpha`/r) on the model's "
    'nn.Linear layers (`targets`: module names or endings such as ["query", "value"]; None: every one outside '
    "the head), the pretrained weights frozen, the head (the last group) trained in full; the task's optimizer "
    "and decay at `lr` (LoRA's usual 1e-3) in the groups lora_A, lora_B, head; times the policy",
    _lora,
    {"lr": 1e-3, "r": 8, "alpha": 16.0, "targets": None},
    _adaptable,
    not_default=NOT_DEFAULT,
    snippet=_lora_snippet,
    check=all_of(
        needs_package("lora", "peft", "peft"),
        checked("lora", lr=positive_number, r=positive_int, alpha=positive_number, targets=optional(_targets)),
    ),
    uses_task_lr=False,
    not_parallel={"fsdp": "PEFT would put adapters into a model that is sharded before the method is built"},
)


def _loraplus(context: Build, settings: dict[str, Any]) -> Setup:
    from peft.optimizers import create_loraplus_optimizer

    task = context.task

    def task_optimizer(groups: list[dict[str, Any]], **kwargs: Any) -> Optimizer:
        del kwargs  # every group carries its own lr and weight_decay
        return make_optimizer(task, groups)

    optimizer = create_loraplus_optimizer(
        context.model,
        task_optimizer,
        lr=task.lr,
        loraplus_lr_ratio=settings["ratio"],
        loraplus_weight_decay=task.weight_decay,
    )
    for group, name in zip(optimizer.param_groups, LORAPLUS_GROUPS):
        group["name"] = name
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return Setup(optimizer, policy_only(context, optimizer))


def _loraplus_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    line = (
        "opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr={lr:g}, loraplus_lr_ratio={ratio!r}, "
        "loraplus_weight_decay={wd:g})"
    ).format(lr=build.task.lr, ratio=settings["ratio"], wd=build.task.weight_decay)
    return "from peft.optimizers import create_loraplus_optimizer\n" + policy_loop(build, line)


_LORAPLUS = Method(
    "loraplus",
    "LoRA+ (Hayou, Ghosh & Yu 2024; peft.optimizers.create_loraplus_optimizer): lora_B (and every bias) at "
    "`ratio` x the LR of lora_A and the rest, ratio=16 (PEFT's documented default); the task's optimizer, "
    "LR and decay; times the policy",
    _loraplus,
    {"ratio": 16.0},
    _lora_applies,
    not_default=NOT_DEFAULT,
    snippet=_loraplus_snippet,
    check=all_of(needs_package("loraplus", "peft", "peft"), checked("loraplus", ratio=positive_number)),
)


def register_lora() -> None:
    """Register ``lora`` and ``loraplus``."""
    for method in (_LORA, _LORAPLUS):
        register_method(method)
