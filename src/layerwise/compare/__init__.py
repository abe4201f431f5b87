"""``layerwise compare``: train one task with several techniques side by side, at equal cost, and report.

By default every method gets the baseline's training wall-clock on the same seed (``budget="time"``):
each run stops by its own clock, its schedules following its share of that time, so the table
answers "which gives the best model in this time, and which reaches the target soonest".
``budget="steps"`` trains every method the same number of steps. Runs are stored as they finish
(``DIR/runs.sqlite``), so an
interrupted comparison resumes where it stopped; a run that fails is reported with its error and
the others still run. The report is a table (terminal, ``results.md``), one JSON record per run
(``DIR/runs/``), PNG plots and ``report.html``. :mod:`.main_job` runs the two regimes of
``make main``.

Examples:
    >>> from layerwise.compare import compare
    >>> result = compare("fashion-mnist", ["baseline", "freezeout"], quick=True, out="runs/cmp")  # doctest: +SKIP
    >>> print(result["table"])  # doctest: +SKIP
"""

from .cached import register_cached
from .methods import METHODS, Build, Method, Setup, default_methods, register_method
from .peers import register_peers
from .session import (
    BUDGETS,
    CompareConfig,
    Request,
    Variant,
    check_request,
    compare,
    compare_variants,
    parse_overrides,
    run_request,
)
from .setup import setup

__all__ = [
    "BUDGETS",
    "METHODS",
    "Build",
    "CompareConfig",
    "Method",
    "Request",
    "Setup",
    "Variant",
    "check_request",
    "compare",
    "compare_variants",
    "default_methods",
    "parse_overrides",
    "register_cached",
    "register_method",
    "register_peers",
    "run_request",
    "setup",
]

register_peers()
register_cached()  # after the peers: fine-tune, lp-ft and layer-freezing have cached variants too
