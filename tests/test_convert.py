"""Conversion through the CLI: the C-MAPSS example to int8 TFLite and ONNX, float exports
matching Keras, state quantization tied, report and manifest complete."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgelstm
from edgelstm.runtime.bundle import Bundle
from edgelstm.convert.calibration_data import load_cmapss
from edgelstm.convert.export import onnx_step, tflite_step
from edgelstm.convert.importers import load_network
from edgelstm.runtime.normalization import Normalization
from edgelstm.model.reference import Reference
from edgelstm.runtime.steppers import OnnxStepper, TFLiteStepper

from .conftest import EXAMPLE_MODEL, TEST_SET, bundle_stepper, run_cli

PRIMITIVE_TFLITE_OPS = {"FULLY_CONNECTED", "LOGISTIC", "TANH", "MUL", "ADD", "SUB", "SPLIT", "CONCATENATION", "RESHAPE"}


def _stream(stepper, sequence):
    stepper.reset()
    return np.concatenate([stepper.step(sequence[t : t + 1]).copy() for t in range(len(sequence))])


def test_bundle_has_every_requested_file_and_a_complete_manifest(cmapss_bundle):
    bundle = Bundle.open(cmapss_bundle)
    m = bundle.manifest
    assert {(e["format"], e["quant"], e["io"]) for e in m["models"]} == {
        ("tflite", "int8", "quantized"), ("tflite", "int8", "stream"), ("tflite", "float32", "quantized"),
        ("onnx", "int8", "float"), ("onnx", "float32", "float"),
    }
    assert m["source"]["format"] == "keras3" and len(m["source"]["sha256"]) == 64
    assert m["input"]["n_features"] == 14 and m["input"]["normalization"]["kind"] == "zscore"
    state = {s["name"]: s for s in m["state"]}
    assert state["h_0"]["size"] == 64 and state["h_1"]["size"] == 32
    for layer, units in ((0, 64), (1, 32)):
        # the cell state is split into groups of units by range; together they cover every unit once
        cells = [s for name, s in state.items() if name.startswith(f"c_{layer}") and "residual_of" not in s]
        assert sorted(u for s in cells for u in s["units"]) == list(range(units))
        # the int8 TFLite model carries each group as c_hi + c_lo: a residual tensor per group, same units
        residuals = {s["residual_of"]: s for s in state.values() if s.get("residual_of", "").startswith(f"c_{layer}")}
        assert set(residuals) == {s["name"] for s in cells}
        assert all(residuals[s["name"]]["units"] == s["units"] for s in cells)
        assert sorted(state[f"h_{layer}"]["units"]) == list(range(units))
    assert m["outputs"] == [{"name": "y", "size": 1, "mode": "sequence"}]
    assert m["default_model"] == "step_int8_stream.tflite"  # what the CPU runtime drives
    assert {"tensorflow", "onnx", "onnxruntime", "numpy", "edgelstm"} <= set(m["tool_versions"])
    for entry in m["models"]:
        assert set(entry["ops"]) and len(entry["sha256"]) == 64
    assert (cmapss_bundle / "report.json").exists() and (cmapss_bundle / "report.png").exists()


def test_float32_exports_match_keras(cmapss_bundle, keras):
    """Float step exports stepped one reading at a time equal Keras on whole sequences.

    The outputs are RUL in cycles (up to ~130), so 1e-5 is applied relative to the output's
    magnitude: float32 itself resolves 7.6e-6 at 100.
    """
    model = keras.saving.load_model(EXAMPLE_MODEL)
    manifest = Bundle.open(cmapss_bundle).manifest
    norm = Normalization.from_json(manifest["input"]["normalization"], 14)
    engines = load_cmapss(TEST_SET).sequences[:3]
    for engine in engines:
        x = norm.apply(engine)
        expected = model.predict(x[None], verbose=0)[0]
        for file in ("step_float32.tflite", "step_float32.onnx"):  # raw readings in, as the runtime feeds them
            actual = _stream(bundle_stepper(cmapss_bundle, file), engine.astype(np.float32))
            scale = np.maximum(1.0, np.abs(expected))
            assert np.max(np.abs(actual - expected) / scale) <= 1e-5


def test_stream_variant_keeps_integer_state_and_float_x_y(cmapss_bundle):
    """The model the CPU runtime drives: raw readings in (normalised, and measured against the
    bound, by float ops at its front), integer state at the boundary, float y."""
    stepper = TFLiteStepper(cmapss_bundle / "step_int8_stream.tflite")
    assert stepper.inputs["x"]["dtype"] == np.float32 and stepper.outputs["y"]["dtype"] == np.float32
    assert stepper.takes_raw and stepper.ops()[:4] == ["SUB", "MUL", "SUM", "QUANTIZE"]
    assert set(stepper.ops()) <= PRIMITIVE_TFLITE_OPS | {"QUANTIZE", "DEQUANTIZE", "SUM"}
    assert next(m for m in Bundle.open(cmapss_bundle).models("tflite", "int8") if m["io"] == "stream")["input"] == "raw"
    for name in stepper.state_names:
        assert stepper.inputs[name]["dtype"] == np.int8
        assert stepper.inputs[name]["quantization"] == stepper.outputs[f"{name}_out"]["quantization"], name


def test_int8_tflite_is_full_integer_from_primitive_ops_with_tied_state(cmapss_bundle):
    stepper = TFLiteStepper(cmapss_bundle / "step_int8.tflite")
    assert set(stepper.ops()) <= PRIMITIVE_TFLITE_OPS
    for details in list(stepper.inputs.values()) + list(stepper.outputs.values()):
        assert details["dtype"] == np.int8
    for name in stepper.state_names:
        assert stepper.inputs[name]["quantization"] == stepper.outputs[f"{name}_out"]["quantization"], name
    entry = Bundle.open(cmapss_bundle).model("tflite", "int8")
    assert entry["edgetpu"]["compatible"], entry["edgetpu"]
    assert entry["tensors"]["h_0"]["scale"] == entry["tensors"]["h_0_out"]["scale"]


def test_int8_output_copies_are_offset_roundings_of_one_value(cmapss_bundle):
    """The full-integer model's Dense head computes each output 4 times, copy k shifted by
    (k - 1.5) / 4 of a grid step before rounding (tflite_output_copies): over real readings the
    copies' integers never decrease with k and span at most one step, and they do differ (else
    their mean would be no finer than one copy); the stream model's y is their mean."""
    entry = Bundle.open(cmapss_bundle).model("tflite", "int8")
    assert entry["output_copies"] == 4
    raw = TFLiteStepper(cmapss_bundle / "step_int8.tflite")  # the copies themselves, not averaged
    averaged = TFLiteStepper(cmapss_bundle / "step_int8.tflite", output_copies=4)
    stream = TFLiteStepper(cmapss_bundle / "step_int8_stream.tflite")
    manifest = Bundle.open(cmapss_bundle).manifest
    for stepper in (raw, averaged):
        stepper.set_normalization(manifest["input"]["normalization"]["offset"], manifest["input"]["normalization"]["scale"])
    engine = load_cmapss(TEST_SET).sequences[0]
    spreads = []
    for reading in engine:
        raw.step(reading[None])
        copies = raw._y.astype(int)[0]
        assert np.all(np.diff(copies) >= 0) and copies[-1] - copies[0] <= 1, copies
        spreads.append(copies[-1] - copies[0])
        mean = averaged.step(reading[None])
        assert np.array_equal(stream.step(reading[None]), mean)
    assert 0 < np.mean(spreads) < 1


