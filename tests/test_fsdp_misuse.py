"""FSDP2 misuse ends in one clear error before anything changes, on 2 gloo processes:

* ``fsdp.load`` of a checkpoint saved with other technique settings refuses before the model's
  weights or the optimizer's state change; a missing checkpoint is a ``FileNotFoundError`` (an
  ``Exception``, not torch's ``BaseException``) naming the path, on every rank;
* an optimizer or technique built before ``fully_shard`` is refused when it next steps, with the fix.
"""

from __future__ import annotations

import logging
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

import layerwise
import parallel_cases as cases
from layerwise import fsdp
from layerwise.distributed import leave_group

STALE_CASES = ("multirate", "subsets", "freezeout", "hidlr", "secant", "llr", "unfreezing")
"""Techniques built before sharding; each must refuse when it next steps."""
FIX = "build the optimizer and the technique after layerwise.fsdp.shard / fully_shard"


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def _freezeout(t0: float):
    """A sharded model, its optimizer and FreezeOut(t0), built in the supported order."""
    net = cases.net()
    part = layerwise.by_layer(net, sample_input=torch.zeros(2, 6))
    fsdp.shard(net)
    opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
    return net, opt, layerwise.FreezeOut(net, opt, cases.STEPS, t0=t0, strategy="linear")


def _snapshot(net, opt) -> list[torch.Tensor]:
    momenta = [opt.state[p]["momentum_buffer"] for g in opt.param_groups for p in g["params"] if p in opt.state]
    return [_full(t) for t in [*net.parameters(), *momenta]]


def _errors(run) -> tuple[str, str]:
    try:
        run()
    except BaseException as err:  # torch's CheckpointException is a BaseException
        return type(err).__name__, str(err)
    return "", ""


def _loads(rank: int, directory: str) -> dict:
    net, opt, technique = _freezeout(0.3)
    for step in range(2):
        cases.take_step(net, opt, *cases.batch(step, rank, 2))
        technique.step()
    path = os.path.join(directory, "saved")
    fsdp.save(path, net, opt, freezeout=technique)
    net, opt, other = _freezeout(0.5)  # other settings, trained once: weights and momenta differ
    cases.take_step(net, opt, *cases.batch(5, rank, 2))
    other.step()
    before = _snapshot(net, opt)
    out = {"settings": _errors(lambda: fsdp.load(path, net, opt, freezeout=other))}
    out["unchanged"] = all(torch.equal(a, b) for a, b in zip(before, _snapshot(net, opt), strict=True))
    out["step_count"] = other.scheduler.last_epoch
    logged = _Logged()
    logging.getLogger().addHandler(logged)  # DCP logs each rank's failed metadata read on the root logger
    try:
        out["missing"] = _errors(lambda: fsdp.load(os.path.join(directory, "nope"), net, opt, freezeout=other))
    finally:
        logging.getLogger().removeHandler(logged)
    out["logged"] = logged.messages
    blocked = os.path.join(directory, "a-file")
    if rank == 0:
        open(blocked, "w").close()
    dist.barrier()
    out["unwritable"] = _errors(lambda: fsdp.save(os.path.join(blocked, "ckpt"), net, opt, freezeout=other))
    return out


class _Logged(logging.Handler):
    """The messages logged while it is attached."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _stale(case: str, rank: int) -> dict:
    net = cases.net()
    opt, technique = cases.build(case, net)  # built on the plain model: the misuse
    fsdp.shard(net)
    before = [_full(p) for p in net.parameters()]

    def steps() -> None:
        for step in range(3):
            cases.take_step(net, opt, *cases.batch(step, rank, 2))
            if technique is not None:
                technique.step()

    error = _errors(steps)
    return {"error": error, "moved": any(not torch.equal(a, _full(p)) for a, p in zip(before, net.parameters()))}


def _worker(rank: int, world: int, port: int, directory: str, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    out[("load", rank)] = _loads(rank, directory)
    for case in STALE_CASES:
        out[("stale", case, rank)] = _stale(case, rank)
    leave_group()


@pytest.fixture(scope="module")
def runs():
    out = mp.Manager().dict()
    with tempfile.TemporaryDirectory() as directory:
        mp.spawn(_worker, args=(2, cases.free_port(), directory, out), nprocs=2, join=True)
    return dict(out)


def test_fsdp_load_checks_every_technique_before_it_changes_the_model_or_the_optimizer(runs):
    for rank in (0, 1):
        run = runs[("load", rank)]
        kind, message = run["settings"]
        assert kind == "ValueError", message
        assert message.startswith("freezeout: state_dict: saved with t0=0.3, this FreezeOut has t0=0.5"), message
        assert "nothing was loaded" in message
        assert run["unchanged"]  # weights and momenta as they were
        assert run["step_count"] == 1


def test_fsdp_load_of_a_missing_checkpoint_is_one_file_not_found_error_naming_the_path(runs):
    messages = set()
    for rank in (0, 1):
        kind, message = runs[("load", rank)]["missing"]
        assert kind == "FileNotFoundError", (kind, message[:300])
        assert message.startswith("path: no checkpoint at '") and message.rstrip().count("\n") == 0
        assert message.split("'")[1].endswith("nope")
        assert runs[("load", rank)]["logged"] == []  # no rank logs DCP's tracebacks
        messages.add(message)
    assert len(messages) == 1  # the same error on every rank


def test_fsdp_save_that_cannot_write_is_one_value_error_naming_the_path(runs):
    for rank in (0, 1):
        kind, message = runs[("load", rank)]["unwritable"]
        assert kind == "ValueError", (kind, message[:300])
        assert message.startswith("path: could not write the checkpoint '") and "a-file" in message
        assert "Traceback" not in message and "Error: " in message  # the first failure's type and text


@pytest.mark.parametrize("case", STALE_CASES)
def test_fsdp_optimizer_built_before_sharding_is_refused_when_it_steps(case, runs):
    for rank in (0, 1):
        kind, message = runs[("stale", case, rank)]["error"]
        assert kind == "ValueError", (kind, message)
        assert message.startswith("optimizer: holds parameters that fully_shard has replaced") and FIX in message
        assert not runs[("stale", case, rank)]["moved"]


def test_check_current_passes_current_and_plain_parameters():
    from layerwise._shards import check_current

    check_current(cases.net().parameters(), "optimizer")  # never sharded: nothing to refuse
