"""The numpy reference matches Keras' predict within 1e-5 for every supported layer combination."""

from __future__ import annotations

import numpy as np
import pytest

from edgelstm.convert.importers import load_network
from edgelstm.model.reference import Reference

from .conftest import randomize_batchnorm

TOLERANCE = 1e-5


def _models(keras):
    L = keras.layers
    inp = lambda: keras.Input((None, 6))  # noqa: E731
    yield "stacked_seq_head", keras.Sequential(
        [inp(), L.LSTM(16, return_sequences=True), L.LSTM(8), L.Dense(3)]
    )
    for act in ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear"):
        yield f"lstm_activation_{act}", keras.Sequential([inp(), L.LSTM(8, activation=act, return_sequences=True), L.Dense(1)])
        yield f"lstm_recurrent_{act}", keras.Sequential([inp(), L.LSTM(8, recurrent_activation=act), L.Dense(1)])
    yield "no_bias", keras.Sequential([inp(), L.LSTM(8, use_bias=False, return_sequences=True), L.LSTM(4, use_bias=False)])
    for act in ("linear", "relu", "sigmoid", "tanh", "swish", "silu", "gelu", "softmax"):
        yield f"dense_{act}", keras.Sequential([inp(), L.LSTM(8), L.Dense(5, activation=act)])
    yield "dense_then_activation", keras.Sequential([inp(), L.LSTM(8), L.Dense(3), L.Activation("softmax"),
                                                     L.Activation("linear")])
    yield "time_distributed", keras.Sequential(
        [inp(), L.LSTM(8, return_sequences=True), L.TimeDistributed(L.Dense(4, activation="relu")), L.Dense(2)]
    )
    yield "identity_layers", keras.Sequential(
        [inp(), L.GaussianNoise(0.1), L.LSTM(8, return_sequences=True), L.SpatialDropout1D(0.2), L.Dropout(0.3),
         L.LSTM(8), L.Dropout(0.5), L.Dense(1)]
    )
    yield "batchnorm_everywhere", keras.Sequential(
        [inp(), L.BatchNormalization(), L.LSTM(8, return_sequences=True), L.BatchNormalization(),
         L.LSTM(6, return_sequences=True), L.Dense(4), L.BatchNormalization(), L.Dense(2), L.BatchNormalization()]
    )
    yield "batchnorm_last_after_lstm", keras.Sequential([inp(), L.LSTM(8), L.BatchNormalization(center=False)])
    x = keras.Input((None, 6), name="readings")
    h = L.LSTM(12, return_sequences=True, name="enc")(x)
    h = L.Dropout(0.1)(h)
    h = L.LSTM(6, name="enc2")(h)
    yield "functional_chain", keras.Model(x, L.Dense(2, activation="sigmoid", name="head")(h))


def test_reference_matches_keras_for_every_supported_layer(keras, tmp_path, rng):
    x = rng.normal(size=(3, 25, 6)).astype("float32")
    checked = []
    for name, model in _models(keras):
        randomize_batchnorm(model)
        path = tmp_path / f"{name}.keras"
        model.save(path)
        expected = model.predict(x, verbose=0)
        actual = Reference(load_network(path)).predict(x)
        assert actual.shape == expected.shape, name
        error = float(np.max(np.abs(actual - expected)))
        assert error <= TOLERANCE, f"{name}: max abs error {error}"
        checked.append(name)
    assert len(checked) >= 20


@pytest.fixture(scope="module")
def legacy_model(tmp_path_factory):
    """A Keras 2 (tf-keras) HDF5 model saved under a .keras name."""
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(1)
    L = tf_keras.layers
    model = tf_keras.Sequential(
        [L.InputLayer((None, 5)), L.LSTM(10, return_sequences=True, recurrent_activation="hard_sigmoid"),
         L.BatchNormalization(), L.LSTM(6), L.Dense(2, activation="tanh")]
    )
    randomize_batchnorm(model, seed=2)
    path = tmp_path_factory.mktemp("legacy") / "legacy_model.keras"
    model.save(path, save_format="h5")
    return model, path


def test_legacy_hdf5_named_keras_is_recognised_by_content(legacy_model, rng):
    model, path = legacy_model
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    network = load_network(path)
    assert network.source_format == "keras2-hdf5"
    assert network.lstm_layers[0].recurrent_activation == "hard_sigmoid_keras2"
    x = rng.normal(size=(2, 30, 5)).astype("float32")
    error = np.max(np.abs(Reference(network).predict(x) - model.predict(x, verbose=0)))
    assert error <= TOLERANCE


def test_keras3_itself_refuses_the_legacy_file(keras, legacy_model):
    """Why edgelstm reads the file itself: Keras 3 cannot load it."""
    _, path = legacy_model
    with pytest.raises(Exception):
        keras.saving.load_model(path)


def test_legacy_hdf5_converts_and_float_exports_match_tf_keras(legacy_model, tmp_path, rng):
    from edgelstm.runtime.steppers import OnnxStepper, TFLiteStepper

    from .conftest import run_cli

    model, path = legacy_model
    np.save(tmp_path / "calib.npy", rng.normal(size=(10, 30, 5)).astype("float32"))
    out = tmp_path / "bundle"
    run_cli("convert", path, "--calibration", tmp_path / "calib.npy", "--out", out, "--quant", "int8,float32",
            "--long-steps", "1000", "--quiet")
    x = rng.normal(size=(40, 5)).astype("float32")
    keras_outputs = np.stack([model.predict(x[None, : t + 1], verbose=0)[0] for t in (0, 9, 19, 39)])
    for stepper in (TFLiteStepper(out / "step_float32.tflite"), OnnxStepper(out / "step_float32.onnx")):
        stepper.reset()
        steps = np.concatenate([stepper.step(x[t : t + 1]).copy() for t in range(40)])
        assert np.max(np.abs(steps[[0, 9, 19, 39]] - keras_outputs)) <= TOLERANCE
