"""Every technique on an FSDP2 (``fully_shard``) model, 2 gloo processes, equals one process with
the global batch; frozen blocks are not reduce-scattered; DCP checkpoints resume, at 2 ranks and 1.

Tolerance: reduce-scatter averages the ranks' gradients in another order than one process sums
its batch, so parameters agree to rtol 1e-5 / atol 1e-6 (as under DDP), not bitwise. A resumed
run and an uninterrupted one at the same world size agree bitwise.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.tensor import DTensor

import layerwise
import parallel_cases as cases
from layerwise import fsdp
from layerwise.distributed import leave_group

RESUMED = ("freezeout", "multirate", "hidlr", "subsets", "secant")
SAVE_AT = 5  # mid-cycle for Multirate (k=3), after FreezeOut's first freeze, between Hi-DLR probes


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def _train(case: str, rank: int | None, world: int = 2, *, frozen: str = "sharded", trace_sharded: bool = False):
    """One run of ``case``: sharded over the default group unless ``rank`` is None."""
    net = cases.net()
    if trace_sharded:  # the partition built on the sharded model
        fsdp.shard(net, frozen=frozen)
        opt, technique = cases.build(case, net)
    else:  # the partition built on the plain model, then sharded
        opt, technique = cases.build(case, net, None if rank is None else lambda m: fsdp.shard(m, frozen=frozen))
    monitor = layerwise.LayerMonitor(opt, every=2, quantities=("grad_norm", "weight_norm", "rotation"))
    sent = []
    for step in range(cases.STEPS):
        before = fsdp.comm_bytes(net) if rank is not None else None
        cases.take_step(net, opt, *cases.batch(step, rank, world))
        if technique is not None:
            technique.step()
        if rank is not None:
            after = fsdp.comm_bytes(net)
            sent.append({key: after[key] - before[key] for key in after})
    frozen_state = [
        (p.grad is None, p not in opt.state) for p in net.parameters() if not p.requires_grad
    ]  # a frozen parameter: no gradient, no optimizer state
    return {
        "params": [_full(p) for p in net.parameters()],
        "lrs": [g["lr"] for g in opt.param_groups],
        "monitor": monitor.history,
        "sent": sent,
        "frozen_state": frozen_state,
    }


def _checkpointed(case: str, rank: int, world: int, directory: str, phase: str):
    """``first``: train to SAVE_AT, save, train on (the uninterrupted run); ``second``: a fresh run
    loads the checkpoint and trains the rest."""
    net = cases.net()
    opt, technique = cases.build(case, net, fsdp.shard)
    techniques = {} if technique is None else {"technique": technique}
    path = os.path.join(directory, case)
    start = 0
    if phase == "second":
        fsdp.load(path, net, opt, **techniques)
        start = SAVE_AT
    for step in range(start, cases.STEPS):
        if phase == "first" and step == SAVE_AT:
            fsdp.save(path, net, opt, **techniques)
        cases.take_step(net, opt, *cases.batch(step, rank, world))
        if technique is not None:
            technique.step()
    return [_full(p) for p in net.parameters()]


def _bad_input(rank: int) -> dict[str, str]:
    """The errors a rank sees for input FSDP cannot serve."""
    from torch.distributed.device_mesh import DeviceMesh

    errors = {}
    net = cases.net()
    own = DeviceMesh("cpu", [rank])  # a one-rank mesh: its DTensors are on another mesh than the default's
    from torch.distributed.fsdp import fully_shard

    fully_shard(net[0], mesh=own)
    fully_shard(net)
    groups = [{"params": list(net.parameters()), "name": "all"}]
    opt = layerwise.SecantLR(torch.optim.SGD(groups, lr=0.1))
    cases.take_step(net, opt, *cases.batch(0, rank, 2))
    try:
        cases.take_step(net, opt, *cases.batch(1, rank, 2))
    except ValueError as err:
        errors["meshes"] = str(err)
    try:
        fsdp.shard(net)
    except TypeError as err:
        errors["twice"] = str(err)
    try:
        fsdp.shard(cases.net(), blocks=["nope"])
    except ValueError as err:
        errors["blocks"] = str(err)
    return errors


def _worker(rank: int, world: int, port: int, phase: str, directory: str, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    if phase == "first":
        for case in cases.CASES:
            out[(case, rank)] = _train(case, rank)
        out[("traced", rank)] = _train("freezeout", rank, trace_sharded=True)
        out[("gathered", rank)] = _train("freezeout", rank, frozen="gathered")
        out[("gathered-unfreezing", rank)] = _train("unfreezing", rank, frozen="gathered")
        out[("bad", rank)] = _bad_input(rank)
    for case in RESUMED:
        out[(phase, world, case, rank)] = _checkpointed(case, rank, world, directory, phase)
    leave_group()


def _spawn(world: int, phase: str, directory: str, out) -> None:
    port = cases.free_port()
    mp.spawn(_worker, args=(world, port, phase, directory, out), nprocs=world, join=True)


@pytest.fixture(scope="module")
def runs():
    out = mp.Manager().dict()
    with tempfile.TemporaryDirectory() as directory:
        _spawn(2, "first", directory, out)
        _spawn(2, "second", directory, out)  # new processes resume from the sharded checkpoint
        _spawn(1, "second", directory, out)  # and a one-rank run loads it (DCP reshards)
    return dict(out)


def _assert_close(params, reference, **tolerance) -> None:
    for a, b in zip(params, reference, strict=True):
        torch.testing.assert_close(a, b, **(tolerance or {"rtol": 1e-5, "atol": 1e-6}))


@pytest.mark.parametrize("case", cases.CASES)
def test_fsdp_two_processes_equal_one_with_the_global_batch(case, runs):
    single = _train(case, None)
    for rank in (0, 1):
        run = runs[(case, rank)]
        _assert_close(run["params"], single["params"])
        assert run["lrs"] == pytest.approx(single["lrs"], rel=1e-5)
        for quantity, per_group in single["monitor"].items():  # norms and rotations summed over the shards
            for name, values in per_group.items():
                assert run["monitor"][quantity][name] == pytest.approx(values, rel=1e-4, abs=1e-7), (quantity, name)
    assert runs[(case, 0)]["lrs"] == runs[(case, 1)]["lrs"]  # every rank sets the same LRs
    assert runs[(case, 0)]["monitor"] == runs[(case, 1)]["monitor"]


def test_fsdp_partition_traced_on_the_sharded_model(runs):
    single = _train("freezeout", None)
    _assert_close(runs[("traced", 0)]["params"], single["params"])


def _sizes(world: int = 2) -> list[int]:
    """Bytes of each parameter as FSDP2 moves it: dim 0 padded to a multiple of the world size."""
    return [-(-p.shape[0] // world) * world * p[0].numel() * 4 for p in cases.net().parameters()]


def test_fsdp_frozen_and_slow_blocks_are_not_reduce_scattered(runs):
    sizes = _sizes()
    every, head = sum(sizes), sum(sizes[-2:])
    scattered = [s["reduce_scatter"] for s in runs[("multirate", 0)]["sent"]]
    assert scattered == [every, head, head] * 3  # the slow part on refresh steps only
    scattered = [s["reduce_scatter"] for s in runs[("freezeout", 0)]["sent"]]
    assert scattered[0] == every and scattered[-1] == head  # FreezeOut: all, then fewer, then the head
    assert sorted(set(scattered), reverse=True) == [every, every - sum(sizes[:2]), head]
    scattered = [s["reduce_scatter"] for s in runs[("unfreezing", 0)]["sent"]]
    assert scattered[0] == head and scattered[-1] == every
    for rank in (0, 1):
        assert runs[("freezeout", rank)]["frozen_state"] == [(True, True)] * 4  # two layers frozen at the end


def test_fsdp_frozen_blocks_kept_gathered_are_not_all_gathered_again(runs):
    sharded, gathered = runs[("freezeout", 0)], runs[("gathered", 0)]
    _assert_close(gathered["params"], sharded["params"], rtol=0, atol=0)
    sharded_bytes = [s["all_gather"] for s in sharded["sent"]]
    gathered_bytes = [s["all_gather"] for s in gathered["sent"]]
    sizes = _sizes()
    assert gathered_bytes[0] == sharded_bytes[0]  # nothing frozen yet: the same collectives
    assert sum(gathered_bytes) < sum(sharded_bytes)
    assert gathered_bytes[-1] == sharded_bytes[-1] - sum(sizes[:4])  # both frozen layers stay whole
    single = _train("unfreezing", None)  # blocks that unfreeze are sharded again and train
    _assert_close(runs[("gathered-unfreezing", 0)]["params"], single["params"])


def test_fsdp_bench_reports_no_reduce_scatter_gradient_or_state_for_frozen_blocks():
    from layerwise.bench.fsdp_bench import run_fsdp_bench

    result = run_fsdp_bench(width=16, depth=3, batch=4, warmup=1, repeats=1, number=1)
    block, head = (16 * 16 + 16) * 4, (16 * 10 + 10) * 4  # dims divide by 2: no padding
    every = 3 * block + head
    for way in ("fully_shard", "shard", "gathered"):
        phases = {phase: result["phases"][phase][way] for phase in result["phases"]}
        scattered = {phase: v["reduce_scatter_bytes"] for phase, v in phases.items()}
        assert scattered == {"all_trainable": every, "frozen_prefix": block + head, "head_only": head}
        assert all(v["frozen_blocks_clean"] for v in phases.values())
        assert phases["head_only"]["grad_bytes"] == head // 2  # this rank's half of the head's gradient
        assert phases["head_only"]["optimizer_state_bytes"] == head  # AdamW's two moments of its half
    gathered = {way: v["all_gather_bytes"] for way, v in result["phases"]["head_only"].items()}
    assert gathered["fully_shard"] == every + head + block  # forward, the head for backward, a prefetched block
    assert gathered["shard"] == every + head  # no prefetch of the frozen prefix
    assert gathered["gathered"] == 2 * head  # the frozen blocks stay whole
    assert result["phases"]["head_only"]["gathered"]["kept_whole_bytes"] == 3 * block


@pytest.mark.parametrize("case", RESUMED)
def test_fsdp_checkpoint_resumes_bitwise_and_at_another_world_size(case, runs):
    for rank in (0, 1):
        _assert_close(runs[("second", 2, case, rank)], runs[("first", 2, case, rank)], rtol=0, atol=0)
    _assert_close(runs[("second", 1, case, 0)], runs[("first", 2, case, 0)])  # 1 rank, the global batch


def test_fsdp_refuses_mixed_meshes_and_bad_shard_arguments(runs):
    errors = runs[("bad", 0)]
    assert "different device meshes" in errors["meshes"] and "param group 'all'" in errors["meshes"]
    assert "already sharded" in errors["twice"]
    assert "blocks: no submodule named 'nope'" in errors["blocks"]


def test_fsdp_shard_needs_a_process_group_and_a_plain_model():
    with pytest.raises(RuntimeError, match="init_process_group first"):
        fsdp.shard(cases.net())
    with pytest.raises(ValueError, match=r"frozen: .*'gathered'"):
        fsdp.shard(cases.net(), frozen="kept")
    with pytest.raises(TypeError, match=r"model: expected an nn\.Module"):
        fsdp.shard("net")
    with pytest.raises(ValueError, match=r"not sharded by layerwise\.fsdp\.shard"):
        fsdp.comm_bytes(nn.Linear(2, 2))


def test_fsdp1_flat_parameters_are_refused_with_a_pointer_to_fsdp2():
    from torch.distributed.fsdp import FullyShardedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    try:
        with pytest.warns(UserWarning, match="NO_SHARD"):
            model = FullyShardedDataParallel(cases.net(), device_id=torch.device("cpu"))
        opt = torch.optim.SGD([{"params": list(model.parameters()), "name": "flat"}], lr=0.1)
        for build in (
            lambda: layerwise.by_layer(model, sample_input=torch.zeros(2, 6)),
            lambda: layerwise.HiDLR(opt),
            lambda: layerwise.Freezer(model, opt),
            lambda: layerwise.LayerwiseLR(opt, 10),
            lambda: layerwise.LayerMonitor(opt),
            lambda: fsdp.shard(model),
        ):
            with pytest.raises(TypeError, match=r"FSDP1|FullyShardedDataParallel"):
                build()
    finally:
        leave_group()
