"""int8 fidelity of the zoo (examples/zoo/zoo.json): each variant and its peers, measured here.

    python bench/int8_fidelity.py [--models NAME,...] [--quick] [--out DIR] [--json FILE] [--no-peers]

A slow benchmark (11 minutes for the whole zoo on this 2-core machine; ``--quick`` about 5), not part of the test
suite. In one process and one run, for every zoo model:

1. **Convert** with the project's converter (``edgelstm.convert.convert``): TFLite int8
   (full-integer I/O), int8 stream (float I/O, int8 state: what the CPU runtime drives), int16x8,
   dynamic range, float32, and ONNX int8 (QDQ) and float32; calibrated on the 80 FD001 training
   engines of ``validation_split`` fold 0 (text: the training files), ``--eval`` the held-out data
   below, ``--window 30`` for the many-to-one models. Bundles stay in ``--out``
   (default ``build/int8_fidelity/<model>/``).
2. **Measure** each variant itself (the bundle's report is only printed beside it): the
   bundle's model file run by the device runtime (``edgelstm.load(bundle, model=FILE,
   backend=litert|onnxruntime)``) against the *source framework's* float output (Keras
   ``predict``, tf_keras ``predict``, the torch module's ``forward`` from its ``.weights.npz``) on
   held-out real data: the 100 FD001 test engines (no zoo model has seen them; ``--quick``:
   every 5th) or, for the text model, 26 x 500 characters of held-out stdlib files. Streaming
   models are measured at every step (each engine streamed from a zero state); many-to-one
   models at the last step of every 30-cycle window, through the runtime's window mode (each
   engine streamed, the runtime re-running the step model over its last 30 readings from a
   fresh state; on every 3rd test engine, 34 engines / ~3,400 windows, because that costs 30
   model calls per window; ``--quick``: every 2nd of its 20); window models at every window
   (one unrolled invoke each); the autoencoder at its anomaly score. Metrics: RMSE / std of the float output over the same points (%), the
   largest absolute error, and a task figure (RUL models: test RMSE at each engine's last
   cycle; classifier: accuracy there; forecaster: MSE against the real next cycle; text: bits
   per character).
3. **Step latency**: ``runtime.step`` timed with ``perf_counter_ns`` per call over 2,000 steps
   (``--quick``: 1,000; windowed models 300 / 100) of the held-out readings, 3 repeats; the table shows min / median / max
   of the three per-repeat medians. LiteRT and onnxruntime, 1 thread. In window mode one step
   is the whole window (30 invokes of a step model, one of an unrolled window model).
4. **Peers**, on the same models, data and measurement:
   (a) ``tflite fused``: TFLite's own recurrent ops. The model is rebuilt in tf_keras (legacy
   Keras 2) from the weights the project's importer reads, batch 1, time 1 (streaming) or 30
   (windows), and converted with ``TFLiteConverter.from_keras_model`` + ``Optimize.DEFAULT``
   + a representative dataset (consecutive calibration steps / calibration windows) +
   ``TFLITE_BUILTINS_INT8`` (float I/O). LSTMs become ``UNIDIRECTIONAL_SEQUENCE_LSTM``, whose
   state lives in variable tensors that persist between invokes (streamed carrying them;
   ``reset_all_variables()`` before each engine or window; the fusion writes ``cell_clip`` 10,
   so a float32 twin with the clip patched to 0 is checked too). GRUs have no fused op: the
   GRU's while loop is converted first and, when its int8 conversion fails (here the converter
   dies with signal 11), the GRU is rebuilt ``unroll=True`` (``stateful=True`` when streaming:
   state in resource variables, the interpreter re-created per engine). Converted in
   subprocesses, so a converter crash only marks an attempt failed. The float32 twin checks
   the rebuild against the framework.
   (b) ``ort dynamic`` / ``ort static``: onnxruntime's ``quantize_dynamic`` (int8 weights) and
   ``quantize_static`` (QDQ, int8, 2,000 recorded steps / 500 windows) on an ONNX graph with
   LSTM/GRU ops: for PyTorch models the torch export itself (the forecaster's ``.state_io.onnx``
   twin, which takes and returns ``h``), for Keras models one built with ``onnx.helper`` from
   the same weights. Streamed with ``initial_h``/``initial_c`` fed back, or run per window. ORT's
   static quantizer has no LSTM/GRU op (only their MatMul/Gemm/Conv/Gather neighbours get QDQ)
   and its dynamic one quantizes LSTM but not GRU: the table's ``int8 ops`` column says what
   was quantized.

Prints one table and writes ``--json`` (default ``bench/int8_fidelity.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ZOO = ROOT / "examples" / "zoo" / "zoo.json"
WINDOW = 30
VARIANTS = [  # (label = the report's key, format, quant, io)
    ("tflite int8", "tflite", "int8", "quantized"),
    ("tflite int8 stream", "tflite", "int8", "stream"),
    ("tflite int16x8", "tflite", "int16x8", "quantized"),
    ("tflite dynamic", "tflite", "dynamic", "quantized"),
    ("onnx int8", "onnx", "int8", "float"),
    ("tflite float32", "tflite", "float32", "quantized"),
    ("onnx float32", "onnx", "float32", "float"),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ====================================================================== data


class Case:
    """One zoo model: its held-out data, the framework's float output on it, and how it is used."""

    def __init__(self, spec: dict, quick: bool, scratch: Path):
        self.spec = spec
        self.name = spec["name"]
        self.use = spec["use"]
        self.windowed = self.use in ("many-to-one", "window")
        self.window = spec.get("window") or (WINDOW if self.windowed else None)
        self.token = spec["data"] == "stdlib_text"
        self.file = ROOT / spec["file"]
        self.autoencoder = "anomaly" in spec["output"]
        self.scaler = None
        if spec.get("scaler"):
            from edgelstm.runtime.normalization import Normalization

            self.scaler = Normalization.from_file(ROOT / spec["scaler"], 14)
        self.scratch = scratch / self.name
        if self.scratch.exists():
            import shutil

            shutil.rmtree(self.scratch)
        self.scratch.mkdir(parents=True)
        self.quick = quick

    # -- inputs
    def norm(self, raw):
        return raw if self.token else self.scaler.apply(raw)

    def window_stack(self, sequences: list) -> np.ndarray:
        """Every window of each sequence, in streaming order (engine by engine, ending at cycle 30, 31, ...)."""
        w = self.window
        return np.concatenate([np.stack([s[t - w + 1:t + 1] for t in range(w - 1, len(s))]) for s in sequences])


