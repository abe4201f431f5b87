"""Precision, gradient clipping and accumulation: set once on the task, applied the same way to every method."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from blobs import blobs, blobs_task
from layerwise import cli
from layerwise.compare.methods import resolve_settings
from layerwise.compare.runner import new_run, train_step

SEEN: list[tuple[bool, torch.dtype]] = []


class Recording(nn.Module):
    """The blobs MLP, recording whether each forward ran under autocast, and in which dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(20, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SEEN.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


TASK = blobs_task("stepping-blobs", make_model=Recording, lr=0.5)


def _steps(task, method, steps=8, settings=None):
    """Train ``method`` for ``steps`` batches of 32 through the comparison's own step; the model and setup."""
    model, setup = new_run(task, method, resolve_settings(method, settings or {}), steps, "constant", 0)
    x, y = blobs(None, False).train
    return model, setup, [(x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32]) for i in range(steps)]


def _total_norm(optimizer) -> float:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


@pytest.mark.parametrize("method", ["baseline", "hidlr", "multirate", "freezeout"])
def test_bf16_runs_every_forward_of_every_method_under_autocast(method):
    task = replace(TASK, precision="bf16")
    model, setup, batches = _steps(task, method, settings={"update_every": 2} if method == "hidlr" else None)
    SEEN.clear()
    for xb, yb in batches:
        train_step(model, setup, task, xb, yb)
    if method == "hidlr":  # its probes too; its one structural trace of the model (prefix reuse) is no training
        assert setup.optimizer.stats["probe_rounds"] >= 2 and len(SEEN) > 2 * len(batches)
        SEEN.remove((False, torch.bfloat16))
    assert len(SEEN) >= len(batches) and set(SEEN) == {(True, torch.bfloat16)}


def test_the_clipped_norm_reaches_hidlrs_probe_rounds_and_multirates_refresh():
    task = replace(TASK, clip_grad_norm=0.05)
    for method, settings in (("hidlr", {"update_every": 2}), ("multirate", {"k": 2})):
        model, setup, batches = _steps(task, method, settings=settings)
        norms: list[float] = []
        setup.optimizer.register_step_pre_hook(lambda opt, args, kwargs, norms=norms: norms.append(_total_norm(opt)))
        for xb, yb in batches:
            train_step(model, setup, task, xb, yb)
        assert len(norms) == len(batches) and max(norms) <= 0.05 * (1 + 1e-5), method
    assert setup.optimizer.step_count == len(batches)  # Multirate refreshed its slow part every 2 steps
    unclipped_model, unclipped, batches = _steps(TASK, "hidlr", settings={"update_every": 2})
    seen: list[float] = []
    unclipped.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(_total_norm(opt)))
    train_step(unclipped_model, unclipped, TASK, *batches[0])
    assert seen[0] > 0.05  # so the clipping above did something


def _loss_and_grads(task, batch):
    """One baseline step of ``task`` on ``batch``: its loss, the gradients its optimizer stepped with, the model."""
    model, setup, _ = _steps(task, "baseline", steps=1)
    grads: list[list[torch.Tensor]] = []
    setup.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])
    )
    return train_step(model, setup, task, *batch), grads[0], model


def test_accumulated_micro_batches_give_the_batchs_gradient_and_loss():
    batch = _steps(TASK, "baseline", steps=1)[2][0]
    whole_loss, whole_grads, whole_model = _loss_and_grads(TASK, batch)
    split_loss, split_grads, split_model = _loss_and_grads(replace(TASK, accumulate=3), batch)  # 11, 10, 11 rows
    assert split_loss.item() == pytest.approx(whole_loss.item(), rel=1e-5)
    for a, b in zip(whole_grads, split_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(whole_model.parameters(), split_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("precision", "fp16", "precision: must be one of"),
        ("clip_grad_norm", 0.0, "clip_grad_norm: a finite number > 0"),
        ("clip_grad_norm", float("inf"), "clip_grad_norm: a finite number > 0"),
        ("accumulate", 0, "accumulate: micro-batches per step"),
    ],
)
def test_bad_step_options_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(TASK, **{field: value})


def test_the_defaults_keep_old_run_stores_and_a_change_is_another_configuration():
    assert not {"precision", "clip_grad_norm", "accumulate"} & set(TASK.settings())
    assert replace(TASK, precision="bf16").settings()["precision"] == "bf16"


def test_the_flags_reach_the_task_of_one_comparison_and_need_one(capsys, tmp_path):
    out = tmp_path / "o"
    flags = ["--task", "ellipse", "--methods", "baseline", "--budget", "steps", "--quick", "--no-progress"]
    assert cli.main(["compare", *flags, "--precision", "bf16", "--clip-grad-norm", "1", "--out", str(out)]) == 0
    stored = (out / "runs.sqlite").read_bytes()
    assert b'"precision": "bf16"' in stored and b'"clip_grad_norm": 1.0' in stored
    assert cli.main(["compare", "--accumulate", "2", "--out", str(tmp_path / "p")]) == 2
    assert "--accumulate: set for one comparison's task; needs --task" in capsys.readouterr().err
