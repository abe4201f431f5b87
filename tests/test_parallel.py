"""Tests of :mod:`layerwise.compare.parallel`: ``--nproc`` / ``--fsdp`` checked before anything loads, a rank's slice.

Nothing here starts a process: a torchrun launch is faked with ``WORLD_SIZE`` and ``RANK``.
"""

import argparse

import pytest
import torch
from torch import nn

import layerwise.compare.parallel as parallel
from blobs import blobs_task
from layerwise import cli
from layerwise.compare.methods import METHODS, Method, Setup, register_method
from layerwise.compare.parallel import Parallel, check_parallel, engine_of, launched_world
from layerwise.compare.session import check_request
from layerwise.tasks import TASKS, register_task

# tests/test_engines.py registers the same task
TASK = (
    TASKS.get("nproc-blobs")
    if "nproc-blobs" in TASKS
    else register_task(blobs_task("nproc-blobs", batch_size=27, train_size=244))
)


@pytest.fixture
def alone(monkeypatch):
    """This process outside any process group, whatever ran before."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(parallel.dist, "is_initialized", lambda: False)


@pytest.fixture
def torchrun(monkeypatch):
    """A fake torchrun launch: rank 1 of a world of 2, no group initialised yet."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(parallel.dist, "is_initialized", lambda: False)


def _sgd(build, settings):
    return Setup(build.optimizer())


def test_nproc_bad_input_is_refused_naming_the_flag(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--task", "nproc-blobs", "--nproc", "0"])
    assert "--nproc: must be an int >= 1, got '0'" in capsys.readouterr().err
    for bad in (0, -2, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="--nproc"):
            check_request("nproc-blobs", ["baseline"], nproc=bad)
    with pytest.raises(ValueError, match="--fsdp: needs --nproc N"):
        check_request("nproc-blobs", ["baseline"], fsdp=True)
    assert cli.main(["compare", "--task", "nproc-blobs", "--fsdp"]) == 2
    assert "--fsdp: needs --nproc N" in capsys.readouterr().err
    with pytest.raises(TypeError, match="--fsdp"):
        check_request("nproc-blobs", ["baseline"], nproc=2, fsdp="yes")
    with pytest.raises(ValueError, match="--nproc: 28 processes share each batch of 27 examples"):
        check_request("nproc-blobs", ["baseline"], nproc=28)
    register_method(Method("serial-only", "no data parallelism", _sgd, not_parallel={"ddp": "it cannot"}))
    try:
        with pytest.raises(
            ValueError, match="--nproc: method 'serial-only' cannot run data-parallel with ddp: it cannot"
        ):
            check_request("nproc-blobs", ["baseline", "serial-only"], nproc=2)
        check_request("nproc-blobs", ["serial-only"], nproc=1)  # one process: no engine, nothing refused
    finally:
        METHODS.unregister("serial-only")
    with pytest.raises(ValueError, match=r"--fsdp: method 'dog' cannot run data-parallel with fsdp: .*deep-copies"):
        check_parallel(2, True, None, ["baseline", "dog"])
    with pytest.raises(ValueError, match="--study: runs in one process"):
        cli._compare(cli_args(["compare", "--study", "llr", "--nproc", "2"]))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="--nproc: 3, but this process is one of a group of 2"):
        check_request("nproc-blobs", ["baseline"], nproc=3)
    with pytest.raises(ValueError, match="torchrun: launch one comparison"):
        cli._compare(cli_args(["compare", "--methods", "baseline"]))


def cli_args(argv):
    """The parsed arguments of ``layerwise ARGV`` (to call a handler without its error printing)."""
    parser = argparse.ArgumentParser(prog="layerwise")
    sub = parser.add_subparsers(dest="command", required=True)
    cli._add_compare(sub)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("nproc", "fsdp", "engine"),
    [(None, False, None), (1, False, None), (2, False, "ddp"), (8, False, "ddp"), (1, True, "fsdp"), (2, True, "fsdp")],
)
def test_engine_of_each_configuration(nproc, fsdp, engine):
    assert engine_of(nproc, fsdp) == engine


