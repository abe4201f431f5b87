"""Per-group telemetry: what every layer's learning rate, gradient and weights do during training.

:class:`LayerMonitor` installs step hooks on any torch optimizer (the training loop stays as it
is) and every ``every`` steps records, for each named group:

* ``lr``: the group's current learning rate;
* ``grad_norm``: the L2 norm of its gradient;
* ``weight_norm``: the L2 norm of its weights after the step;
* ``relative_update``: ``||w_after - w_before|| / ||w_before||`` over the step;
* ``rotation``: the cosine distance ``1 - cos(w, w_0)`` of the weights from their values when the
  monitor was attached (layer rotation, Carbonnelle & De Vleeschouwer);
* ``adam_step``: quantiles of the effective per-coordinate step ``lr / (sqrt(v_hat) + eps)`` for
  Adam-family optimizers (those with ``exp_avg_sq`` state), else absent;
* ``frozen``: 1 when none of the group's parameters requires grad.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> x, y = torch.randn(16, 4), torch.randn(16, 1)
    >>> optimizer = torch.optim.SGD(layerwise.by_layer(model, sample_input=x).param_groups(lr=0.1))
    >>> monitor = LayerMonitor(optimizer, every=5)
    >>> for _ in range(10):   # the usual loop
    ...     optimizer.zero_grad(); torch.nn.functional.mse_loss(model(x), y).backward(); optimizer.step()
    >>> monitor.steps, len(monitor.history["relative_update"]["0"])
    ([0, 5], 2)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._checks import positive_int
from ._shards import global_sums, local, local_all, refuse_flat_parameters, shard_group
from .groups import Partition
from .param_groups import check_partition, group_names
from .wrapping import unwrap_optimizer

__all__ = ["QUANTITIES", "LayerMonitor"]

QUANTITIES = ("lr", "grad_norm", "weight_norm", "relative_update", "rotation", "adam_step", "frozen")
"""Every quantity a :class:`LayerMonitor` can record."""

MAX_COORDINATES = 200_000
"""``adam_step`` quantiles use at most this many evenly strided coordinates per group."""


def _squares(tensors: list[Tensor]) -> Tensor:
    """Sum of squares of this rank's numbers of ``tensors``, in float64 (0 for none)."""
    return _dot(tensors, tensors)


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum(
        ((x.double() * y.double()).sum() for x, y in zip(local_all(a), local_all(b))),
        torch.zeros((), dtype=torch.float64),
    )


