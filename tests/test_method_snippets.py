"""Every registered method's snippet, and ``layerwise.compare.setup``, build what its builder builds.

For each method (peers and ``+cache`` variants included), on the first tiny task it applies to, the
builder's :class:`Setup` and each part of the snippet (the one-call form, ``layerwise.compare.setup``,
and the method's own lines after :data:`WITHOUT_SETUP`), each on a fresh model from the same seed,
train the same batches: every step must use the same per-parameter learning rates, and afterwards the
same parameters must be frozen and the weights each evaluates (Schedule-Free's and DoG's averages)
must be equal. ``setup()`` called directly with the task's optimizer, LR and steps must do the same.
A peer whose package is not installed is skipped for that reason only (:data:`PACKAGES`); a method
without a snippet is listed in :data:`NO_SNIPPET`.
"""

from contextlib import contextmanager
from importlib.util import find_spec

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import layerwise
from blobs import blobs, blobs_task, mlp
from layerwise.compare import setup
from layerwise.compare.cached import CACHED
from layerwise.compare.methods import METHODS, Build, build_setup, method_snippet, resolve_settings
from layerwise.compare.methods.kit import OPTIMIZER_SETTINGS, WITHOUT_SETUP
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
    """The LR of each named parameter at every optimizer step (a wrapper's inner steps included; the names
    read at each step: ``lora``'s snippet adds the adapters inside the block)."""
    steps: list[dict[str, float]] = []

    def record(optimizer, args, kwargs):
        del args, kwargs
        names = {id(p): n for n, p in model.named_parameters()}
        steps.append({names[id(p)]: float(g["lr"]) for g in optimizer.param_groups for p in g["params"]})

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield steps
    finally:
        handle.remove()


def _evaluated(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _train(model: nn.Module, run) -> list[dict[str, float]]:
    """Train ``model`` with the :class:`Setup` ``run`` on :data:`LOADER`; each step's LRs."""
    loss_fn = nn.functional.cross_entropy
    with _step_lrs(model) as lrs:
        for x, y in LOADER:
            loss = loss_fn(model(x), y)
            run.optimizer.zero_grad()
            loss.backward()
            if run.wants_closure:
                run.optimizer.step(lambda x=x, y=y: loss_fn(model(x), y))
            else:
                run.optimizer.step()
            if run.scheduler is not None:
                run.scheduler.step()
    if run.eval_mode is not None:
        run.eval_mode()  # the weights it evaluates
    return lrs


def _train_builder(name: str, task) -> tuple[nn.Module, list[dict[str, float]]]:
    model, build = _fresh(task)
    return model, _train(model, build_setup(build, name, resolve_settings(name)))


def _setup_arguments(name: str, task, model: nn.Module) -> dict:
    """``setup()``'s arguments for ``task``'s job: its optimizer, LR, decay, partition and regime, the
    method's default settings (its own ``lr`` / ``weight_decay`` as ``setup()``'s)."""
    settings = resolve_settings(name)
    own = {key: settings.pop(key) for key in (*OPTIMIZER_SETTINGS, "policy") if key in settings}
    arguments = {
        "optimizer": task.optimizer,
        "lr": own.get("lr", task.lr),
        "weight_decay": own.get("weight_decay") if own.get("weight_decay") is not None else task.weight_decay,
        "total_steps": STEPS,
        "policy": "cosine",
        "sample_input": task.sample_input(),
        "regime": task.regime,
    }
    if task.partition is not None:
        arguments["partition"] = task.partition_of(model)
    return {**arguments, **settings}


def _snippet_part(name: str, build: Build, part: str) -> str:
    """The one-call form (``"setup"``) or the method's own lines (``"plain"``, uncommented) of ``name``'s snippet."""
    text = method_snippet(build, name, resolve_settings(name))
    one_call, marker, commented = text.partition(f"\n{WITHOUT_SETUP}\n")
    if part == "setup":
        assert marker and "layerwise.compare.setup(" in one_call, name
        return one_call
    if not marker:  # a +cache variant: its own lines alone
        return text
    lines = commented.split("\n")
    assert all(line.startswith("# ") for line in lines), name
    return "\n".join(line.removeprefix("# ") for line in lines)


def _train_snippet(name: str, task, part: str = "plain") -> tuple[nn.Module, list[dict[str, float]], nn.Module]:
    model, build = _fresh(task)
    text = _snippet_part(name, build, part)
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


def _skip_missing(name: str) -> None:
    module = PACKAGES.get(name.removesuffix("+cache"))
    if module is not None and find_spec(module) is None:
        pytest.skip(f"{name}: its package {module!r} is not installed")


def _assert_same_training(name: str, built: nn.Module, built_lrs, copied: nn.Module, copied_lrs, evaluated) -> None:
    """The same LRs at every step, the same frozen parameters and the same evaluated weights."""
    assert len(built_lrs) == len(copied_lrs) >= STEPS, name
    for step, (ours, theirs) in enumerate(zip(built_lrs, copied_lrs)):
        assert ours.keys() == theirs.keys(), (name, step)
        torch.testing.assert_close(theirs, ours, msg=lambda m, s=step: f"{name} step {s} LRs: {m}")
    frozen = {n for n, p in built.named_parameters() if not p.requires_grad}
    assert {n for n, p in copied.named_parameters() if not p.requires_grad} == frozen, name
    torch.testing.assert_close(_evaluated(evaluated), _evaluated(built), msg=lambda m: f"{name}: {m}")


CACHED_VARIANTS = {f"{base}+cache" for base in CACHED}
SETUP_METHODS = [name for name in METHODS if name not in CACHED_VARIANTS]


@pytest.mark.parametrize("name", list(METHODS))
def test_the_snippet_builds_what_the_builder_builds(name):
    _skip_missing(name)
    if name in NO_SNIPPET:
        assert METHODS[name].snippet is None
        pytest.skip(f"{name} has no snippet")
    task = _task_for(name)
    built, built_lrs = _train_builder(name, task)
    _assert_same_training(name, built, built_lrs, *_train_snippet(name, task))


@pytest.mark.parametrize("name", SETUP_METHODS)
def test_the_snippets_one_call_form_builds_what_the_builder_builds(name):
    _skip_missing(name)
    task = _task_for(name)
    built, built_lrs = _train_builder(name, task)
    _assert_same_training(name, built, built_lrs, *_train_snippet(name, task, "setup"))


@pytest.mark.parametrize("name", SETUP_METHODS)
def test_setup_builds_what_the_builder_builds(name):
    _skip_missing(name)
    task = _task_for(name)
    built, built_lrs = _train_builder(name, task)
    model, _ = _fresh(task)
    run = setup(model, name, **_setup_arguments(name, task, model))
    lrs = _train(model, run)
    _assert_same_training(name, built, built_lrs, model, lrs, model)


def test_every_method_but_the_cached_variants_is_set_up_by_setup():
    assert SETUP_METHODS and set(METHODS) - set(SETUP_METHODS) == CACHED_VARIANTS
    model, build = _fresh(SCRATCH)
    assert WITHOUT_SETUP not in method_snippet(build, "freezeout+cache", resolve_settings("freezeout+cache"))
    refused = r"^method: freezeout\+cache serves the frozen prefix from a cache .* set up 'freezeout'"
    with pytest.raises(ValueError, match=refused):
        setup(model, "freezeout+cache", lr=0.1, total_steps=STEPS, sample_input=LOADER[0][0])


def test_every_method_is_compared_or_named_as_skipped():
    missing = {name for name in METHODS if METHODS[name].snippet is None} - NO_SNIPPET
    assert not missing, f"methods without a snippet: {sorted(missing)}"
