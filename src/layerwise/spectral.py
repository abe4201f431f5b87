"""``TempBalance``: per-group LR multipliers from the heavy tail of each group's weight spectra.

Zhou et al., "Temperature Balancing, Layer-wise Weight Analysis, and Neural Network Training"
(NeurIPS 2023). A weight matrix's empirical spectral density (the eigenvalues of ``W^T W``) grows a
power-law tail as the layer trains; its exponent ``alpha`` is low for a well-trained layer (heavy
tail) and high for an undertrained one. TempBalance gives the layers with the lowest ``alpha`` the
least learning rate and the highest the most, linearly:

* **the spectrum**: the eigenvalues of ``W^T W`` for a 2-D weight (``svdvals(W) ** 2``); a
  convolution weight ``[out, in, kh, kw]`` is, as in the authors' code, ``kh * kw`` matrices
  ``[out, in]`` (one per kernel position) whose eigenvalues are pooled into one spectrum;
* **alpha**: the Hill estimator with the authors' default fit (``pl_fitting="median"``, ``xmin_pos=2``),
  ``x_min`` the median eigenvalue: over the top ``k = N - N // 2`` of the ``N`` sorted eigenvalues,
  ``alpha = 1 + k / sum(log(lambda_i / lambda_min))`` (:func:`hill_alpha`); a group holding several
  matrices gets the mean of their alphas;
* **the multipliers**: ``alpha`` mapped linearly from ``[min, max]`` over the groups onto
  ``[s_min, s_max]`` (the authors' ``tb_linear_map``, ``lr_min_ratio=0.5``, ``lr_max_ratio=1.5``),
  recomputed every ``every`` optimizer steps.

The multipliers act inside ``optimizer.step``: a step pre-hook multiplies each group's ``lr`` by its
multiplier and a post-hook writes the ``lr`` back, so whatever sets ``lr`` between steps (a
:class:`~layerwise.LayerwiseLR`, any torch ``LRScheduler``, a trainer) keeps doing so and each step
uses that LR times the multiplier, as the authors multiply each epoch's scheduled LR.

Examples:
    >>> import torch, layerwise
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
    ...                             torch.nn.Linear(16, 4))
    >>> part = layerwise.by_layer(model, sample_input=torch.zeros(1, 8))
    >>> opt = torch.optim.SGD(part.param_groups(lr=0.1))
    >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    >>> tb = layerwise.TempBalance(opt, every=5, min_eigs=4)   # 50 by default: these layers are tiny
    >>> model(torch.randn(4, 8)).sum().backward(); opt.step(); sched.step()
    >>> {name: round(a, 2) for name, a in tb.alpha.items()}
    {'0': 2.37, '2': 2.68, '4': 7.22}
    >>> {name: round(m, 2) for name, m in tb.multipliers.items()}   # the lowest alpha 0.5, the highest 1.5
    {'0': 0.5, '2': 0.56, '4': 1.5}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from ._checks import boolean, positive_int, positive_number
from ._shards import refuse_flat_parameters
from .param_groups import group_names, set_lr
from .state_check import check_state, stamp
from .wrapping import owns_lr, unwrap_optimizer

__all__ = ["TempBalance", "hill_alpha", "linear_map", "matrix_groups", "spectrum"]


@torch.no_grad()
def spectrum(weight: Tensor, max_dim: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """The eigenvalues of ``W^T W``, ascending, float64 on ``weight``'s device (numerically zero ones dropped).

    A weight of more than two dimensions ``[out, in, ...]`` is one ``[out, in]`` matrix per kernel
    position, their eigenvalues pooled. A side longer than ``max_dim`` is cut to ``max_dim`` rows
    (columns) drawn uniformly without replacement by ``generator``, which bounds the cost at
    ``O(max_dim ** 3)`` per matrix; the spectrum is then the sample's, not the matrix's. Eigenvalues
    at most ``max(rows, cols) * eps(float32)`` times the largest are zero up to rounding and dropped.

    Examples:
        >>> spectrum(torch.diag(torch.tensor([3.0, 1.0, 2.0]))).tolist()
        [1.0, 4.0, 9.0]
    """
    w = weight.detach().float()
    w = w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1) if w.ndim > 2 else w.unsqueeze(0)
    for dim in (1, 2):
        if max_dim is not None and w.shape[dim] > max_dim:
            keep = torch.randperm(w.shape[dim], generator=generator)[:max_dim].to(w.device)
            w = w.index_select(dim, keep)
    rows, cols = w.shape[1:]
    gram = w.mT @ w if rows >= cols else w @ w.mT  # the smaller Gram matrix: same nonzero eigenvalues
    eigs = torch.linalg.eigvalsh(gram.double()).flatten().sort().values
    tol = eigs[-1] * max(rows, cols) * torch.finfo(torch.float32).eps
    return eigs[eigs > tol]


def hill_alpha(eigenvalues: Tensor | np.ndarray | Sequence[float]) -> float:
    """The Hill estimate of the power-law exponent of a spectrum's tail, ``x_min`` its median.

    With the ``N`` positive eigenvalues sorted ascending, ``lambda_min`` the one at index ``N // 2``
    and the tail the ``k = N - N // 2`` from it up: ``alpha = 1 + k / sum(log(lambda_i / lambda_min))``.
    ``inf`` when the tail is flat (all equal, or one eigenvalue), ``nan`` for an empty spectrum.

    Examples:
        >>> round(hill_alpha([1.0, 1.0, 2.0, 4.0]), 6) == round(1 + 2 / math.log(2.0), 6)
        True
    """
    eigs = np.sort(np.asarray(eigenvalues.cpu() if isinstance(eigenvalues, Tensor) else eigenvalues, dtype=float))
    if eigs.size == 0:
        return math.nan
    tail = eigs[eigs.size // 2 :]
    spread = float(np.log(tail / tail[0]).sum())
    return 1.0 + tail.size / spread if spread > 0 else math.inf


def linear_map(alphas: Sequence[float | None], s_min: float = 0.5, s_max: float = 1.5) -> list[float]:
    """Every group's multiplier: its alpha mapped linearly from the groups' ``[min, max]`` onto ``[s_min, s_max]``.

    A group without an estimate (None) gets 1; when every estimate is equal, each gets ``(s_min + s_max) / 2``.

    Examples:
        >>> linear_map([2.0, 4.0, None, 3.0])
        [0.5, 1.5, 1.0, 1.0]
    """
    known = [a for a in alphas if a is not None]
    if not known:
        return [1.0] * len(alphas)
    low, high = min(known), max(known)
    if high == low:
        return [1.0 if a is None else (s_min + s_max) / 2 for a in alphas]
    return [1.0 if a is None else s_min + (a - low) / (high - low) * (s_max - s_min) for a in alphas]


def matrix_groups(param_groups: Sequence[dict[str, Any]]) -> list[str]:
    """The names of the groups holding a weight of two or more dimensions (those the spectral rule can read), in order.

    Examples:
        >>> matrix_groups([{"name": "fc", "params": [torch.zeros(2, 3)]}, {"name": "norm", "params": [torch.zeros(3)]}])
        ['fc']
    """
    names = group_names(param_groups)
    return list(dict.fromkeys(n for n, g in zip(names, param_groups) if any(p.ndim >= 2 for p in g["params"])))


class TempBalance:
    """Multiplies each group's LR at every optimizer step by a factor from its weights' spectral alpha.

    Args:
        optimizer: any torch optimizer (a ``muon_split``'s too); its param groups, merged by ``name``,
            are the groups. A wrapper exposing one as ``.optimizer`` is unwrapped; keep stepping it.
        every: recompute alpha and the multipliers at every this many optimizer steps (from the first;
            once per epoch: the batches per epoch).
        s_min, s_max: the multipliers of the lowest and the highest alpha (> 0, ``s_min <= s_max``).
        max_dim: the longest side of a matrix whose spectrum is computed whole; a longer side is sampled
            (:func:`spectrum`). None: no cap.
        skip: names of groups the rule leaves at multiplier 1 (the authors leave the first and the last
            layer out).
        follow: a group holding no weight of two or more dimensions (a norm layer's) takes the multiplier of
            the nearest group before it that holds one (the authors' BatchNorm rule), 1 if none; without
            ``follow`` such a group must be named in ``skip``.
        min_eigs: a matrix with fewer nonzero eigenvalues gives no estimate (the authors' ``eigs_thresh``).
        seed: seeds the samples of sides longer than ``max_dim`` (with the step count, so a resumed run
            draws what the uninterrupted one would).

    Groups added to the optimizer later keep multiplier 1. ``state_dict`` holds the step count, the
    alphas and the multipliers; :meth:`remove` detaches it from the optimizer.
    """

    technique = "TempBalance"

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        every: int,
        s_min: float = 0.5,
        s_max: float = 1.5,
        max_dim: int | None = 4096,
        skip: Sequence[str] = (),
        follow: bool = False,
        min_eigs: int = 50,
        seed: int = 0,
    ) -> None:
        optimizer = unwrap_optimizer(optimizer)
        if owns_lr(optimizer):
            raise ValueError(
                f"optimizer: a {type(optimizer).__name__} writes every group's LR itself before its base step, over "
                f"TempBalance's multipliers; give TempBalance a plain torch optimizer"
            )
        positive_int("every", every)
        s_min, s_max = positive_number("s_min", s_min), positive_number("s_max", s_max)
        if s_min > s_max:
            raise ValueError(f"s_max: must be a number >= s_min ({s_min:g}), got {s_max:g}")
        if max_dim is not None:
            positive_int("max_dim", max_dim, minimum=2)
        boolean("follow", follow)
        positive_int("min_eigs", min_eigs)
        positive_int("seed", seed, minimum=0)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        refuse_flat_parameters(params, "optimizer")
        if any(hasattr(p, "device_mesh") for p in params):
            raise ValueError("optimizer: holds sharded parameters (FSDP2); TempBalance needs each whole matrix")
        names = list(dict.fromkeys(group_names(optimizer.param_groups)))
        if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
            raise ValueError(f"skip: must be a sequence of group names, got {skip!r}")
        unknown = [s for s in skip if s not in names]
        if unknown:
            raise ValueError(f"skip: names groups {unknown} the optimizer does not have; it has {names}")
        held = matrix_groups(optimizer.param_groups)
        flat = [n for n in names if n not in skip and n not in held]
        if flat and not follow:
            raise ValueError(
                f"skip: must name every group without a weight of two or more dimensions (the spectral rule "
                f"needs a matrix or a convolution kernel): add {flat}, or follow=True to give each the multiplier "
                f"of the group before it"
            )
        if all(n in skip for n in held):
            raise ValueError(f"skip: leaves no group for the spectral rule; the groups are {names}")
        # validated: from here on the optimizer is touched
        self.optimizer = optimizer
        self.every, self.s_min, self.s_max, self.max_dim, self.seed = every, s_min, s_max, max_dim, seed
        self.skip, self.follow, self.min_eigs = tuple(skip), follow, min_eigs
        self._held = held
        self._names = names
        self.step_count = 0
        self._alpha: list[float | None] = [None] * len(names)
        self._mult = [1.0] * len(names)
        self._scheduled: list[Any] = []
        self._handles = (
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        )

    @staticmethod
    def _matrices_of(optimizer: Optimizer, name: str) -> list[Tensor]:
        named = zip(group_names(optimizer.param_groups), optimizer.param_groups)
        return [p for n, g in named if n == name for p in g["params"] if p.ndim >= 2]

    @property
    def names(self) -> list[str]:
        """The groups, in order."""
        return list(self._names)

    @property
    def alpha(self) -> dict[str, float | None]:
        """Every group's alpha at the last recomputation (None: skipped, not computed yet, or no finite estimate)."""
        return dict(zip(self._names, self._alpha))

    @property
    def multipliers(self) -> dict[str, float]:
        """Every group's LR multiplier (1 before the first step)."""
        return dict(zip(self._names, self._mult))

    def applied_lrs(self) -> list[float]:
        """The LR each param group's next step uses: its ``lr`` now times its group's multiplier."""
        factor = dict(zip(self._names, self._mult))
        groups = self.optimizer.param_groups
        return [float(g["lr"]) * factor.get(n, 1.0) for n, g in zip(group_names(groups), groups)]

    @torch.no_grad()
    def update(self) -> None:
        """Recompute every group's alpha (the mean over its matrices with a finite one) and the multipliers now."""
        generator = torch.Generator().manual_seed(hash((self.seed, self.step_count)) % 2**63)
        alphas: list[float | None] = []
        for name in self._names:
            found = self._group_alphas(name, generator) if name in self._held and name not in self.skip else []
            alphas.append(float(np.mean(found)) if found else None)
        mult = dict(zip(self._names, linear_map(alphas, self.s_min, self.s_max)))
        last = 1.0
        for name in self._names:  # a group without a matrix: its predecessor's multiplier (or 1, skipped)
            if name in self._held:
                last = mult[name]
            elif self.follow:
                mult[name] = last
        self._alpha, self._mult = alphas, [mult[n] for n in self._names]

    def _group_alphas(self, name: str, generator: torch.Generator) -> list[float]:
        spectra = [spectrum(p, self.max_dim, generator) for p in self._matrices_of(self.optimizer, name)]
        values = [hill_alpha(eigs) for eigs in spectra if len(eigs) >= self.min_eigs]
        return [a for a in values if math.isfinite(a)]

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        del optimizer, args, kwargs
        if self.step_count % self.every == 0:
            self.update()
        factor = dict(zip(self._names, self._mult))
        groups = self.optimizer.param_groups
        self._scheduled = [float(g["lr"]) for g in groups]
        for name, group, lr in zip(group_names(groups), groups, self._scheduled):
            set_lr(group, lr * factor.get(name, 1.0))

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        del optimizer, args, kwargs
        for group, lr in zip(self.optimizer.param_groups, self._scheduled):
            set_lr(group, lr)
        self.step_count += 1

    def step(self) -> None:
        """Nothing to do: TempBalance acts from the optimizer's step hooks, so a loop (or a trainer callback)
        that steps it like a scheduler changes nothing; with it TempBalance is a :class:`~layerwise.Technique`."""

    def remove(self) -> None:
        """Detach from the optimizer: its steps use the groups' ``lr`` as they are."""
        for handle in self._handles:
            handle.remove()

    def _identity(self) -> dict[str, Any]:
        settings = {
            "every": self.every,
            "s_min": self.s_min,
            "s_max": self.s_max,
            "max_dim": self.max_dim,
            "skip": list(self.skip),
            "follow": self.follow,
            "min_eigs": self.min_eigs,
            "seed": self.seed,
        }
        return stamp(self.technique, self._names, settings)

    def state_dict(self) -> dict[str, Any]:
        """The step count, the alphas and the multipliers (plain numbers), with this technique's identity."""
        return {
            **self._identity(),
            "step_count": self.step_count,
            "alpha": list(self._alpha),
            "multipliers": list(self._mult),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from a :meth:`state_dict`; another technique's, other groups or settings raise ValueError first."""
        check_state(state_dict, self._identity(), keys=("step_count", "alpha", "multipliers"))
        step_count, alpha, mult = (state_dict[k] for k in ("step_count", "alpha", "multipliers"))
        if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
            raise ValueError(f"state_dict['step_count']: expected an int >= 0, got {step_count!r}")
        count = len(self._names)
        numbers = (int, float)
        if (
            not isinstance(alpha, list)
            or len(alpha) != count
            or any(a is not None and (isinstance(a, bool) or not isinstance(a, numbers)) for a in alpha)
        ):
            raise ValueError(f"state_dict['alpha']: expected {count} numbers or None, got {alpha!r}")
        if (
            not isinstance(mult, list)
            or len(mult) != count
            or any(isinstance(m, bool) or not isinstance(m, numbers) or not math.isfinite(m) or m < 0 for m in mult)
        ):
            raise ValueError(f"state_dict['multipliers']: expected {count} finite numbers >= 0, got {mult!r}")
        self.step_count = step_count
        self._alpha = [None if a is None else float(a) for a in alpha]
        self._mult = [float(m) for m in mult]

    def __repr__(self) -> str:
        mults = ", ".join(f"{n}={m:.3g}" for n, m in self.multipliers.items())
        return f"TempBalance(every={self.every}, s_min={self.s_min:g}, s_max={self.s_max:g}, multipliers: {mults})"
