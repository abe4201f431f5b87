"""``SecantLR``: per-group learning rates from the curvature along each group's own steps.

L. N. Smith's recommendation (estimate each layer's learning rate from the running average of
its weight changes, as in his super-convergence paper), made a per-group Barzilai-Borwein step
on top of any optimizer. No extra forward or backward pass: after every step, for each group k,

    dw_k = w_k(t) - w_k(t-1)      (the base optimizer's actual update: momentum, Adam included)
    dg_k = g_k(t) - g_k(t-1)

and running averages (exponential, factor ``beta``) of ``<dg, dw>``, ``<dw, dw>`` and
``lr(t-1) * <-g(t-1), dw>`` give

* ``mode="bb"``: the curvature along the direction of travel ``c_k = <dg, dw> / <dw, dw>`` and
  ``eta*_k = scale / c_k`` (the Barzilai-Borwein step; for plain gradient descent);
* ``mode="line"``: the minimiser of the secant model of the loss along the step just taken,
  ``eta*_k = scale * lr(t-1) * <-g(t-1), dw> / <dg, dw>``, i.e. the multiplier on the current
  rate that would have landed on the 1-D minimum (any optimizer: Adam, momentum SGD).

Safety as in :class:`~layerwise.HiDLR`: a non-finite or non-positive estimate is rejected and
counted (the group keeps its rate), accepted ones are smoothed ``eta <- gamma * eta + (1 - gamma)
* eta*`` and optionally clipped; a schedule multiplies the found rates; ``state_dict`` holds
everything needed to resume exactly (including the previous weights and gradients).

Examples:
    >>> import torch, layerwise
    >>> w = torch.nn.Parameter(torch.tensor([4.0, -2.0]))
    >>> opt = layerwise.SecantLR(torch.optim.SGD([w], lr=0.01), gamma=0.0)
    >>> for _ in range(3):
    ...     opt.zero_grad(); (2.5 * (w ** 2).sum()).backward(); opt.step()
    >>> round(opt.curvature["group0"], 6), round(opt.lrs["group0"], 6)
    (5.0, 0.2)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._checks import clip_range, finite_nonneg, one_of, positive_int, unit_interval
from ._shards import global_sums, local, local_like, shaped_like, shard_group
from .group_rates import GroupRates
from .groups import Partition
from .schedules import LayerSchedule, Policy
from .state_check import check_optimizer_state, check_state, require_keys

__all__ = ["SecantLR"]

Mode = Literal["bb", "line"]
"""``bb``: Barzilai-Borwein 1/curvature (gradient descent); ``line``: the secant line's minimum along the step."""
MODES = get_args(Mode)


