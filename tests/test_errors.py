"""Bad input gets one clear line naming the problem, and a non-zero exit; never a traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgelstm.runtime.bundle import Bundle
from edgelstm.errors import BundleError, CalibrationError, ModelFormatError, UnsupportedLayerError
from edgelstm.convert.importers import load_network

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
    model = keras.Sequential([keras.Input((None, 14)), L.LSTM(8, return_sequences=True), L.SimpleRNN(4, name="rnn"), L.Dense(1)])
    model.save(tmp_path / "rnn.keras")
    result = run_cli("convert", tmp_path / "rnn.keras", "--calibration", calib, "--out", tmp_path / "b", check=False)
    _fails_cleanly(result, "layer 2 'rnn' (SimpleRNN)", "not yet supported", "supported: InputLayer, Embedding (first layer), LSTM, GRU")
    assert not (tmp_path / "b").exists(), "nothing is half-converted"


@pytest.mark.parametrize("option", ["return_state", "Bidirectional(SimpleRNN)", "merge_mode=None"])
def test_recurrent_options_without_a_step_meaning_are_refused(keras, tmp_path, option):
    L = keras.layers
    if option == "return_state":
        inputs = keras.Input((None, 3))
        outputs, _, _ = L.LSTM(4, return_state=True, name="lstm")(inputs)
        model = keras.Model(inputs, L.Dense(1)(outputs))
    else:
        inner = L.SimpleRNN(4) if "SimpleRNN" in option else L.LSTM(4)
        layer = L.Bidirectional(inner, merge_mode=None if "None" in option else "concat", name="bi")
        model = keras.Sequential([keras.Input((7, 3)), layer] + ([L.Dense(1)] if "SimpleRNN" in option else []))
    try:
        model.save(tmp_path / "m.keras")
    except Exception:  # Keras itself may refuse to build a merge_mode=None model into a Sequential
        pytest.skip("Keras cannot save this model")
    with pytest.raises(UnsupportedLayerError) as error:
        load_network(tmp_path / "m.keras")
    assert {"return_state": "return_state=True", "Bidirectional(SimpleRNN)": "Bidirectional(SimpleRNN) is not supported",
            "merge_mode=None": "merge_mode None"}[option] in str(error.value)


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