def cmapss_data(quick: bool) -> dict:
    from edgelstm.recipes import cmapss

    data = cmapss.load()
    train_idx, _ = cmapss.validation_split(len(data["train"].sequences))
    test = data["test"].sequences
    truth = data["truth"]
    if quick:
        test, truth = test[::5], truth[::5]
    return {"calibration": [data["train"].sequences[i] for i in train_idx], "eval": list(test), "truth": np.asarray(truth)}


def text_data(quick: bool) -> dict:
    from edgelstm.recipes import zoo_text

    held = zoo_text.held_out_tokens(count=26, length=zoo_text.EVAL_CHUNK + 1)
    if quick:
        held = held[::3]
    return {"calibration": list(zoo_text.calibration_tokens()), "eval": [h[:-1] for h in held],
            "next": [h[1:] for h in held], "sources": zoo_text.text_sources()}


# ====================================================================== the framework's float output


def framework_predictor(case: Case):
    """``predict(batch)`` of the source framework: normalised (N, T, F) or ids (N, T) -> outputs."""
    spec = case.spec
    if spec["framework"] == "keras3":
        import keras

        model = keras.saving.load_model(case.file, compile=False)
        return lambda batch: np.asarray(model.predict(batch, verbose=0, batch_size=256))
    if spec["framework"] == "tf_keras":
        import tf_keras

        model = tf_keras.models.load_model(str(case.file), compile=False)
        return lambda batch: np.asarray(model.predict(batch, verbose=0, batch_size=256))
    if spec["framework"] == "pytorch":
        import torch

        from edgelstm.recipes import zoo_torch

        kind = "window_lstm" if "lstm" in case.name else "forecaster"
        module = zoo_torch.load_module(kind, ROOT / spec["weights"])

        def predict(batch):
            with torch.no_grad():
                return module(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

        return predict
    raise ValueError(spec["framework"])


def float_reference(case: Case, data: dict) -> dict:
    """The framework's float output at every measured point, flattened in measuring order."""
    predict = framework_predictor(case)
    sequences = data["eval"]
    if case.windowed:
        raw = case.window_stack(sequences)
        x = case.norm(raw).astype(np.float32)
        y = predict(x)
        if case.autoencoder:
            y = np.mean((y.astype(np.float64) - x) ** 2, axis=(1, 2))[:, None]
        out = y.reshape(len(y), -1)
        return {"outputs": out, "normalized_windows": None, "count": len(out)}
    # streaming: one padded batch (the models are causal: end padding never reaches real steps)
    length = max(len(s) for s in sequences)
    width = 1 if case.token else sequences[0].shape[1]
    batch = np.zeros((len(sequences), length) if case.token else (len(sequences), length, width), np.float32)
    for i, s in enumerate(sequences):
        batch[i, :len(s)] = case.norm(s)
    if case.token:
        batch = batch.astype(np.int32)
    y = predict(batch)
    out = np.concatenate([y[i, :len(s)].reshape(len(s), -1) for i, s in enumerate(sequences)])
    return {"outputs": out, "count": len(out)}


def task_metric(case: Case, data: dict, outputs: np.ndarray) -> tuple:
    """A task figure of ``outputs`` (flattened in measuring order): (name, value)."""
    sequences = data["eval"]
    if case.autoencoder:
        return "", None
    if case.token:
        from edgelstm.recipes.zoo_text import bits_per_char

        return "bits/char", bits_per_char(outputs, np.concatenate(data["next"]))
    ends = np.cumsum([len(s) - (case.window - 1 if case.windowed else 0) for s in sequences]) - 1
    if "forecaster" in case.name:  # predicted next cycle vs the real one (z-scored), steps that have one
        starts = np.r_[0, ends[:-1] + 1]
        pred = np.concatenate([outputs[a:b] for a, b in zip(starts, ends)])
        real = np.concatenate([case.norm(s)[1:] for s in sequences])
        return "MSE next", float(np.mean((pred - real) ** 2))
    last = outputs[ends, 0]
    if "classifier" in case.name:
        return "accuracy", float(np.mean((last > 0.5) == (data["truth"] <= 30)))
    return "test RMSE", float(np.sqrt(np.mean((last - data["truth"]) ** 2)))


def metrics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    ref = np.asarray(reference, np.float64)
    diff = np.asarray(candidate, np.float64) - ref
    std = float(np.std(ref))
    rmse = float(np.sqrt(np.mean(diff**2)))
    return {"relative_rmse": rmse / std if std > 0 else float("nan"), "rmse": rmse, "max_abs_error": float(np.max(np.abs(diff))),
            "output_std": std, "points": int(ref.shape[0]), "finite": bool(np.all(np.isfinite(candidate)))}


# ====================================================================== our variants through the runtime


def write_data_files(case: Case, data: dict) -> tuple:
    calibration, evaluation = case.scratch / "calibration.npz", case.scratch / "eval.npz"
    np.savez(calibration, **{f"s{i:03d}": np.asarray(s) for i, s in enumerate(data["calibration"])})
    np.savez(evaluation, **{f"s{i:03d}": np.asarray(s) for i, s in enumerate(data["eval"])})
    return calibration, evaluation


def convert_case(case: Case, calibration: Path, evaluation: Path, out: Path, quick: bool) -> dict:
    from edgelstm.convert import ConvertOptions, convert

    started = time.perf_counter()
    convert(ConvertOptions(
        model=case.file, calibration=calibration, eval_data=evaluation, out=out, formats=["tflite", "onnx"],
        quant=["int8", "int16x8", "dynamic", "float32"], scaler=(ROOT / case.spec["scaler"]) if case.spec.get("scaler") else None,
        window=case.window if case.use == "many-to-one" else None, progress=False,
        max_samples=5000 if quick else 20_000, long_steps=2000 if quick else 10_000,
        eval_windows=300 if quick else 1000, window_samples=300 if quick else 1000))
    return {"seconds": round(time.perf_counter() - started, 1)}


def runtime_outputs(runtime, case: Case, sequences: list) -> np.ndarray:
    """Stream each held-out sequence from a zero state; keep every step (streaming) or every full window."""
    parts = []
    for s in sequences:
        runtime.reset()
        if case.token:
            out = np.array([np.array(runtime.step(int(t))) for t in s])
        else:
            out = np.array([np.array(runtime.step(x)) for x in np.asarray(s, np.float32)])
        parts.append(out[case.window - 1:] if case.windowed else out)
    return np.concatenate(parts).reshape(-1, parts[0].shape[-1])


def step_feed(case: Case, data: dict, count: int) -> list:
    flat = np.concatenate([np.asarray(s) for s in data["eval"]])
    flat = np.concatenate([flat] * (count // len(flat) + 1))[:count]
    return [int(t) for t in flat] if case.token else [np.ascontiguousarray(x, np.float32) for x in flat]


def time_steps(step, feed: list, repeats: int = 3, reset=None) -> dict:
    """Median per-call time (us) of ``step(item)`` over ``feed``, ``repeats`` times: min/median/max of the medians."""
    clock = time.perf_counter_ns
    medians = []
    for _ in range(repeats):
        if reset:
            reset()
        for item in feed[:100]:  # warm-up
            step(item)
        samples = np.empty(len(feed), np.int64)
        for i, item in enumerate(feed):
            start = clock()
            step(item)
            samples[i] = clock() - start
        medians.append(float(np.median(samples)) / 1000.0)
    return {"p50_us": float(np.median(medians)), "p50_min_us": min(medians), "p50_max_us": max(medians),
            "steps": len(feed), "repeats": repeats}


def measure_variants(case: Case, data: dict, bundle: Path, reference: dict, steps: int) -> dict:
    import edgelstm

    manifest = json.loads((bundle / "manifest.json").read_text())
    report = json.loads((bundle / "report.json").read_text())
    rows = {}
    feed = step_feed(case, data, steps)
    for label, fmt, quant, io in VARIANTS:
        entry = next((m for m in manifest["models"] if (m["format"], m["quant"], m["io"]) == (fmt, quant, io)), None)
        if entry is None:
            skipped = [s for s in report.get("skipped", []) if (s["format"], s["quant"]) == (fmt, quant)]
            rows[label] = {"file": None, "na": skipped[0]["reason"] if skipped else "not in the bundle"}
            continue
        backend = "onnxruntime" if fmt == "onnx" else "litert"
        runtime = edgelstm.load(bundle, backend=backend, model=entry["file"], monitor=False, delegate=None)
        got = runtime_outputs(runtime, case, data["eval"])
        row = {"file": str((bundle / entry["file"]).relative_to(ROOT)) if bundle.is_relative_to(ROOT) else str(bundle / entry["file"]),
               "bytes": entry["bytes"], **metrics(reference["outputs"], got)}
        row["task"] = task_metric(case, data, got)[1]
        reported = report["models"].get(label, {})
        if case.autoencoder:
            reported = reported.get("anomaly_score", {})
        row["report_relative_rmse"] = reported.get("relative_rmse")
        row["report_max_abs_error"] = reported.get("max_abs_error")
        row["report_measured_at"] = report["models"].get(label, {}).get("measured_at")
        runtime.reset()
        row["latency"] = time_steps(runtime.step, feed, reset=runtime.reset)
        rows[label] = row
        log(f"    {label:<20} {100 * row['relative_rmse']:8.3f} %  max {row['max_abs_error']:.3g}  "
            f"report {100 * (row['report_relative_rmse'] or float('nan')):.3f} %  step {row['latency']['p50_us']:.1f} us")
    return rows


# ====================================================================== peer (a): TFLite's own ops via tf_keras


def _tf_keras_model(network, steps: int, streaming: bool, gru_unroll: bool = True):
    """The network rebuilt in tf_keras at batch 1 and ``steps`` timesteps with its weights."""
    import tf_keras

    L = tf_keras.layers
    token = network.input_kind == "token"
    inputs = L.Input(batch_shape=(1, steps) if token else (1, steps, network.n_features), dtype="int32" if token else "float32")
    h = inputs
    for layer in network.layers:
        kind = layer.kind
        if kind == "embedding":
            keras_layer, weights = L.Embedding(layer.vocabulary, layer.output_size), [layer.table]
        elif kind == "lstm":
            keras_layer = L.LSTM(layer.units, return_sequences=layer.return_sequences, activation=layer.activation,
                                 recurrent_activation=layer.recurrent_activation, go_backwards=layer.go_backwards)
            weights = [layer.kernel, layer.recurrent_kernel, layer.bias]
        elif kind == "gru":
            # No fused GRU op: a while loop (whose int8 conversion crashes here), or unrolled; stateful when streaming.
            keras_layer = L.GRU(layer.units, return_sequences=layer.return_sequences, activation=layer.activation,
                                recurrent_activation=layer.recurrent_activation, reset_after=layer.reset_after,
                                go_backwards=layer.go_backwards, stateful=streaming, unroll=gru_unroll)
            bias = np.stack([layer.bias, layer.recurrent_bias]) if layer.reset_after else layer.bias
            weights = [layer.kernel, layer.recurrent_kernel, bias]
        elif kind == "dense":
            keras_layer, weights = L.Dense(layer.output_size, activation=layer.activation), [layer.kernel, layer.bias]
        elif kind == "conv1d":
            keras_layer = L.Conv1D(layer.output_size, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                                   dilation_rate=layer.dilation, activation=layer.activation)
            weights = [layer.kernel, layer.bias]
        elif kind == "pooling1d":
            pool = L.MaxPooling1D if layer.mode == "max" else L.AveragePooling1D
            keras_layer, weights = pool(layer.pool_size, strides=layer.strides), []
        elif kind == "repeat_vector":
            keras_layer, weights = L.RepeatVector(layer.times), []
        else:
            raise NotImplementedError(f"layer kind {kind} has no tf_keras rebuild here")
        h = keras_layer(h)
        if weights:
            keras_layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return tf_keras.Model(inputs, h)


def peer_tflite_subprocess(spec_path: str) -> int:
    """(subprocess) Build the tf_keras twin of a zoo model and convert it: int8 and float32."""
    import tensorflow as tf

    from edgelstm.convert.importers import load_network

    spec = json.loads(Path(spec_path).read_text())
    network = load_network(ROOT / spec["model"], window=spec.get("window"))
    model = _tf_keras_model(network, spec["steps"], spec["streaming"], spec.get("gru_unroll", True))
    samples = np.load(spec["representative"])
    result = {"layers": [layer.kind for layer in network.layers]}
    for quant in ("float32", "int8"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quant == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([s] for s in samples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        Path(spec[quant]).write_bytes(converter.convert())
        result[quant] = spec[quant]
        if quant == "float32":
            result.update(_without_cell_clip(spec))
        Path(spec["result"]).write_text(json.dumps(result))
    return 0


def _without_cell_clip(spec: dict) -> dict:
    """The float32 twin with its fused LSTMs' cell_clip set to 0 (the converter's Keras-LSTM fusion
    writes cell_clip 10.0), to tell the clip from the rest of its error."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(spec["float32"]).read_bytes()))
    clips = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            options = op.builtinOptions
            if hasattr(options, "cellClip"):
                clips.append(float(options.cellClip))
                options.cellClip = 0.0
    if not clips:
        return {}
    path = Path(spec["float32"]).with_name("peer_tflite_float32_noclip.tflite")
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return {"cell_clips": clips, "float32_noclip": str(path)}


class TFLitePeer:
    """A tf_keras-converted TFLite model stepped from Python (float I/O)."""

    def __init__(self, path: Path):
        self.content = Path(path).read_bytes()
        self._open()
        self.ops = sorted({d["op_name"] for d in self.interpreter._get_ops_details()})
        self.resource_variables = "VAR_HANDLE" in self.ops
        self.state_dtypes = self._state_dtypes()

    def _open(self):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=self.content, num_threads=1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def _state_dtypes(self) -> list:
        """The dtypes of each UNIDIRECTIONAL_SEQUENCE_LSTM's state tensors (inputs 18: h, 19: c)."""
        details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        found = []
        for op in self.interpreter._get_ops_details():
            if op["op_name"] == "UNIDIRECTIONAL_SEQUENCE_LSTM" and len(op["inputs"]) > 19:
                h, c = (details.get(int(op["inputs"][k])) for k in (18, 19))
                found.append(f"h {np.dtype(h['dtype']).name} / c {np.dtype(c['dtype']).name}" if h and c else "?")
        return found

    def reset(self):
        if self.resource_variables:  # reset_all_variables() leaves resource variables alone
            self._open()
        else:
            self.interpreter.reset_all_variables()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


def representative(case: Case, data: dict, count: int, seed: int = 0) -> np.ndarray:
    """Normalised calibration inputs for peers: consecutive steps (streaming) or random windows, (S, 1, T[, F])."""
    sequences = [case.norm(np.asarray(s)) for s in data["calibration"]]
    if case.windowed:
        from edgelstm.convert.fidelity import windows_of

        windows = windows_of([s.reshape(len(s), -1) for s in sequences], case.window, count, seed)
        samples = windows.reshape(len(windows), 1, case.window, -1)
    else:
        flat = np.concatenate([s.reshape(len(s), -1) for s in sequences])[:count]
        samples = flat.reshape(len(flat), 1, 1, -1)
    if case.token:
        return samples[..., 0].astype(np.int32)
    return samples.astype(np.float32)


def peer_outputs(run, reset, case: Case, data: dict, shape_x) -> np.ndarray:
    """Outputs of a peer over the held-out data, measured exactly like the variants."""
    parts = []
    if case.windowed:
        raw = case.window_stack(data["eval"])
        windows = case.norm(raw).astype(np.float32)
        out = []
        for w in windows:
            reset()
            y = np.asarray(run(shape_x(w)), np.float64).reshape(-1)
            if case.autoencoder:
                y = np.array([np.mean((y - w.reshape(-1)) ** 2)])
            out.append(y.copy())
        return np.array(out)
    for s in data["eval"]:
        reset()
        x = case.norm(np.asarray(s))
        parts.append(np.array([np.asarray(run(shape_x(x[t]))).reshape(-1) for t in range(len(x))]))
    return np.concatenate(parts)


def peer_tflite(case: Case, data: dict, reference: dict, steps: int, quick: bool) -> dict:
    spec_path = case.scratch / "peer_tflite.json"
    spec = {"model": case.spec["file"], "window": case.window if case.use == "window" else None,
            "steps": case.window if case.windowed else 1, "streaming": not case.windowed,
            "representative": str(case.scratch / "representative.npy"),
            "int8": str(case.scratch / "peer_tflite_int8.tflite"), "float32": str(case.scratch / "peer_tflite_float32.tflite"),
            "result": str(case.scratch / "peer_tflite_result.json")}
    np.save(spec["representative"], representative(case, data, (300 if quick else 1000) if case.windowed else (5000 if quick else 20_000)))
    from edgelstm.convert.importers import load_network

    has_gru = any(layer.kind == "gru" for layer in load_network(case.file, window=spec["window"]).layers)
    attempts = []
    started = time.perf_counter()
    for unroll in ((False, True) if has_gru else (True,)):  # GRU: TFLite's own while loop first
        spec["gru_unroll"] = unroll
        spec_path.write_text(json.dumps(spec))
        Path(spec["result"]).unlink(missing_ok=True)
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--peer-tflite", str(spec_path)],
                              capture_output=True, text=True)
        result = json.loads(Path(spec["result"]).read_text()) if Path(spec["result"]).exists() else {}
        if "int8" in result:
            break
        why = f"signal {-done.returncode}" if done.returncode < 0 else ((done.stderr.strip().splitlines() or ["?"])[-1][:120])
        attempts.append(f"GRU {'unrolled' if unroll else 'while loop'}: int8 conversion failed ({why})")
        log(f"    peer tflite: {attempts[-1]}")
    seconds = round(time.perf_counter() - started, 1)
    rows = {}
    shape_x = ((lambda x: x.reshape(1, -1).astype(np.int32)) if case.token else (lambda x: x.reshape(1, -1, x.shape[-1]).astype(np.float32)))
    if not case.windowed:
        shape_x = (lambda x: np.asarray(x, np.int32).reshape(1, 1)) if case.token else (lambda x: x.reshape(1, 1, -1).astype(np.float32))
    feed_windows = None
    for quant, label in (("int8", "peer tflite int8"), ("float32", "peer tflite float32")):
        if quant not in result:
            reason = "TFLite converter crashed (signal %d)" % -done.returncode if done.returncode < 0 else \
                ((done.stderr.strip().splitlines() or ["failed"])[-1][:160])
            rows[label] = {"na": reason, "convert_seconds": seconds}
            continue
        peer = TFLitePeer(Path(result[quant]))
        got = peer_outputs(peer.run, peer.reset, case, data, shape_x)
        row = {"file": str(Path(result[quant]).name), "bytes": len(peer.content), "ops": peer.ops,
               "state": peer.state_dtypes, "convert_seconds": seconds, **metrics(reference["outputs"], got)}
        row["task"] = task_metric(case, data, got)[1]
        if feed_windows is None:
            feed_windows = peer_feed(case, data, steps)
        row["latency"] = time_steps(lambda x: peer_step(peer, x, case), feed_windows, reset=peer.reset)
        row["int8_ops"] = ("fused LSTM" if "UNIDIRECTIONAL_SEQUENCE_LSTM" in peer.ops else
                           "unrolled GRU" + (", stateful variables" if peer.resource_variables else "")) if quant == "int8" else ""
        if attempts and quant == "int8":
            row["attempts"] = attempts
            row["int8_ops"] += " (" + "; ".join(attempts) + ")"
        if result.get("cell_clips"):
            row["cell_clip"] = result["cell_clips"]
            if quant == "float32":
                unclipped = TFLitePeer(Path(result["float32_noclip"]))
                row["noclip_max_abs_error"] = metrics(
                    reference["outputs"], peer_outputs(unclipped.run, unclipped.reset, case, data, shape_x))["max_abs_error"]
        rows[label] = row
        log(f"    {label:<20} {100 * row['relative_rmse']:8.3f} %  max {row['max_abs_error']:.3g}  step {row['latency']['p50_us']:.1f} us")
    return rows


def peer_feed(case: Case, data: dict, count: int) -> list:
    """Normalised inputs for timing a peer: single steps (streaming) or windows."""
    if case.windowed:
        windows = case.norm(case.window_stack(data["eval"][:10])).astype(np.float32)
        return [w for w in np.concatenate([windows] * (count // len(windows) + 1))[:count]]
    return [np.asarray(case.norm(np.asarray(x)[None])[0] if not case.token else x) for x in step_feed(case, data, count)]


def peer_step(peer, x, case: Case):
    if case.windowed:
        peer.reset()  # a window from a zero state (the fused LSTM keeps state between invokes)
        return peer.run(x.reshape(1, *x.shape))
    return peer.run(np.asarray(x, np.int32).reshape(1, 1) if case.token else x.reshape(1, 1, -1))


# ====================================================================== peer (b): onnxruntime on LSTM/GRU ops


def onnx_graph(network, steps: int, streaming: bool):
    """An ONNX graph of LSTM/GRU ops (and Gather/MatMul/Conv glue) with the network's weights.

    Time-major ``x`` (steps, 1, F) (ids: (steps, 1) int64); streaming graphs also take ``h{k}``
    (and ``c{k}``) ``(1, 1, units)`` per recurrent layer and return ``h{k}_out`` / ``c{k}_out``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, inputs, outputs = [], [], [], []
    counter = iter(range(10**6))

    def const(array, name=None):
        name = name or f"w{next(counter)}"
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, ins, n_out=1, **attrs):
        outs = [f"t{next(counter)}" for _ in range(n_out)]
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs if n_out > 1 else outs[0]

    token = network.input_kind == "token"
    if token:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.INT64, [steps, 1]))
    else:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, network.n_features]))
    h, length, recurrent = "x", steps, 0
    activations = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}

    def act(name, value):
        if name in ("linear", None):
            return value
        if name == "softmax":
            return node("Softmax", [value], axis=-1)
        if name in activations:
            return node(activations[name], [value])
        raise NotImplementedError(f"activation {name}")

    for layer in network.layers:
        kind = layer.kind
        if kind == "embedding":
            h = node("Gather", [const(layer.table.astype(np.float32)), h], axis=0)  # (T, 1, D)
        elif kind in ("lstm", "gru"):
            if layer.activation != "tanh" or layer.recurrent_activation != "sigmoid" or layer.go_backwards:
                raise NotImplementedError("non-default activations or go_backwards")
            u = layer.units
            if kind == "lstm":
                blocks = lambda m: np.concatenate([m[:, g * u:(g + 1) * u] for g in (0, 3, 1, 2)], axis=1)  # ifgo -> iofc
                W, R = blocks(layer.kernel).T[None], blocks(layer.recurrent_kernel).T[None]
                B = np.concatenate([blocks(layer.bias[None])[0], np.zeros(4 * u, np.float32)])[None]
            else:
                W, R = layer.kernel.T[None], layer.recurrent_kernel.T[None]
                B = np.concatenate([layer.bias, layer.recurrent_bias])[None]
            ins = [h, const(W.astype(np.float32)), const(R.astype(np.float32)), const(B.astype(np.float32)), ""]
            if streaming:
                ins.append(f"h{recurrent}")
                inputs.append(helper.make_tensor_value_info(f"h{recurrent}", TensorProto.FLOAT, [1, 1, u]))
                if kind == "lstm":
                    ins.append(f"c{recurrent}")
                    inputs.append(helper.make_tensor_value_info(f"c{recurrent}", TensorProto.FLOAT, [1, 1, u]))
            attrs = {"hidden_size": u}
            if kind == "gru":
                attrs["linear_before_reset"] = int(layer.reset_after)
            outs = node(kind.upper(), ins, 3 if kind == "lstm" else 2, **attrs)
            if streaming:
                nodes.append(helper.make_node("Identity", [outs[1]], [f"h{recurrent}_out"]))
                outputs.append(helper.make_tensor_value_info(f"h{recurrent}_out", TensorProto.FLOAT, [1, 1, u]))
                if kind == "lstm":
                    nodes.append(helper.make_node("Identity", [outs[2]], [f"c{recurrent}_out"]))
                    outputs.append(helper.make_tensor_value_info(f"c{recurrent}_out", TensorProto.FLOAT, [1, 1, u]))
            recurrent += 1
            if layer.return_sequences:
                h = node("Squeeze", [outs[0], const(np.array([1], np.int64))])  # (T, 1, 1, u) -> (T, 1, u)
            else:
                h, length = outs[1], 1  # Y_h (1, 1, u)
        elif kind == "dense":
            h = act(layer.activation, node("Add", [node("MatMul", [h, const(layer.kernel.astype(np.float32))]),
                                                  const(layer.bias.astype(np.float32))]))
        elif kind == "repeat_vector":
            h, length = node("Tile", [h, const(np.array([layer.times, 1, 1], np.int64))]), layer.times
        elif kind in ("conv1d", "pooling1d"):
            channels_first = node("Transpose", [h], perm=[1, 2, 0])  # (T, 1, C) -> (1, C, T)
            if kind == "conv1d":
                before, after = layer.pads()
                y = node("Conv", [channels_first, const(np.transpose(layer.kernel, (2, 1, 0)).astype(np.float32)),
                                  const(layer.bias.astype(np.float32))],
                         kernel_shape=[layer.kernel_size], strides=[layer.strides], dilations=[layer.dilation],
                         pads=[before, after])
                y = act(layer.activation, y)
                length = layer.output_length(length)
            else:
                y = node("MaxPool" if layer.mode == "max" else "AveragePool", [channels_first],
                         kernel_shape=[layer.pool_size], strides=[layer.strides])
                length = layer.output_length(length)
            h = node("Transpose", [y], perm=[2, 0, 1])
        else:
            raise NotImplementedError(f"layer kind {kind}")
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, ["steps", 1, "outputs"]))
    graph = helper.make_graph(nodes, "peer", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench/int8_fidelity")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def quantized_summary(graph) -> str:
    """Which ops of a quantized ONNX graph run in int8 and which recurrent ops stay float."""
    from onnxruntime.quantization.registry import QDQRegistry

    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    integer = {"DynamicQuantizeLSTM", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "QGemm"}
    quantized, float_recurrent = set(), set()
    for n in graph.node:
        if n.op_type in integer:
            quantized.add(n.op_type)
        elif n.op_type in ("LSTM", "GRU"):  # no QDQ kernel: runs in float even between Q/DQ pairs
            float_recurrent.add(n.op_type)
        elif n.op_type in QDQRegistry and n.op_type not in ("Transpose", "Reshape", "Squeeze", "Unsqueeze") \
                and any(i in dequantized for i in n.input):
            quantized.add(f"{n.op_type}(QDQ)")
    text = "int8: " + (", ".join(sorted(quantized)) or "none")
    return text + (f"; float: {', '.join(sorted(float_recurrent))}" if float_recurrent else "")


class OrtPeer:
    """An ONNX model with recurrent ops, stepped (state fed back) or run per window."""

    def __init__(self, path: Path, case: Case, layout: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.case, self.layout = case, layout  # layout: "ours" (time-major, h{k} inputs) | "torch" (batch-first x, h0)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.state_inputs = [i for i in self.session.get_inputs() if i.name != "x"]
        self.state_outputs = {name: name.replace("_out", "") for name in self.output_names if name.endswith("_out")}
        if layout == "torch" and "h0" in self.input_names:
            self.state_outputs = {"h_n": "h0"}
        self.reset()

    def reset(self):
        self.state = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in self.state_inputs}

    def feed(self, x) -> dict:
        x = np.asarray(x)
        if self.layout == "torch":
            arr = x.reshape(1, -1, x.shape[-1]).astype(np.float32)
        elif self.case.token:
            arr = x.reshape(-1, 1).astype(np.int64)
        else:
            arr = x.reshape(-1, 1, x.shape[-1]).astype(np.float32)
        return {"x": arr, **self.state}

    def run(self, x) -> np.ndarray:
        results = self.session.run(self.output_names, self.feed(x))
        named = dict(zip(self.output_names, results))
        for out_name, in_name in self.state_outputs.items():
            self.state[in_name] = named[out_name]
        return named[self.output_names[0]]


def peer_onnx(case: Case, data: dict, reference: dict, steps: int, quick: bool) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from edgelstm.convert.importers import load_network

    rows = {}
    if case.spec["framework"] == "pytorch":
        source = ROOT / (case.spec.get("state_io") or case.spec["file"]) if not case.windowed else case.file
        layout, origin = "torch", f"the torch export {Path(source).name}"
    else:
        network = load_network(case.file, window=case.window if case.use == "window" else None)
        try:
            model = onnx_graph(network, case.window if case.windowed else 1, not case.windowed)
        except NotImplementedError as exc:
            return {label: {"na": f"no ONNX LSTM/GRU-op graph for this model: {exc}"} for label in ("peer ort dynamic", "peer ort static")}
        source = case.scratch / "peer_ort_float32.onnx"
        onnx.save(model, str(source))
        layout, origin = "ours", "an ONNX LSTM/GRU-op graph built here from the model's weights"
    float_peer = OrtPeer(source, case, layout)
    shape_x = (lambda x: x)

    # calibration feeds for quantize_static: recorded with the float graph (state included)
    reps = representative(case, data, 500 if case.windowed else 2000 * 4)
    feeds = []
    if case.windowed:
        feeds = [float_peer.feed(r[0]) for r in reps[:500]]
    else:
        float_peer.reset()
        for k, r in enumerate(reps):
            feed = float_peer.feed(r[0, 0] if not case.token else r[0])
            if k % 4 == 0:
                feeds.append({n: v.copy() for n, v in feed.items()})
            float_peer.run(r[0, 0] if not case.token else r[0])
        float_peer.reset()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._iter = iter(feeds)

        def get_next(self):
            return next(self._iter, None)

    variants = {"peer ort float32": source}
    with_quant = [("peer ort dynamic", lambda dst: quantize_dynamic(str(source), str(dst), weight_type=QuantType.QInt8)),
                  ("peer ort static", lambda dst: quantize_static(str(source), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                                                                  activation_type=QuantType.QInt8, weight_type=QuantType.QInt8))]
    for label, make in with_quant:
        dst = case.scratch / (label.replace(" ", "_") + ".onnx")
        try:
            make(dst)
            variants[label] = dst
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
            rows[label] = {"na": f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"}
    feed_items = None
    for label, path in variants.items():
        peer = OrtPeer(path, case, layout)
        graph = onnx.load(str(path)).graph
        ops = sorted({n.op_type for n in graph.node})
        got = peer_outputs(peer.run, peer.reset, case, data, shape_x)
        row = {"file": path.name,
               "origin": origin, "bytes": path.stat().st_size, "ops": ops, **metrics(reference["outputs"], got)}
        row["task"] = task_metric(case, data, got)[1]
        row["int8_ops"] = "" if label.endswith("float32") else quantized_summary(graph)
        if feed_items is None:
            feed_items = peer_feed(case, data, steps)
        row["latency"] = time_steps(lambda x: peer.run(x), feed_items, reset=peer.reset)
        rows[label] = row
        log(f"    {label:<20} {100 * row['relative_rmse']:8.3f} %  max {row['max_abs_error']:.3g}  step {row['latency']['p50_us']:.1f} us")
    return rows


# ====================================================================== the run


def run_case(spec: dict, data: dict, out_root: Path, quick: bool, peers: bool) -> dict:
    case = Case(spec, quick, out_root / "_peers")
    if case.use == "many-to-one" and spec["data"] == "cmapss":
        # window mode re-runs the step model over 30 readings at every step: every 3rd engine
        # (every 2nd of --quick's 20) keeps the ONNX int8 variant's 30 x ~250 us per window affordable
        every = 2 if quick else 3
        data = dict(data, eval=data["eval"][::every], truth=data["truth"][::every])
    steps = (100 if quick else 300) if case.windowed else (1000 if quick else 2000)
    log(f"{case.name}: {spec['framework']}, {case.use}{' ' + str(case.window) if case.windowed else ''}")
    reference = float_reference(case, data)
    calibration, evaluation = write_data_files(case, data)
    bundle = out_root / case.name
    conversion = convert_case(case, calibration, evaluation, bundle, quick)
    log(f"  converted in {conversion['seconds']} s -> {bundle}")
    task_name, task_float = task_metric(case, data, reference["outputs"])
    result = {"spec": {k: spec[k] for k in ("name", "file", "framework", "use", "window", "output", "model", "recipe", "data")},
              "engines": len(data["eval"]), "timed_steps": steps,
              "peers_dir": str(case.scratch.relative_to(ROOT)) if case.scratch.is_relative_to(ROOT) else str(case.scratch),
              "bundle": str(bundle.relative_to(ROOT)) if bundle.is_relative_to(ROOT) else str(bundle),
              "conversion": conversion, "points": reference["count"], "output_std": float(np.std(reference["outputs"])),
              "output_max_abs": float(np.max(np.abs(reference["outputs"]))),
              "task": {"name": task_name, "float": task_float}, "variants": measure_variants(case, data, bundle, reference, steps)}
    result["peers"] = {}
    if peers:
        try:
            result["peers"].update(peer_tflite(case, data, reference, steps, quick))
        except Exception as exc:  # noqa: BLE001
            result["peers"]["peer tflite int8"] = {"na": f"{type(exc).__name__}: {str(exc)[:150]}"}
        try:
            result["peers"].update(peer_onnx(case, data, reference, steps, quick))
        except Exception as exc:  # noqa: BLE001
            result["peers"]["peer ort dynamic"] = {"na": f"{type(exc).__name__}: {str(exc)[:150]}"}
    return result


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{100 * value:.2f}"


def _latency(row) -> str:
    lat = row.get("latency")
    if not lat:
        return ""
    return f"{lat['p50_min_us']:.1f}/{lat['p50_us']:.1f}/{lat['p50_max_us']:.1f}"


def format_table(results: list, elapsed: float, quick: bool) -> str:
    lines = []
    header = (f"{'model / variant':<34}{'file':<44}{'rel RMSE %':>11}{'max abs':>10}{'report %':>10}"
              f"{'task':>10}{'step p50 us min/med/max':>26}  {'notes'}")
    lines.append("int8 fidelity of the zoo (examples/zoo/zoo.json): every error measured here, against the source "
                 "framework's float output, on held-out data")
    lines.append("held out: FD001 test engines" + (" (every 5th: --quick)" if quick else " (100)") +
                 "; text: held-out stdlib files. rel RMSE = RMSE / std of the float output over the measured points; "
                 "report % = the bundle's report.json relative_rmse")
    lines.append("latency: runtime.step() (ours) / a Python step of the peer, LiteRT or onnxruntime, 1 thread; "
                 "min/median/max of 3 repeats' medians; windowed models: one step = one window")
    lines.append(header)
    lines.append("-" * len(header))
    for r in results:
        spec = r["spec"]
        use = spec["use"] + (f" {spec['window']}" if spec["use"] != "streaming" else "")
        held = f"{r['engines']} test engines" if spec["data"] == "cmapss" else f"{r['engines']} held-out text streams"
        lines.append(f"{spec['name']} [{spec['framework']}, {use}; model {spec['file']}; bundle {r['bundle']}/; "
                     f"peers {r['peers_dir']}/; {held}, {r['points']} points, float output std {r['output_std']:.4g}; "
                     f"task {r['task']['name'] or '-'} float {'-' if r['task']['float'] is None else format(r['task']['float'], '.4g')}]")
        for label, row in list(r["variants"].items()) + list(r["peers"].items()):
            if "na" in row:
                lines.append(f"  {label:<32}{'n/a: ' + row['na']}")
                continue
            file = Path(row["file"]).name
            notes = row.get("int8_ops", "")
            if row.get("state") and not label.endswith("float32"):
                notes = (notes + "; state " + ", ".join(sorted(set(row["state"])))).strip("; ")
            if row.get("cell_clip"):
                notes = (notes + f"; cell_clip {max(row['cell_clip']):g}").strip("; ")
            if "noclip_max_abs_error" in row:
                notes += f" (clip patched to 0: max {row['noclip_max_abs_error']:.1e})"
            if label.endswith("float32"):
                err, top = row["max_abs_error"], r["output_max_abs"]
                check = f"float check: max {err:.1e} {'<=' if err <= 1e-5 else '>'} 1e-5"
                if err > 1e-5:
                    check += f" ({err / top:.1e} of max|y| {top:.3g})"
                notes = (check + "; " + notes).strip("; ")
            task = "-" if row.get("task") is None else f"{row['task']:.4g}"
            lines.append(f"  {label:<32}{file:<44}{_pct(row['relative_rmse']):>11}{row['max_abs_error']:>10.3g}"
                         f"{_pct(row.get('report_relative_rmse')):>10}{task:>10}{_latency(row):>26}  {notes}")
    lines.append(f"total {elapsed / 60:.1f} min on {platform.machine()}, {os.cpu_count()} cores; "
                 "peers (files in each model's peers dir): 'peer tflite' = tf_keras twin via TFLiteConverter, "
                 "'peer ort' = onnxruntime quantize_dynamic / quantize_static on LSTM/GRU-op ONNX")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="int8 fidelity of the zoo, with peers (a slow benchmark)")
    parser.add_argument("--models", help="comma-separated zoo names (default: all)")
    parser.add_argument("--quick", action="store_true", help="20 test engines, fewer calibration samples and timed steps")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "int8_fidelity", help="where the bundles are kept")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "int8_fidelity.json")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--zoo", type=Path, default=ZOO, help="the zoo manifest (default examples/zoo/zoo.json)")
    parser.add_argument("--peer-tflite", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_tflite:
        return peer_tflite_subprocess(args.peer_tflite)
    started = time.perf_counter()
    zoo = json.loads(args.zoo.read_text())["models"]
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - {m["name"] for m in zoo})
        if unknown:
            parser.error(f"unknown zoo models {', '.join(unknown)}; known: {', '.join(m['name'] for m in zoo)}")
        zoo = [m for m in zoo if m["name"] in wanted]
    datasets = {}
    results = []
    for spec in zoo:
        kind = spec["data"]
        if kind not in datasets:
            datasets[kind] = text_data(args.quick) if kind == "stdlib_text" else cmapss_data(args.quick)
            if kind == "stdlib_text":
                recorded = (spec.get("training") or {}).get("text", {}).get("held_out_files", {})
                if recorded and recorded != datasets[kind]["sources"]["held_out_files"]:
                    log("warning: the local stdlib's held-out files differ from those recorded at training time")
        results.append(run_case(spec, datasets[kind], args.out, args.quick, not args.no_peers))
    elapsed = time.perf_counter() - started
    table = format_table(results, elapsed, args.quick)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"quick": args.quick, "seconds": round(elapsed, 1), "machine": platform.machine(),
                                     "python": platform.python_version(), "models": results, "table": table.splitlines()},
                                    indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