def test_dynamic_range_model_keeps_a_small_embedding_table_float(tmp_path, keras, rng):
    """The dynamic-range quantizer would store the Embedding table as int8 on one grid for the
    whole table (tflite_float_tables): the table stays float32, the GATHER reads it directly."""
    import tensorflow as tf

    L = keras.layers
    model = keras.Sequential([keras.Input((None,)), L.Embedding(40, 32), L.LSTM(16), L.Dense(1)])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "ids.npy", rng.integers(0, 40, (10, 30)))
    run_cli("convert", tmp_path / "m.keras", "--calibration", tmp_path / "ids.npy", "--out", tmp_path / "b",
            "--formats", "tflite", "--quant", "dynamic,float32", "--long-steps", "200", "--quiet")
    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "b" / "step_dynamic.tflite"))
    ops = interpreter._get_ops_details()
    gather = next(op for op in ops if op["op_name"] == "GATHER")
    assert interpreter.get_tensor_details()[gather["inputs"][0]]["dtype"] == np.float32
    assert "DEQUANTIZE" not in {op["op_name"] for op in ops}
    ids = rng.integers(0, 40, 25)
    expected = model.predict(ids[None], verbose=0)[0]
    dynamic = edgelstm.load(tmp_path / "b", model="step_dynamic.tflite")
    assert np.max(np.abs(dynamic.run(ids)[-1] - expected)) <= 0.05 * (np.abs(expected).max() + 0.1)


