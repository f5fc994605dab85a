"""Runtime benchmarks B1-B5 (issue "Streaming runtime"), each a ratio measured in this one run.

    python bench/runtime.py [BUNDLE] [--quick]

Without BUNDLE the shipped C-MAPSS example is converted first (LSTM 64 + LSTM 32 + Dense,
14 features). All timings are medians of repeated loops on one thread.

B1  step() of the int8 model against the bare invoke() of the same model, and the naive
    loop (set_tensor per input, invoke, get_tensor per output, quantizing in Python).
B2  step() against a Keras 3 stateful model (same weights) called once per step.
B3  256 streams in one call: time per stream against one stream; and against 256
    single-stream runtimes stepped one after another (the other design).
B4  backends side by side (edgelstm profile --backend all).
B5  100,000 steps of int8 against the float reference: RMSE per 10,000-step block.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import edgelstm  # noqa: E402
from edgelstm.convert.calibration_data import load_cmapss  # noqa: E402
from edgelstm.runtime.profiler import format_table, profile, readings  # noqa: E402


def per_call_us(call, repeats: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time of ``repeats`` calls, in microseconds."""
    for _ in range(min(repeats, 1000)):
        call()
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        results.append((time.perf_counter() - start) / repeats * 1e6)
    return float(np.median(results))


