"""Sub-tensor groups: each output row (neuron, task) of a layer as its own learning-rate group.

Hi-DLR's CelebA setting (§4.3, App. B.2) gives each of 40 binary tasks sharing one last layer its
own learning rate. Torch optimizers take whole leaf tensors, so :func:`by_rows` splits the layer's
``weight`` and ``bias`` into one leaf parameter per row group with a ``torch.nn.utils.parametrize``
parametrization, which concatenates them back in the forward. Every torch optimizer, weight decay,
``state_dict`` and exact resume then work as for any parameter. (The other design, masked views with
per-slice learning rates, cannot give per-row LRs to Adam: its update does not scale with the
gradient.) :func:`merge_rows` turns the layer back into a plain one, for export.

Examples:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> part = by_rows(net, "2")
    >>> part.names
    ('body', '2.row0', '2.row1', '2.row2')
    >>> opt = torch.optim.AdamW(part.param_groups(lr=1e-3, lr_mult={"2.row1": 10}), weight_decay=0.01)
    >>> net(torch.randn(5, 4)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .groups import Partition, explicit

__all__ = ["RowSplit", "by_rows", "merge_rows"]

Rows = Sequence[Sequence[int]] | Mapping[str, Sequence[int]] | None


class RowSplit(nn.Module):
    """Parametrization: a tensor whose first dimension is cut into row groups, one leaf each.

    ``chunks[j]`` lists the rows of leaf ``j`` (``original<j>``); the forward puts every row back in
    its place (one concatenation, and one gather when the chunks are not in order).
    """

    def __init__(self, chunks: Sequence[Sequence[int]], rows: int, names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.chunks = [list(chunk) for chunk in chunks]
        self.names = list(names) if names is not None else [f"rows{j}" for j in range(len(self.chunks))]
        """The group name of each chunk."""
        order = torch.tensor([row for chunk in self.chunks for row in chunk])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(rows)
        self.in_order = bool(torch.equal(order, torch.arange(rows)))
        self.register_buffer("inverse", inverse, persistent=False)

    def forward(self, *parts: Tensor) -> Tensor:
        whole = torch.cat(parts, 0)
        return whole if self.in_order else whole.index_select(0, self.inverse.to(whole.device))

    def right_inverse(self, value: Tensor) -> tuple[Tensor, ...]:
        return tuple(value[chunk].clone() for chunk in self.chunks)


def _row_index(name: str, row: object) -> int:
    """A row index as an int: Python and numpy integers and integer 0-d tensors; bools and others refused."""
    if not isinstance(row, bool):
        with contextlib.suppress(TypeError):
            return operator.index(row)  # type: ignore[arg-type]
    raise TypeError(f"rows[{name!r}]: row {row!r} is a {type(row).__name__}, not an integer index")


def _chunks(rows: Rows, count: int, module: str) -> dict[str, list[int]]:
    """Group name -> row indices, checked: in range, disjoint; the rows no group names go to ``<module>.rest``."""
    if rows is None:
        return {f"{module}.row{i}": [i] for i in range(count)}
    if isinstance(rows, Mapping):
        given = {str(name): chunk for name, chunk in rows.items()}
    elif isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)):
        given = {f"{module}.rows{j}": chunk for j, chunk in enumerate(rows)}
    else:
        raise TypeError(f"rows: expected None, a sequence of row lists or a mapping name -> rows, got {rows!r}")
    named = {name: [_row_index(name, row) for row in chunk] for name, chunk in given.items()}
    owner: dict[int, str] = {}
    for name, chunk in named.items():
        if not chunk:
            raise ValueError(f"rows[{name!r}]: is empty; every group needs at least one row")
        for row in chunk:
            if not 0 <= row < count:
                raise ValueError(f"rows[{name!r}]: row {row!r} is outside the tensor's rows 0..{count - 1}")
            if row in owner:
                raise ValueError(f"rows[{name!r}]: row {row} is also in group {owner[row]!r} (groups must not overlap)")
            owner[row] = name
    rest = [row for row in range(count) if row not in owner]
    if rest:
        named[f"{module}.rest"] = rest
    return named


def by_rows(model: nn.Module, module: str, rows: Rows = None, *, rest: str = "body") -> Partition:
    """Split the output rows of ``model``'s ``module`` into their own groups; every other trainable
    parameter goes to ``rest``, first (it comes before the layer in the data flow).

    Args:
        module: the name of a module with a ``weight`` of shape ``[out, ...]`` (and optionally a
            ``bias`` of shape ``[out]``), e.g. an output ``nn.Linear``.
        rows: None: one group per row (``<module>.row<i>``); a sequence of row lists
            (``<module>.rows<j>``); or a mapping from group names to row lists. Rows no group names
            form ``<module>.rest``. On a module this function already split, ``rows=None`` keeps the
            split and returns its partition again.

    Returns:
        The partition (``rest`` group, then the row groups in the order given). The module's weight
        and bias are now parametrized: their leaves are ``parametrizations.weight.original<j>``.

    Raises:
        ValueError: no such module, no weight, already split, a weight or bias another module shares
            (a tied output layer: splitting would untie it), or rows that overlap or fall outside the
            tensor; the model is left as it was.
        TypeError: a row that is not an integer index (Python or numpy integer, integer 0-d tensor).

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
        >>> by_rows(net, "2", {"cats": [3, 5], "dogs": [4]}).names
        ('body', 'cats', 'dogs', '2.rest')
    """
    modules = dict(model.named_modules())
    if module not in modules or module == "":
        raise ValueError(f"module: no submodule named {module!r} in the model")
    layer = modules[module]
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, Tensor) or weight.ndim < 1:
        raise ValueError(f"module: {module!r} ({type(layer).__name__}) has no weight tensor to split by rows")
    if parametrize.is_parametrized(layer):
        split = layer.parametrizations["weight"][0] if "weight" in layer.parametrizations else None
        if rows is None and isinstance(split, RowSplit):
            return _partition(model, module, layer, split.names, rest)
        raise ValueError(f"module: {module!r} is already parametrized (split once; merge_rows() undoes it)")
    bias = getattr(layer, "bias", None)
    if isinstance(bias, Tensor) and (bias.ndim != 1 or len(bias) != len(weight)):
        raise ValueError(f"module: {module!r} has a bias of shape {tuple(bias.shape)}, not one entry per row")
    _refuse_tied(model, module, layer)
    named = _chunks(rows, len(weight), module)
    if rest in named:
        raise ValueError(f"rest: {rest!r} is also a row group's name")
    chunks = list(named.values())
    for tensor_name in ("weight", "bias") if isinstance(bias, Tensor) else ("weight",):
        parametrize.register_parametrization(layer, tensor_name, RowSplit(chunks, len(weight), list(named)))
    return _partition(model, module, layer, list(named), rest)


def _refuse_tied(model: nn.Module, module: str, layer: nn.Module) -> None:
    """``ValueError`` naming both modules when another module registers ``layer``'s weight or bias:
    the split would give ``layer`` its own leaves and the other module would keep the old tensor."""
    split = {id(getattr(layer, name)) for name in ("weight", "bias") if isinstance(getattr(layer, name, None), Tensor)}
    for other, owner in model.named_modules(remove_duplicate=False):
        if owner is layer:
            continue
        for pname, param in owner.named_parameters(recurse=False, remove_duplicate=False):
            if id(param) in split:
                shared = f"{other}.{pname}" if other else pname
                raise ValueError(
                    f"module: {module!r} shares its parameter with module {other or 'root'!r} ({shared!r}, tied "
                    f"weights); splitting {module!r} by rows would untie them. Untie them first (give {module!r} "
                    "its own nn.Parameter) or split a layer whose parameters no other module uses"
                )


def _partition(model: nn.Module, module: str, layer: nn.Module, names: list[str], rest: str) -> Partition:
    others = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(f"{module}.")]
    assignment: dict[str, list[str]] = {rest: others} if others else {}
    held = [name for name in ("weight", "bias") if name in layer.parametrizations]
    for j, group in enumerate(names):
        assignment[group] = [f"{module}.parametrizations.{name}.original{j}" for name in held]
    return explicit(model, assignment)


def merge_rows(model: nn.Module, module: str) -> None:
    """Make ``module``'s split weight and bias plain parameters again (their current values).

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> _ = by_rows(net, "0")
        >>> merge_rows(net, "0")
        >>> [name for name, _ in net.named_parameters()]
        ['0.weight', '0.bias']
    """
    layer = model.get_submodule(module)
    if not parametrize.is_parametrized(layer):
        raise ValueError(f"module: {module!r} is not split by rows")
    for name in list(layer.parametrizations):
        parametrize.remove_parametrizations(layer, name, leave_parametrized=True)
