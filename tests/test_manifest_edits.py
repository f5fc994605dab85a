"""Edited and hostile manifests are refused naming the field; a model file an interpreter refuses
is a named error, and ``backend="auto"`` goes on to the next backend.

Each edit is one a careless user or an attacker makes to a real bundle's ``manifest.json``
(the C-MAPSS example converted to int8/float32 TFLite and ONNX). Before the JSON Schema
(``edgelstm/runtime/manifest.schema.json``), 20 of 28 such edits ended in raw tracebacks
(``KeyError``, ``TypeError``, ``RecursionError``, a ``MemoryError`` allocating 52 GiB for
``window: 1e9``); now every one is a ``BundleError`` whose message names the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest

import edgelstm
from edgelstm.errors import BundleError, EdgeLSTMError, ModelFileError

from .conftest import ROOT, run_cli


def _set(path: str, value):
    def edit(m):
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value(node[int(last) if last.isdigit() else last]) if callable(value) else value
    return edit


DELETE = object()
EDITS = {
    # edit id: (edit, words the error must contain)
    "sha256 removed": (_set("models.0.sha256", DELETE), "models[0]"),
    "network removed": (_set("network", DELETE), "'network' is a required property"),
    "models not a list": (_set("models", "abc"), "field models"),
    "a model entry a number": (_set("models.0", 5), "field models[0]"),
    "no models": (_set("models", []), "field models"),
    "scale of 0": (_set("input.normalization.scale.0", 0), "field input.normalization.scale[0]"),
    "scale too short": (_set("input.normalization.scale", lambda v: v[:-1]), "input.normalization.scale"),
    "n_features 1e9": (_set("input.n_features", 10**9), "field input.n_features"),
    "n_features disagrees": (_set("network.n_features", 13), "network.n_features is 13"),
    "window 1e9": (_set("window", 10**9), "field window"),
    "window negative": (_set("window", -1), "field window"),
    "no outputs": (_set("outputs", []), "field outputs"),
    "output size a string": (_set("outputs.0.size", "1"), "field outputs[0].size"),
    "state size 0": (_set("state.0.size", 0), "field state[0].size"),
    "state name a path": (_set("state.0.name", "../x"), "field state[0].name"),
    "model file outside": (_set("models.0.file", "../manifest.json"), "field models[0].file"),
    "model file absolute": (_set("models.0.file", "/etc/passwd"), "field models[0].file"),
    "model file the bundle itself": (_set("models.0.file", "."), "field models[0].file"),
    "default model not listed": (_set("default_model", "nothere.tflite"), "field default_model"),
    "model size wrong": (_set("models.0.bytes", 1), "field models[].bytes"),
    "format pickle": (_set("models.0.format", "pickle"), "field models[0].format"),
    "quant null": (_set("models.0.quant", None), "field models[0].quant"),
    "file entry without hash": (_set("files.0", {"file": "report.json"}), "field files[0]"),
    "features list short": (_set("input.features", ["a"]), "input.features"),
    "delegate a number": (_set("target.delegate", 5), "field target.delegate"),
    "no layers": (_set("network.layers", []), "field network.layers"),
    "a model listed twice": (_set("models", lambda v: v + [v[0]]), "listed twice"),
    "schema version 2": (_set("schema_version", 2), "schema version 2"),
}


@pytest.fixture()
def copy(cmapss_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(cmapss_bundle, target)
    return target


def _edit_manifest(bundle, edit) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", list(EDITS))
def test_an_edited_manifest_is_refused_naming_the_field(name, copy):
    edit, words = EDITS[name]
    _edit_manifest(copy, edit)
    with pytest.raises(BundleError) as caught:
        edgelstm.load(copy)
    assert words in str(caught.value), str(caught.value)


def test_a_manifest_nested_too_deeply_is_refused(copy):
    (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        edgelstm.load(copy)


def test_the_cli_says_the_field_and_exits_2(copy, tmp_path):
    _edit_manifest(copy, _set("window", 10**9))
    np.savetxt(tmp_path / "r.csv", np.zeros((3, 14)), delimiter=",")
    result = run_cli("run", copy, "--input", tmp_path / "r.csv", "--by-position", check=False)
    assert result.returncode == 2 and "field window" in result.stderr + result.stdout and "Traceback" not in result.stderr


def _replace_model(bundle, name: str, data: bytes) -> None:
    (bundle / name).write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["models"]:
        if entry["file"] == name:
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_garbage_model_file_with_its_hash_fixed_is_named_and_auto_tries_the_next_backend(copy):
    _replace_model(copy, "step_int8_stream.tflite", np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ModelFileError, match="step_int8_stream.tflite: litert refuses this model file"):
        edgelstm.load(copy, backend="litert", model="int8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime = edgelstm.load(copy, model="int8")
    assert runtime.backend != "litert" and runtime.model_entry["quant"] == "int8"
    assert any("step_int8_stream.tflite" in str(w.message) and "trying the next backend" in str(w.message) for w in caught)


def test_a_model_file_that_is_not_the_described_model_is_refused(copy, keras, tmp_path):
    """A real TFLite step model of another network (8 features, not 14) under the right name and hash."""
    other = tmp_path / "other.keras"
    L = keras.layers
    keras.Sequential([keras.Input((None, 8)), L.LSTM(4, return_sequences=True), L.Dense(1)]).save(other)
    np.save(tmp_path / "c.npy", np.random.default_rng(1).normal(size=(4, 30, 8)).astype("float32"))
    run_cli("convert", other, "--calibration", tmp_path / "c.npy", "--out", tmp_path / "o", "--formats", "tflite",
            "--quant", "int8", "--long-steps", "100", "--quiet")
    _replace_model(copy, "step_int8_stream.tflite", (tmp_path / "o" / "step_int8_stream.tflite").read_bytes())
    with pytest.raises(ModelFileError, match="takes 8 features, the manifest says 14"):
        edgelstm.load(copy, backend="litert", model="int8")
    with pytest.raises(EdgeLSTMError):
        edgelstm.load(copy, backend="litert", model="step_int8_stream.tflite")


def test_every_shipped_and_converted_manifest_passes_the_schema(cmapss_bundle):
    from edgelstm.runtime.bundle import validate_manifest

    validate_manifest(json.loads((cmapss_bundle / "manifest.json").read_text()), "cmapss")


_AUDITED: list = []
_AUDITING = [False]


def _audit(event, args):
    if _AUDITING[0] and event == "open" and args and isinstance(args[0], (str, bytes)):
        _AUDITED.append(os.fsdecode(args[0]))


def test_loading_opens_nothing_outside_the_bundle(copy):
    """An audit hook (sys.addaudithook) on ``open``: during load and a step, every file opened
    is the bundle's own, or part of Python and edgelstm themselves (modules, the schema)."""
    if not getattr(test_loading_opens_nothing_outside_the_bundle, "hooked", False):
        sys.addaudithook(_audit)  # cannot be removed: it records only while _AUDITING is set
        test_loading_opens_nothing_outside_the_bundle.hooked = True
    _edit_manifest(copy, _set("models.0.file", "step_int8_stream.tflite"))  # a harmless edit: listed twice
    _AUDITED.clear()
    _AUDITING[0] = True
    try:
        with pytest.raises(BundleError):
            edgelstm.load(copy)
    finally:
        _AUDITING[0] = False
    allowed = [str(copy.resolve()), sys.prefix, sys.base_prefix, str(ROOT / "edgelstm"), "/proc/", "/sys/", "/dev/null"]
    outside = [p for p in _AUDITED if not any(os.path.realpath(p).startswith(a) or p.startswith(a) for a in allowed)]
    assert not outside, outside
    assert any(str(copy) in p for p in _AUDITED)  # it did read the manifest


def test_loading_and_stepping_a_good_bundle_opens_only_its_files(cmapss_bundle):
    if not getattr(test_loading_opens_nothing_outside_the_bundle, "hooked", False):
        sys.addaudithook(_audit)
        test_loading_opens_nothing_outside_the_bundle.hooked = True
    _AUDITED.clear()
    _AUDITING[0] = True
    try:
        runtime = edgelstm.load(cmapss_bundle)
        runtime.step(np.asarray(runtime.bundle.manifest["input"]["calibration_stats"]["mean"], np.float32))
    finally:
        _AUDITING[0] = False
    allowed = [str(cmapss_bundle.resolve()), str(cmapss_bundle), sys.prefix, sys.base_prefix, str(ROOT / "edgelstm"),
               "/proc/", "/sys/", "/dev/null"]
    outside = [p for p in _AUDITED if not any(os.path.realpath(p).startswith(a) or p.startswith(a) for a in allowed)]
    assert not outside, outside
