"""GRU step models, window models (Bidirectional, autoencoders, Conv1D front ends,
go_backwards) and stateful Keras models: each converts, each float export matches Keras
within 1e-5, the int8 error is in the report, and the runtime streams them."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgelstm
from edgelstm.errors import UnsupportedLayerError
from edgelstm.convert.importers import load_network
from edgelstm.model.reference import Reference

from .conftest import run_cli

T, F = 12, 3


def _randomize(model, seed=0, scale=0.5):
    """Random weights of a useful size (fresh biases are zeros, which would hide bias bugs)."""
    generator = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(generator.normal(0.0, scale, weight.shape).astype("float32"))
    return model


def _window_cases(keras):
    L = keras.layers
    return {
        "bidirectional_lstm": [L.Bidirectional(L.LSTM(8)), L.Dense(2)],
        "bidirectional_gru_sum_sequences": [L.Bidirectional(L.GRU(6, return_sequences=True), merge_mode="sum"),
                                            L.Bidirectional(L.LSTM(5), merge_mode="ave"), L.Dense(1, activation="sigmoid")],
        "autoencoder": [L.LSTM(8), L.RepeatVector(T), L.LSTM(8, return_sequences=True), L.TimeDistributed(L.Dense(F))],
        "conv1d_front_end": [L.Conv1D(6, 3, padding="causal", activation="relu"), L.MaxPooling1D(2),
                             L.Conv1D(4, 2, padding="same", dilation_rate=1), L.LSTM(8), L.Dense(1)],
        "conv1d_valid_strided": [L.Conv1D(5, 4, strides=2), L.GRU(6, reset_after=False), L.Dense(2)],
        "go_backwards": [L.LSTM(8, go_backwards=True, return_sequences=True), L.GRU(4, go_backwards=True), L.Dense(1)],
        "global_average_pooling": [L.Conv1D(6, 3, activation="relu"), L.GRU(8, return_sequences=True),
                                   L.GlobalAveragePooling1D(), L.Dense(1)],
        "global_max_pooling": [L.LSTM(8, return_sequences=True), L.GlobalMaxPooling1D(), L.Dense(2),
                               L.Activation("sigmoid")],
        "flatten": [L.Conv1D(4, 3, activation="relu"), L.LSTM(5, return_sequences=True), L.Flatten(), L.Dense(2)],
        "reshape_flat": [L.Reshape((T, F)), L.LSTM(5, return_sequences=True), L.Reshape((T * 5,)), L.Dense(1)],
    }


@pytest.mark.parametrize("case", ["bidirectional_lstm", "bidirectional_gru_sum_sequences", "autoencoder",
                                  "conv1d_front_end", "conv1d_valid_strided", "go_backwards", "global_average_pooling",
                                  "global_max_pooling", "flatten", "reshape_flat"])
def test_window_model_float_exports_match_keras(keras, tmp_path, case):
    """Every window kind, unrolled, in float TFLite and ONNX: within 1e-5 of Keras."""
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    from edgelstm.convert.export import onnx_window, tflite_window

    model = _randomize(keras.Sequential([keras.Input((T, F))] + _window_cases(keras)[case]))
    model.save(tmp_path / "m.keras")
    network = load_network(tmp_path / "m.keras")
    assert network.mode == "window" and network.window == T
    x = np.random.default_rng(1).normal(size=(1, T, F)).astype("float32")
    expected = model.predict(x, verbose=0)
    assert np.max(np.abs(Reference(network).predict(x) - expected)) <= 1e-5
    runner = Interpreter(model_content=tflite_window.convert(network, "float32")).get_signature_runner()
    assert np.max(np.abs(runner(x=x)["y"] - expected)) <= 1e-5
    session = onnxruntime.InferenceSession(onnx_window.build_float_model(network).SerializeToString())
    assert np.max(np.abs(session.run(["y"], {"x": x})[0] - expected)) <= 1e-5
    assert network.is_autoencoder == (case == "autoencoder")


@pytest.fixture(scope="module")
def window_calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, np.random.default_rng(2).normal(size=(16, 40, F)).astype("float32"))
    return path


@pytest.mark.parametrize("case", ["bidirectional_lstm", "autoencoder", "conv1d_front_end", "global_average_pooling",
                                  "flatten"])
def test_window_models_convert_to_int8_and_stream(keras, tmp_path, window_calibration, case):
    """int8 TFLite and ONNX, the int8 error in the report, and the runtime's window mode:
    NaN until the window is full, then the model's output over the last T readings (an
    autoencoder: its reconstruction error, the anomaly score)."""
    model = _randomize(keras.Sequential([keras.Input((T, F))] + _window_cases(keras)[case]), scale=0.3)
    model.save(tmp_path / "m.keras")
    run_cli("convert", tmp_path / "m.keras", "--calibration", window_calibration, "--out", tmp_path / "b",
            "--quant", "int8,float32", "--window-samples", "400", "--eval-windows", "300", "--quiet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["network"]["mode"] == "window" and manifest["window"] == T and manifest["state"] == []
    files = {m["file"] for m in manifest["models"]}
    assert {"window_int8.tflite", "window_int8_stream.tflite", "window_int8.onnx", "window_float32.onnx"} <= files
    int8_entry = next(m for m in manifest["models"] if m["file"] == "window_int8.tflite")
    assert int8_entry["edgetpu"]["compatible"], int8_entry["edgetpu"]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    for name in ("tflite int8", "onnx int8"):
        assert 0 < report["models"][name]["relative_rmse"] < 0.25, (name, report["models"][name])
    assert report["models"]["tflite float32"]["max_abs_error"] <= 1e-5

    readings = np.random.default_rng(3).normal(size=(T + 5, F)).astype("float32")
    expected = np.stack([model.predict(readings[t - T + 1 : t + 1][None], verbose=0)[0] for t in range(T - 1, len(readings))])
    if case == "autoencoder":
        windows = np.stack([readings[t - T + 1 : t + 1] for t in range(T - 1, len(readings))])
        expected = np.mean((expected - windows) ** 2, axis=(1, 2))[:, None]
        assert manifest["outputs"][0]["name"] == "anomaly_score"
    for backend, quant, tolerance in (("litert", "float32", 1e-5), ("onnxruntime", "float32", 1e-5),
                                      ("numpy", None, 1e-5), ("litert", "int8", 0.1), ("onnxruntime", "int8", 0.1)):
        runtime = edgelstm.load(tmp_path / "b", backend=backend, model=quant)
        outputs = runtime.run(readings)
        assert np.isnan(outputs[: T - 1]).all(), backend
        scale = max(1.0, float(np.max(np.abs(expected))))
        assert np.max(np.abs(outputs[T - 1 :] - expected)) <= tolerance * scale, (backend, quant)
    many = edgelstm.load(tmp_path / "b", streams=3)  # the int8 window model, its batch resized to 3 at load
    others = np.random.default_rng(9).normal(size=(2, len(readings), F)).astype("float32")
    together = many.run(np.stack([readings, others[0], others[1]], axis=1))
    assert together.shape == (len(readings), 3, manifest["outputs"][0]["size"])
    for stream, sequence in enumerate([readings, others[0], others[1]]):
        alone = edgelstm.load(tmp_path / "b").run(sequence)
        np.testing.assert_array_equal(together[:, stream], alone)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_step_model_matches_keras_and_quantizes(keras, tmp_path, window_calibration, reset_after):
    """GRU in step mode (one reading per call, state h carried): Keras' reset_after true and false."""
    L = keras.layers
    model = _randomize(keras.Sequential([keras.Input((None, F)), L.GRU(10, return_sequences=True, reset_after=reset_after),
                                         L.GRU(6, reset_after=reset_after), L.Dense(2)]), scale=0.4)
    model.save(tmp_path / "gru.keras")
    run_cli("convert", tmp_path / "gru.keras", "--calibration", window_calibration, "--out", tmp_path / "b",
            "--quant", "int8,float32", "--long-steps", "1000", "--quiet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["network"]["mode"] == "step"
    assert [s["name"] for s in manifest["state"]] == ["h_0", "h_1"]
    sequence = np.random.default_rng(4).normal(size=(25, F)).astype("float32")
    expected = model.predict(sequence[None], verbose=0)[0]
    for backend in ("litert", "onnxruntime", "numpy"):
        runtime = edgelstm.load(tmp_path / "b", backend=backend, model="float32" if backend != "numpy" else None)
        assert np.max(np.abs(runtime.run(sequence)[-1] - expected)) <= 1e-5, backend
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    for name in ("tflite int8", "tflite int8 stream", "onnx int8"):
        assert 0 < report["models"][name]["relative_rmse"] < 0.25, (name, report["models"][name])
    int8 = edgelstm.load(tmp_path / "b")
    assert int8.model_file == "step_int8_stream.tflite"
    assert np.max(np.abs(int8.run(sequence)[-1] - expected)) < 0.25


def test_keras2_hdf5_gru_and_bidirectional_match(tmp_path):
    """Legacy Keras 2 files: a GRU (reset_after=False, Keras 2's old default), a Bidirectional LSTM,
    a Conv1D/pooling front end with global pooling, and RepeatVector with Flatten."""
    tf_keras = pytest.importorskip("tf_keras")
    L = tf_keras.layers
    for name, layers in (("gru", [L.GRU(7, reset_after=False, return_sequences=True), L.Dense(2)]),
                         ("bidirectional", [L.Bidirectional(L.LSTM(5, return_sequences=True)), L.LSTM(4), L.Dense(1)]),
                         ("conv1d_pooling", [L.Conv1D(4, 3, padding="causal", activation="relu"), L.MaxPooling1D(2),
                                             L.LSTM(4, return_sequences=True), L.GlobalAveragePooling1D(), L.Dense(1)]),
                         ("flatten_autoencoder", [L.LSTM(4), L.RepeatVector(T), L.LSTM(3, return_sequences=True),
                                                  L.Flatten(), L.Dense(2)])):
        model = tf_keras.Sequential([tf_keras.Input((T, F))] + layers)
        _randomize(model, seed=5)
        model.save(tmp_path / f"{name}.h5")
        network = load_network(tmp_path / f"{name}.h5")
        x = np.random.default_rng(6).normal(size=(2, T, F)).astype("float32")
        assert np.max(np.abs(Reference(network).predict(x) - model.predict(x, verbose=0))) <= 1e-5, name
    tokens = tf_keras.Sequential([tf_keras.Input((None,), dtype="int32"), L.Embedding(20, 6), L.LSTM(5), L.Dense(1)])
    _randomize(tokens, seed=7)
    tokens.save(tmp_path / "embedding.h5")
    network = load_network(tmp_path / "embedding.h5")
    ids = np.random.default_rng(8).integers(0, 20, size=(2, T))
    assert network.input_kind == "token"
    assert np.max(np.abs(Reference(network).predict(ids) - tokens.predict(ids, verbose=0))) <= 1e-5


def test_stateful_keras_model_is_a_step_model(keras, tmp_path):
    """stateful=True bakes a batch size into the model for training; the step model carries
    state itself, for any number of streams, and computes the same thing."""
    L = keras.layers
    model = _randomize(keras.Sequential([keras.Input(batch_shape=(4, None, F)), L.LSTM(8, stateful=True), L.Dense(1)]))
    model.save(tmp_path / "stateful.keras")
    network = load_network(tmp_path / "stateful.keras")
    assert network.mode == "step" and any("stateful=True" in note for note in network.notes)
    x = np.random.default_rng(7).normal(size=(4, 9, F)).astype("float32")
    first = model.predict(x[:, :5], verbose=0, batch_size=4)
    second = model.predict(x[:, 5:], verbose=0, batch_size=4)  # continues from the state the first call left
    outputs, state = Reference(network).run(x[:, :5])
    assert np.max(np.abs(outputs[:, -1] - first)) <= 1e-5
    outputs, _ = Reference(network).run(x[:, 5:], state)
    assert np.max(np.abs(outputs[:, -1] - second)) <= 1e-5
    # converted, four streams stepped at once carry their state like the stateful model's batch rows
    np.save(tmp_path / "calib.npy", np.random.default_rng(8).normal(size=(10, 20, F)).astype("float32"))
    run_cli("convert", tmp_path / "stateful.keras", "--calibration", tmp_path / "calib.npy", "--out", tmp_path / "b",
            "--quant", "float32,int8", "--long-steps", "500", "--quiet")
    runtime = edgelstm.load(tmp_path / "b", backend="litert", model="float32", streams=4)
    outputs = runtime.run(x.transpose(1, 0, 2))  # (T, streams, F)
    assert np.max(np.abs(outputs[4] - first)) <= 1e-5 and np.max(np.abs(outputs[-1] - second)) <= 1e-5


def test_window_model_without_a_fixed_length_asks_for_window(keras, tmp_path, window_calibration):
    L = keras.layers
    keras.Sequential([keras.Input((None, F)), L.Bidirectional(L.LSTM(4)), L.Dense(1)]).save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayerError, match="needs a fixed window length.*--window N"):
        load_network(tmp_path / "m.keras")
    assert load_network(tmp_path / "m.keras", window=9).window == 9
    result = run_cli("convert", tmp_path / "m.keras", "--calibration", window_calibration, "--out", tmp_path / "b", check=False)
    assert result.returncode == 2 and "--window N" in result.stderr and "Traceback" not in result.stderr
