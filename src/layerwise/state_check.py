"""Every technique's ``state_dict`` says who wrote it; loading checks that first, before it loads anything.

A checkpoint written by another technique, for another partition (other group names)
or with another configuration raises a ``ValueError`` naming what differs, and the
object loading it is left exactly as it was.

Examples:
    >>> state = {**stamp("FreezeOut", ["stem", "head"], {"t0": 0.8}), "steps": 3}
    >>> check_state(state, stamp("FreezeOut", ["stem", "head"], {"t0": 0.8}), keys=("steps",))
    >>> check_state(state, stamp("FreezeOut", ["stem", "body", "head"], {"t0": 0.8}), keys=("steps",))
    Traceback (most recent call last):
    ...
    ValueError: state_dict: saved for groups ['stem', 'head'], this FreezeOut has ['stem', 'body', 'head']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PARAM_SHAPED", "STAMP_KEYS", "check_optimizer_state", "check_state", "require_keys", "stamp"]

STAMP_KEYS = ("technique", "groups", "settings")
"""The entries :func:`stamp` adds to a state dict."""


def stamp(technique: str, groups: Sequence[str], settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The identity a state dict carries: the technique, its group names and the settings resuming depends on."""
    return {"technique": technique, "groups": list(groups), "settings": dict(settings or {})}


def check_state(state: Any, identity: Mapping[str, Any], *, keys: Sequence[str] = ()) -> None:
    """Raise unless ``state`` carries ``identity`` (a :func:`stamp`: technique, groups, settings) and holds ``keys``."""
    technique = identity["technique"]
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict: expected a dict written by {technique}.state_dict(), got {type(state).__name__}")
    written_by = state.get("technique")
    if written_by != technique:
        source = f"by {written_by}" if written_by else "by something else (it has no 'technique' entry)"
        raise ValueError(f"state_dict: written {source}; this is a {technique}")
    saved_groups = list(state.get("groups", ()))
    if saved_groups != identity["groups"]:
        raise ValueError(f"state_dict: saved for groups {saved_groups}, this {technique} has {identity['groups']}")
    saved_settings = state.get("settings", {})
    if not isinstance(saved_settings, Mapping):
        raise ValueError(f"state_dict: 'settings' must be a dict written by {technique}.state_dict()")
    ours = identity["settings"]
    for key in [*ours, *(k for k in saved_settings if k not in ours)]:  # a setting only one side has differs too
        if saved_settings.get(key) != ours.get(key):
            saved, have = saved_settings.get(key), ours.get(key)
            raise ValueError(f"state_dict: saved with {key}={saved!r}, this {technique} has {key}={have!r}")
    require_keys(state, keys, f"state_dict: {technique} state")


def require_keys(state: Mapping[str, Any], keys: Sequence[str], argument: str) -> None:
    """Raise ValueError naming the ``keys`` that ``state`` lacks (``argument`` says which state)."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"{argument} is missing {missing}")


PARAM_SHAPED = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "sum")
"""Optimizer state entries shaped like their parameter (torch's SGD, Adam(W), RMSprop, Adadelta, Adagrad)."""


def check_optimizer_state(optimizer: Any, state: Any, argument: str) -> None:
    """Raise ValueError unless a torch optimizer state dict fits ``optimizer``: its groups' parameter
    counts and, for the :data:`PARAM_SHAPED` entries, every parameter's shape (a model of other shapes)."""
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) and "params" in g for g in groups):
        raise ValueError(f"{argument}: expected a torch optimizer state dict with 'param_groups'")
    saved = [len(g["params"]) for g in groups]
    have = [len(g["params"]) for g in optimizer.param_groups]
    if saved != have:
        raise ValueError(f"{argument}: saved param groups hold {saved} parameters, this optimizer's hold {have}")
    entries = state.get("state", {})
    if not isinstance(entries, Mapping):
        raise ValueError(f"{argument}['state']: expected a dict, got {type(entries).__name__}")
    for saved_group, group in zip(groups, optimizer.param_groups):
        for index, param in zip(saved_group["params"], group["params"]):
            for key, value in (entries.get(index) or {}).items():
                if key in PARAM_SHAPED and hasattr(value, "shape") and tuple(value.shape) != tuple(param.shape):
                    raise ValueError(
                        f"{argument}: saved {key} of shape {tuple(value.shape)} for a parameter of shape "
                        f"{tuple(param.shape)} (a checkpoint of another model)"
                    )
