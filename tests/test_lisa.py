"""LISA: the algorithm against a hand-written loop, its periods, its optimizer state, exact resume in a new
process, DDP and FSDP2 on two gloo processes, and the input it refuses.

``python tests/test_lisa.py DIR`` is the resume test's second half: a new process loads DIR/checkpoint.pt,
trains the rest of the run and saves the parameters to DIR/final.pt.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import layerwise
from layerwise import LISA, fsdp
from layerwise.distributed import leave_group, wrap

MIDDLE = 8
GAMMA, PERIOD, SEED = 2, 3, 5
STEPS = 4 * PERIOD  # four periods
HALF = 7  # mid-period: the third period's second step


def make_model() -> nn.Sequential:
    """An input layer, ``MIDDLE`` middle layers and a head: ``MIDDLE + 2`` groups of one Linear each."""
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.Tanh()]
    for _ in range(MIDDLE):
        layers += [nn.Linear(8, 8), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(8, 3))


def batch(step: int, rank: int | None = None, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step`` (16 examples), or rank ``rank``'s slice of it."""
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    if rank is None:
        return x, y
    size = 16 // world
    return x[rank * size : (rank + 1) * size], y[rank * size : (rank + 1) * size]


def build(model: nn.Module, gamma: int = GAMMA, prepare=None) -> tuple[torch.optim.Optimizer, LISA]:
    """AdamW over ``model``'s layers and LISA on it; ``prepare(model)`` (sharding) runs after the partition."""
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 6))
    if prepare is not None:
        prepare(model)
    opt = torch.optim.AdamW(part.param_groups(lr=0.01), foreach=False)
    return opt, LISA(model, opt, gamma, PERIOD, seed=SEED)


def take_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def trained(model: nn.Module) -> frozenset[str]:
    """The groups (by_layer's names: the Linear's index) whose parameters require grad."""
    return frozenset(n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def train_lisa(steps: int = STEPS, gamma: int = GAMMA):
    """LISA's run: per step the trained groups (before the step), the parameters after it, and the losses."""
    model = make_model()
    opt, lisa = build(model, gamma)
    sets, params, losses = [], [], []
    for step in range(steps):
        sets.append(trained(model))
        losses.append(take_step(model, opt, *batch(step)))
        params.append([p.detach().clone() for p in model.parameters()])
    return model, opt, lisa, sets, params, losses


def reference(steps: int = STEPS):
    """The algorithm by hand: every ``PERIOD`` steps draw ``GAMMA`` middle layers (a permutation's first ones,
    from the same seeded generator), train them with the first and last layers; a layer drawn after being out
    gets a new AdamW (fresh state), one drawn again keeps its own."""
    model = make_model()
    linears = {str(i): m for i, m in enumerate(model) if isinstance(m, nn.Linear)}
    names = list(linears)
    middle = names[1:-1]
    g = torch.Generator().manual_seed(SEED)
    optimizers: dict[str, torch.optim.Optimizer] = {}
    sets, params = [], []
    for step in range(steps):
        if step % PERIOD == 0:
            picked = torch.randperm(len(middle), generator=g)[:GAMMA].tolist()
            active = {names[0], names[-1], *(middle[i] for i in picked)}
            for name, layer in linears.items():
                layer.requires_grad_(name in active)
                if name not in active:
                    optimizers.pop(name, None)
                elif name not in optimizers:
                    optimizers[name] = torch.optim.AdamW(layer.parameters(), lr=0.01, foreach=False)
        sets.append(frozenset(active))
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        for name in active:
            optimizers[name].step()
        params.append([p.detach().clone() for p in model.parameters()])
    return sets, params


def test_lisa_trains_what_the_hand_written_algorithm_trains_bitwise():
    *_, sets, params, _ = train_lisa()
    ref_sets, ref_params = reference()
    assert sets == ref_sets
    for step, (ours, theirs) in enumerate(zip(params, ref_params)):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b), step


