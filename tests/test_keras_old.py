"""Keras files from before Keras 2.2: a Keras 2.0.5-style HDF5 (bare-list Sequential config) and a
Keras 1.x-style one (old argument names, one weight array per gate), both written here by hand
from a tf-keras model's weights (no Keras older than 2.2 installs on Python 3.11), and both
checked against that model's answers."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from edgelstm.convert.importers import load_network
from edgelstm.errors import ModelFormatError, UnsupportedLayerError
from edgelstm.model.reference import Reference

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model():
    """LSTM 8 -> GRU 6 (reset before the matrix, as Keras 1 and 2.0 did) -> Dense 1 -> Activation."""
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(3)
    L = tf_keras.layers
    return tf_keras.Sequential([
        L.InputLayer((None, 5)), L.LSTM(8, return_sequences=True, recurrent_activation="hard_sigmoid", name="lstm_1"),
        L.GRU(6, reset_after=False, name="gru_1"), L.Dense(1, name="dense_1"), L.Activation("sigmoid", name="activation_1"),
    ])


def _write(path, layers: list, weights: dict, version: str) -> None:
    """An HDF5 saved-model file as Keras wrote it: ``model_config`` on the root, each layer's
    arrays under ``model_weights/NAME`` in the order of its ``weight_names``."""
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": layers})
        handle.attrs["keras_version"] = version
        root = handle.create_group("model_weights")
        for layer in layers:
            name = layer["config"]["name"]
            group = root.create_group(name)
            names = []
            for weight_name, array in weights.get(name, []):
                group.create_dataset(weight_name, data=array)
                names.append(weight_name.encode())
            group.attrs["weight_names"] = names


def _keras20_file(model, path) -> None:
    """Keras 2.0.5: the Sequential config a bare list, ``batch_input_shape`` on the first layer,
    no ``reset_after`` (the option did not exist)."""
    layers = []
    for k, layer in enumerate(model.layers):
        config = dict(layer.get_config())
        config.pop("reset_after", None)
        if k == 0:
            config["batch_input_shape"] = [None, None, 5]
        layers.append({"class_name": type(layer).__name__, "config": json.loads(json.dumps(config))})
    weights = {layer.name: [(f"{layer.name}/{w.name.split('/')[-1]}", w.numpy()) for w in layer.weights] for layer in model.layers}
    _write(path, layers, weights, "2.0.5")


def _keras1_file(model, path) -> None:
    """Keras 1.2: ``output_dim``, ``inner_activation``, ``init``/``inner_init``/``W_regularizer``/
    ``consume_less``, and the recurrent weights one array per gate (LSTM gates i, c, f, o; GRU z, r, h)."""
    lstm, gru, dense, _ = model.layers
    kernel, recurrent, bias = (w.numpy() for w in lstm.weights)
    i, f, c, o = (slice(k * 8, (k + 1) * 8) for k in range(4))  # Keras 2's order
    lstm_weights = [(f"lstm_1_{part}_{gate}", array[..., s] if part != "b" else array[s])
                    for gate, s in (("i", i), ("c", c), ("f", f), ("o", o))
                    for part, array in (("W", kernel), ("U", recurrent), ("b", bias))]
    kernel, recurrent, bias = (w.numpy() for w in gru.weights)
    gru_weights = [(f"gru_1_{part}_{gate}", array[..., s] if part != "b" else array[s])
                   for gate, s in (("z", slice(0, 6)), ("r", slice(6, 12)), ("h", slice(12, 18)))
                   for part, array in (("W", kernel), ("U", recurrent), ("b", bias))]
    common = {"init": "glorot_uniform", "inner_init": "orthogonal", "W_regularizer": None, "U_regularizer": None,
              "b_regularizer": None, "dropout_W": 0.0, "dropout_U": 0.0, "consume_less": "cpu", "trainable": True}
    layers = [
        {"class_name": "LSTM", "config": dict(common, name="lstm_1", output_dim=8, activation="tanh", inner_activation="hard_sigmoid",
                                              return_sequences=True, go_backwards=False, stateful=False, input_dim=5,
                                              input_length=None, batch_input_shape=[None, None, 5], forget_bias_init="one")},
        {"class_name": "GRU", "config": dict(common, name="gru_1", output_dim=6, activation="tanh", inner_activation="sigmoid",
                                             return_sequences=False, go_backwards=False, stateful=False)},
        {"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 1, "activation": "linear", "init": "glorot_uniform",
                                           "bias": True, "W_regularizer": None, "input_dim": 6}},
        {"class_name": "Activation", "config": {"name": "activation_1", "activation": "sigmoid"}},
    ]
    weights = {"lstm_1": lstm_weights, "gru_1": gru_weights,
               "dense_1": [("dense_1_W", dense.weights[0].numpy()), ("dense_1_b", dense.weights[1].numpy())]}
    _write(path, layers, weights, "1.2.2")


@pytest.mark.parametrize("era", ["keras-2.0.5", "keras-1.2.2"])
def test_old_keras_files_match_the_model(model, era, tmp_path, rng):
    path = tmp_path / f"{era}.h5"
    (_keras20_file if era == "keras-2.0.5" else _keras1_file)(model, path)
    network = load_network(path)
    assert network.source_format == "keras2-hdf5" and network.mode == "step"
    x = rng.normal(size=(3, 40, 5)).astype("float32")
    assert np.max(np.abs(Reference(network).predict(x) - model.predict(x, verbose=0))) <= TOLERANCE


def test_a_keras_2_0_file_converts_and_its_float_exports_match(model, tmp_path, rng):
    """float32 and int8, TFLite and ONNX, from the Keras 2.0.5-style file; float within 1e-5."""
    from edgelstm.runtime.steppers import OnnxStepper, TFLiteStepper

    from .conftest import run_cli

    path = tmp_path / "old.h5"
    _keras20_file(model, path)
    np.save(tmp_path / "calib.npy", rng.normal(size=(10, 30, 5)).astype("float32"))
    out = tmp_path / "bundle"
    run_cli("convert", path, "--calibration", tmp_path / "calib.npy", "--out", out, "--quant", "int8,float32",
            "--long-steps", "500", "--quiet")
    assert (out / "step_int8_stream.tflite").exists() or any(out.glob("*int8*.tflite"))
    assert any(out.glob("*int8*.onnx"))
    x = rng.normal(size=(30, 5)).astype("float32")
    expected = np.stack([model.predict(x[None, : t + 1], verbose=0)[0] for t in (0, 14, 29)])
    for stepper in (TFLiteStepper(out / "step_float32.tflite"), OnnxStepper(out / "step_float32.onnx")):
        stepper.reset()
        steps = np.concatenate([stepper.step(x[t : t + 1]).copy() for t in range(30)])
        assert np.max(np.abs(steps[[0, 14, 29]] - expected)) <= TOLERANCE


@pytest.mark.parametrize("config, message", [
    ({"class_name": "Sequential", "config": [1, 2]}, "layer 0 of the config is not a layer object"),
    ({"class_name": "Sequential", "config": [{"class_name": "Dense", "config": [1]}]}, "layer 0 of the config"),
    ({"class_name": "Sequential", "config": "layers"}, "no 'layers' list"),
    ([{"class_name": "Dense"}], "not an object"),
])
def test_damaged_old_configs_are_refused_by_name(config, message, tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(config)
        handle.attrs["keras_version"] = "2.0.5"
    with pytest.raises(ModelFormatError, match=message):
        load_network(path)


def test_an_activation_after_a_recurrent_layer_is_a_layer_of_its_own(model, tmp_path):
    """No Dense to fold into: the Activation stays (a per-timestep layer); an activation edgelstm
    does not know is refused naming the layer."""
    for activation in ("relu", "elu"):
        path = tmp_path / f"act_{activation}.h5"
        layers = [{"class_name": "LSTM", "config": {"name": "lstm_1", "units": 4, "batch_input_shape": [None, None, 5]}},
                  {"class_name": "Activation", "config": {"name": "act", "activation": activation}}]
        _write(path, layers, {"lstm_1": [("k", np.zeros((5, 16), np.float32)), ("r", np.zeros((4, 16), np.float32)),
                                         ("b", np.zeros(16, np.float32))]}, "2.0.5")
        if activation == "relu":
            assert [layer.kind for layer in load_network(path).layers] == ["lstm", "activation"]
        else:
            with pytest.raises(UnsupportedLayerError, match=r"layer 1 'act' \(Activation\): activation 'elu'"):
                load_network(path)
