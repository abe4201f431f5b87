"""Exact resume in a new process: N steps, torch.save, a new process loads and trains N more == 2N straight
(the second halves of every case run in one new process, so the suite pays one start-up)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resume_case

SCRIPT = Path(__file__).with_name("resume_case.py")


@pytest.fixture(scope="module")
def resumed_in_a_new_process(tmp_path_factory) -> Path:
    """Every case's first half here, then every case's second half in one new process (one start-up)."""
    root = tmp_path_factory.mktemp("resume")
    for case in resume_case.ALL_CASES:
        (root / case).mkdir()
        resume_case.main(case, "first", str(root / case))
    command = [sys.executable, str(SCRIPT), ",".join(resume_case.ALL_CASES), "second", str(root)]
    subprocess.run(command, check=True, timeout=600)
    return root


@pytest.mark.parametrize("case", resume_case.ALL_CASES)
def test_resume_in_a_new_process_is_bitwise_exact(case, resumed_in_a_new_process):
    tmp_path = resumed_in_a_new_process / case
    checkpoint = torch.load(tmp_path / "checkpoint.pt")
    resumed = torch.load(tmp_path / "final.pt")
    straight = resume_case.straight(case)
    assert len(resumed) == len(straight)
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b), case
    # the checkpoint was taken in the middle of what each technique does (on the plain and the PEFT model)
    case = case.removeprefix("peft-")
    if case == "freezeout":
        assert 0 < len(checkpoint["freezeout"]["freezer"]["frozen"]) < 3
    if case == "unfreezing":
        assert checkpoint["unfreezing"]["steps"] == resume_case.HALF
    if case == "multirate":
        assert checkpoint["opt"]["step_count"] % 3 != 0
    if case == "hidlr":
        assert checkpoint["opt"]["hidlr"]["stats"]["accepted"] + checkpoint["opt"]["hidlr"]["stats"]["rejected"] > 0
    if case == "secant":
        assert checkpoint["opt"]["secant"]["stats"]["estimates"] > 0
    if case == "lisa":  # mid-period, two of the three sampled groups frozen
        assert checkpoint["lisa"]["step_count"] % 3 != 0 and len(checkpoint["lisa"]["freezer"]["frozen"]) == 2
    if case == "tempbalance":  # mid-interval, with multipliers of its own
        assert (
            checkpoint["tempbalance"]["step_count"] % 3 != 0 and len(set(checkpoint["tempbalance"]["multipliers"])) > 1
        )
