"""Peer methods for ``layerwise compare``: what a user would run instead of layerwise.

Each peer is a :class:`~layerwise.compare.methods.Method` built from its package's (or paper's)
recommended settings, cited in its description and in ``docs/peers.md``. None is in a regime's
default set: name them with ``--methods``. The optimizers come from the ``peers`` extra
(``pip install -c constraints.txt 'layerwise[peers]'``); a peer whose package is missing is refused
by its ``check`` before anything is loaded. The LR-only peers (layer-wise LR decay) cost what the
baseline costs; the others train for the baseline's measured time on the same seed (``--budget time``,
the default) or its steps (``--budget steps``). Each family file holds its peers'
builders, checks, snippets and registry entries, and one ``register_<family>()``.

Examples:
    >>> from layerwise.compare.methods import METHODS, resolve_settings
    >>> resolve_settings("layer-decay")
    {'decay': 0.75}
    >>> layer_decay_multipliers(3, 0.5)
    [0.25, 0.5, 1.0]
    >>> composer_frozen_count(step=75, total=100, groups=4, start=0.5, level=1.0)
    2
"""

from __future__ import annotations

from .adaptive import register_adaptive
from .freezing import Restarted, composer_frozen_count, even_mults, fastai_fine_tune_lrs, register_freezing
from .layer_decay import layer_decay_multipliers, register_layer_decay
from .lora import LORAPLUS_GROUPS, register_lora
from .muon import register_muon
from .shared import PEERS_EXTRA
from .trust_ratio import register_trust_ratio

__all__ = [
    "LORAPLUS_GROUPS",
    "PEERS_EXTRA",
    "Restarted",
    "composer_frozen_count",
    "even_mults",
    "fastai_fine_tune_lrs",
    "layer_decay_multipliers",
    "register_peers",
]


def register_peers() -> None:
    """Register the peer methods, family by family (after the built-in methods, so a comparison runs them last)."""
    register_adaptive()
    register_trust_ratio()
    register_layer_decay()
    register_freezing()
    register_lora()
    register_muon()
