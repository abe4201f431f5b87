"""``RandomSubsetMultirate``: multirate regularisation with random slow subsets (Vlaar & Leimkuhler §5.1).

Every cycle a new random subset of the entries of each chosen weight tensor is slow (entry by
entry with the tensor's probability). During the cycle's ``k`` fast steps the slow entries are
set to zero and only the fast entries are updated (step ``h``). Then the slow entries get their
values back and one step updates all entries together: the fast ones with ``h``, the slow ones
with ``h * k`` (or an uncoupled ``slow_lr``). A cycle is ``k + 1`` optimizer steps; then a new
subset is drawn. Use :meth:`full_weights` (or :meth:`eval`, then :meth:`train`) to evaluate
mid-cycle with every weight in place.

The base algorithm is torch SGD (``momentum``, ``weight_decay`` allowed): the slow entries' larger
step is applied by scaling their gradient by ``slow_lr / h`` on the joint step.

Examples:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    >>> opt = RandomSubsetMultirate(net.parameters(), lr=0.1, k=5,
    ...                             probabilities={net[0].weight: 0.8, net[2].weight: 0.5})
    >>> with opt.full_weights():
    ...     pass  # evaluate here
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ._checks import finite_nonneg, fraction, positive_int
from ._shards import check_current, local, local_like, refuse_flat_parameters, shaped_like
from .param_groups import group_names
from .state_check import check_optimizer_state, check_state, stamp
from .wrapping import Wrapper, init_hooks

__all__ = ["RandomSubsetMultirate"]


class RandomSubsetMultirate(Wrapper):
    """SGD where random subsets of chosen tensors are slow and deactivated for ``k`` steps.

    Args:
        params: the parameters (or param-group dicts) to optimize.
        lr: ``h``, the fast step.
        k: fast steps per cycle, an int >= 1.
        probabilities: ``{parameter: p}``: each entry of the tensor is slow with probability p.
        slow_lr: the slow entries' step on the joint step (default ``h * k``).
        seed: seed of the optimizer's own generator (its state is in ``state_dict``).
        **sgd_options: ``momentum``, ``weight_decay``... for the base ``torch.optim.SGD``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        k: int,
        probabilities: Mapping[Tensor, float],
        *,
        slow_lr: float | None = None,
        seed: int = 0,
        **sgd_options: Any,
    ) -> None:
        positive_int("k", k)
        finite_nonneg("lr", lr)
        if slow_lr is not None:
            finite_nonneg("slow_lr", slow_lr)
        base = torch.optim.SGD(params, lr=lr, **sgd_options)
        refuse_flat_parameters((p for g in base.param_groups for p in g["params"]), "params")
        owned = {id(p) for g in base.param_groups for p in g["params"]}
        if not probabilities:
            raise ValueError("probabilities: give at least one {parameter: probability}")
        for p, prob in probabilities.items():
            if id(p) not in owned:
                raise ValueError("probabilities: names a tensor that is not among params")
            fraction("probabilities", prob, what="a probability")
        init_hooks(self, base.defaults)
        self.optimizer = base
        self.k = k
        self.lr = float(lr)
        self.slow_lr = float(lr * k if slow_lr is None else slow_lr)
        self.probabilities = [(p, float(prob)) for p, prob in probabilities.items()]
        self.generator = torch.Generator().manual_seed(seed)
        group_options = [(g.get("momentum", 0.0), g.get("weight_decay", 0.0)) for g in base.param_groups]
        self._may_move_zeros = any(m != 0.0 or wd != 0.0 for m, wd in group_options)
        self.step_count = 0
        self._masks: list[Tensor] = []  # True = slow, per entry
        self._kept: list[Tensor] = []  # the slow entries' values while they are zeroed
        self._training: list[Tensor] | None = None  # the weights to train on again, while evaluating (eval())
        self._draw()

    @property
    def joint_step(self) -> bool:
        """Whether the next step is the cycle's joint step (slow entries back in place)."""
        return self.step_count % (self.k + 1) == self.k

    @torch.no_grad()
    def _draw(self) -> None:
        """New slow subsets; their entries are kept aside and zeroed."""
        draws = [torch.rand(p.shape, generator=self.generator).lt(prob) for p, prob in self.probabilities]
        self._masks = [local_like(d, p).bool() for d, (p, _) in zip(draws, self.probabilities)]  # this rank's part
        self._kept = [
            torch.where(mask, local(p), torch.zeros_like(local(p)))
            for (p, _), mask in zip(self.probabilities, self._masks)
        ]
        for (p, _), mask in zip(self.probabilities, self._masks):
            local(p).masked_fill_(mask, 0.0)
        self._scales()

    def _scales(self) -> None:
        """Gradient factors of the cycle: 0 on slow entries for fast steps, ``slow_lr / h`` on the joint step."""
        slow = self.slow_lr / self.lr if self.lr else 0.0
        pairs = [(p, m) for (p, _), m in zip(self.probabilities, self._masks)]
        self._fast_scales = [(~m).to(p.dtype) for p, m in pairs]
        self._joint_scales = [torch.where(m, slow, 1.0).to(p.dtype) for p, m in pairs]

    @torch.no_grad()
    def _restore(self) -> None:
        for (p, _), mask, kept in zip(self.probabilities, self._masks, self._kept):
            local(p).copy_(torch.where(mask, kept, local(p)))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """A fast step (slow entries stay zero) or the joint step (slow entries move ``slow_lr``)."""
        check_current((p for g in self.param_groups for p in g["params"]), "optimizer")
        if self._training is not None:
            raise ValueError("optimizer: evaluating (eval() without train()); call train() before the next step")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        joint = self.joint_step
        for (p, _), scale in zip(self.probabilities, self._joint_scales if joint else self._fast_scales):
            if p.grad is not None:
                local(p.grad).mul_(scale)
        self.optimizer.step()
        if not joint and self._may_move_zeros:  # momentum or weight decay could move the deactivated entries
            for (p, _), mask in zip(self.probabilities, self._masks):
                local(p).masked_fill_(mask, 0.0)
        self.step_count += 1
        if self.joint_step:
            self._restore()
        elif joint:
            self._draw()
        return loss

    @contextmanager
    def full_weights(self) -> Iterator[None]:
        """Every weight in place for the block (evaluation mid-cycle); the zeros come back after."""
        if self._training is not None:  # already evaluating: stay so
            yield
            return
        self.eval()
        try:
            yield
        finally:
            self.train()

    def eval(self) -> None:
        """Every weight in place (to evaluate mid-cycle) until :meth:`train`, as Schedule-Free's ``eval``."""
        if self._training is None:
            self._training = [local(p).detach().clone() for p, _ in self.probabilities]
            self._restore()

    @torch.no_grad()
    def train(self) -> None:
        """Back to training after :meth:`eval`: the slow entries zero again (nothing to do if not evaluating)."""
        if self._training is not None:
            for (p, _), saved in zip(self.probabilities, self._training):
                local(p).copy_(saved)
            self._training = None

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            **self._identity(),
            "base": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "generator": self.generator.get_state(),
            "masks": [shaped_like(p, m.clone()) for m, (p, _) in zip(self._masks, self.probabilities)],
            "kept": [shaped_like(p, v.clone()) for v, (p, _) in zip(self._kept, self.probabilities)],
        }

    def _identity(self) -> dict[str, Any]:
        shapes = [list(p.shape) for p, _ in self.probabilities]
        names = group_names(self.optimizer.param_groups)
        return stamp("RandomSubsetMultirate", names, {"k": self.k, "subsets": shapes})

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raise ValueError unless ``state_dict`` loads into this optimizer; changes nothing."""
        check_state(state_dict, self._identity(), keys=("base", "step_count", "generator", "masks", "kept"))
        check_optimizer_state(self.optimizer, state_dict["base"], "state_dict['base']")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Resume (RNG included); another technique's state, other groups or subsets raise ValueError."""
        self.check_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["base"])
        self.step_count = int(state_dict["step_count"])
        self.generator.set_state(state_dict["generator"])
        self._masks = [local_like(m, p).bool() for m, (p, _) in zip(state_dict["masks"], self.probabilities)]
        self._kept = [local_like(v, p) for v, (p, _) in zip(state_dict["kept"], self.probabilities)]
        self._scales()
