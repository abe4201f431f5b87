"""Hi-DLR under torch.distributed: probe losses are averaged, so every rank takes the same LRs."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from layerwise import HiDLR
from layerwise.distributed import leave_group
from parallel_cases import free_port


def _worker(rank: int, world: int, port: int, sync: bool, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    groups = [{"params": model[0].parameters(), "name": "a"}, {"params": model[2].parameters(), "name": "b"}]
    opt = HiDLR(torch.optim.SGD(groups, lr=0.01), update_every=1, gamma=0.0, sync=sync)
    g = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    for _ in range(3):
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step(lambda x=x, y=y: nn.functional.mse_loss(model(x), y))
    out[rank] = list(opt.eta)
    leave_group()


def _run(sync: bool) -> list:
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, free_port(), sync, out), nprocs=2, join=True)
    return [out[0], out[1]]


def test_probe_losses_are_averaged_across_ranks():
    synced = _run(True)
    assert synced[0] == synced[1]
    unsynced = _run(False)
    assert unsynced[0] != unsynced[1]
