"""Assemble the documentation site's sources into build/docs-src (then `mkdocs build --strict`).

The repository's texts stay where a reader of the repository finds them; this script lays them out
for mkdocs, keeping their relative links valid: the home page is docs/index.md (its links re-rooted,
since it becomes the site's index.md), the guide is docs/guide/*.md, the method cards and
ARCHITECTURE.md stay under docs/, BENCHMARKS.md and CHANGELOG.md at the top, the gallery's images
under docs/gallery, and api.md gets one mkdocstrings entry per public name and per module that users
(and the code snippets of `layerwise compare`'s reports) import. Run by `make docs`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
from pathlib import Path

import layerwise

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OUT = ROOT / "build" / "docs-src"
HOME = DOCS / "index.md"
"""The site's home page: which technique, when (the measured decision table), the install line, a picture."""

MODULES = (
    "layerwise.fsdp",
    "layerwise.distributed",
    "layerwise.integrations.huggingface",
    "layerwise.integrations.lightning",
)
SNIPPET_MODULES = (
    "layerwise.compare",
    "layerwise.compare.peers",
    "layerwise.recipes",
    "layerwise.tasks",
    "layerwise.tasks.lora",
    "layerwise.freezing",
    "layerwise.autofreeze",
    "layerwise.peers_optim",
    "layerwise.spectral",
)
"""Modules the code snippets of a `layerwise compare` report import (besides `layerwise` itself):
documented in the API reference so that every name a snippet uses is (tests/test_docs_site.py)."""

GUIDE = (
    "guide/quick-start.md",
    "guide/set-up-and-run.md",
    "coming-from.md",
    "guide/compare.md",
    "guide/data-parallel-comparisons.md",
    "cluster.md",
    "guide/schedules.md",
    "guide/parameter-groups.md",
    "guide/freezeout.md",
    "guide/prefix-cache.md",
    "guide/hidlr.md",
    "guide/multirate.md",
    "guide/telemetry-and-secant.md",
    "guide/data-parallel.md",
    "guide/fsdp.md",
    "guide/resuming.md",
    "guide/huggingface.md",
    "guide/lightning.md",
    "guide/torch-compile.md",
    "guide/benchmarks.md",
    "guide/method-cards.md",
    "guide/moved-and-renamed.md",
)
"""The guide's order in the navigation, as paths under docs/: the pages of docs/guide/ and the pages of
docs/ that are guides rather than method cards. A page named here that does not exist is left out; a
page of docs/guide/ not named here comes after them, by name."""

NOT_CARDS = ("index.md", "ARCHITECTURE.md", "gallery.md", *(name for name in GUIDE if "/" not in name))


def _title(path: Path) -> str:
    """A page's first `# ` heading, as plain text for the navigation."""
    heading = next((line[2:] for line in path.read_text().splitlines() if line.startswith("# ")), path.stem)
    return heading.replace("`", "").strip()


def _rerooted(text: str, source: Path, target: Path) -> str:
    """``text``, written in folder ``source`` of the repository, with its relative links (and images)
    made relative to folder ``target`` instead; the site's layout mirrors the repository's."""

    def link(match: re.Match) -> str:
        url = match[1]
        if re.match(r"[a-z]+:|#|/", url):
            return match[0]
        path, hash_, anchor = url.partition("#")
        moved = os.path.relpath(os.path.normpath(source / path), target).replace(os.sep, "/")
        return f"]({moved}{hash_}{anchor})"

    return re.sub(r"\]\(([^)\s]+)\)", link, text)


def guide_pages() -> list[Path]:
    """The guide's pages in the navigation's order: docs/guide/*.md and the guides beside the cards."""
    pages = [DOCS / name for name in GUIDE if (DOCS / name).exists()]
    return pages + sorted(set((DOCS / "guide").glob("*.md")) - set(pages))


def _shadowed(modules: tuple[str, ...]) -> list[tuple[str, str]]:
    """Public names of ``modules`` that share their name with a submodule (``layerwise.compare.setup``,
    the function, beside ``compare/setup.py``): griffe documents the submodule there and skips the
    name, so each gets an entry of its own, as (public name, where it is defined)."""
    found = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        folder = Path(module.__file__).parent
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if hasattr(module, "__path__") and not inspect.ismodule(obj) and (folder / f"{name}.py").exists():
                found.append((f"{module_name}.{name}", f"{obj.__module__}.{obj.__qualname__}"))
    return found


def _api() -> None:
    entries = [
        f"## `layerwise.{name}`\n\n::: layerwise.{name}\n"
        for name in sorted(layerwise.__all__)
        if name not in ("groups", "schedules", "distributed", "fsdp")
    ]
    modules = [f"## `{name}`\n\n::: {name}\n" for name in ("layerwise.groups", "layerwise.schedules", *MODULES)]
    snippets = [f"## `{name}`\n\n`import {name}`\n\n::: {name}\n" for name in SNIPPET_MODULES]
    snippets += [f"## `{name}`\n\n::: {target}\n" for name, target in _shadowed(SNIPPET_MODULES)]
    (OUT / "api.md").write_text(
        "# API reference\n\nEvery public name of `layerwise`, from its docstring.\n\n"
        + "\n".join(entries + modules)
        + "\n# Modules the report snippets import\n\nThe code a `layerwise compare` report shows for each "
        "method imports these modules (and `layerwise`); each one's public names, from their docstrings.\n\n"
        + "\n".join(snippets)
    )


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    # docs/index.md is the site's home page, at the top (below); the rest of docs/ keeps its place
    shutil.copytree(DOCS, OUT / "docs", ignore=lambda folder, names: ["index.md"] if Path(folder) == DOCS else [])
    for name in ("BENCHMARKS.md", "CHANGELOG.md"):
        shutil.copy(ROOT / name, OUT / name)
    # the home page's tables take the width the table of contents would
    (OUT / "index.md").write_text("---\nhide:\n  - toc\n---\n\n" + _rerooted(HOME.read_text(), DOCS, ROOT))
    _api()
    guide = [(_title(p), p.relative_to(ROOT).as_posix()) for p in guide_pages()]
    cards = sorted(p.name for p in DOCS.glob("*.md") if p.name not in NOT_CARDS)
    nav = ["nav:", "  - Home: index.md", "  - Guide:"]
    nav += [f"      - {json.dumps(title)}: {name}" for title, name in guide]
    nav += ["  - Method cards:"] + [f"      - docs/{name}" for name in cards]
    nav += ["  - Gallery: docs/gallery.md", "  - Architecture: docs/ARCHITECTURE.md", "  - API reference: api.md"]
    nav += ["  - Benchmarks: BENCHMARKS.md", "  - Changelog: CHANGELOG.md"]
    config = ["INHERIT: ../mkdocs.yml", "docs_dir: docs-src", "site_dir: site", *nav]
    (OUT.parent / "mkdocs.yml").write_text("\n".join(config) + "\n")
    print(f"wrote {OUT} (home, {len(guide)} guide pages, {len(cards)} method cards) and {OUT.parent / 'mkdocs.yml'}")


if __name__ == "__main__":
    main()