@pytest.mark.parametrize(
    ("nproc", "fsdp", "expected"),
    [(None, False, (None, None)), (1, False, (1, None)), (2, False, (2, "ddp")), (1, True, (1, "fsdp"))],
)
def test_check_parallel_returns_nproc_and_engine(nproc, fsdp, expected, alone):
    assert check_parallel(nproc, fsdp, TASK, ["baseline", "freezeout"]) == expected


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_check_parallel_refuses_a_bad_nproc_naming_it(bad, alone):
    with pytest.raises((ValueError, TypeError), match=r"^--nproc: "):
        check_parallel(bad, False)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_check_parallel_refuses_an_fsdp_that_is_not_a_bool(bad, alone):
    with pytest.raises(TypeError, match=r"^--fsdp: expected True or False"):
        check_parallel(2, bad)


@pytest.mark.parametrize(("fsdp", "flag"), [(False, "--nproc"), (True, "--fsdp")])
def test_check_parallel_refusals_name_the_flag_that_asked_for_processes(fsdp, flag, alone, monkeypatch):
    with pytest.raises(ValueError, match=f"^{flag}: 28 processes share each batch of 27 examples; use at most 27"):
        check_parallel(28, fsdp, TASK)
    with pytest.raises(ValueError, match=f"^{flag}: method 'freezeout\\+cache' cannot run data-parallel with"):
        check_parallel(2, fsdp, TASK, ["baseline", "freezeout+cache"])
    monkeypatch.setattr(parallel.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(ValueError, match=f"^{flag}: starting the processes needs the fork start method"):
        check_parallel(2, fsdp)
    monkeypatch.setattr(parallel.dist, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"^{flag}: this torch build has no torch.distributed"):
        check_parallel(2, fsdp)


def test_one_process_refuses_nothing_a_process_group_would(alone, monkeypatch):
    monkeypatch.setattr(parallel.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert check_parallel(1, False, blobs_task("one-row", batch_size=1), ["freezeout+cache"]) == (1, None)


def test_check_parallel_under_torchrun_takes_its_world(torchrun, monkeypatch):
    monkeypatch.setattr(parallel.multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # torchrun starts them
    assert check_parallel(None, False) == (2, "ddp")
    assert check_parallel(2, False) == (2, "ddp")
    assert check_parallel(None, True) == (2, "fsdp")  # no --nproc needed: the group is torchrun's
    with pytest.raises(ValueError, match=r"^--nproc: 1, but this process is one of a group of 2"):
        check_parallel(1, False)


def test_launched_world_reads_torchrun_or_an_initialised_group(alone, monkeypatch):
    assert launched_world() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_world() is None  # torchrun sets both
    monkeypatch.setenv("RANK", "3")
    assert launched_world() == 4
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match=r"^WORLD_SIZE: expected an int .*got 'four'"):
        launched_world()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(parallel.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(parallel.dist, "get_world_size", lambda: 3)
    assert launched_world() == 3


def test_each_rank_takes_its_contiguous_slice_weighted_by_its_share():
    batch = (torch.arange(5), {"ids": torch.arange(10).reshape(5, 2), "mask": [torch.ones(5)]})
    first, weight0 = Parallel(0, 2).split(batch)
    second, weight1 = Parallel(1, 2).split(batch)
    assert first[0].tolist() == [0, 1] and second[0].tolist() == [2, 3, 4]
    assert first[1]["ids"].tolist() == [[0, 1], [2, 3]] and second[1]["mask"][0].shape == (3,)
    assert (weight0, weight1) == (pytest.approx(0.8), pytest.approx(1.2))  # they average to 1: the global mean


def test_a_rank_left_without_an_example_joins_with_weight_0():
    rows, weight = Parallel(0, 2).split(torch.tensor([[7.0]]))
    assert rows.tolist() == [[7.0]] and weight == 0.0
    assert Parallel(1, 2).split(torch.tensor([[7.0]]))[1] == 2.0


def test_ddp_shards_nothing_and_fsdp_trains_the_sharded_model_itself():
    model = nn.Linear(2, 2)
    before = [p.clone() for p in model.parameters()]
    Parallel(0, 2, "ddp").shard(model)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert Parallel(0, 2, "fsdp").prepare(model) is model
