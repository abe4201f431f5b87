"""The one registry shape: lookup, listing, duplicate warning, lazy entries, removal."""

import warnings

import pytest

from layerwise._registry import Registry


def test_lookup_listing_and_unknown_names():
    colours = Registry("colour")
    colours.register("red", 1, description="warm")
    colours.register("blue", 2)
    assert colours["red"] == 1 and colours.get("blue") == 2 and list(colours) == ["red", "blue"]
    assert colours.describe() == [("red", "warm"), ("blue", "")] and colours.describe(["blue"]) == [("blue", "")]
    assert "red" in colours and "green" not in colours and len(colours) == 2
    with pytest.raises(ValueError, match=r"colour: unknown 'green'; choose from \['blue', 'red'\]"):
        colours.get("green")
    with pytest.raises(KeyError):
        colours["green"]


def test_a_duplicate_name_warns_and_the_new_entry_wins():
    colours = Registry("colour")
    colours.register("red", 1)
    with pytest.warns(UserWarning, match="colour 'red' was already registered"):
        colours.register("red", 3)
    assert colours["red"] == 3


def test_lazy_entries_import_on_first_lookup():
    entries = Registry("thing")
    entries.register_lazy("dumps", "json:dumps", description="lazy")
    import json

    assert entries.get("dumps") is json.dumps
    with pytest.raises(ValueError, match=r"expected 'package\.module:attribute'"):
        entries.register_lazy("bad", "json.dumps")


def test_unregister_and_bad_names():
    entries = Registry("thing")
    entries.register("a", 1)
    entries.unregister("a")
    assert "a" not in entries
    with pytest.raises(ValueError, match="thing: unknown 'a'"):
        entries.unregister("a")
    with pytest.raises(ValueError, match="name: a non-empty string"):
        entries.register("", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entries.register("b", 2)  # a new name does not warn


def test_the_built_in_registries_share_the_shape():
    from layerwise.compare.methods import METHODS
    from layerwise.tasks import OPTIMIZER_PRESETS, TASKS

    for registry in (METHODS, TASKS, OPTIMIZER_PRESETS):
        assert isinstance(registry, Registry) and all(description for _, description in registry.describe())
