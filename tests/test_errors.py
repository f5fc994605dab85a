"""Bad input gets one clear line naming the problem, and a non-zero exit; never a traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgelstm.bundle import Bundle
from edgelstm.errors import BundleError, CalibrationError, ModelFormatError, UnsupportedLayerError
from edgelstm.importers import load_network

from .conftest import EXAMPLE_MODEL, RECIPE, run_cli


def _fails_cleanly(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert line.startswith("edgelstm: error:") and "\n" not in line, line
    for fragment in fragments:
        assert fragment in line, line


@pytest.fixture()
def calib(tmp_path, rng):
    path = tmp_path / "calib.npy"
    np.save(path, rng.normal(size=(6, 20, 14)).astype("float32"))
    return path


def test_unsupported_layer_names_layer_class_position_and_supported(keras, tmp_path, calib):
    L = keras.layers
    model = keras.Sequential([keras.Input((None, 14)), L.LSTM(8, return_sequences=True), L.Conv1D(4, 3, name="conv"), L.Dense(1)])
    model.save(tmp_path / "conv.keras")
    result = run_cli("convert", tmp_path / "conv.keras", "--calibration", calib, "--out", tmp_path / "b", check=False)
    _fails_cleanly(result, "layer 2 'conv' (Conv1D)", "not yet supported", "supported: InputLayer, Embedding (first layer), LSTM")
    assert not (tmp_path / "b").exists(), "nothing is half-converted"


@pytest.mark.parametrize("layer", ["GRU", "Bidirectional", "stateful", "go_backwards"])
def test_not_yet_supported_recurrent_variants(keras, tmp_path, layer):
    L = keras.layers
    recurrent = {
        "GRU": L.GRU(4),
        "Bidirectional": L.Bidirectional(L.LSTM(4)),
        "stateful": L.LSTM(4, stateful=True),
        "go_backwards": L.LSTM(4, go_backwards=True),
    }[layer]
    shape = (5, 7, 3) if layer == "stateful" else (None, None, 3)
    model = keras.Sequential([keras.Input(batch_shape=shape), recurrent, L.Dense(1)])
    model.save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayerError, match="not yet supported"):
        load_network(tmp_path / "m.keras")


def test_lambda_layer_is_refused_without_running_its_code(keras, tmp_path, calib):
    marker = tmp_path / "lambda_ran"
    L = keras.layers

    def side_effect(x):
        marker.write_text("ran")
        return x

    model = keras.Sequential([keras.Input((None, 14)), L.LSTM(8, return_sequences=True), L.Lambda(side_effect, name="my_lambda"), L.Dense(1)])
    marker.unlink(missing_ok=True)
    model.save(tmp_path / "lambda.keras")
    marker.unlink(missing_ok=True)
    result = run_cli("convert", tmp_path / "lambda.keras", "--calibration", calib, "--out", tmp_path / "b", check=False)
    _fails_cleanly(result, "layer 2 'my_lambda' (Lambda)", "never runs")
    assert not marker.exists()


def test_custom_layer_is_refused(keras, tmp_path):
    @keras.saving.register_keras_serializable(package="acme")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4), Scale(name="scale")])
    model.save(tmp_path / "custom.keras")
    with pytest.raises(UnsupportedLayerError, match=r"layer 2 'scale' \(Scale\): custom layer"):
        load_network(tmp_path / "custom.keras")


def test_truncated_and_corrupt_model_files(tmp_path, calib):
    data = EXAMPLE_MODEL.read_bytes()
    (tmp_path / "truncated.keras").write_bytes(data[: len(data) // 2])
    result = run_cli("convert", tmp_path / "truncated.keras", "--calibration", calib, "--out", tmp_path / "b", check=False)
    _fails_cleanly(result, "truncated.keras")
    (tmp_path / "noise.keras").write_bytes(np.random.default_rng(0).bytes(4096))
    result = run_cli("inspect", tmp_path / "noise.keras", check=False)
    _fails_cleanly(result, "noise.keras", "unknown model format")
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty file"):
        load_network(tmp_path / "empty.keras")
    corrupt = bytearray(data)
    for offset in range(2000, len(corrupt), 97):
        corrupt[offset] ^= 0xFF
    (tmp_path / "corrupt.keras").write_bytes(bytes(corrupt))
    with pytest.raises(ModelFormatError):
        load_network(tmp_path / "corrupt.keras")


def test_calibration_with_wrong_feature_count(tmp_path, rng):
    np.save(tmp_path / "c13.npy", rng.normal(size=(4, 10, 13)).astype("float32"))
    result = run_cli("convert", EXAMPLE_MODEL, "--calibration", tmp_path / "c13.npy", "--out", tmp_path / "b", check=False)
    _fails_cleanly(result, "c13.npy", "13 features", "expects 14")


def test_calibration_with_nan(tmp_path, rng):
    data = rng.normal(size=(4, 10, 14)).astype("float32")
    data[2, 7, 3] = np.nan
    np.save(tmp_path / "nan.npy", data)
    result = run_cli("convert", EXAMPLE_MODEL, "--calibration", tmp_path / "nan.npy", "--out", tmp_path / "b", check=False)
    _fails_cleanly(result, "nan in sequence 2, step 7, feature 'f3'")


def test_tampered_bundle_file_is_named(cmapss_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(cmapss_bundle, copy)
    model = copy / "step_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="step_int8.tflite was changed or damaged"):
        Bundle.open(copy)
    _fails_cleanly(run_cli("inspect", copy, check=False), "step_int8.tflite")


def test_bundle_of_another_schema_version(cmapss_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(cmapss_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version 99"):
        Bundle.open(copy)
    (copy / "step_float32.onnx").unlink()
    manifest["schema_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="step_float32.onnx is listed in the manifest but missing"):
        Bundle.open(copy)


def test_unknown_target(tmp_path, calib):
    _fails_cleanly(run_cli("convert", EXAMPLE_MODEL, "--calibration", calib, "--out", tmp_path / "b", "--target", "pi9", check=False), "unknown target 'pi9'", "rpi4")
