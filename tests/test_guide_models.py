"""The guides' model shapes (issue: "The guide's own models ..."): the multivariate forecaster
and the Embedding text classifier. The Bidirectional classifier needs window-model support,
which edgelstm does not have yet; it is refused with a clear error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgelstm.errors import UnsupportedLayerError
from edgelstm.convert.importers import load_network
from edgelstm.runtime.steppers import OnnxStepper, TFLiteStepper

from .conftest import run_cli


def test_multivariate_forecaster_converts_and_matches_keras(keras, tmp_path, rng):
    L = keras.layers
    horizon, features = 12, 6
    model = keras.Sequential([
        keras.Input((None, features)),
        L.LSTM(128, return_sequences=True), L.Dropout(0.3),
        L.LSTM(64, return_sequences=True), L.Dropout(0.3),
        L.LSTM(32), L.Dropout(0.3),
        L.Dense(64, activation="swish"), L.Dense(horizon),
    ])
    model.compile("adam", "mse")
    x = rng.normal(size=(32, 24, features)).astype("float32")
    model.fit(x, rng.normal(size=(32, horizon)).astype("float32"), epochs=2, verbose=0)
    model.save(tmp_path / "forecaster.keras")
    np.save(tmp_path / "calib.npy", rng.normal(size=(20, 40, features)).astype("float32"))
    run_cli("convert", tmp_path / "forecaster.keras", "--calibration", tmp_path / "calib.npy", "--out", tmp_path / "b",
            "--quant", "int8,float32", "--long-steps", "1000", "--quiet")
    sequence = rng.normal(size=(20, features)).astype("float32")
    expected = model.predict(sequence[None], verbose=0)[0]  # the 12-value forecast after the last step
    for stepper in (TFLiteStepper(tmp_path / "b" / "step_float32.tflite"), OnnxStepper(tmp_path / "b" / "step_float32.onnx")):
        stepper.reset()
        for t in range(len(sequence)):
            y = stepper.step(sequence[t : t + 1])
        assert y.shape == (1, horizon)
        assert np.max(np.abs(y[0] - expected)) <= 1e-5
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert np.isfinite(report["models"]["tflite int8"]["relative_rmse"])
    assert np.isfinite(report["models"]["onnx int8"]["relative_rmse"])


def test_text_classifier_with_embedding_streams_token_ids(keras, tmp_path, rng):
    """The guide's text classifier, exactly as the guide builds it; step() takes a token id."""
    import edgelstm
    from edgelstm.errors import CalibrationError, InputError

    L = keras.layers
    model = keras.Sequential([
        keras.Input((None,)), L.Embedding(10000, 128), L.SpatialDropout1D(0.3),
        L.LSTM(64, return_sequences=True, dropout=0.2, recurrent_dropout=0.2,
               kernel_regularizer=keras.regularizers.l2(1e-5), recurrent_initializer="orthogonal"),
        L.LSTM(32, dropout=0.2, recurrent_dropout=0.2), L.Dense(32, activation="swish"), L.Dropout(0.5),
        L.Dense(1, activation="sigmoid"),
    ])
    model.compile("adam", "binary_crossentropy")
    model.fit(rng.integers(0, 10000, (32, 30)), rng.integers(0, 2, (32, 1)), epochs=1, verbose=0)
    model.save(tmp_path / "text.keras")
    np.save(tmp_path / "tokens.npy", rng.integers(0, 10000, (20, 40)))
    run_cli("convert", tmp_path / "text.keras", "--calibration", tmp_path / "tokens.npy", "--out", tmp_path / "b",
            "--quant", "int8,float32", "--long-steps", "500", "--quiet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["input"]["kind"] == "token" and manifest["input"]["vocabulary"] == 10000
    tokens = rng.integers(0, 10000, 25)
    expected = model.predict(tokens[None], verbose=0)[0]
    for backend, name in (("litert", "float32"), ("onnxruntime", "float32")):
        runtime = edgelstm.load(tmp_path / "b", backend=backend, model=name)
        for token in tokens:
            y = runtime.step(int(token))
        assert np.max(np.abs(y - expected)) <= 1e-5, backend
    int8 = edgelstm.load(tmp_path / "b")
    outputs = int8.run(tokens.reshape(-1, 1))
    assert np.isfinite(outputs).all() and outputs.shape == (25, 1)
    int8.reset()
    np.testing.assert_array_equal(int8.run(tokens), outputs)  # (T,) ids: the same stream
    two = edgelstm.load(tmp_path / "b", streams=2).run(np.stack([tokens, tokens[::-1]], axis=1))
    assert two.shape == (25, 2, 1)
    np.testing.assert_array_equal(two[:, 0], outputs)
    with pytest.raises(InputError, match=r"expected \(T,\) or \(T, 2\)"):
        edgelstm.load(tmp_path / "b", streams=2).run(tokens)
    with pytest.raises(InputError, match="token id 10000 is out of range 0..9999"):
        int8.step(10000)
    with pytest.raises(InputError, match="token id -1 is out of range"):
        int8.step(-1)
    assert int(int8.steps[0]) == 25  # refused ids changed nothing
    np.save(tmp_path / "bad.npy", np.array([[1, 2, 10000]]))
    result = run_cli("convert", tmp_path / "text.keras", "--calibration", tmp_path / "bad.npy", "--out", tmp_path / "c", check=False)
    assert result.returncode == 2 and "token id 10000 in sequence 0, step 2 is not in 0..9999" in result.stderr


def test_bidirectional_classifier_is_a_window_model(keras, tmp_path, rng):
    """The guide's text classifier with ``Bidirectional(LSTM(64))``: it reads each window both
    ways, so it is converted unrolled over a fixed window (``--window 30``) and the runtime's
    window mode feeds it the last 30 token ids at every step."""
    import edgelstm

    L = keras.layers
    model = keras.Sequential([
        keras.Input((None,)), L.Embedding(10000, 128), L.SpatialDropout1D(0.3),
        L.Bidirectional(L.LSTM(64, dropout=0.2, recurrent_dropout=0.2)), L.Dense(32, activation="swish"), L.Dropout(0.5),
        L.Dense(1, activation="sigmoid"),
    ])
    model.compile("adam", "binary_crossentropy")
    model.fit(rng.integers(0, 10000, (32, 30)), rng.integers(0, 2, (32, 1)), epochs=1, verbose=0)
    model.save(tmp_path / "bidi.keras")
    np.save(tmp_path / "tokens.npy", rng.integers(0, 10000, (12, 50)))
    run_cli("convert", tmp_path / "bidi.keras", "--calibration", tmp_path / "tokens.npy", "--out", tmp_path / "b",
            "--window", "30", "--quant", "int8,float32", "--window-samples", "200", "--eval-windows", "200", "--quiet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["network"]["mode"] == "window" and manifest["window"] == 30
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    for name in ("tflite int8", "onnx int8"):
        assert np.isfinite(report["models"][name]["relative_rmse"]), name
    tokens = rng.integers(0, 10000, 34)
    expected = model.predict(tokens[-30:][None], verbose=0)[0]
    for backend, name in (("litert", "float32"), ("onnxruntime", "float32"), ("litert", "int8")):
        runtime = edgelstm.load(tmp_path / "b", backend=backend, model=name)
        outputs = runtime.run(tokens.reshape(-1, 1))
        assert np.isnan(outputs[:29]).all()
        tolerance = 1e-5 if name == "float32" else 0.1
        assert np.max(np.abs(outputs[-1] - expected)) <= tolerance, (backend, name)
