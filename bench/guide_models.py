"""The guides' three Keras models through the converter: the int8 error each report states.

    python bench/guide_models.py

Builds the text classifier (Embedding + two LSTMs), the Bidirectional classifier (a window
model over 30 token ids) and the multivariate forecaster (three LSTMs, a 12-value horizon)
exactly as ``tests/test_guide_models.py`` does, trains each a few steps on random data,
converts them to int8 and float32 TFLite and ONNX, and prints from each bundle's report the
int8 RMSE relative to the float output's spread, the float32 exports' largest error against
the float reference, the file sizes and the step time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgelstm  # noqa: E402
from edgelstm.convert.pipeline import ConvertOptions, convert  # noqa: E402


def build(keras, rng):
    L = keras.layers
    text = keras.Sequential([
        keras.Input((None,)), L.Embedding(10000, 128), L.SpatialDropout1D(0.3),
        L.LSTM(64, return_sequences=True, dropout=0.2, recurrent_dropout=0.2,
               kernel_regularizer=keras.regularizers.l2(1e-5), recurrent_initializer="orthogonal"),
        L.LSTM(32, dropout=0.2, recurrent_dropout=0.2), L.Dense(32, activation="swish"), L.Dropout(0.5),
        L.Dense(1, activation="sigmoid"),
    ])
    bidirectional = keras.Sequential([
        keras.Input((None,)), L.Embedding(10000, 128), L.SpatialDropout1D(0.3),
        L.Bidirectional(L.LSTM(64, dropout=0.2, recurrent_dropout=0.2)), L.Dense(32, activation="swish"), L.Dropout(0.5),
        L.Dense(1, activation="sigmoid"),
    ])
    forecaster = keras.Sequential([
        keras.Input((None, 6)),
        L.LSTM(128, return_sequences=True), L.Dropout(0.3), L.LSTM(64, return_sequences=True), L.Dropout(0.3),
        L.LSTM(32), L.Dropout(0.3), L.Dense(64, activation="swish"), L.Dense(12),
    ])
    for model, loss in ((text, "binary_crossentropy"), (bidirectional, "binary_crossentropy")):
        model.compile("adam", loss)
        model.fit(rng.integers(0, 10000, (64, 30)), rng.integers(0, 2, (64, 1)), epochs=2, verbose=0)
    forecaster.compile("adam", "mse")
    forecaster.fit(rng.normal(size=(64, 24, 6)).astype("float32"), rng.normal(size=(64, 12)).astype("float32"),
                   epochs=2, verbose=0)
    return {"text classifier (Embedding, 2 LSTMs)": (text, "tokens", None),
            "Bidirectional classifier (window 30)": (bidirectional, "tokens", 30),
            "multivariate forecaster (3 LSTMs, horizon 12)": (forecaster, "features", None)}


def main() -> int:
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        np.save(scratch / "tokens.npy", rng.integers(0, 10000, (40, 60)))
        np.save(scratch / "features.npy", rng.normal(size=(40, 60, 6)).astype("float32"))
        for index, (name, (model, data, window)) in enumerate(build(keras, rng).items()):
            model.save(scratch / f"m{index}.keras")
            out = scratch / f"b{index}"
            start = time.perf_counter()
            convert(ConvertOptions(model=scratch / f"m{index}.keras", calibration=scratch / f"{data}.npy", out=out,
                                   quant=["int8", "float32"], window=window, long_steps=2000, progress=False,
                                   window_samples=500, eval_windows=500))
            seconds = time.perf_counter() - start
            report = json.loads((out / "report.json").read_text())["models"]
            manifest = json.loads((out / "manifest.json").read_text())
            sizes = {m["file"]: m["bytes"] for m in manifest["models"]}
            runtime = edgelstm.load(out, monitor=False)
            readings = rng.integers(0, 10000, 400) if data == "tokens" else rng.normal(size=(400, 6)).astype("float32")
            start_steps = time.perf_counter()
            for x in readings:
                runtime.step(int(x) if data == "tokens" else x)
            step_us = (time.perf_counter() - start_steps) / len(readings) * 1e6
            prefix = "window" if manifest["network"]["mode"] == "window" else "step"
            rows[name] = {
                "tflite int8": report["tflite int8"]["relative_rmse"], "onnx int8": report["onnx int8"]["relative_rmse"],
                "tflite int8 max": report["tflite int8"]["max_abs_error"], "onnx int8 max": report["onnx int8"]["max_abs_error"],
                "std": report["tflite int8"]["output_std"],
                "float max": max(report["tflite float32"]["max_abs_error"], report["onnx float32"]["max_abs_error"]),
                "int8 bytes": sizes[f"{prefix}_int8.tflite"], "float bytes": sizes[f"{prefix}_float32.tflite"],
                "step us": step_us, "convert s": seconds,
            }
            print(f"  measured {name}", file=sys.stderr)
    header = (f"{'model':<48}{'output std':>11}{'int8 TFLite':>18}{'int8 ONNX':>18}{'float max err':>15}"
              f"{'int8 B':>10}{'float B':>10}{'step us':>9}{'convert s':>11}")
    print("The guides' models (random data, a few training steps; errors vs the float reference on held-out data;")
    print("int8 columns: RMSE / output std, and max abs error)")
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(f"{name:<48}{r['std']:>11.3g}{100 * r['tflite int8']:>9.1f}% {r['tflite int8 max']:>7.3g}"
              f"{100 * r['onnx int8']:>9.1f}% {r['onnx int8 max']:>7.3g}{r['float max']:>15.2e}"
              f"{r['int8 bytes']:>10}{r['float bytes']:>10}{r['step us']:>9.1f}{r['convert s']:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
