"""Lightning with layerwise techniques: the same parameters as a hand-written loop, logs, checkpoints."""

import csv
import logging

import lightning
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import layerwise
from layerwise import FreezeOut, Freezer, GradualUnfreezing, HiDLR, LayerwiseLR, Multirate, recipes
from layerwise.integrations.lightning import LayerwiseCallback

BATCH, BATCHES, EPOCHS = 8, 6, 3
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH * BATCHES, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _loader() -> DataLoader:
    return DataLoader(_data(), batch_size=BATCH, shuffle=False)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _partition(net):
    return layerwise.by_patterns(net, {r"^[01]\.": "stem", r"^3\.": "mid", r"^5\.": "head"})


def _sgd(net):
    return torch.optim.SGD(_partition(net).param_groups(lr=0.1), momentum=0.9)


def _hidlr(net):
    return HiDLR(torch.optim.SGD(_partition(net).param_groups(lr=0.05)), update_every=2, model=net)


def _multirate(net):
    return Multirate.from_partition(_partition(net), fast=["head"], lr=0.1, k=4, momentum=0.9)


class Tiny(lightning.LightningModule):
    def __init__(self, make_optimizer, scheduler=None) -> None:
        super().__init__()
        self.net = _net()
        self.make_optimizer, self.scheduler = make_optimizer, scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = self.make_optimizer(self.net)
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(opt), "interval": "step"}}


def _fit(module, callbacks, tmp_path, epochs=EPOCHS, ckpt_path=None, accumulate=1):
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=lightning.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
        log_every_n_steps=1,
    )
    trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt_path)
    return trainer


def _reference(make_optimizer, technique=None, scheduler=None, epochs=EPOCHS, accumulate=1, per_epoch=False):
    """The same training in a plain loop (validation switches the model to eval and back)."""
    net = _net()
    opt = make_optimizer(net)
    stepper = technique(net, opt) if technique else scheduler(opt) if scheduler else None
    for _ in range(epochs):
        net.train()
        for index, (x, y) in enumerate(_loader()):
            loss = nn.functional.cross_entropy(net(x), y) / accumulate
            loss.backward()
            if (index + 1) % accumulate:
                continue
            if isinstance(opt, HiDLR):
                opt.step(lambda x=x, y=y: nn.functional.cross_entropy(net(x), y))
            else:
                opt.step()
            opt.zero_grad()
            if stepper is not None and not per_epoch:
                stepper.step()
        if per_epoch:
            stepper.step()
        net.eval()
    return net


def _freezeout(module, opt):
    return FreezeOut(module.net, opt, EPOCHS * BATCHES, t0=0.3, strategy="linear")


def _freezeout_plain(net, opt):
    return FreezeOut(net, opt, EPOCHS * BATCHES, t0=0.3, strategy="linear")


def _unfreezing(module, opt):
    return GradualUnfreezing(Freezer(module.net, opt), every=1)


def _unfreezing_plain(net, opt):
    return GradualUnfreezing(Freezer(net, opt), every=1)


def _llr(opt):
    return LayerwiseLR(opt, EPOCHS * BATCHES, schedule=recipes.build("llr", 3))


