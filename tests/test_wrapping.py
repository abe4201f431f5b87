"""The wrapping-optimizer plumbing: hooks, schedulers and state through the wrapped optimizer."""

import torch

from layerwise.wrapping import Wrapper, init_hooks


class Halving(Wrapper):
    """A minimal wrapper: steps the wrapped SGD at half its LR."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        init_hooks(self, inner.defaults)
        self.optimizer = inner

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.optimizer.param_groups:
            group["lr"] /= 2
        self.optimizer.step()
        for group in self.optimizer.param_groups:
            group["lr"] *= 2


def _wrapped():
    weight = torch.nn.Parameter(torch.ones(2))
    return weight, Halving(torch.optim.SGD([weight], lr=0.2))


def test_param_groups_and_state_are_the_wrapped_optimizers():
    weight, opt = _wrapped()
    assert opt.param_groups is opt.optimizer.param_groups and opt.state is opt.optimizer.state
    weight.grad = torch.ones(2)
    opt.step()
    assert torch.allclose(weight.detach(), torch.full((2,), 0.9))


def test_step_hooks_and_a_torch_scheduler_work_on_the_wrapper():
    weight, opt = _wrapped()
    calls = []
    opt.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(optimizer))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    weight.grad = torch.ones(2)
    opt.step()
    sched.step()
    assert calls == [opt] and opt.param_groups[0]["lr"] == 0.1


def test_state_dict_round_trips_through_the_wrapped_optimizer():
    _, opt = _wrapped()
    state = opt.state_dict()
    _, other = _wrapped()
    other.load_state_dict(state)
    assert other.param_groups[0]["lr"] == 0.2
