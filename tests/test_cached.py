"""Tests of :mod:`layerwise.compare.cached`: the ``+cache`` variants of the freezing methods.

Each variant is registered for every method of ``CACHED``, trains as its method does, self-checks
its served rows, and is refused where a cache keyed by example index cannot serve (several
processes, accumulated micro-batches, a method with no frozen prefix).
"""

from dataclasses import replace

import pytest
import torch
from torch import nn

from blobs import blobs_task, mlp
from layerwise import Freezer
from layerwise.compare import compare
from layerwise.compare.cached import CACHED, SELF_CHECK, cached_variant, register_cached
from layerwise.compare.methods import METHODS, Method, Setup
from layerwise.compare.runner import run_one
from layerwise.tasks import register_task

register_task(blobs_task("cached-blobs"))


@pytest.mark.parametrize("method", ["freezeout", "gradual-unfreezing", "head-only"])
def test_a_cached_variant_trains_like_its_method_and_reports_the_cache(tmp_path, method):
    settings = {"freezeout": {"t0": 0.3}, "gradual-unfreezing": {"until": 0.6}}.get(method, {})
    plain = run_one("cached-blobs", method, settings, seed=1, policy="constant", eval_points=1, epochs=4)
    cached = run_one("cached-blobs", f"{method}+cache", settings, seed=1, policy="constant", eval_points=1, epochs=4)
    # float32 storage: the same losses; a 2-D matmul over a sub-batch (rows advanced from an older cut)
    # may round its last bit otherwise than over the whole batch (the conv ResNet of
    # tests/test_prefix_cache.py is bitwise equal)
    assert cached["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-6)
    assert cached["param_norms"] == pytest.approx(plain["param_norms"], rel=1e-9)
    stats = cached["cache"]
    assert stats["hits"] + stats["advanced"] > 0 and stats["boundary"] is not None
    with pytest.raises(ValueError, match=rf"--set {method}\+cache.cache_dtype: must be one of"):
        METHODS[f"{method}+cache"].check({"cache_dtype": "int8"})


class _Counting(nn.Linear):
    """A layer whose output changes with every call (Python state): not a fixed function of its input."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x) * (1 + 0.1 * self.calls)


def test_a_cached_compare_method_self_checks_and_a_divergent_one_fails_naming_the_method():
    record = run_one(blobs_task("sound-blobs"), "head-only+cache", seed=1, policy="constant", eval_points=1, epochs=3)
    assert record["cache"]["verified"] == 2 * SELF_CHECK and record["cache"]["hits"] > 0

    def counting():
        model = mlp()
        model[0] = _Counting(20, 16)
        return model

    task = blobs_task("counting-blobs", make_model=counting)
    with pytest.raises(RuntimeError, match=r"head-only\+cache: self-check failed: .*differs from the output without"):
        run_one(task, "head-only+cache", seed=1, policy="constant", eval_points=1, epochs=3)


def test_a_cache_method_refuses_accumulation_before_anything_loads(tmp_path):
    def no_data(data_dir, quick):
        raise AssertionError("data loaded")

    task = replace(blobs_task("accumulating-blobs"), accumulate=2, load_data=no_data)
    with pytest.raises(ValueError, match=r"freezeout\+cache does not apply") as refused:
        compare(task, ["baseline", "freezeout+cache"], out=tmp_path / "x", budget="steps", progress=False)
    (line,) = str(refused.value).splitlines()
    assert "--accumulate 2" in line and "run freezeout without +cache" in line
    assert not (tmp_path / "x").exists()


# ---- the variants themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("base", CACHED)
def test_every_freezing_method_has_a_registered_cached_variant(base):
    method, variant = METHODS[base], METHODS[f"{base}+cache"]
    assert variant.name == f"{base}+cache" and variant.defaults == {**method.defaults, "cache_dtype": None}
    assert set(variant.not_parallel) == {"ddp", "fsdp"} and "one process" in variant.not_parallel["ddp"]
    assert set(variant.not_default) == {"scratch", "fine-tuning"}  # run on request only
    assert (variant.uses_task_lr, variant.optimizer_use) == (method.uses_task_lr, method.optimizer_use)
    assert (variant.snippet is None) == (method.snippet is None)


def test_registering_again_keeps_the_registered_variants(recwarn):
    before = {base: METHODS[f"{base}+cache"] for base in CACHED}
    register_cached()
    assert {base: METHODS[f"{base}+cache"] for base in CACHED} == before and not recwarn.list


def _linear_with(freezer: bool):
    def build(context, settings):
        model = nn.Linear(2, 2)
        optimizer = torch.optim.SGD([{"params": model.parameters(), "name": "linear"}], lr=0.1)
        return Setup(optimizer, freezer=Freezer(model, optimizer) if freezer else None)

    return build


def test_a_method_that_does_not_freeze_is_refused_naming_the_variant():
    variant = cached_variant(Method("plain", "no freezer", _linear_with(False)))
    with pytest.raises(ValueError, match=r"^plain\+cache: plain has no Freezer, so there is no frozen prefix"):
        variant.build(None, {"cache_dtype": None})


@pytest.mark.parametrize(("name", "dtype"), [(None, None), ("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_the_variant_asks_the_runner_for_a_self_checked_cache(name, dtype):
    variant = cached_variant(Method("freezing", "a freezer", _linear_with(True)))
    setup = variant.build(None, {"cache_dtype": name})
    assert setup.cache == {"dtype": dtype, "verify": SELF_CHECK, "label": "freezing+cache"}
    variant.check({"cache_dtype": name})


def test_a_bad_setting_names_the_variants_flag():
    with pytest.raises(ValueError, match=r"^--set freezeout\+cache\.t0: must be a fraction"):
        METHODS["freezeout+cache"].check({"t0": 2.0})
    with pytest.raises(ValueError, match=r"^--set freezeout\+cache\.cache_dtype: must be one of \(None, 'float16'"):
        METHODS["freezeout+cache"].check({"t0": 0.5, "cache_dtype": "float32"})


def test_the_snippet_serves_the_forward_from_the_cache():
    def snippet(context, settings):
        return "opt = make()\nfor x, y in loader:\n    loss = loss_fn(model(x), y); loss.backward()\n    opt.step()"

    variant = cached_variant(Method("freezing", "a freezer", _linear_with(True), snippet=snippet))
    lines = variant.snippet(None, {"cache_dtype": "bfloat16"}).split("\n")
    assert lines == [
        "opt = make()",
        "cache = layerwise.FrozenPrefixCache(model, freezer, num_examples, same_inputs=True, dtype=torch.bfloat16)",
        "for index, x, y in indexed_loader:   (a loader of example indices and batches)",
        "    with cache.batch(index):",
        "        loss = loss_fn(model(x), y)",
        "    loss.backward()",
        "    opt.step()",
    ]