def test_int8_onnx_has_tied_state_quantization(cmapss_bundle):
    model = onnx.load(str(cmapss_bundle / "step_int8.onnx"))
    onnx.checker.check_model(model)
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantizers = {node.input[1]: node.input[2] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    for name in [s["name"] for s in Bundle.open(cmapss_bundle).manifest["state"] if "residual_of" not in s]:
        inp, out = f"{name}_scale", f"{name}_out_scale"
        assert inp in quantizers and out in quantizers, name
        assert float(init[inp]) == float(init[out]), name
        assert int(init[quantizers[inp]]) == int(init[quantizers[out]]), name
    assert any(v.dtype == np.int8 for v in init.values())


def test_float_onnx_passes_checker_with_opset_17(cmapss_bundle):
    model = onnx.load(str(cmapss_bundle / "step_float32.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    # the ONNX models carry each cell-state group as one tensor (no c_lo residual: that is the int8 TFLite's)
    names = [s["name"] for s in Bundle.open(cmapss_bundle).manifest["state"] if "residual_of" not in s]
    assert [i.name for i in model.graph.input] == ["x"] + names
    assert [o.name for o in model.graph.output] == ["y"] + [f"{n}_out" for n in names]


def test_report_measures_int8_on_held_out_engines_and_a_long_stream(cmapss_bundle):
    report = json.loads((cmapss_bundle / "report.json").read_text())
    assert report["held_out"]["sequences"] == 100 and report["long_stream"]["steps"] >= 10_000
    for name in ("tflite int8", "onnx int8", "tflite float32", "onnx float32"):
        metrics = report["models"][name]
        assert len(metrics["long_stream_block_rmse"]) == 10
        for key in ("max_abs_error", "mean_abs_error", "rmse", "relative_rmse"):
            assert np.isfinite(metrics[key])
    assert report["models"]["tflite float32"]["relative_rmse"] < 1e-5


def test_cli_prints_the_fidelity_table_and_json(cmapss_bundle, tmp_path):
    result = run_cli("inspect", cmapss_bundle)
    assert "step_int8.tflite" in result.stdout and "FULLY_CONNECTED" in result.stdout
    data = json.loads(run_cli("inspect", cmapss_bundle, "--json").stdout)
    assert data["kind"] == "bundle" and data["network"]["layers"][0]["units"] == 64
    coral = run_cli("inspect", cmapss_bundle, "--target", "coral-usb")
    assert "Edge TPU (coral-usb): compatible" in coral.stdout and "edgetpu_compiler" in coral.stdout


def test_quant_sweep_variants_convert(tmp_path, keras, rng):
    """float32, float16, dynamic-range, int8 and int16x8 TFLite variants all convert for a small model."""
    L = keras.layers
    model = keras.Sequential([keras.Input((None, 4)), L.LSTM(8, return_sequences=True), L.Dense(2)])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "calib.npy", rng.normal(size=(10, 40, 4)).astype("float32"))
    run_cli("convert", tmp_path / "m.keras", "--calibration", tmp_path / "calib.npy", "--out", tmp_path / "b",
            "--formats", "tflite", "--quant", "all", "--long-steps", "500", "--quiet")
    quants = {e["quant"] for e in Bundle.open(tmp_path / "b").manifest["models"]}
    assert quants == {"float32", "float16", "dynamic", "int8", "int16x8"}
    network = load_network(tmp_path / "m.keras")
    x = rng.normal(size=(30, 4)).astype("float32")
    expected = Reference(network).run(x)[0]
    assert np.max(np.abs(_stream(TFLiteStepper(tmp_path / "b" / "step_float32.tflite"), x) - expected)) <= 1e-5