def naive_loop(path, reading, normalization):
    """What a new user writes: set_tensor per input, invoke, get_tensor per output, quantize in Python."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}
    x_detail = next(d for n, d in inputs.items() if n.endswith("_x:0"))
    state_in = [d for n, d in inputs.items() if not n.endswith("_x:0")]
    state = {d["index"]: np.full(d["shape"], d["quantization"][1], d["dtype"]) for d in state_in}
    offset, scale = np.asarray(normalization["offset"]), np.asarray(normalization["scale"])
    runner = interpreter.get_signature_runner()
    out_by_name = runner.get_output_details()
    in_by_name = runner.get_input_details()
    pairs = [(in_by_name[n]["index"], out_by_name[f"{n}_out"]["index"]) for n in in_by_name if n != "x"]
    y_detail = out_by_name["y"]

    def step():
        x = (reading - offset) / scale
        s, z = x_detail["quantization"]
        interpreter.set_tensor(x_detail["index"], np.clip(np.round(x / s + z), -128, 127).astype(np.int8)[None])
        for index, value in state.items():
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        for in_index, out_index in pairs:
            state[in_index] = interpreter.get_tensor(out_index)
        ys, yz = y_detail["quantization"]
        return (interpreter.get_tensor(y_detail["index"]).astype(np.float32) - yz) * ys

    return step


def b1(bundle, quick):
    repeats = 5_000 if quick else 20_000
    rt = edgelstm.load(bundle)
    manifest = rt.bundle.manifest
    reading = readings(rt.bundle, 1, 1)[0, 0]
    step = per_call_us(lambda: rt.step(reading), repeats)
    bare_stream = per_call_us(rt._stepper.invoke, repeats)
    canonical = edgelstm.load(bundle, model="step_int8.tflite")
    bare_int8 = per_call_us(canonical._stepper.invoke, repeats)
    naive = per_call_us(naive_loop(bundle / "step_int8.tflite", reading, manifest["input"]["normalization"]), repeats // 4)
    print("B1 step overhead (int8, LSTM 64 + 32, 14 features, 1 thread)")
    print(f"   bare invoke, integer-I/O model {bare_int8:6.2f} us   (the baseline)")
    print(f"   bare invoke, stream model      {bare_stream:6.2f} us   {bare_stream / bare_int8:5.2f}x  (QUANTIZE/DEQUANTIZE in graph)")
    print(f"   runtime step()                 {step:6.2f} us   {step / bare_int8:5.2f}x  (goal <= 1.3x)")
    print(f"   naive loop                     {naive:6.2f} us   {naive / bare_int8:5.2f}x")
    return step


def b2(bundle, step_us, quick):
    import keras

    from edgelstm.model.network_file import load_network_file

    manifest = edgelstm.load(bundle).bundle.manifest
    network = load_network_file(bundle / "network.npz", manifest["network"])
    layers = [keras.Input(batch_shape=(1, 1, network.n_features))]
    for layer in network.layers:
        if layer.kind == "lstm":
            layers.append(keras.layers.LSTM(layer.units, stateful=True, return_sequences=layer.return_sequences))
        else:
            layers.append(keras.layers.Dense(layer.output_size, activation=layer.activation))
    model = keras.Sequential(layers)
    for keras_layer, layer in zip(model.layers, network.layers):
        keras_layer.set_weights([layer.kernel, layer.recurrent_kernel, layer.bias] if layer.kind == "lstm" else [layer.kernel, layer.bias])
    x = np.zeros((1, 1, network.n_features), np.float32)
    calls = 30 if quick else 100
    model.predict(x, verbose=0)
    start = time.perf_counter()
    for _ in range(calls):
        model.predict(x, verbose=0)
    predict_us = (time.perf_counter() - start) / calls * 1e6
    start = time.perf_counter()
    for _ in range(calls * 5):
        model(x, training=False)
    call_us = (time.perf_counter() - start) / (calls * 5) * 1e6
    print("B2 against a Keras 3 stateful model called per step (same weights, float32)")
    print(f"   keras model.predict per step   {predict_us:9.0f} us   step() is {predict_us / step_us:7.0f}x faster (goal >= 1000x)")
    print(f"   keras model(x) per step        {call_us:9.0f} us   step() is {call_us / step_us:7.0f}x faster")


def b3(bundle, quick):
    repeats = 1_000 if quick else 3_000
    one = edgelstm.load(bundle)
    reading = readings(one.bundle, 1, 1)[0, 0]
    single = per_call_us(lambda: one.step(reading), repeats * 5)
    print("B3 many streams (int8 stream model)")
    print(f"   1 stream                       {single:8.2f} us per call")
    for k in (16, 64, 256):
        rt = edgelstm.load(bundle, streams=k)
        batch = readings(rt.bundle, 1, k)[0]
        per_call = per_call_us(lambda: rt.step(batch), max(50, repeats * 16 // k))
        print(f"   {k:3d} streams in one call       {per_call:8.2f} us per call, {per_call / k:6.3f} us per stream = "
              f"{per_call / k / single:5.3f}x of one stream" + ("   (goal <= 0.1x)" if k == 256 else ""))
    separate = [edgelstm.load(bundle) for _ in range(64)]

    def all_separately():
        for runtime in separate:
            runtime.step(reading)

    per_round = per_call_us(all_separately, max(20, repeats // 20))
    print(f"   64 single-stream runtimes      {per_round:8.2f} us per round, {per_round / 64:6.3f} us per stream (the other design)")


def b4(bundle, quick):
    result = profile(bundle, backends=("all",), steps=2_000 if quick else 10_000, warmup=200)
    print("B4 backends side by side")
    print(format_table(result))


def b5(bundle, quick):
    engines = load_cmapss(ROOT / "calibration" / "cmapss_fd001" / "test_FD001.txt").sequences
    total = 20_000 if quick else 100_000
    stream = np.concatenate(engines * (total // sum(len(e) for e in engines) + 1))[:total]
    int8 = edgelstm.load(bundle).run(stream)
    reference = edgelstm.load(bundle, backend="numpy").run(stream)
    block = total // 10
    errors = [float(np.sqrt(np.mean((int8[i : i + block] - reference[i : i + block]) ** 2))) for i in range(0, total, block)]
    print(f"B5 long stream: {total} steps of int8 vs the float reference, state never reset (test engines back to back)")
    print("   RMSE per block of %d steps: %s" % (block, " ".join(f"{e:.3f}" for e in errors)))
    print(f"   last block / first block = {errors[-1] / errors[0]:.2f}; max/min over blocks = {max(errors) / min(errors):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma list of b1..b5")
    args = parser.parse_args()
    scratch = None
    bundle = args.bundle
    if bundle is None:
        scratch = tempfile.TemporaryDirectory()
        bundle = Path(scratch.name) / "bundle"
        from edgelstm.cli.demo import run_demo
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            run_demo(bundle, progress=False)
    only = set((args.only or "b1,b2,b3,b4,b5").split(","))
    step_us = b1(bundle, args.quick) if "b1" in only else per_call_us(lambda: None, 10)
    if "b2" in only:
        b2(bundle, step_us, args.quick)
    if "b3" in only:
        b3(bundle, args.quick)
    if "b4" in only:
        b4(bundle, args.quick)
    if "b5" in only:
        b5(bundle, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