class LayerMonitor:
    """Records per-group quantities every ``every`` optimizer steps, from step hooks.

    Args:
        optimizer: any torch optimizer; groups are its param groups merged by ``name``.
        every: record on every ``every``-th step (the first step included).
        quantities: a subset of :data:`QUANTITIES` (default: all).
        quantiles: the ``adam_step`` quantiles.
        groups: the partition the optimizer was built from; checked against its param groups.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar``): every
            record is also logged as ``<quantity>/<group>``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        every: int = 10,
        quantities: Sequence[str] = QUANTITIES,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        groups: Partition | None = None,
        writer: Any = None,
    ) -> None:
        optimizer = unwrap_optimizer(optimizer)  # accelerate's wrapper: its hooks are the inner optimizer's
        refuse_flat_parameters((p for g in optimizer.param_groups for p in g["params"]), "optimizer")
        positive_int("every", every)
        if isinstance(quantities, str):
            raise TypeError("quantities: expected a sequence of names, got one string")
        unknown = [q for q in quantities if q not in QUANTITIES]
        if unknown:
            raise ValueError(f"quantities: unknown {unknown}; choose from {list(QUANTITIES)}")
        quantiles = tuple(float(q) for q in quantiles)
        if not quantiles or not all(0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError(f"quantiles: need values in [0, 1], got {quantiles}")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer: expected a SummaryWriter (with add_scalar), got {type(writer).__name__}")
        if groups is not None:
            check_partition(groups, optimizer.param_groups)
        self.optimizer = optimizer
        self.every = every
        self.quantities = tuple(q for q in QUANTITIES if q in quantities)
        self.quantiles = quantiles
        self.writer = writer
        names = group_names(optimizer.param_groups)
        self.groups = list(dict.fromkeys(names))
        self._dicts = [[g for g, n in zip(optimizer.param_groups, names) if n == name] for name in self.groups]
        self.steps: list[int] = []
        self.history: dict[str, dict[str, list]] = {q: {name: [] for name in self.groups} for q in self.quantities}
        self.step_count = 0
        self._before: list[list[Tensor]] | None = None
        self._initial = [[local(p).detach().clone() for p in self._params(k)] for k in range(len(self.groups))]
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    def _params(self, k: int) -> list[Tensor]:
        return [p for group in self._dicts[k] for p in group["params"]]

    def remove(self) -> None:
        """Detach the hooks (what was recorded stays)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- hooks ---------------------------------------------------------------------------

    @torch.no_grad()
    def _pre_step(self, _optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        if self.step_count % self.every != 0:
            return
        squares = torch.stack(
            [_squares([p.grad for p in self._params(k) if p.grad is not None]) for k in range(len(self.groups))]
        )
        self._grad_norms = self._summed(squares, [p for k in range(len(self.groups)) for p in self._params(k)]).sqrt()
        if "relative_update" in self.quantities:
            self._before = [[local(p).detach().clone() for p in self._params(k)] for k in range(len(self.groups))]

    @torch.no_grad()
    def _post_step(self, _optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        if self.step_count % self.every == 0:
            self._record()
        self.step_count += 1

    def _summed(self, values: Tensor, params: list[Tensor]) -> Tensor:
        """Sums over this rank's numbers, summed over the ranks holding the other shards (FSDP2)."""
        return global_sums(values, params, "LayerMonitor (the optimizer's parameters)")

    def _adam_steps(self, k: int, lr: float) -> list[float] | None:
        pieces = []
        for group in self._dicts[k]:
            eps = float(group.get("eps", 1e-8))
            beta2 = float(group["betas"][1]) if "betas" in group else None
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                if "exp_avg_sq" not in state or beta2 is None:
                    continue
                step = float(state.get("step", 1))
                v_hat = local(state["exp_avg_sq"]).flatten() / (1.0 - beta2**step)
                pieces.append(lr / (v_hat.sqrt() + eps))
        group = shard_group(self._params(k), "LayerMonitor")
        if group is not None:  # the quantiles of every shard together
            gathered: list[Any] = [None] * torch.distributed.get_world_size(group)
            torch.distributed.all_gather_object(gathered, pieces, group=group)
            pieces = [piece for rank_pieces in gathered for piece in rank_pieces]
        if not pieces:
            return None
        values = torch.cat(pieces).double()
        if values.numel() > MAX_COORDINATES:
            values = values[:: math.ceil(values.numel() / MAX_COORDINATES)]
        return torch.quantile(values, torch.tensor(self.quantiles, dtype=torch.float64)).tolist()

    def _record(self) -> None:
        values: dict[str, list] = {q: [] for q in self.quantities}
        sums = []  # per group: |w|^2, |w - w_before|^2, |w_before|^2, w . w0, |w0|^2 (this rank's numbers)
        for k in range(len(self.groups)):
            weights = [p.detach() for p in self._params(k)]
            before = self._before[k] if self._before is not None else []
            changes = torch._foreach_sub(local_all(weights), before) if before else []
            initial = self._initial[k]  # in float64: 1 - cos cancels badly in float32
            sums.append(
                torch.stack(
                    [_squares(weights), _squares(changes), _squares(before), _dot(weights, initial), _squares(initial)]
                )
            )
        totals = self._summed(torch.stack(sums), [p for k in range(len(self.groups)) for p in self._params(k)]).tolist()
        for k in range(len(self.groups)):
            params = self._params(k)
            lr = float(self._dicts[k][0]["lr"])
            weight_sq, change_sq, before_sq, dot, initial_sq = totals[k]
            row = {
                "lr": lr,
                "grad_norm": float(self._grad_norms[k]),
                "weight_norm": math.sqrt(weight_sq),
                "frozen": float(not any(p.requires_grad for p in params)),
            }
            if "relative_update" in self.quantities and self._before is not None:
                row["relative_update"] = math.sqrt(change_sq) / math.sqrt(before_sq) if before_sq > 0 else 0.0
            if "rotation" in self.quantities:
                scale = math.sqrt(weight_sq) * math.sqrt(initial_sq)
                row["rotation"] = 1.0 - dot / scale if scale > 0 else 0.0
            if "adam_step" in self.quantities:
                row["adam_step"] = self._adam_steps(k, lr)
            for q in self.quantities:
                values[q].append(row.get(q))
        self.steps.append(self.step_count)
        for q, per_group in values.items():
            for name, value in zip(self.groups, per_group):
                self.history[q][name].append(value)
                if self.writer is not None and value is not None:
                    if isinstance(value, list):
                        for quantile, v in zip(self.quantiles, value):
                            self.writer.add_scalar(f"{q}_q{round(100 * quantile)}/{name}", v, self.step_count)
                    else:
                        self.writer.add_scalar(f"{q}/{name}", value, self.step_count)
        self._before = None

    # -- results -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"every", "steps", "groups", "quantiles", "history": {quantity: {group: [...]}}}``."""
        return {
            "every": self.every,
            "steps": list(self.steps),
            "groups": list(self.groups),
            "quantiles": list(self.quantiles),
            "history": self.history,
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (what ``layerwise plot`` reads)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    def state_dict(self) -> dict[str, Any]:
        """The records, the step count and the initial weights (rotation), to resume monitoring."""
        return {
            **self.to_dict(),
            "step_count": self.step_count,
            "initial": [[t.clone() for t in group] for group in self._initial],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["groups"]) != self.groups:
            raise ValueError(f"state_dict: saved for groups {state['groups']}, this monitor has {self.groups}")
        self.steps = list(state["steps"])
        self.history = {q: {n: list(v) for n, v in state["history"][q].items()} for q in self.quantities}
        self.step_count = int(state["step_count"])
        self._initial = [[t.clone() for t in group] for group in state["initial"]]
