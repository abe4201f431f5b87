"""LoRA as users run it: PEFT adapters in a comparison task, and PEFT's own LoRA+ as the `loraplus` method."""

import json
import sys

import pytest
import torch
from peft.optimizers import create_loraplus_optimizer
from torch import nn

import layerwise
from blobs import blobs, blobs_task, mlp
from layerwise import cli
from layerwise.compare.methods import Build, build_setup, check_methods, method_snippet, resolve_settings
from layerwise.compare.peers import LORAPLUS_GROUPS
from layerwise.tasks import TASKS, register_task
from layerwise.tasks.lora import peft_lora


def _peft_mlp() -> nn.Module:
    return peft_lora(mlp(), targets=("0", "2"), r=4, alpha=8, head=("4",))


def _lora_groups(model, sample):
    del sample
    return layerwise.by_lora(model, rest="head")


LORA_TASK = blobs_task(
    "peft-blobs",
    description="three Gaussian blobs, a 3-layer MLP with PEFT LoRA on its first two layers (the LoRA tests)",
    make_model=_peft_mlp,
    partition=_lora_groups,
    regime="fine-tuning",
    optimizer="adamw",
    lr=1e-2,
    weight_decay=0.01,
)
PLAIN_TASK = blobs_task("peft-blobs-plain", regime="fine-tuning", optimizer="adamw", lr=1e-2)
for _task in (LORA_TASK, PLAIN_TASK):
    if _task.name not in TASKS:
        register_task(_task)


def _build(task, model, steps=16):
    return Build(task, model, task.partition_of(model), steps, "constant")


def test_the_task_partition_is_the_papers_three_groups():
    part = LORA_TASK.partition_of(LORA_TASK.make_model())
    assert part.names == ("lora_A", "lora_B", "head")
    assert [len(g.params) for g in part] == [2, 2, 2]
    assert all("modules_to_save" in n for n in part[2].param_names)


def test_loraplus_is_pefts_own_optimizer_with_the_tasks_optimizer_and_decay():
    torch.manual_seed(0)
    model = LORA_TASK.make_model()
    setup = build_setup(_build(LORA_TASK, model), "loraplus", resolve_settings("loraplus"))
    ours = setup.optimizer
    theirs = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=LORA_TASK.lr, loraplus_lr_ratio=16.0, loraplus_weight_decay=0.01
    )
    expected = [g for g in theirs.param_groups if g["params"]]  # PEFT's empty "embedding" group is dropped
    assert [g["name"] for g in ours.param_groups] == [
        n for n, g in zip(LORAPLUS_GROUPS, theirs.param_groups) if g["params"]
    ]
    assert isinstance(ours, torch.optim.AdamW) and len(ours.param_groups) == len(expected)
    for mine, peft_group in zip(ours.param_groups, expected):
        assert [id(p) for p in mine["params"]] == [id(p) for p in peft_group["params"]]
        assert (mine["lr"], mine["weight_decay"]) == (peft_group["lr"], peft_group["weight_decay"])
    lrs = {id(p): g["lr"] for g in ours.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if ".lora_B." in name:
            assert lrs[id(param)] == 16 * LORA_TASK.lr, name
        elif ".lora_A." in name:
            assert lrs[id(param)] == LORA_TASK.lr, name


def test_loraplus_ratio_setting_and_a_bad_ratio():
    assert resolve_settings("loraplus", {"ratio": 4})["ratio"] == 4
    with pytest.raises(ValueError, match=r"--set loraplus.ratio"):
        resolve_settings("loraplus", {"ratio": 0})


def test_loraplus_on_a_task_without_lora_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"loraplus does not apply .*no LoRA adapters"):
        check_methods(PLAIN_TASK, ["loraplus"], PLAIN_TASK.partition_of(mlp()))


def test_loraplus_without_peft_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # find_spec answers None
    with pytest.raises(ValueError, match=r"loraplus: needs the package 'peft'.*layerwise\[pretrained\]"):
        resolve_settings("loraplus")


