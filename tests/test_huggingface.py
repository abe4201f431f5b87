"""transformers.Trainer with layerwise techniques, on the pretrained MiniLM for a few steps."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import layerwise
import layerwise.compare
from layerwise import FreezeOut, HiDLR, LayerwiseLR, Multirate, recipes
from layerwise.tasks.pretrained import minilm_classifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers

from layerwise.integrations.huggingface import LayerwiseTrainer

STEPS = 4


def _data():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (STEPS * 4, 12), generator=g)
    ids[:, 0] = 101
    labels = torch.randint(0, 3, (STEPS * 4,), generator=g)
    return [{"input_ids": i, "labels": int(y)} for i, y in zip(ids, labels)]


def _loss(outputs, labels, num_items_in_batch=None):
    return nn.functional.cross_entropy(outputs, labels)


def _args(tmp_path, **overrides):
    settings = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "max_steps": STEPS,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "remove_unused_columns": False,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    return transformers.TrainingArguments(**{**settings, **overrides})


def _trainer(tmp_path, model, optimizers=(None, None), trainer=LayerwiseTrainer, args=None, **kwargs):
    return trainer(
        model=model,
        args=args or _args(tmp_path),
        train_dataset=_data(),
        optimizers=optimizers,
        compute_loss_func=_loss,
        **kwargs,
    )


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return minilm_classifier(num_labels=3)


def _fresh(minilm):
    model = minilm_classifier(num_labels=3)
    model.load_state_dict(minilm.state_dict())
    part = layerwise.by_block(model, depth=3, sample_input=torch.tensor([[101, 2000, 102]]))
    return model, part


def _lr_logs(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_llr_schedule_replaces_the_trainers_scheduler_and_every_group_is_logged(tmp_path, minilm):
    model, part = _fresh(minilm)
    opt = torch.optim.AdamW(part.param_groups(lr=1e-4))
    sched = LayerwiseLR(opt, STEPS, schedule=recipes.build("llr", len(part)))
    trainer = _trainer(tmp_path, model, (opt, sched))
    trainer.train()
    logs = _lr_logs(trainer)
    assert len(logs) == STEPS
    for step, entry in enumerate(logs):  # the LRs the step logged used: the Trainer's learning_rate is group 0's
        for name, lr in zip(part.names, sched.lr_at(step)):
            assert entry[f"lr/{name}"] == pytest.approx(lr)
        assert entry["learning_rate"] == entry[f"lr/{part.names[0]}"] and entry["frozen_groups"] == 0


def test_freezeout_freezes_groups_as_the_trainer_steps_it(tmp_path, minilm):
    model, part = _fresh(minilm)
    opt = torch.optim.AdamW(part.param_groups(lr=1e-4))
    freezeout = FreezeOut(model, opt, STEPS, t0=0.3, strategy="linear")
    trainer = _trainer(tmp_path, model, (opt, freezeout))
    trainer.train()
    frozen = [entry["frozen_groups"] for entry in _lr_logs(trainer)]
    # frozen during each step; the last body group reaches zero at the very end, the head trains on
    assert frozen == [0, 0, 1, 2] and len(part) == 4
    assert freezeout.frozen and not any(p.requires_grad for p in part[0].params)


def test_hidlr_gets_the_batch_closure_and_multirate_steps_through_the_trainer(tmp_path, minilm):
    model, part = _fresh(minilm)
    hidlr = HiDLR(torch.optim.AdamW(part.param_groups(lr=1e-4)), update_every=2, clip=(0, 1e-3), model=model)
    _trainer(tmp_path / "h", model, (hidlr, None)).train()
    assert hidlr.stats["probe_rounds"] == 2 and hidlr.stats["forward_passes"] >= 2 * 4 * len(part)
    model, part = _fresh(minilm)
    head = layerwise.by_head(model, sample_input=torch.tensor([[101, 2000, 102]]))
    multirate = Multirate.from_partition(head, lr=1e-4, k=2, base=torch.optim.AdamW)
    before = [p.detach().clone() for p in head["body"].params]
    _trainer(tmp_path / "m", model, (multirate, None)).train()
    assert multirate.step_count == STEPS
    assert any(not torch.equal(a, p) for a, p in zip(before, head["body"].params))


def test_import_layerwise_imports_no_framework():
    code = (
        "import sys, layerwise, layerwise.compare; print(any(m in sys.modules for m in ('transformers', 'lightning')))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_hidlr_with_no_scheduler_keeps_its_lrs(tmp_path, minilm):
    model, part = _fresh(minilm)
    hidlr = HiDLR(torch.optim.AdamW(part.param_groups(lr=1e-4)), update_every=2, clip=(0, 1e-3), model=model)
    trainer = _trainer(tmp_path, model, (hidlr, None))
    trainer.train()
    lrs = [float(g["lr"]) for g in hidlr.param_groups]
    assert all(lr > 0 for lr in lrs)  # the Trainer's linear decay ended them at 0.0
    assert list(hidlr.lrs.values()) == pytest.approx(lrs)
    assert _lr_logs(trainer)[-1]["lr/" + part.names[0]] == pytest.approx(lrs[0])


def test_a_scheduler_beside_an_optimizer_that_owns_its_lrs_is_refused(tmp_path, minilm):
    model, part = _fresh(minilm)
    hidlr = HiDLR(torch.optim.AdamW(part.param_groups(lr=1e-4)), update_every=2, model=model)
    step_lr = torch.optim.lr_scheduler.StepLR(hidlr, step_size=1)
    with pytest.raises(ValueError, match=r"optimizers: HiDLR sets every group's lr itself.*\(optimizer, None\)"):
        _trainer(tmp_path, model, (hidlr, step_lr))


def test_schedule_arguments_ignored_for_an_optimizer_that_owns_its_lrs_are_warned(tmp_path, minilm):
    model, part = _fresh(minilm)
    hidlr = HiDLR(torch.optim.AdamW(part.param_groups(lr=1e-4)), update_every=2, model=model)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), lr_scheduler_type="cosine", report_to=[], use_cpu=True, max_steps=1
    )
    with pytest.warns(UserWarning, match=r"args: lr_scheduler_type='cosine' ignored: HiDLR") as said:
        LayerwiseTrainer(model=model, args=args, train_dataset=_data(), optimizers=(hidlr, None))
    assert [w.filename for w in said if "ignored" in str(w.message)] == [__file__]


def _group_lrs(entry: dict) -> dict[str, float]:
    return {key: value for key, value in entry.items() if key.startswith("lr/")}


def test_a_named_technique_is_built_from_the_trainers_args_and_every_group_is_logged(tmp_path, minilm):
    model, _ = _fresh(minilm)
    trainer = _trainer(tmp_path, model, technique="freezeout", technique_settings={"t0": 0.5, "strategy": "linear"})
    trainer.train()
    run = trainer.technique_setup
    assert type(run.scheduler) is FreezeOut and type(run.optimizer) is torch.optim.AdamW
    assert run.optimizer.defaults["fused"] is True  # the Trainer's default optim, adamw_torch_fused
    # the same call by hand: the Trainer's lr, decay, steps, linear policy, its optimizer; traced on a first batch
    fresh, _ = _fresh(minilm)
    by_hand = layerwise.compare.setup(
        fresh,
        "freezeout",
        optimizer=torch.optim.AdamW,
        optimizer_options={"betas": (0.9, 0.999), "eps": 1e-8, "fused": True},
        lr=5e-5,
        total_steps=STEPS,
        policy="linear",
        sample_input={"input_ids": torch.stack([row["input_ids"] for row in _data()[:4]])},
        t0=0.5,
        strategy="linear",
    )
    names = [g["name"] for g in by_hand.optimizer.param_groups]
    logs = _lr_logs(trainer)
    assert len(logs) == STEPS and len(set(names)) > 30  # one group per layer of MiniLM
    for entry in logs:  # the LRs of the step logged
        expected = {f"lr/{name}": float(g["lr"]) for name, g in zip(names, by_hand.optimizer.param_groups)}
        assert _group_lrs(entry) == pytest.approx(expected)
        by_hand.optimizer.step()  # no gradients: the weights stay
        by_hand.scheduler.step()
    assert [entry["frozen_groups"] for entry in logs][-1] == len(run.freezer.frozen) > 0
    assert run.freezer.frozen == by_hand.freezer.frozen


def test_a_techniques_policy_and_warm_up_are_the_trainers_schedule(tmp_path, minilm):
    model, _ = _fresh(minilm)
    args = _args(tmp_path, lr_scheduler_type="cosine", warmup_steps=1, learning_rate=1e-4, optim="sgd")
    trainer = _trainer(tmp_path, model, args=args, technique="baseline")
    trainer.train()
    assert type(trainer.optimizer.optimizer) is torch.optim.SGD  # args.optim, wrapped by accelerate
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-4)
    schedule = transformers.get_cosine_schedule_with_warmup(reference, 1, STEPS)
    for entry in _lr_logs(trainer):
        lrs = list(_group_lrs(entry).values())
        assert len(lrs) > 30 and lrs == pytest.approx([reference.param_groups[0]["lr"]] * len(lrs))
        reference.step()
        schedule.step()


def test_a_named_hidlr_gets_its_closure_and_keeps_its_lrs(tmp_path, minilm):
    model, _ = _fresh(minilm)
    settings = {"groups": 2, "update_every": 2, "max_interval": None}
    trainer = _trainer(tmp_path, model, technique="hidlr", technique_settings=settings)
    trainer.train()
    hidlr = trainer.technique_setup.optimizer
    assert type(hidlr) is HiDLR and hidlr.stats["probe_rounds"] == 2
    # its found LRs times the Trainer's linear policy at the last step (3 of 4), nothing else writing them
    found = [hidlr.lrs[g["name"]] * 0.25 for g in hidlr.param_groups]
    assert [float(g["lr"]) for g in hidlr.param_groups] == pytest.approx(found) and min(found) > 0
    assert _group_lrs(_lr_logs(trainer)[-1]) == pytest.approx(
        {f"lr/{g['name']}": lr for g, lr in zip(hidlr.param_groups, found)}
    )


class _WeightsDuringEvaluation(transformers.TrainerCallback):
    """Records the classifier's weights at each evaluation step."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_prediction_step(self, args, state, control, model=None, **kwargs):
        self.seen.append(model.model.classifier.weight.detach().clone())


