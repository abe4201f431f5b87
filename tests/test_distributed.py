"""Every technique under data parallelism (gloo, 2 processes) equals one process with the global batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import parallel_cases as cases
from layerwise.distributed import leave_group, wrap

CASES = ("llr", "freezeout", "unfreezing", "multirate", "hidlr", "secant", "unused")


class _WithUnused(nn.Module):
    """The test net plus a registered layer its forward never calls (DDP needs find_unused_parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = cases.net()
        self.unused = nn.Linear(16, 16)

    def forward(self, x):
        return self.net(x)


def _train(case: str, rank: int | None):
    net = _WithUnused() if case == "unused" else cases.net()
    model = net if rank is None else wrap(net, find_unused_parameters=case == "unused")
    opt, technique = cases.build(case, net)
    sent = []
    for step in range(cases.STEPS):
        x, y = cases.batch(step, rank, 2)  # each rank takes its half of the global batch
        before = model.bytes_reduced if rank is not None else 0
        cases.take_step(model, opt, x, y)
        if technique is not None:
            technique.step()
        sent.append(model.bytes_reduced - before if rank is not None else 0)
    lrs = [g["lr"] for g in opt.param_groups]
    replicas = model.replicas if rank is not None else 0
    return [p.detach().clone() for p in net.parameters()], lrs, sent, replicas


def _worker(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    for case in CASES:
        out[(case, rank)] = _train(case, rank)
    leave_group()


@pytest.fixture(scope="module")
def two_ranks():
    port = cases.free_port()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    return dict(out)


@pytest.mark.parametrize("case", CASES)
def test_two_processes_equal_one_with_the_global_batch(case, two_ranks):
    single, single_lrs, _, _ = _train(case, None)
    for rank in (0, 1):
        params, lrs, _, _ = two_ranks[(case, rank)]
        for a, b in zip(params, single):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert lrs == pytest.approx(single_lrs, rel=1e-5)
    assert two_ranks[(case, 0)][1] == two_ranks[(case, 1)][1]  # every rank applies the same LRs


def test_frozen_and_slow_parameters_are_not_all_reduced(two_ranks):
    net = cases.net()
    sizes = [p.numel() * 4 for p in net.parameters()]
    _, _, sent, replicas = two_ranks[("multirate", 0)]
    head = sum(sizes[-2:])
    assert sent == [sum(sizes), head, head] * 3  # slow steps everything, fast steps the head only
    assert replicas == 2
    _, _, sent, replicas = two_ranks[("freezeout", 0)]
    assert sent[0] == sum(sizes) and sent[-1] == head and replicas == 3  # all, then without layer 0, then head
    _, _, sent, _ = two_ranks[("unfreezing", 0)]
    assert sent[0] == head and sent[-1] == sum(sizes)


def test_wrap_refuses_bad_input():
    with pytest.raises(TypeError, match=r"module: expected an nn\.Module"):
        wrap("model")
    with pytest.raises(RuntimeError, match="init_process_group first"):
        wrap(cases.net())


def test_the_ddp_bench_counts_only_trainable_bytes_with_wrap():
    from layerwise.bench.ddp_bench import run_ddp_bench

    result = run_ddp_bench(width=16, depth=3, batch=4, warmup=1, repeats=1, number=1)
    every = (3 * (16 * 16 + 16) + 16 * 10 + 10) * 4
    sent = {phase: result["phases"][phase]["bytes_all_reduced_per_step"] for phase in result["phases"]}
    assert sent["all_trainable"] == {"wrap": every, "find_unused": every}
    assert sent["frozen_prefix"] == {"wrap": (16 * 16 + 16 + 16 * 10 + 10) * 4, "find_unused": every}
    assert sent["head_only"] == {"wrap": (16 * 10 + 10) * 4, "find_unused": every}
    with pytest.raises(ValueError, match="depth: must be >= 3"):
        run_ddp_bench(depth=2)
