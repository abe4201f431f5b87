"""Every registered method's snippet builds what its builder builds.

For each method (peers and ``+cache`` variants included), on the first tiny task it applies to, the
builder's :class:`Setup` and the snippet, each on a fresh model from the same seed, train the same
batches: every step must use the same per-parameter learning rates, and afterwards the same
parameters must be frozen and the weights each evaluates (Schedule-Free's and DoG's averages) must
be equal. A peer whose package is not installed
is skipped for that reason only (:data:`PACKAGES`); a method without a snippet is listed in
:data:`NO_SNIPPET`.
"""

from contextlib import contextmanager
from importlib.util import find_spec

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import layerwise
from blobs import blobs, blobs_task, mlp
from layerwise.compare.methods import METHODS, Build, build_setup, method_snippet, resolve_settings
from layerwise.tasks import TASKS, register_task
from layerwise.tasks.lora import peft_lora

STEPS = 3
"""Batches each side trains: enough for FreezeOut, gradual unfreezing and the head-first peers to change what trains."""

PACKAGES = {
    "prodigy": "prodigyopt",
    "dadapt": "dadaptation",
    "dog": "dog",
    "schedulefree": "schedulefree",
    "lars": "pytorch_optimizer",
    "loraplus": "peft",
}
"""The peers whose optimizer comes from an optional package, and its module."""

NO_SNIPPET: set[str] = set()
"""Methods registered without a snippet (nothing to compare)."""


def _lora_mlp() -> nn.Module:
    return peft_lora(mlp(), targets=("0", "2"), r=4, alpha=8, head=("4",))


SCRATCH = blobs_task("snippet-blobs", weight_decay=5e-4)
FINE = blobs_task("snippet-blobs-ft", regime="fine-tuning", optimizer="adamw", lr=1e-2, weight_decay=0.01)
LORA = blobs_task(
    "snippet-blobs-lora",
    make_model=_lora_mlp,
    partition=lambda model, sample: layerwise.by_lora(model, rest="head"),
    regime="fine-tuning",
    optimizer="adamw",
    lr=1e-2,
    weight_decay=0.01,
)
for _task in (SCRATCH, FINE, LORA):
    if _task.name not in TASKS:
        register_task(_task)

DATA = blobs(None, False)
LOADER = [(DATA.train[0][i : i + 32], DATA.train[1][i : i + 32]) for i in range(0, 32 * STEPS, 32)]


def _task_for(name: str):
    """The first tiny task ``name`` applies to."""
    for task in (SCRATCH, FINE, LORA):
        if METHODS[name].applies(task, task.partition_of(task.make_model())) is None:
            return task
    raise AssertionError(f"{name} applies to none of the tiny tasks")


def _fresh(task) -> tuple[nn.Module, Build]:
    torch.manual_seed(0)
    model = task.make_model()
    return model, Build(task, model, task.partition_of(model), STEPS, "cosine")


@contextmanager
def _step_lrs(model: nn.Module):
    """The LR of each named parameter at every optimizer step (a wrapper's inner steps included)."""
    names = {id(p): n for n, p in model.named_parameters()}
    steps: list[dict[str, float]] = []

    def record(optimizer, args, kwargs):
        del args, kwargs
        steps.append({names[id(p)]: float(g["lr"]) for g in optimizer.param_groups for p in g["params"]})

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield steps
    finally:
        handle.remove()


def _evaluated(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _train_builder(name: str, task) -> tuple[nn.Module, list[dict[str, float]]]:
    model, build = _fresh(task)
    setup = build_setup(build, name, resolve_settings(name))
    loss_fn = nn.functional.cross_entropy
    with _step_lrs(model) as lrs:
        for x, y in LOADER:
            loss = loss_fn(model(x), y)
            setup.optimizer.zero_grad()
            loss.backward()
            if setup.wants_closure:
                setup.optimizer.step(lambda x=x, y=y: loss_fn(model(x), y))
            else:
                setup.optimizer.step()
            if setup.scheduler is not None:
                setup.scheduler.step()
    if setup.eval_mode is not None:
        setup.eval_mode()  # the weights it evaluates
    return model, lrs


def _train_snippet(name: str, task) -> tuple[nn.Module, list[dict[str, float]], nn.Module]:
    model, build = _fresh(task)
    text = method_snippet(build, name, resolve_settings(name))
    namespace = {
        "model": model,
        "loader": LOADER,
        "x": LOADER[0][0],
        "loss_fn": nn.functional.cross_entropy,
        "num_examples": 32 * STEPS,
        "indexed_loader": [(torch.arange(i * 32, (i + 1) * 32), x, y) for i, (x, y) in enumerate(LOADER)],
    }
    with _step_lrs(model) as lrs:
        exec(compile(text, f"<snippet {name}>", "exec"), namespace)
    averager = namespace.get("averager")  # DoG's snippet evaluates averager.averaged_model
    return model, lrs, (model if averager is None else averager.averaged_model)


@pytest.mark.parametrize("name", list(METHODS))
def test_the_snippet_builds_what_the_builder_builds(name):
    module = PACKAGES.get(name.removesuffix("+cache"))
    if module is not None and find_spec(module) is None:
        pytest.skip(f"{name}: its package {module!r} is not installed")
    if name in NO_SNIPPET:
        assert METHODS[name].snippet is None
        pytest.skip(f"{name} has no snippet")
    task = _task_for(name)
    built, built_lrs = _train_builder(name, task)
    copied, copied_lrs, evaluated = _train_snippet(name, task)
    assert len(built_lrs) == len(copied_lrs) >= STEPS, name
    for step, (ours, theirs) in enumerate(zip(built_lrs, copied_lrs)):
        assert ours.keys() == theirs.keys(), (name, step)
        torch.testing.assert_close(theirs, ours, msg=lambda m, s=step: f"{name} step {s} LRs: {m}")
    frozen = {n for n, p in built.named_parameters() if not p.requires_grad}
    assert {n for n, p in copied.named_parameters() if not p.requires_grad} == frozen, name
    torch.testing.assert_close(_evaluated(evaluated), _evaluated(built), msg=lambda m: f"{name}: {m}")


def test_every_method_is_compared_or_named_as_skipped():
    missing = {name for name in METHODS if METHODS[name].snippet is None} - NO_SNIPPET
    assert not missing, f"methods without a snippet: {sorted(missing)}"