def _assert_same(module, net):
    for (name, a), b in zip(module.net.state_dict().items(), net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def _rows(tmp_path):
    (path,) = tmp_path.glob("logs/version_*/metrics.csv")
    with open(path) as f:
        return [row for row in csv.DictReader(f) if row.get("frozen_groups")]


class BatchNormStats(lightning.Callback):
    """The stem's BatchNorm running mean after every training batch."""

    def __init__(self) -> None:
        self.means: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.means.append(pl_module.net[1].running_mean.clone())


def test_freezeout_through_the_callback_equals_the_plain_loop_and_frozen_batchnorm_stays_frozen(tmp_path):
    module = Tiny(_sgd)
    callback, stats = LayerwiseCallback(_freezeout), BatchNormStats()
    _fit(module, [callback, stats], tmp_path)
    stem_frozen_at = callback.technique.frozen_at[0]
    assert 0 < stem_frozen_at <= BATCHES  # frozen in the first epoch: two validations and train() calls follow
    assert not torch.equal(stats.means[0], stats.means[stem_frozen_at - 1])
    assert all(torch.equal(mean, stats.means[stem_frozen_at - 1]) for mean in stats.means[stem_frozen_at:])
    reference = _reference(_sgd, technique=_freezeout_plain)
    _assert_same(module, reference)  # BatchNorm statistics included: validation's train()/eval() changed nothing
    assert callback.technique.frozen == ("stem", "mid")
    assert not module.net[1].training and not module.net[0].weight.requires_grad
    rows = _rows(tmp_path)
    assert len(rows) == EPOCHS * BATCHES
    for step, row in enumerate(rows):  # the LRs each step used (Lightning steps schedules before logging)
        lrs = callback.technique.lr_at(step)
        assert [float(row[f"lr/{name}"]) for name in ("stem", "mid", "head")] == pytest.approx(lrs)
    assert [int(float(row["frozen_groups"])) for row in rows][-1] == 2


def test_gradual_unfreezing_per_epoch(tmp_path):
    module = Tiny(lambda net: torch.optim.Adam(_partition(net).param_groups(lr=0.01)))
    callback = LayerwiseCallback(_unfreezing, interval="epoch")
    _fit(module, [callback], tmp_path)
    reference = _reference(
        lambda net: torch.optim.Adam(_partition(net).param_groups(lr=0.01)), technique=_unfreezing_plain, per_epoch=True
    )
    _assert_same(module, reference)
    assert [int(float(r["frozen_groups"])) for r in _rows(tmp_path)] == [2] * BATCHES + [1] * BATCHES + [0] * BATCHES


@pytest.mark.parametrize(
    ("make_optimizer", "scheduler", "accumulate"),
    [(_sgd, _llr, 1), (_multirate, None, 1), (_multirate, None, 2), (_hidlr, None, 1)],
    ids=["llr-scheduler", "multirate", "multirate-accumulating", "hidlr"],
)
def test_optimizers_and_schedulers_returned_by_configure_optimizers_equal_the_plain_loop(
    tmp_path, make_optimizer, scheduler, accumulate
):
    module = Tiny(make_optimizer, scheduler)
    trainer = _fit(module, [LayerwiseCallback()], tmp_path, accumulate=accumulate)
    _assert_same(module, _reference(make_optimizer, scheduler=scheduler, accumulate=accumulate))
    assert len(_rows(tmp_path)) == EPOCHS * BATCHES // accumulate
    if make_optimizer is _hidlr:
        stats = trainer.optimizers[0].stats
        assert stats["probe_rounds"] == EPOCHS * BATCHES // 2
        assert stats["forward_passes"] >= 4 * 3 * stats["probe_rounds"]


@pytest.mark.parametrize(
    ("make_optimizer", "technique"),
    [(_sgd, _freezeout), (_multirate, None), (_hidlr, None)],
    ids=["freezeout", "multirate", "hidlr"],
)
def test_resuming_from_a_lightning_checkpoint_equals_training_straight(tmp_path, make_optimizer, technique):
    straight = Tiny(make_optimizer)
    _fit(straight, [LayerwiseCallback(technique)], tmp_path / "straight")
    first = Tiny(make_optimizer)
    trainer = _fit(first, [LayerwiseCallback(technique)], tmp_path / "first", epochs=1)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = Tiny(make_optimizer)
    callback = LayerwiseCallback(technique)
    _fit(resumed, [callback], tmp_path / "second", ckpt_path=tmp_path / "half.ckpt")
    for a, b in zip(resumed.net.state_dict().values(), straight.net.state_dict().values()):
        assert torch.equal(a, b)
    if technique is not None:
        assert callback.technique.frozen == ("stem", "mid")


class NoIndex(Tiny):
    def training_step(self, batch):  # Lightning passes batch_idx only when the signature takes it
        return super().training_step(batch, None)


def test_hidlr_probes_a_training_step_without_batch_idx_and_the_closure_is_released_at_the_end(tmp_path):
    module = NoIndex(_hidlr)
    trainer = _fit(module, [LayerwiseCallback()], tmp_path)
    _assert_same(module, _reference(_hidlr))
    assert trainer.optimizers[0].closure is None


def test_the_same_callback_resumes_a_new_fit_from_a_checkpoint_but_refuses_a_silent_restart(tmp_path):
    first = Tiny(_sgd)
    callback = LayerwiseCallback(_freezeout)
    trainer = _fit(first, [callback], tmp_path / "first", epochs=1)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    with pytest.raises(ValueError, match="built a new optimizer for a technique already under way"):
        _fit(Tiny(_sgd), [callback], tmp_path / "again", epochs=1)
    resumed = Tiny(_sgd)
    _fit(resumed, [callback], tmp_path / "second", ckpt_path=tmp_path / "half.ckpt")
    _assert_same(resumed, _reference(_sgd, technique=_freezeout_plain))
    with pytest.raises(ValueError, match="the checkpoint holds a technique's state; no technique was given"):
        _fit(Tiny(_sgd), [LayerwiseCallback()], tmp_path / "third", ckpt_path=tmp_path / "half.ckpt")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"interval: must be one of \('step', 'epoch'\), got 'batch'"):
        LayerwiseCallback(interval="batch")
    net = _net()
    built = FreezeOut(net, _sgd(net), 10)
    with pytest.raises(TypeError, match=r"technique: expected a method's name or a function \(module, optimizer\)"):
        LayerwiseCallback(built)  # Lightning builds the optimizer: the technique must be built after it