def test_the_trained_set_changes_every_period_only():
    model, _, lisa, sets, params, _ = train_lisa()
    for step in range(1, STEPS):
        if step % PERIOD:
            assert sets[step] == sets[step - 1], step
    draws = [sets[k * PERIOD] for k in range(STEPS // PERIOD)]
    assert len(set(draws)) > 1  # seed 5 draws more than one set in four periods
    for active in draws:
        assert {"0", str(2 * MIDDLE + 2)} <= active and len(active) == 2 + GAMMA
    # a sampled-out layer does not move during its period
    for step in range(1, STEPS):
        for i, layer in enumerate(m for m in model if isinstance(m, nn.Linear)):
            name = str(list(model).index(layer))
            if name not in sets[step]:
                weight = 2 * i
                assert torch.equal(params[step][weight], params[step - 1][weight]), (step, name)
    assert lisa.step_count == STEPS and lisa.periods == STEPS // PERIOD
    assert lisa.trainable_sets() == 28  # 8 choose 2


def test_gamma_changes_the_loss():
    *_, one = train_lisa(gamma=1)
    *_, two = train_lisa(gamma=2)
    *_, every = train_lisa(gamma=MIDDLE)
    assert one[0] == two[0] == every[0]  # the same first forward
    assert len({round(one[-1], 6), round(two[-1], 6), round(every[-1], 6)}) == 3


def test_optimizer_state_is_freed_when_sampled_out_and_fresh_when_back():
    model = make_model()
    opt, lisa = build(model)
    full_model = make_model()
    full_opt = torch.optim.AdamW(full_model.parameters(), lr=0.01)
    since = {}  # group -> steps trained since it last came back (its state's step count)
    returns = stays = 0
    for step in range(2 * STEPS):
        before = set(lisa.active)
        take_step(full_model, full_opt, *batch(step))
        take_step(model, opt, *batch(step))
        for name in (*lisa.always_on, *before):
            since[name] = since.get(name, 0) + 1
        if step % PERIOD == PERIOD - 1:  # a new draw
            returns += len(set(lisa.active) - before)
            stays += len(set(lisa.active) & before)
            for name in before - set(lisa.active):
                del since[name]  # sampled out: its state is gone
            since.update({name: 0 for name in set(lisa.active) - before})  # back: no state until it steps
        holding = {n.split(".")[0] for n, p in model.named_parameters() if p in opt.state}
        assert holding == {n for n, count in since.items() if count}, step  # the groups trained since their return
        for n, p in model.named_parameters():
            if p in opt.state:
                assert int(opt.state[p]["step"]) == since[n.split(".")[0]], (step, n)  # fresh on return
            if n.split(".")[0] in lisa.frozen:
                assert p.grad is None and not p.requires_grad, (step, n)
    assert returns > 0 and stays > 0  # both cases happened: a layer back after being out, one drawn twice running
    trained_bytes = sum(2 * p.numel() * p.element_size() + 4 for p in model.parameters() if p in opt.state)
    assert state_bytes(opt) == trained_bytes < state_bytes(full_opt) / 2  # exp_avg, exp_avg_sq and a step each


# -- exact resume in a new process ---------------------------------------------------------------


def _resume(directory: Path) -> None:
    """The second half: fresh model, optimizer and LISA; the checkpoint loaded; the rest of the run trained."""
    model = make_model()
    opt, lisa = build(model)
    state = torch.load(directory / "checkpoint.pt")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    lisa.load_state_dict(state["lisa"])
    for step in range(HALF, STEPS):
        take_step(model, opt, *batch(step))
    torch.save([p.detach().clone() for p in model.parameters()], directory / "final.pt")


def test_resume_mid_period_in_a_new_process_is_bitwise_exact(tmp_path):
    model = make_model()
    opt, lisa = build(model)
    for step in range(HALF):
        take_step(model, opt, *batch(step))
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "lisa": lisa.state_dict()}
    torch.save(state, tmp_path / "checkpoint.pt")
    assert state["lisa"]["step_count"] % PERIOD and len(state["lisa"]["freezer"]["frozen"]) == MIDDLE - GAMMA
    assert len(state["opt"]["state"]) == 2 * (2 + GAMMA)  # the trained layers' weights and biases only
    subprocess.run([sys.executable, __file__, str(tmp_path)], check=True, timeout=300)
    *_, straight, _ = train_lisa()
    resumed = torch.load(tmp_path / "final.pt")
    assert len(resumed) == len(straight[-1])
    for a, b in zip(resumed, straight[-1]):
        assert torch.equal(a, b)
    # LISA's state loaded before the optimizer's resumes the same (the trained groups keep their state)
    model = make_model()
    opt, lisa = build(model)
    model.load_state_dict(state["model"])
    lisa.load_state_dict(state["lisa"])
    opt.load_state_dict(state["opt"])
    for step in range(HALF, STEPS):
        take_step(model, opt, *batch(step))
    for a, b in zip(model.parameters(), straight[-1]):
        assert torch.equal(a, b)


# -- DDP and FSDP2 on two gloo processes ------------------------------------------------------------


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().clone()


def _train_parallel(engine: str, rank: int):
    """LISA on rank ``rank`` of two: each rank its half of every global batch."""
    net = make_model()
    if engine == "ddp":
        model = wrap(net)
        opt, lisa = build(net)
    else:
        model = net
        opt, lisa = build(net, prepare=fsdp.shard)
    sets, sent = [], []
    for step in range(STEPS):
        sets.append(trained(net))
        before = model.bytes_reduced if engine == "ddp" else 0
        take_step(model, opt, *batch(step, rank, 2))
        sent.append(model.bytes_reduced - before if engine == "ddp" else 0)
    frozen_clean = all(p.grad is None and p not in opt.state for p in net.parameters() if not p.requires_grad)
    return [_full(p) for p in net.parameters()], sets, sent, frozen_clean, tuple(lisa.frozen)


def _worker(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    for engine in ("ddp", "fsdp"):
        out[(engine, rank)] = _train_parallel(engine, rank)
    leave_group()


def test_two_processes_under_ddp_and_fsdp2_equal_one_with_the_global_batch():
    import parallel_cases

    out = mp.Manager().dict()
    mp.spawn(_worker, args=(parallel_cases.free_port(), out), nprocs=2, join=True)
    _, _, _, single_sets, single_params, _ = train_lisa()
    sizes = {name: sum(p.numel() * 4 for p in layer.parameters()) for name, layer in make_model().named_children()}
    for engine in ("ddp", "fsdp"):
        for rank in (0, 1):
            params, sets, sent, frozen_clean, frozen = out[(engine, rank)]
            assert sets == single_sets and frozen_clean and frozen == out[(engine, 0)][4], (engine, rank)
            for a, b in zip(params, single_params[-1]):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    _, sets, sent, _, _ = out[("ddp", 0)]
    assert sent == [sum(sizes[name] for name in active) for active in sets]  # only the trained layers all-reduced


# -- refused input ----------------------------------------------------------------------------------


def _fresh() -> tuple[nn.Sequential, torch.optim.Optimizer]:
    model = make_model()
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 6))
    return model, torch.optim.AdamW(part.param_groups(lr=0.01))


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        (None, {"gamma": 0}, r"^gamma: must be an int between 1 and the number of groups sampled from \(8: "),
        (None, {"gamma": 9}, r"^gamma: must be an int between 1 and the number of groups sampled from \(8: "),
        (None, {"period": 0}, r"^period: must be an int >= 1, got 0"),
        (None, {"always_on": [str(i) for i in range(0, 19, 2)]}, r"^always_on: .* leaves no group to sample"),
        (None, {"always_on": ["0", "nope"]}, r"^always_on: no group named \['nope'\]"),
        (None, {"always_on": "0"}, r"^always_on: expected a list of group names"),
        ("missing", {}, r"^optimizer: holds no param group with \['4\.weight', '4\.bias'\], which require grad"),
        ("frozen", {}, r"^optimizer: holds \['4\.weight'\], frozen before LISA \(requires_grad False\)"),
        ("trained", {}, r"^LISA: starts at step 0, but the optimizer has taken 1 steps"),
    ],
)
def test_refused_input_names_the_argument_and_changes_nothing(change, options, message):
    model, opt = _fresh()
    if change == "missing":  # a group left out of the optimizer
        part = layerwise.by_layer(model, sample_input=torch.zeros(2, 6))
        opt = torch.optim.AdamW([g for g in part.param_groups(lr=0.01) if g["name"] != "4"])
    if change == "frozen":  # a parameter frozen before the optimizer was built over it
        model[4].weight.requires_grad_(False)
    if change == "trained":
        take_step(model, opt, *batch(0))
    before = [(p.requires_grad, p.grad is None) for p in model.parameters()]
    states = len(opt.state)
    settings = {"gamma": GAMMA, "period": PERIOD, **options}
    with pytest.raises(ValueError, match=message):
        LISA(model, opt, settings.pop("gamma"), settings.pop("period"), **settings)
    assert [(p.requires_grad, p.grad is None) for p in model.parameters()] == before
    assert len(opt.state) == states and not opt._optimizer_step_post_hooks and not opt._optimizer_step_pre_hooks


