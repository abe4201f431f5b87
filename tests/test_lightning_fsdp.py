"""Lightning's FSDP2 strategy (``ModelParallelStrategy``, the model sharded by ``layerwise.fsdp.shard``
in ``configure_model``) with layerwise techniques: 2 CPU processes equal one hand-written loop with
the global batch (rtol 1e-5 / atol 1e-6: the reduce-scatter averages in another order)."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import layerwise
from parallel_cases import free_port

BATCH, BATCHES, EPOCHS = 8, 4, 2  # per rank; the global batch is 2 * BATCH
STEPS = EPOCHS * BATCHES
CASES = ("freezeout", "multirate", "hidlr")


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * BATCH * BATCHES, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _optimizer(case: str, net: nn.Module) -> torch.optim.Optimizer:
    part = layerwise.by_layer(net, sample_input=torch.zeros(2, 4))
    if case == "multirate":
        return layerwise.Multirate.from_partition(part, fast=[part.names[-1]], lr=0.3, k=3, momentum=0.9)
    if case == "hidlr":
        return layerwise.HiDLR(torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9), update_every=2, clip=(0, 0.5))
    return torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)


def _freezeout(net: nn.Module, opt: torch.optim.Optimizer) -> layerwise.FreezeOut:
    return layerwise.FreezeOut(net, opt, STEPS, t0=0.3, strategy="linear")


def _worker(rank: int, port: int, out) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        GROUP_RANK="0",
        TORCHELASTIC_RUN_ID="test",  # processes made outside Lightning, as torchrun makes them
    )
    import lightning
    from lightning.pytorch.strategies import ModelParallelStrategy

    from layerwise.integrations.lightning import LayerwiseCallback

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    class Sharded(lightning.LightningModule):
        def __init__(self, case: str) -> None:
            super().__init__()
            self.case, self.net = case, _net()

        def configure_model(self) -> None:
            layerwise.fsdp.shard(self.net, mesh=self.device_mesh["data_parallel"])

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return _optimizer(self.case, self.net)

    mine = [i for i in range(2 * BATCH * BATCHES) if (i // BATCH) % 2 == rank]  # this rank's half of each batch
    for case in CASES:
        module = Sharded(case)
        technique = (lambda m, opt: _freezeout(m.net, opt)) if case == "freezeout" else None
        trainer = lightning.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
            max_epochs=EPOCHS,
            callbacks=[LayerwiseCallback(technique, log=False)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
        )
        trainer.fit(module, DataLoader(Subset(_data(), mine), batch_size=BATCH, shuffle=False))
        out[(case, rank)] = [p.full_tensor().detach().clone() for p in module.net.parameters()]


def _single(case: str) -> list[torch.Tensor]:
    net = _net()
    opt = _optimizer(case, net)
    technique = _freezeout(net, opt) if case == "freezeout" else None
    for _ in range(EPOCHS):
        for x, y in DataLoader(_data(), batch_size=2 * BATCH, shuffle=False):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            if isinstance(opt, layerwise.HiDLR):
                opt.step(lambda x=x, y=y: nn.functional.cross_entropy(net(x), y))
            else:
                opt.step()
            if technique is not None:
                technique.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.fixture(scope="module")
def lightning_runs():
    port = free_port()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    return dict(out)


@pytest.mark.parametrize("case", CASES)
def test_lightning_fsdp2_two_processes_equal_one_loop(case, lightning_runs):
    single = _single(case)
    for rank in (0, 1):
        for a, b in zip(lightning_runs[(case, rank)], single, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
