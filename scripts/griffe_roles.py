"""A griffe extension for the documentation site: Sphinx roles in docstrings (``:class:`~a.B```,
``:meth:`x```) as inline code (``B``, ``x``), which mkdocstrings' Google style would print as
they are. The sources keep their roles; only the site's copy of each docstring changes."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|obj|exc):`(~?)([^`]+)`")


def _as_code(match: re.Match) -> str:
    short, target = match[1], match[2]
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRolesAsCode(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_as_code, obj.docstring.value)