def test_the_loraplus_snippet_runs_in_a_plain_loop():
    model = LORA_TASK.make_model()
    data = blobs(None, False)
    loader = [(data.train[0][i : i + 32], data.train[1][i : i + 32]) for i in range(0, 96, 32)]
    text = method_snippet(_build(LORA_TASK, model, 3), "loraplus", resolve_settings("loraplus"))
    before = [p.detach().clone() for p in model.parameters()]
    exec(
        compile(text, "<snippet loraplus>", "exec"),
        {"model": model, "loader": loader, "loss_fn": nn.functional.cross_entropy},
    )
    changed = {n for (n, p), b in zip(model.named_parameters(), before) if not torch.equal(p, b)}
    assert changed and all(".lora_" in n or "modules_to_save" in n for n in changed)


def test_compare_quick_on_the_lora_task_writes_records_for_baseline_loraplus_and_hidlr(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "peft-blobs", "--quick", "--methods", "baseline,loraplus,hidlr"]
    assert cli.main([*argv, "--no-progress", "--out", str(out)]) == 0
    for method in ("baseline", "loraplus", "hidlr"):
        record = json.loads((out / "runs" / f"{method}-seed0.json").read_text())
        assert record["steps"] > 0 and record["test_metric"] > 0.3, method
    assert set(json.loads((out / "runs" / "loraplus-seed0.json").read_text())["lr"]) == {
        "groupA",
        "groupB",
        "groupB_no_decay",
    }


def test_lora_puts_adapters_into_the_tasks_own_model_and_trains_only_them_and_the_head():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(8, 20)
    before, weights = model(x).detach(), {n: p.detach().clone() for n, p in model.named_parameters()}
    setup = build_setup(_build(PLAIN_TASK, model), "lora", resolve_settings("lora", {"r": 2}))
    torch.testing.assert_close(model(x), before)  # the same object, adapted in place; lora_B starts at zero
    opt = setup.optimizer
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["name"] for g in opt.param_groups] == ["lora_A", "lora_B", "head", "head"]  # the head's bias: no decay
    assert {g["lr"] for g in opt.param_groups} == {1e-3}  # its own LR (LoRA's usual), not the task's 1e-2
    adapted = sorted(n.split(".")[0] for n, p in model.named_parameters() if ".lora_A." in n)
    assert adapted == ["0", "2"]  # every nn.Linear outside the head (the last group: "4")
    assert [p.shape[0] for g in opt.param_groups[:1] for p in g["params"]] == [2, 2]  # rank 2
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
        opt.step()
        setup.scheduler.step()
    now = dict(model.named_parameters())
    assert all(torch.equal(now[f"{n[0]}.base_layer.{n[2:]}"], w) for n, w in weights.items() if n[0] in "02")
    assert not torch.equal(now["4.modules_to_save.default.weight"], weights["4.weight"])  # the head trains


def test_lora_targets_and_its_refusals():
    torch.manual_seed(0)
    model = mlp()
    build_setup(_build(PLAIN_TASK, model), "lora", resolve_settings("lora", {"targets": ["2"]}))
    assert sorted({n.split(".")[0] for n, _ in model.named_parameters() if ".lora_" in n}) == ["2"]
    with pytest.raises(ValueError, match=r"--set lora\.targets: expected a list of module names"):
        resolve_settings("lora", {"targets": "query"})
    with pytest.raises(ValueError, match=r"--set lora\.r: must be an int >= 1"):
        resolve_settings("lora", {"r": 0})
    with pytest.raises(ValueError, match=r"lora does not apply .*LoRA adapts pretrained weights"):
        check_methods(blobs_task("scratch-blobs"), ["lora"], PLAIN_TASK.partition_of(mlp()))
    with pytest.raises(ValueError, match=r"lora does not apply .*has LoRA adapters already"):
        check_methods(LORA_TASK, ["lora"], LORA_TASK.partition_of(LORA_TASK.make_model()))


def test_compare_quick_runs_lora_beside_the_baseline_and_resumes_from_the_run_store(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "peft-blobs-plain", "--quick", "--methods", "baseline,lora", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    record = json.loads((out / "runs" / "lora-seed0.json").read_text())
    assert record["steps"] > 0 and set(record["lr"]) == {"lora_A", "lora_B", "head"}
    assert cli.main([*argv, "--out", str(out)]) == 0  # again on the same store: the run is kept, not rerun
    assert json.loads((out / "runs" / "lora-seed0.json").read_text()) == record  # a rerun would time differently
