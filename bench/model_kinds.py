"""Every model kind through the converter and the runtime: fidelity and step time per kind.

    python bench/model_kinds.py [--quick]

Trains small models of each kind for a few epochs on one synthetic sensor task (four noisy
sinusoid channels; predict the next reading's mean, or reconstruct the window for the
autoencoder), Keras ones and, when torch is installed, PyTorch ones exported to ONNX with
``torch.onnx.export``. Each is converted (int8 and float32, TFLite and ONNX) with the same
calibration data, then the table shows, measured in this run:

- ``float max err``: the float32 TFLite model streamed through the runtime vs the source
  framework's own output, over held-out sequences (the 1e-5 requirement);
- ``int8 TFLite`` / ``int8 ONNX``: the report's RMSE of the int8 model relative to the
  spread (std) of the float output, on held-out data (autoencoders: of the anomaly score);
- ``step p50`` of ``rt.step()`` for int8 and float32 on LiteRT, 1 thread, and their ratio.
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

T, F = 24, 4


def task(count: int, length: int, seed: int) -> np.ndarray:
    """Noisy sinusoids with a random frequency and phase per channel: ``(count, length, F)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None]
    freq = rng.uniform(0.05, 0.3, (count, 1, F))
    phase = rng.uniform(0, 2 * np.pi, (count, 1, F))
    return (np.sin(freq * t + phase) + 0.1 * rng.normal(size=(count, length, F))).astype(np.float32)


def keras_models(keras):
    L = keras.layers
    window = keras.Input((T, F))
    free = keras.Input((None, F))
    return {
        "Keras LSTM 2x32 (step)": (free, [L.LSTM(32, return_sequences=True), L.LSTM(32), L.Dense(1)], "next"),
        "Keras GRU 2x32 (step)": (free, [L.GRU(32, return_sequences=True), L.GRU(32), L.Dense(1)], "next"),
        "Keras GRU reset_after=False": (free, [L.GRU(32, reset_after=False), L.Dense(1)], "next"),
        "Keras Bidirectional LSTM 32": (window, [L.Bidirectional(L.LSTM(32)), L.Dense(1)], "next"),
        "Keras LSTM autoencoder 32": (window, [L.LSTM(32), L.RepeatVector(T), L.LSTM(32, return_sequences=True),
                                               L.TimeDistributed(L.Dense(F))], "reconstruct"),
        "Keras Conv1D + LSTM 32": (window, [L.Conv1D(16, 3, padding="causal", activation="relu"), L.MaxPooling1D(2),
                                            L.LSTM(32), L.Dense(1)], "next"),
        "Keras LSTM go_backwards": (window, [L.LSTM(32, go_backwards=True), L.Dense(1)], "next"),
        # graphs (functional models): a builder from the input tensor to the output(s)
        "Keras residual GRU + LayerNorm": (free, _residual_gru, "next"),
        "Keras attention LSTM 32": (window, _attention_lstm, "next"),
        "Keras MultiHeadAttention LSTM": (window, _multi_head_lstm, "next"),
        "Keras two heads (step)": (free, _two_heads, "two_heads"),
    }


def _residual_gru(L, x):
    first = L.GRU(32, return_sequences=True)(x)
    normed = L.LayerNormalization()(L.Add()([first, L.GRU(32, return_sequences=True)(first)]))
    return L.Dense(1)(L.GRU(16)(normed))


def _attention_lstm(L, x):
    lstm = L.LSTM(32, return_sequences=True)(x)
    pooled = L.GlobalAveragePooling1D()(L.Concatenate()([lstm, L.Attention()([lstm, lstm])]))
    return L.Dense(1)(pooled)


def _multi_head_lstm(L, x):
    lstm = L.LSTM(32, return_sequences=True)(x)
    attended = L.MultiHeadAttention(num_heads=2, key_dim=16)(lstm, lstm, use_causal_mask=True)
    return L.Dense(1)(L.GlobalAveragePooling1D()(L.LayerNormalization()(L.Add()([lstm, attended]))))


def _two_heads(L, x):
    """The next reading's mean, and the probability that it is positive."""
    lstm = L.LSTM(32)(x)
    return [L.Dense(1, name="mean")(lstm), L.Dense(1, activation="sigmoid", name="positive")(lstm)]


def train_keras(keras, spec, data, epochs):
    inputs, layers, kind = spec
    if callable(layers):  # a functional graph
        model = keras.Model(inputs, layers(keras.layers, inputs))
    else:
        model = keras.Sequential([inputs] + layers)
    x = data[:, :T]
    y = x if kind == "reconstruct" else data[:, T].mean(axis=1, keepdims=True)
    if kind == "two_heads":
        model.compile("adam", ["mse", "binary_crossentropy"])
        y = [y, (y > 0).astype(np.float32)]
    else:
        model.compile("adam", "mse")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)

    def predict(windows):
        out = model.predict(windows, verbose=0)
        return np.concatenate(out, axis=-1) if isinstance(out, list) else out

    return model, predict


