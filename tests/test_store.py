"""The run store: records, failures and the configuration it belongs to."""

import pytest

from layerwise.compare.store import RunStore


def test_runs_and_failures_survive_reopening(tmp_path):
    path = tmp_path / "runs.sqlite"
    key = RunStore.key("freezeout", {"t0": 0.5}, 2)
    assert key == RunStore.variant_key("freezeout", {"t0": 0.5}) + "|2"
    with RunStore(path, {"task": "x"}) as store:
        assert store.finished(key) is None
        store.save(key, {"method": "freezeout", "seed": 2, "steps": 7})
        store.fail("other", "llr", 0, "boom")
    with RunStore(path, {"task": "x"}) as store:
        assert store.finished(key)["steps"] == 7 and store.error("other") == "boom"
        assert store.finished("other") is None


def test_another_configuration_is_refused(tmp_path):
    with RunStore(tmp_path / "runs.sqlite", {"task": "x"}) as store:
        store.save(RunStore.key("baseline", {}, 0), {"method": "baseline", "seed": 0})
    with pytest.raises(ValueError, match="holds runs of a different configuration"):
        RunStore(tmp_path / "runs.sqlite", {"task": "y"})