def test_a_scheduler_beside_an_optimizer_that_owns_its_lrs_is_refused_and_multirate_keeps_one(tmp_path):
    step_lr = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1)  # noqa: E731
    with pytest.raises(ValueError, match=r"configure_optimizers: HiDLR sets every group's lr itself.*StepLR"):
        _fit(Tiny(_hidlr, step_lr), [LayerwiseCallback()], tmp_path / "h")
    module = Tiny(_multirate, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5))
    trainer = _fit(module, [LayerwiseCallback()], tmp_path / "m", epochs=1)
    groups = trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([g["initial_lr"] * 0.5**3 for g in groups])


# ---- a named technique, built from the Trainer's optimizer and steps --------------------------------


class Named(Tiny):
    """configure_optimizers gives the optimizer's class and options; example_input_array the traced input."""

    def __init__(self, scheduler=None) -> None:
        super().__init__(lambda net: torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), scheduler)
        self.example_input_array = torch.zeros(2, 4)

    def forward(self, x):
        return self.net(x)


FREEZEOUT = {"t0": 0.3, "strategy": "linear"}


class StopAfterFirstEpoch(lightning.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_a_named_technique_is_built_from_the_trainers_optimizer_and_steps_as_setup_builds_it(tmp_path):
    module = Named()
    callback = LayerwiseCallback(technique="freezeout", technique_settings=FREEZEOUT)
    trainer = _fit(module, [callback], tmp_path)
    run = callback.technique_setup
    assert trainer.optimizers[0] is run.optimizer and type(run.scheduler) is FreezeOut
    assert run.optimizer.defaults["momentum"] == 0.9 and run.scheduler.scheduler.total_steps == EPOCHS * BATCHES
    # the same call by hand, trained in the plain loop
    reference = Named()
    by_hand = layerwise.compare.setup(
        reference,
        "freezeout",
        optimizer=torch.optim.SGD,
        optimizer_options={"momentum": 0.9},
        lr=0.1,
        total_steps=EPOCHS * BATCHES,
        sample_input=torch.zeros(2, 4),
        **FREEZEOUT,
    )
    assert [g["name"] for g in by_hand.optimizer.param_groups] == [g["name"] for g in run.optimizer.param_groups]
    for _ in range(EPOCHS):  # the plain loop, validation's eval() and train() included
        reference.train()
        for x, y in _loader():
            nn.functional.cross_entropy(reference(x), y).backward()
            by_hand.optimizer.step()
            by_hand.optimizer.zero_grad()
            by_hand.scheduler.step()
        reference.eval()
    _assert_same(module, reference.net)
    assert run.freezer.frozen == by_hand.freezer.frozen == ("net.0", "net.1", "net.3")
    rows = _rows(tmp_path)
    assert len(rows) == EPOCHS * BATCHES
    for step, row in enumerate(rows):  # the LRs each step used
        names = [g["name"] for g in run.optimizer.param_groups]
        assert [float(row[f"lr/{name}"]) for name in names] == pytest.approx(run.scheduler.lr_at(step))


@pytest.mark.parametrize(
    ("name", "settings"), [("freezeout", FREEZEOUT), ("gradual-unfreezing", {"until": 0.5})], ids=lambda v: str(v)
)
def test_a_named_technique_resumes_from_a_lightning_checkpoint_as_training_straight(tmp_path, name, settings):
    straight = Named()
    _fit(straight, [LayerwiseCallback(technique=name, technique_settings=settings)], tmp_path / "straight")
    first = Named()
    trainer = _fit(
        first, [LayerwiseCallback(technique=name, technique_settings=settings), StopAfterFirstEpoch()], tmp_path / "a"
    )
    assert trainer.global_step == BATCHES
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = Named()
    callback = LayerwiseCallback(technique=name, technique_settings=settings)
    _fit(resumed, [callback], tmp_path / "b", ckpt_path=tmp_path / "half.ckpt")
    for a, b in zip(resumed.net.state_dict().values(), straight.net.state_dict().values()):
        assert torch.equal(a, b)
    assert callback.technique_setup.freezer.frozen == (
        () if name == "gradual-unfreezing" else ("net.0", "net.1", "net.3")
    )


def test_a_named_technique_swaps_in_the_weights_it_evaluates_for_validation(tmp_path):
    pytest.importorskip("schedulefree", reason="schedulefree is in the peers extra")
    seen = []

    class Record(lightning.Callback):
        def on_validation_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["train_mode"])

    callback = LayerwiseCallback(technique="schedulefree")
    _fit(Named(), [callback, Record()], tmp_path, epochs=2)
    assert seen and not any(seen)  # Schedule-Free's evaluation weights in every validation
    assert not callback.technique_setup.optimizer.param_groups[0]["train_mode"]  # and after fit


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: LayerwiseCallback(technique="freezeout", technique_settings={"lr": 0.1}),
            r"technique_settings: 'lr' comes from the defaults\['lr'\] of the optimizer configure_optimizers returns",
        ),
        (
            lambda: LayerwiseCallback(technique="freezeout", technique_settings={"t1": 0.5}),
            r"freezeout: unknown setting 't1'",
        ),
        (lambda: LayerwiseCallback(technique="nope"), r"method: unknown 'nope'"),
        (lambda: LayerwiseCallback(technique="freezeout", interval="epoch"), r"interval: technique='freezeout' steps"),
        (
            lambda: LayerwiseCallback(_freezeout, technique_settings={"t0": 0.5}),
            r"technique_settings: given with a named",
        ),
    ],
    ids=["from-the-trainer", "unknown-setting", "unknown-method", "per-epoch", "settings-of-a-factory"],
)
def test_a_named_technique_that_cannot_be_built_is_refused_at_once(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_named_technique_refuses_a_scheduler_a_missing_input_and_a_state_a_checkpoint_cannot_hold(tmp_path):
    module = Named(scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1))
    with pytest.raises(
        ValueError, match=r"configure_optimizers: technique='freezeout' brings its own schedule.*StepLR"
    ):
        _fit(module, [LayerwiseCallback(technique="freezeout")], tmp_path / "s")
    module = Named()
    module.example_input_array = None
    with pytest.raises(ValueError, match=r"technique='freezeout': .*set the module's example_input_array"):
        _fit(module, [LayerwiseCallback(technique="freezeout")], tmp_path / "i")
    callback = LayerwiseCallback(technique="fine-tune", technique_settings={"regime": "fine-tuning"})
    trainer = lightning.Trainer(  # checkpointing on, as by default
        max_epochs=1,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    before = [p.clone() for p in module.parameters()]
    module.example_input_array = torch.zeros(2, 4)
    with pytest.raises(
        ValueError, match=r"technique='fine-tune': its _UnfreezeAt keeps no state.*enable_checkpointing"
    ):
        trainer.fit(module, _loader())
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # refused before any step
    trainer = _fit(
        Named(),
        [LayerwiseCallback(technique="fine-tune", technique_settings={"regime": "fine-tuning"})],
        tmp_path / "f",
        epochs=1,
    )  # checkpointing off: it trains
    assert trainer.global_step == BATCHES
