"""The int8 fidelity zoo (examples/zoo/zoo.json) is complete: every model file is there, imports with
the project's importer, and names a recipe function that exists. No training, no conversion: the
measuring is ``python bench/int8_fidelity.py`` (slow, not part of the suite)."""

from __future__ import annotations

import importlib
import json
import math

import pytest

from edgelstm.convert.importers import load_network, sniff_format
from edgelstm.recipes import zoo

from .conftest import ROOT

MANIFEST = ROOT / "examples" / "zoo" / "zoo.json"
ENTRIES = json.loads(MANIFEST.read_text())["models"] if MANIFEST.exists() else []
FORMATS = {"keras3": "keras3", "tf_keras": "keras2-hdf5", "pytorch": "onnx"}


def test_the_manifest_lists_the_recipes_members_in_order():
    assert MANIFEST.exists()
    assert [e["name"] for e in ENTRIES] == [m["name"] for m in zoo.MEMBERS]
    assert len(ENTRIES) >= 10
    kinds = {e["use"] for e in ENTRIES}
    assert kinds == {"streaming", "many-to-one", "window"}
    assert {e["framework"] for e in ENTRIES} == {"keras3", "tf_keras", "pytorch"}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_each_zoo_model_exists_imports_and_has_its_recipe(entry):
    path = ROOT / entry["file"]
    assert path.is_file(), path
    assert sniff_format(path) == FORMATS[entry["framework"]]
    network = load_network(path, window=entry["window"] if entry["use"] == "window" else None)
    assert network.mode == ("window" if entry["use"] == "window" else "step")
    if entry["use"] == "many-to-one":
        assert network.output_mode == "last" and entry["window"]
    if entry["use"] == "streaming":
        assert network.output_mode == "sequence"
    assert network.input_kind == ("token" if entry["data"] == "stdlib_text" else "features")
    module, _, function = entry["recipe"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    for key in ("scaler", "weights", "state_io"):
        if entry.get(key):
            extra = ROOT / entry[key]
            assert extra.is_file(), extra
            if key == "scaler":
                scaler = json.loads(extra.read_text())
                assert len(scaler["offset"]) == network.n_features == 14
            if key == "state_io":
                assert sniff_format(extra) == "onnx"
    recorded = entry["files"]["file"]
    assert recorded["bytes"] == path.stat().st_size
    assert entry["licence"] and entry["output"] and entry["data_description"]
    training = entry.get("training") or {}
    assert training.get("train_seconds") is None or math.isfinite(training["train_seconds"])


def test_the_zoo_stays_small():
    total = sum(p.stat().st_size for p in (ROOT / "examples" / "zoo").iterdir() if p.is_file())
    assert total < 15 * 1024 * 1024
