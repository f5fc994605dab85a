"""The guides' model shapes (issue: "The guide's own models ..."): the multivariate forecaster.

The Embedding text classifier and the Bidirectional classifier need Embedding and
Bidirectional support, which edgelstm does not have yet; they are refused with a clear error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgelstm.errors import UnsupportedLayerError
from edgelstm.importers import load_network
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


@pytest.mark.parametrize("kind", ["embedding", "bidirectional"])
def test_text_classifiers_are_refused_clearly_for_now(keras, tmp_path, kind):
    L = keras.layers
    if kind == "embedding":
        layers = [keras.Input((None,)), L.Embedding(10000, 128), L.SpatialDropout1D(0.3), L.LSTM(64), L.Dense(1, activation="sigmoid")]
    else:
        layers = [keras.Input((None, 8)), L.Bidirectional(L.LSTM(64)), L.Dense(1, activation="sigmoid")]
    keras.Sequential(layers).save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedLayerError, match="not yet supported|takes \\(batch, time, features\\)"):
        load_network(tmp_path / "m.keras")
