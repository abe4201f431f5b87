"""docs/coming-from.md: every example there is a file of docs/examples/, shown verbatim, and runs."""

from __future__ import annotations

import itertools
import os
import re
import runpy
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from _torchvision_stub import import_without_torchvision

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "coming-from.md"
EXAMPLES = ROOT / "docs" / "examples"
NAMES = ("hf_trainer", "timm", "lightning", "fastai", "muon")
NEEDS = {"hf_trainer": "transformers", "timm": "timm", "lightning": "lightning"}
"""The package each example needs beyond torch (the dev extra holds them)."""


def _shown() -> dict[str, str]:
    """The page's examples: the fenced block under each ``<!-- example: NAME -->`` marker."""
    found = re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```\n", PAGE.read_text(), flags=re.S)
    return dict(found)


def test_the_page_shows_every_example_file_verbatim():
    shown = _shown()
    assert sorted(shown) == sorted(NAMES) == sorted(p.stem.removeprefix("coming_from_") for p in EXAMPLES.glob("*.py"))
    for name, code in shown.items():
        assert code == (EXAMPLES / f"coming_from_{name}.py").read_text(), name


def _run(name: str, capsys) -> tuple[dict, str]:
    package = NEEDS.get(name)
    if package is not None and find_spec(package) is None:
        pytest.skip(f"{package} is in the dev extra")
    if name == "timm":
        import_without_torchvision("timm", "timm.optim")  # the example's imports find it loaded
    if name == "hf_trainer":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    namespace = runpy.run_path(str(EXAMPLES / f"coming_from_{name}.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out  # it says what it did
    return namespace, out


def test_hf_trainer_example_logs_discriminative_lrs(capsys):
    ns, _ = _run("hf_trainer", capsys)
    lrs = {k: v for k, v in ns["first"].items() if k.startswith("lr/")}
    assert len(lrs) >= 4  # the embeddings, each layer, the head
    values = list(lrs.values())
    for lower, upper in itertools.pairwise(values):
        assert lower == pytest.approx(upper / 2.6, rel=1e-6)
    assert values[-1] == pytest.approx(1e-3)  # the head at args.learning_rate in the first step
    assert values[0] == ns["first"]["learning_rate"]  # the Trainer logs group 0's LR of the same step


def test_timm_example_puts_timms_decay_into_every_groups_lr(capsys):
    ns, _ = _run("timm", capsys)
    assert ns["part"].names == tuple(ns["first"]) == ("layer_0", "layer_1", "layer_2", "layer_3")
    assert list(ns["first"].values()) == pytest.approx([1e-3 * 0.75**3, 1e-3 * 0.75**2, 1e-3 * 0.75, 1e-3])
    assert all(g["lr"] == pytest.approx(0, abs=1e-12) for g in ns["run"].optimizer.param_groups)  # cosine to 0


def test_lightning_example_resumes_with_what_was_unfrozen(capsys):
    ns, _ = _run("lightning", capsys)
    assert ns["half"].callbacks[0].technique.freezer.frozen == ("0",)
    assert ns["same"] and ns["resumed"].callbacks[0].technique.freezer.frozen == ()
    before, after = ns["half"].lightning_module.net, ns["resumed"].lightning_module.net
    for index in (0, 1, 3, 5):  # every group trained after the resume, the ones unfrozen before it included
        assert any(not torch.equal(a, b) for a, b in zip(before[index].parameters(), after[index].parameters()))


def test_fastai_example_unfreezes_from_the_head(capsys):
    ns, out = _run("fastai", capsys)
    lines = out.splitlines()
    assert lines[0] == "0 frozen: ('0', '2')" and lines[-1] == "11 frozen: ()"  # the head first, then the rest
    assert ns["run"].freezer.frozen == ()


def test_muon_example_leaves_the_embedding_and_head_to_adamw(capsys):
    ns, _ = _run("muon", capsys)
    muon, adamw = ns["opt"].optimizers
    on_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    model = ns["model"]
    assert on_muon == {id(model[2].weight), id(model[5].weight)}
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    on_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert {id(model[0].weight), id(model[7].weight)} <= on_adamw  # the embedding and the head
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        torch.optim.Muon(model.parameters())