class SecantLR(GroupRates):
    """Wraps ``optimizer``; sets each group's learning rate from secant curvature estimates.

    Args:
        optimizer: any torch optimizer; its param groups (merged by ``name``) are the groups and
            their LRs the starting rates.
        mode: ``"bb"`` (``1 / c_k``, for gradient descent) or ``"line"`` (the secant line minimum
            along the optimizer's own step, for any optimizer).
        beta: running-average factor of the inner products, in [0, 1).
        gamma: smoothing of the rate, ``eta <- gamma * eta + (1 - gamma) * eta*``, in [0, 1).
        scale: safety factor on every estimate (> 0).
        update_every: apply a new estimate every this many steps (the averages move every step).
        clip: optional ``(low, high)`` range for ``eta*``.
        schedule: a :class:`Policy` or :class:`LayerSchedule` multiplying the found rates.
        total_steps: the run length the schedule's progress is measured in; required with ``schedule``.
        groups: the partition the optimizer was built from; checked against its param groups.
    """

    technique = "SecantLR"

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        mode: Mode = "bb",
        beta: float = 0.9,
        gamma: float = 0.9,
        scale: float = 1.0,
        update_every: int = 1,
        clip: tuple[float, float] | None = None,
        schedule: Policy | LayerSchedule | None = None,
        total_steps: int | None = None,
        groups: Partition | None = None,
    ) -> None:
        self._check_base(optimizer)
        one_of("mode", mode, MODES)
        unit_interval("beta", beta)
        unit_interval("gamma", gamma)
        if finite_nonneg("scale", scale) == 0:
            raise ValueError("scale: must be a finite number > 0, got 0")
        positive_int("update_every", update_every)
        clip = clip_range("clip", clip)
        self._setup_rates(optimizer, schedule, total_steps, groups)
        self.mode = mode
        self.beta, self.gamma, self.scale = float(beta), float(gamma), float(scale)
        self.update_every = update_every
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        count = len(self._names)
        self._sums = [[0.0, 0.0, 0.0] for _ in range(count)]  # running <dg,dw>, <dw,dw>, lr <-g,dw>
        self._seen = [False] * count  # whether a group's averages hold a secant yet
        self._prev: list[dict[str, Any] | None] = [None] * count  # flat weights, grads, applied lr
        self.stats: dict[str, Any] = {
            "estimates": 0,
            "accepted": 0,
            "rejected": 0,
            "rejections": {"nonpositive": 0, "nonfinite": 0},
        }

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer; a new name starts a new group (no secant yet) at its ``lr``."""
        count = len(self._names)
        super().add_param_group(param_group)
        for _ in range(len(self._names) - count):
            self._sums.append([0.0, 0.0, 0.0])
            self._seen.append(False)
            self._prev.append(None)

    def _settings(self) -> dict[str, Any]:
        return {"mode": self.mode, "update_every": self.update_every}

    @property
    def curvature(self) -> dict[str, float | None]:
        """Every group's current curvature estimate ``<dg, dw> / <dw, dw>`` (None before two steps)."""
        out: dict[str, float | None] = {}
        for k, name in enumerate(self._names):
            dgdw, dwdw, _ = self._sums[k]
            out[name] = dgdw / dwdw if self._seen[k] and dwdw > 0 else None
        return out

    def _estimate(self, k: int) -> float:
        dgdw, dwdw, line = self._sums[k]
        if math.isnan(dgdw):
            return math.nan
        if dgdw <= 0.0:
            return -1.0
        return self.scale * (dwdw if self.mode == "bb" else line) / dgdw

    @staticmethod
    def _flat(tensors: list[Tensor]) -> Tensor:
        """This rank's numbers of ``tensors``, flat (all of them, or under FSDP2 its shards)."""
        return torch.cat([local(t).detach().reshape(-1) for t in tensors])

    @torch.no_grad()
    def _observe(self, members: list[list[Tensor]]) -> list[tuple[Tensor, Tensor] | None]:
        """Fold this step's weight and gradient changes into each group's running averages.

        Returns each group's flat (weights, gradients) now, kept for the next step's secant.
        """
        now: list[tuple[Tensor, Tensor] | None] = []
        terms, which = [], []
        for k, params in enumerate(members):
            if not params:
                now.append(None)
                continue
            w, g = self._flat(params), self._flat([p.grad for p in params])
            now.append((w, g))
            prev = self._prev[k]
            if prev is None or prev["params"] != [id(p) for p in params]:
                continue
            dw, dg = w - prev["w"], g - prev["g"]
            values = torch.stack([dg.dot(dw), dw.dot(dw), -prev["g"].dot(dw) * prev["lr"]])
            terms.append(global_sums(values, params, f"param group {self._names[k]!r}"))  # over the shards
            which.append(k)
        if terms:
            for k, values in zip(which, torch.stack(terms).double().tolist()):
                self._sums[k] = [self.beta * s + (1.0 - self.beta) * v for s, v in zip(self._sums[k], values)]
                self._seen[k] = True
        return now

    def _update_eta(self, members: list[list[Tensor]]) -> None:
        for k, params in enumerate(members):
            if not params or not self._seen[k]:
                continue
            self.stats["estimates"] += 1
            eta_star = self._estimate(k)
            if not math.isfinite(eta_star) or eta_star <= 0.0:
                self._reject("nonfinite" if not math.isfinite(eta_star) else "nonpositive")
                continue
            if self.clip is not None:
                eta_star = min(max(eta_star, self.clip[0]), self.clip[1])
            self._accept(k, eta_star)
            self.stats["accepted"] += 1

    def _remember(self, members: list[list[Tensor]], now: list, factors) -> None:
        """Keep this step's weights, gradients and applied rate for the next secant."""
        for k, params in enumerate(members):
            if now[k] is None:
                self._prev[k] = None
                continue
            w, g = now[k]
            self._prev[k] = {"params": [id(p) for p in params], "w": w, "g": g, "lr": self.eta[k] * float(factors[k])}

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Observe the last step's secant, maybe update the rates, then take the base step."""
        self._check_foreign_lrs()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        members = self._members()
        now = self._observe(members)
        if self.step_count % self.update_every == 0:
            self._update_eta(members)
        factors = self._factors()
        self._apply_lrs(factors)
        self._remember(members, now, factors)
        self.optimizer.step()
        self.step_count += 1
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state plus the rates, running averages, counters and last weights/grads."""
        index = {id(p): i for i, p in enumerate(p for g in self.optimizer.param_groups for p in g["params"])}
        prev = [
            None
            if pr is None
            else {
                "params": [index[i] for i in pr["params"]],
                "w": self._saved_flat(pr["w"], pr["params"]),
                "g": self._saved_flat(pr["g"], pr["params"]),
                "lr": pr["lr"],
            }
            for pr in self._prev
        ]
        return {
            **self._identity(),
            "base": self.optimizer.state_dict(),
            "secant": {
                "eta": list(self.eta),
                "step_count": self.step_count,
                "sums": [list(s) for s in self._sums],
                "seen": list(self._seen),
                "prev": prev,
                "stats": self._copy_stats(self.stats),
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore a :meth:`state_dict`; another technique's, other groups or another base optimizer raise."""
        eta, step_count, sums, seen, prev = self._decoded(state_dict)
        self.optimizer.load_state_dict(state_dict["base"])
        self.eta, self.step_count, self._sums, self._seen, self._prev = eta, step_count, sums, seen, prev
        self.stats = self._copy_stats(state_dict["secant"]["stats"])
        self._apply_lrs(self._factors())

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """ValueError if :meth:`load_state_dict` would refuse ``state_dict``; nothing changes."""
        self._decoded(state_dict)

    def _decoded(self, state_dict: dict[str, Any]) -> tuple[list[float], int, list, list[bool], list]:
        """The checked state: eta, step count, running sums, seen flags and previous secants."""
        check_state(state_dict, self._identity(), keys=("base", "secant"))
        check_optimizer_state(self.optimizer, state_dict["base"], "state_dict['base']")
        saved = state_dict["secant"]
        require_keys(saved, ("eta", "step_count", "sums", "seen", "prev", "stats"), "state_dict['secant']")
        count = len(self._names)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        try:  # decode everything first: a malformed state changes nothing
            eta = self._decode_eta(saved["eta"])
            step_count = self._decode_step_count(saved["step_count"])
            sums = [[float(v) for v in s] for s in saved["sums"]]
            seen = [bool(v) for v in saved["seen"]]
            prev = [None if pr is None else self._decode_prev(pr, params) for pr in saved["prev"]]
        except (TypeError, KeyError, IndexError) as err:
            raise ValueError(f"state_dict['secant']: malformed ({type(err).__name__}: {err})") from None
        if not len(sums) == len(seen) == len(prev) == count or any(len(s) != 3 for s in sums):
            raise ValueError(f"state_dict['secant']: expected running sums, flags and secants for {count} groups")
        return eta, step_count, sums, seen, prev

    @staticmethod
    def _decode_prev(saved: dict[str, Any], params: list[Tensor]) -> dict[str, Any]:
        """A saved secant start (flat weights and gradients of some parameters), checked against ``params``."""
        members = [params[i] for i in saved["params"]]
        flats = {}
        for key in ("w", "g"):
            value = saved[key]
            if isinstance(value, (list, tuple)):  # one tensor per parameter (saved from sharded parameters)
                if len(value) != len(members) or any(
                    not isinstance(v, Tensor) or v.shape != p.shape for v, p in zip(value, members)
                ):
                    raise ValueError(
                        f"state_dict['secant']['prev']: {key} does not hold one tensor shaped like each of the "
                        "group's parameters (a checkpoint of another model)"
                    )
                value = torch.cat([local_like(v, p).reshape(-1) for v, p in zip(value, members)])
            size = sum(local(p).numel() for p in members)
            if not isinstance(value, Tensor) or value.numel() != size:
                raise ValueError(
                    f"state_dict['secant']['prev']: {key} holds {getattr(value, 'shape', value)}, the group's "
                    f"parameters {size} numbers (a checkpoint of another model)"
                )
            flats[key] = value.clone()
        return {"params": [id(p) for p in members], **flats, "lr": float(saved["lr"])}

    def _saved_flat(self, flat: Tensor, ids: list[int]) -> Tensor | list[Tensor]:
        """A flat secant start as saved: the same tensor, or under FSDP2 one DTensor per parameter, so
        ``torch.distributed.checkpoint`` keeps every rank's shard."""
        members = [p for g in self.optimizer.param_groups for p in g["params"] if id(p) in set(ids)]
        members.sort(key=lambda p: ids.index(id(p)))
        if shard_group(members, "SecantLR") is None:
            return flat.clone()
        pieces = torch.split(flat, [local(p).numel() for p in members])
        return [shaped_like(p, piece.reshape(local(p).shape).clone()) for p, piece in zip(members, pieces)]

    def __repr__(self) -> str:
        lrs = self._lrs_text()
        return f"SecantLR({type(self.optimizer).__name__}, mode={self.mode!r}, lrs: {lrs})"