def test_a_techniques_evaluation_weights_are_swapped_in_around_evaluate(tmp_path, minilm):
    pytest.importorskip("dog")
    model, _ = _fresh(minilm)
    spy = _WeightsDuringEvaluation()
    args = _args(tmp_path, label_names=["labels"])  # evaluation's loss through compute_loss_func
    trainer = _trainer(tmp_path, model, args=args, technique="dog", eval_dataset=_data()[:8], callbacks=[spy])
    trainer.train()
    trained = model.model.classifier.weight.detach().clone()
    trainer.evaluate()
    # DoG evaluates its polynomial-decay average of the iterates, then training's weights come back
    assert len(spy.seen) == 1 and not torch.equal(spy.seen[0], trained)
    assert torch.equal(model.model.classifier.weight, trained)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"technique": "freezeout", "optimizers": "given"},
            r"^optimizers: technique='freezeout' builds the optimizer and the scheduler from args; give "
            r"LayerwiseTrainer technique= or optimizers=, not both$",
        ),
        (
            {"technique": "freezout"},
            r"^method: unknown 'freezout'; choose from \['adamw', ",
        ),
        (
            {"technique": "freezeout", "technique_settings": {"lr": 0.1}},
            r"^technique_settings: 'lr' comes from args\.learning_rate; set it there$",
        ),
        (
            {"technique": "freezeout", "technique_settings": {"t1": 0.5}},
            r"^freezeout: unknown setting 't1'; freezeout takes \['scale_lr', 'strategy', 't0'\]$",
        ),
        (
            {"technique": "freezeout", "args": {"lr_scheduler_type": "polynomial"}},
            r"^args\.lr_scheduler_type: 'polynomial' has no layerwise policy for technique='freezeout'; choose from "
            r"\['constant', 'constant_with_warmup', 'cosine', 'linear'\]$",
        ),
    ],
)
def test_a_technique_the_trainer_cannot_build_is_refused_in_one_line(tmp_path, minilm, kwargs, message):
    model, part = _fresh(minilm)
    if kwargs.get("optimizers") == "given":
        kwargs["optimizers"] = (torch.optim.AdamW(part.param_groups(lr=1e-4)), None)
    args = _args(tmp_path, **kwargs.pop("args", {}))
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, model, args=args, **kwargs)