def torch_models():
    import torch

    class Recurrent(torch.nn.Module):
        def __init__(self, cell, bidirectional=False, layers=1):
            super().__init__()
            self.rnn = cell(F, 32, num_layers=layers, batch_first=True, bidirectional=bidirectional)
            self.head = torch.nn.Linear(32 * (2 if bidirectional else 1), 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    return {
        "PyTorch LSTM 2x32 (ONNX)": lambda: Recurrent(torch.nn.LSTM, layers=2),
        "PyTorch GRU 32 (ONNX)": lambda: Recurrent(torch.nn.GRU),
        "PyTorch bidirectional LSTM (ONNX)": lambda: Recurrent(torch.nn.LSTM, bidirectional=True),
    }


def train_torch(make, data, epochs, path: Path):
    import torch

    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(data[:, :T])
    y = torch.from_numpy(data[:, T].mean(axis=1, keepdims=True))
    for _ in range(epochs * 4):
        for start in range(0, len(x), 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[start : start + 32]), y[start : start + 32])
            loss.backward()
            optimizer.step()
    model.eval()
    torch.onnx.export(model, (x[:1],), str(path), dynamo=False, input_names=["x"], output_names=["y"])

    def predict(windows):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(windows))).numpy()

    return predict


def step_p50(bundle: Path, model: str, readings: np.ndarray) -> float:
    runtime = edgelstm.load(bundle, backend="litert", model=model, monitor=False)
    times = []
    for _ in range(3):
        runtime.reset()
        start = time.perf_counter()
        for x in readings:
            runtime.step(x)
        times.append((time.perf_counter() - start) / len(readings) * 1e6)
    return float(np.median(times))


def measure(name: str, source, predict, data_eval, calib: Path, scratch: Path, window: int | None) -> dict:
    out = scratch / name.replace(" ", "_").replace("/", "_")
    convert(ConvertOptions(model=source, calibration=calib, out=out, quant=["int8", "float32"], progress=False,
                           window=window, long_steps=2000, window_samples=500, eval_windows=300))
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    autoencoder = manifest["outputs"][0]["name"] == "anomaly_score"
    float_rt = edgelstm.load(out, backend="litert", model="float32", monitor=False)
    worst = 0.0
    for sequence in data_eval[:8]:
        float_rt.reset()  # each held-out sequence is its own stream
        outputs = float_rt.run(sequence)
        if manifest["network"]["mode"] == "step":  # streamed from the start: the last output is the whole sequence's
            worst = max(worst, float(np.max(np.abs(outputs[-1] - predict(sequence[None])[0]))))
            continue
        windows = np.stack([sequence[t - T + 1 : t + 1] for t in range(T - 1, len(sequence))])
        expected = predict(windows)
        if autoencoder:
            expected = np.mean((expected - windows) ** 2, axis=(1, 2))[:, None]
        worst = max(worst, float(np.max(np.abs(outputs[T - 1 :] - expected))))

    def relative(key):
        m = report["models"][key]
        return (m["anomaly_score"] if autoencoder else m)["relative_rmse"]

    readings = data_eval[:, :T].reshape(-1, F)[:2000]
    p50_int8, p50_float = step_p50(out, "int8", readings), step_p50(out, "float32", readings)
    return {"kind": manifest["network"]["mode"], "float_max_err": worst, "int8_tflite": relative("tflite int8 stream"),
            "int8_onnx": relative("onnx int8"), "p50_int8": p50_int8, "p50_float": p50_float}


def main() -> int:
    quick = "--quick" in sys.argv
    epochs = 2 if quick else 6
    import keras

    keras.utils.set_random_seed(0)
    train = task(512, T + 1, seed=0)
    data_eval = task(32, T + 6, seed=1)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        calib = scratch / "calib.npy"
        np.save(calib, task(48, 80, seed=2))
        for name, spec in keras_models(keras).items():
            model, predict = train_keras(keras, spec, train, epochs)
            path = scratch / (name.split()[1] + str(len(rows)) + ".keras")
            model.save(path)
            rows[name] = measure(name, path, predict, data_eval, calib, scratch, None)
            print(f"  measured {name}", file=sys.stderr)
        try:
            import torch  # noqa: F401
        except ImportError:
            print("(torch not installed: PyTorch rows skipped)", file=sys.stderr)
        else:
            for name, make in torch_models().items():
                path = scratch / f"torch{len(rows)}.onnx"
                predict = train_torch(make, train, epochs, path)
                window = T if "bidirectional" in name else None  # step models stream from the start
                rows[name] = measure(name, path, predict, data_eval, calib, scratch, window)
                print(f"  measured {name}", file=sys.stderr)
    header = (f"{'model':<36}{'kind':<8}{'float max err':>14}{'int8 TFLite':>13}{'int8 ONNX':>11}"
              f"{'step int8':>11}{'step f32':>10}{'int8/f32':>9}")
    print(f"Model kinds (window {T}, {F} features; errors vs the source framework / the float reference; "
          "step p50 in us on LiteRT, 1 thread)")
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(f"{name:<36}{r['kind']:<8}{r['float_max_err']:>14.2e}{100 * r['int8_tflite']:>12.2f}%"
              f"{100 * r['int8_onnx']:>10.2f}%{r['p50_int8']:>11.1f}{r['p50_float']:>10.1f}"
              f"{r['p50_int8'] / r['p50_float']:>9.2f}")
    print("int8 columns: RMSE of the int8 model / std of the float output on held-out data "
          "(autoencoders: of the anomaly score; several heads: the worst head, each over its own spread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
