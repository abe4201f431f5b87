"""Assemble the documentation site's sources into build/docs-src (then `mkdocs build --strict`).

The repository's texts stay where a reader of the repository finds them; this script lays them out
for mkdocs, keeping their relative links valid: README.md's sections become guide/*.md pages (links
re-rooted), the method cards and ARCHITECTURE.md stay under docs/, BENCHMARKS.md and CHANGELOG.md at
the top, the gallery's images under docs/gallery, and api.md gets one mkdocstrings entry per public
name. Run by `make docs`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import layerwise

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "docs-src"
MODULES = (
    "layerwise.fsdp",
    "layerwise.distributed",
    "layerwise.integrations.huggingface",
    "layerwise.integrations.lightning",
)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60]


def _rerooted(text: str, pages: dict[str, str]) -> str:
    """Relative links of a README section, for a page one folder down (guide/); a link to another
    section's heading goes to that section's page."""
    text = re.sub(r"\]\((?!https?://|#|/)([^)]+)\)", r"](../\1)", text)
    return re.sub(r"\]\(#([^)]+)\)", lambda m: f"]({pages[m[1]]})" if m[1] in pages else m[0], text)


def _guide() -> list[tuple[str, str]]:
    sections = re.split(r"^## ", (ROOT / "README.md").read_text(), flags=re.M)
    intro, pages = sections[0], []
    (OUT / "index.md").write_text(
        intro + "\nThe guide's pages are the README's sections; the API reference is generated from the docstrings.\n"
    )
    titles = [section.partition("\n")[0] for section in sections[1:]]
    anchors = {_slug(title): f"{_slug(title)}.md" for title in titles}  # pages beside each other in guide/
    for section in sections[1:]:
        title, _, body = section.partition("\n")
        name = f"guide/{_slug(title)}.md"
        (OUT / name).write_text(f"# {title}\n{_rerooted(body, anchors)}")
        pages.append((title, name))
    return pages


def _api() -> None:
    entries = [
        f"## `layerwise.{name}`\n\n::: layerwise.{name}\n"
        for name in sorted(layerwise.__all__)
        if name not in ("groups", "schedules", "distributed", "fsdp")
    ]
    modules = [f"## `{name}`\n\n::: {name}\n" for name in ("layerwise.groups", "layerwise.schedules", *MODULES)]
    (OUT / "api.md").write_text(
        "# API reference\n\nEvery public name of `layerwise`, from its docstring.\n\n" + "\n".join(entries + modules)
    )


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "guide").mkdir(parents=True)
    shutil.copytree(ROOT / "docs", OUT / "docs")
    for name in ("BENCHMARKS.md", "CHANGELOG.md"):
        shutil.copy(ROOT / name, OUT / name)
    pages = _guide()
    _api()
    cards = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name not in ("ARCHITECTURE.md", "gallery.md"))
    nav = ["nav:", "  - Home: index.md", "  - Guide:"]
    nav += [f"      - {json.dumps(title.replace('`', ''))}: {name}" for title, name in pages]  # titles are plain text
    nav += ["  - Method cards:"] + [f"      - docs/{name}" for name in cards]
    nav += ["  - Gallery: docs/gallery.md", "  - Architecture: docs/ARCHITECTURE.md", "  - API reference: api.md"]
    nav += ["  - Benchmarks: BENCHMARKS.md", "  - Changelog: CHANGELOG.md"]
    config = ["INHERIT: ../mkdocs.yml", "docs_dir: docs-src", "site_dir: site", *nav]
    (OUT.parent / "mkdocs.yml").write_text("\n".join(config) + "\n")
    print(f"wrote {OUT} ({len(pages)} guide pages) and {OUT.parent / 'mkdocs.yml'}")


if __name__ == "__main__":
    main()