def test_a_state_of_other_settings_is_refused_before_loading():
    model, opt = _fresh()
    lisa = LISA(model, opt, GAMMA, PERIOD, seed=SEED)
    state = lisa.state_dict()
    other_model, other_opt = _fresh()
    other = LISA(other_model, other_opt, GAMMA + 1, PERIOD, seed=SEED)
    frozen = other.frozen
    with pytest.raises(ValueError, match=r"^state_dict: saved with gamma=2, this LISA has gamma=3"):
        other.load_state_dict(state)
    assert other.frozen == frozen
    with pytest.raises(ValueError, match=r"^state_dict\['active'\]: expected 2 of the sampled groups"):
        lisa.load_state_dict({**state, "active": ["0", "2"]})


if __name__ == "__main__":  # the resume test's second half, in a new process
    _resume(Path(sys.argv[1]))


def test_compare_refuses_a_gamma_above_the_tasks_sampled_groups_before_anything_trains(tmp_path):
    """A ``gamma`` only the task's partition can refuse: named with the request, not as a failed run later."""
    from blobs import blobs_task
    from layerwise.compare import check_request

    task = blobs_task("lisa-gamma-blobs")  # 3 groups: the first and last always on, 1 sampled
    with pytest.raises(ValueError, match=r"--set lisa\.gamma: at most the groups sampled from .*1 on task .*got 2"):
        check_request(task, ["baseline", "lisa"], settings={"lisa": {"gamma": 2}}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert check_request(task, ["baseline", "lisa"], settings={"lisa": {"gamma": 1}}, out=tmp_path / "out").methods