def test_a_plain_trainer_with_hidlr_says_which_trainer_gives_its_closure(tmp_path, minilm):
    model, part = _fresh(minilm)
    hidlr = HiDLR(torch.optim.AdamW(part.param_groups(lr=1e-4)), update_every=2, model=model)
    trainer = _trainer(tmp_path, model, (hidlr, None), trainer=transformers.Trainer)
    with pytest.raises(
        TypeError, match=r"needs a closure .* use layerwise\.integrations\.huggingface\.LayerwiseTrainer"
    ):
        trainer.train()


def test_a_technique_of_several_parts_resumes_from_a_trainer_checkpoint(tmp_path, minilm):
    # gradual unfreezing is a Chain (the unfreezing rule, then the policy): its state is both parts', so
    # a run resumed from step 2's checkpoint ends as the uninterrupted one (it was refused as stateless)
    settings = {"technique": "gradual-unfreezing", "technique_settings": {"until": 0.5}}
    args = {"save_strategy": "steps", "save_steps": 2, "seed": 0}
    straight_model, _ = _fresh(minilm)
    straight = _trainer(tmp_path / "a", straight_model, args=_args(tmp_path / "a", **args), **settings)
    straight.train()
    resumed_model, _ = _fresh(minilm)
    resumed = _trainer(tmp_path / "b", resumed_model, args=_args(tmp_path / "b", **args), **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for (name, mine), theirs in zip(resumed_model.named_parameters(), straight_model.parameters()):
        assert torch.equal(mine, theirs), name
    assert _lr_logs(resumed)[-1] == pytest.approx(_lr_logs(straight)[-1])
