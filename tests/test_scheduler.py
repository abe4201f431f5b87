import io

import pytest
import torch

from layerwise import LayerwiseLR, recipes
from layerwise import schedules as S


def make_optimizer(num_groups=3, lr=0.1, cls=torch.optim.SGD, **kwargs):
    params = [{"params": [torch.nn.Parameter(torch.randn(2))], "lr": lr * (g + 1)} for g in range(num_groups)]
    return cls(params, lr=lr, **kwargs)


SCHEDULES = {
    "constant": lambda k: S.LayerSchedule(S.Cosine()),
    "discriminative": lambda k: S.LayerSchedule(S.OneCycle(), S.Discriminative(2.6)),
    "llr": lambda k: S.LayerSchedule(S.StepDrops(), S.depth_ramp(k)),
    "staggered": lambda k: S.LayerSchedule(S.Constant(), S.StaggeredOneCycle.spaced(k)),
    "per-group": lambda k: S.LayerSchedule([S.Triangular(cycles=3)] * k, S.Discriminative(2.0)),
    "warmup": lambda k: S.LayerSchedule(S.Warmup(S.Cosine(), 0.1), S.Uniform()),
}


def run(optimizer, scheduler, steps):
    trace = []
    for _ in range(steps):
        trace.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return trace


@pytest.mark.parametrize("name", SCHEDULES)
def test_stepped_trajectory_equals_closed_form(name):
    opt = make_optimizer(4)
    sched = LayerwiseLR(opt, total_steps=60, schedule=SCHEDULES[name](4))
    trace = run(opt, sched, 70)  # past the end the final values hold
    for step, lrs in enumerate(trace):
        assert lrs == sched.lr_at(step)
        initial = [0.1 * (g + 1) for g in range(4)]
        factors = SCHEDULES[name](4).factors(min(step, 60) / 60, 4)
        assert lrs == pytest.approx([b * f for b, f in zip(initial, factors)])


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("split", [1, 17, 59])
def test_resume_from_state_dict_reproduces_the_run(name, split):
    torch.manual_seed(0)
    opt = make_optimizer(4, cls=torch.optim.SGD, momentum=0.9)
    sched = LayerwiseLR(opt, 60, schedule=SCHEDULES[name](4))
    full = run(opt, sched, 60)

    torch.manual_seed(0)
    opt = make_optimizer(4, cls=torch.optim.SGD, momentum=0.9)
    sched = LayerwiseLR(opt, 60, schedule=SCHEDULES[name](4))
    first = run(opt, sched, split)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain data only: safe loading works

    torch.manual_seed(1)  # different initial values: everything must come from the checkpoint
    opt2 = make_optimizer(4, cls=torch.optim.SGD, momentum=0.9)
    opt2.load_state_dict(saved["optimizer"])
    sched2 = LayerwiseLR(opt2, 60, schedule=SCHEDULES[name](4))
    sched2.load_state_dict(saved["scheduler"])
    rest = run(opt2, sched2, 60 - split)
    assert first + rest == full


def test_per_epoch_stepping_follows_smith_example():
    opt = make_optimizer(3, lr=1.0)
    for group in opt.param_groups:
        group["lr"] = 1.0
    rule = S.LinearInTime((2.0, 1.0, 0.5), (0.5, 1.0, 2.0), ((0, 0.1), (0, 1), (0, 1)))
    sched = LayerwiseLR(opt, total_steps=100, layers=rule)  # one step() per epoch
    trace = run(opt, sched, 101)
    assert trace[0] == [2.0, 1.0, 0.5]
    assert trace[10] == pytest.approx([0.5, 1.0, 0.65])
    assert trace[100] == pytest.approx([0.5, 1.0, 2.0])


def test_groups_with_the_same_depth_share_a_factor():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD(
        [
            {"params": [params[0]], "depth": 0},
            {"params": [params[1]], "depth": 0, "weight_decay": 0.0},
            {"params": [params[2]], "depth": 1},
        ],
        lr=1.0,
    )
    sched = LayerwiseLR(opt, 10, layers=S.Discriminative(4.0))
    assert sched.get_last_lr() == [0.25, 0.25, 1.0]


def test_groups_added_later_are_scheduled():
    opt = make_optimizer(2)
    sched = LayerwiseLR(opt, 10, policy=S.Linear(1.0, 0.0))
    run(opt, sched, 3)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0})
    sched.step()
    assert opt.param_groups[2]["lr"] == pytest.approx(0.6)
    assert sched.lr_at(5)[2] == pytest.approx(0.5)


def test_zero_from_per_param_group():
    opt = make_optimizer(2)
    rule = S.LinearInTime((1.0, 1.0), (0.0, 1.0), ((0, 0.4), (0, 1)))
    sched = LayerwiseLR(opt, 50, layers=rule)
    assert sched.zero_from() == [20, None]
    assert opt.param_groups[0]["lr"] > 0


def test_recipes_drive_the_scheduler():
    opt = make_optimizer(3)
    schedule = recipes.build("llr", 3, start=[2, 1, 0.5], end=[0.5, 1, 2], windows=[(0, 0.1), (0, 1), (0, 1)])
    sched = LayerwiseLR(opt, 100, schedule=schedule)
    assert sched.lr_at(10) == pytest.approx([0.05, 0.2, 0.3 * 0.65])


def snapshot(opt):
    return [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups]


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"total_steps": 0}, ValueError, "total_steps"),
        ({"total_steps": 10.5}, ValueError, "total_steps"),
        ({"total_steps": 10, "layers": S.LinearInTime((1, 1), (1, 1))}, ValueError, "3"),
        ({"total_steps": 10, "policy": [S.Cosine()] * 4}, ValueError, "4 groups"),
        ({"total_steps": 10, "schedule": S.LayerSchedule(), "policy": S.Cosine()}, ValueError, "schedule"),
        ({"total_steps": 10, "schedule": "cosine"}, TypeError, "schedule"),
        ({"total_steps": 10, "layers": "discriminative"}, TypeError, "layers"),
    ],
)
def test_bad_input_leaves_the_optimizer_untouched(kwargs, error, argument):
    opt = make_optimizer(3)
    before = snapshot(opt)
    with pytest.raises(error, match=argument):
        LayerwiseLR(opt, **kwargs)
    assert snapshot(opt) == before
    assert all("initial_lr" not in g for g in opt.param_groups)


def test_bad_depth_keys_and_optimizer_type():
    opt = make_optimizer(2)
    opt.param_groups[1]["depth"] = 5
    with pytest.raises(ValueError, match="depth"):
        LayerwiseLR(opt, 10)
    with pytest.raises(TypeError, match="optimizer"):
        LayerwiseLR([{"params": []}], 10)


def test_loading_a_state_for_another_run_length_is_refused():
    opt = make_optimizer(2)
    state = LayerwiseLR(opt, 10).state_dict()
    with pytest.raises(ValueError, match="total_steps"):
        LayerwiseLR(make_optimizer(2), 20).load_state_dict(state)
