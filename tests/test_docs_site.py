"""scripts/docs_site.py: the home page's links still lead to files once it moves to the site's top, the
guide is docs/guide/*.md, and every module and name a `layerwise compare` report snippet imports is
public (in its module's ``__all__``) and documented in the API reference."""

import ast
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch

import layerwise
from blobs import blobs_task, mlp
from layerwise.compare.methods import METHODS, Build, method_snippet, resolve_settings
from layerwise.compare.methods.kit import WITHOUT_SETUP
from layerwise.tasks import TASKS, register_task

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("docs_site", ROOT / "scripts" / "docs_site.py")
docs_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_site)


def test_the_home_page_links_lead_to_files_from_the_top_of_the_site():
    """The site mirrors the repository (docs/ under docs/, BENCHMARKS.md at the top), so a link of the
    re-rooted home page leads to a file when it does from the repository's root."""
    text = docs_site._rerooted(docs_site.HOME.read_text(), docs_site.DOCS, ROOT)
    links = [u for u in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", u)]
    assert "docs/gallery/compare.png" in links and "BENCHMARKS.md" in links
    assert not [u for u in links if not (ROOT / u.partition("#")[0]).exists()]


def test_the_guide_is_docs_guide_in_its_order():
    pages = docs_site.guide_pages()
    assert set((ROOT / "docs" / "guide").glob("*.md")) <= set(pages) and len(set(pages)) == len(pages)
    assert [p.name for p in pages][:2] == ["quick-start.md", "set-up-and-run.md"]
    assert not [p for p in pages if p.parent.name != "guide" and p.name not in docs_site.NOT_CARDS]


# ---- what the report snippets import ----------------------------------------------------------------------

TASKS_TRIED = [
    blobs_task("docs-blobs", weight_decay=5e-4),
    blobs_task("docs-blobs-ft", regime="fine-tuning", optimizer="adamw", lr=1e-2, weight_decay=0.01),
]
if importlib.util.find_spec("peft") is not None:
    from layerwise.tasks.lora import peft_lora

    TASKS_TRIED.append(
        blobs_task(
            "docs-blobs-lora",
            make_model=lambda: peft_lora(mlp(), targets=("0", "2"), r=4, alpha=8, head=("4",)),
            partition=lambda model, sample: layerwise.by_lora(model, rest="head"),
            regime="fine-tuning",
            optimizer="adamw",
            lr=1e-2,
            weight_decay=0.01,
        )
    )
for _task in TASKS_TRIED:
    if _task.name not in TASKS:
        register_task(_task)


def _snippet(name: str) -> str | None:
    """``name``'s report snippet on the first tiny task it applies to, its commented part uncommented."""
    for task in TASKS_TRIED:
        torch.manual_seed(0)
        model = task.make_model()
        partition = task.partition_of(model)
        if METHODS[name].applies(task, partition) is None:
            text = method_snippet(Build(task, model, partition, 3, "cosine"), name, resolve_settings(name))
            one_call, _, commented = text.partition(f"\n{WITHOUT_SETUP}\n")
            return one_call + "\n" + "\n".join(line.removeprefix("# ") for line in commented.split("\n"))
    return None


def _references(code: str) -> set[str]:
    """Every dotted ``layerwise...`` name ``code`` imports or uses."""
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("layerwise")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("layerwise"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Attribute):
            parts, inner = [], node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "layerwise":
                found.add(".".join(["layerwise", *reversed(parts)]))
    return found


@pytest.fixture(scope="module")
def snippet_references() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in sorted(METHODS):
        code = _snippet(name)
        for reference in _references(code) if code else ():
            found.setdefault(reference, set()).add(name)
    return found


def _module_and_name(reference: str) -> tuple[str, str | None]:
    """The module ``reference`` reaches through attributes (``layerwise.compare.setup`` is the function
    ``layerwise.compare`` exports, not the submodule of that name) and the first name after it (None:
    the module itself)."""
    parts = reference.split(".")
    module = importlib.import_module(parts[0])
    for depth, part in enumerate(parts[1:], start=1):
        inner = getattr(module, part, None)
        if inner is None:  # a submodule that its package does not import
            inner = importlib.import_module(".".join(parts[: depth + 1]))
        if not inspect.ismodule(inner):
            return module.__name__, part
        module = inner
    return module.__name__, None


def test_the_snippets_were_found(snippet_references):
    assert "layerwise.compare.setup" in snippet_references and "layerwise.recipes.make_policy" in snippet_references


def test_every_name_a_snippet_uses_is_public(snippet_references):
    private = []
    for reference, methods in snippet_references.items():
        module_name, name = _module_and_name(reference)
        if name is not None and name not in getattr(importlib.import_module(module_name), "__all__", ()):
            private.append(f"{module_name}.{name} (snippets of {sorted(methods)})")
    assert not private


def test_every_module_a_snippet_imports_is_in_the_api_reference(snippet_references):
    documented = {"layerwise", *docs_site.MODULES, *docs_site.SNIPPET_MODULES}
    modules = {_module_and_name(reference)[0] for reference in snippet_references}
    assert not sorted(modules - documented)
    for module_name in docs_site.SNIPPET_MODULES:
        assert hasattr(importlib.import_module(module_name), "__all__"), module_name


def test_a_name_a_submodule_hides_gets_its_own_api_entry():
    assert ("layerwise.compare.setup", "layerwise.compare.setup.setup") in docs_site._shadowed(("layerwise.compare",))
