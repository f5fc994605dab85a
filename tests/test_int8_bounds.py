"""int8 error bounds on three zoo models, asserted, each measured independently of the report.

One streaming LSTM (the demo's model, every step), one many-to-one LSTM from PyTorch (the last
step of 30-cycle windows) and one streaming GRU from PyTorch (4 layers, every step), converted
for the default CPU target (int8, dynamic range, float32 TFLite), calibrated on FD001 training
engines and measured on FD001 test engines no model has seen.

What is asserted, and why these bounds:

* the variant a CPU target loads by default keeps within 1 % of the float model (RMSE / output
  std at the output the model is used for), and it is the verdict's CPU choice;
* the full-integer int8 model (the Edge TPU's) stays under a per-model ceiling. The goal is
  2 %; today these models measure 2.0-2.7 % in ``bench/int8_fidelity.py`` and 2.0-2.9 % on this
  test's smaller data (README, Known gaps), so the ceilings are regression bounds a little above
  those figures, not the goal (they were 4.5 / 4.5 / 3.5 % before the per-gate grids);
* the report's figure for the default variant equals the one this test measures: the device
  runtime (``edgelstm.load``) stepped over the held-out data against the numpy reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgelstm
from edgelstm.convert import ConvertOptions, convert
from edgelstm.convert.fidelity import CPU_BOUND, windows_of
from edgelstm.model.network_file import load_network_file
from edgelstm.model.reference import Reference
from edgelstm.recipes import cmapss
from edgelstm.runtime.normalization import Normalization

from .conftest import ROOT

CASES = {
    # name: (model file, scaler, window of a many-to-one use, full-int8 ceiling)
    "cmapss_lstm_stream": ("examples/cmapss_fd001_lstm.keras", "examples/cmapss_fd001_lstm.scaler.json", None, 0.033),
    "torch_lstm2_window30": ("examples/zoo/torch_lstm2_window30.onnx", "examples/zoo/torch_lstm2_window30.scaler.json", 30, 0.034),
    "torch_gru4_forecaster": ("examples/zoo/torch_gru4_forecaster.onnx", "examples/zoo/torch_gru4_forecaster.scaler.json", None, 0.025),
}
CALIBRATION_ENGINES = 40  # of the 80 fold-0 training engines the zoo calibrates on
HELD_OUT_ENGINES = 30  # FD001 test engines (every third one)
EVAL_WINDOWS = 300


@pytest.fixture(scope="module")
def fd001(tmp_path_factory):
    data = cmapss.load()
    train_idx, _ = cmapss.validation_split(len(data["train"].sequences))
    calibration = [data["train"].sequences[i] for i in train_idx[:CALIBRATION_ENGINES]]
    held_out = data["test"].sequences[::3][:HELD_OUT_ENGINES]
    folder = tmp_path_factory.mktemp("fd001")
    np.savez(folder / "calibration.npz", **{f"s{i:03d}": s for i, s in enumerate(calibration)})
    np.savez(folder / "eval.npz", **{f"s{i:03d}": s for i, s in enumerate(held_out)})
    return {"calibration": folder / "calibration.npz", "eval": folder / "eval.npz", "held_out": held_out}


def _independent_error(bundle, held_out: list, window: int | None) -> float:
    """RMSE / output std of the runtime's default model against the numpy reference, at the
    output the model is used for; the spread is the float output's std over every held-out step."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    network = load_network_file(bundle / "network.npz", manifest["network"])
    normalization = Normalization.from_json(manifest["input"]["normalization"], network.n_features)
    reference = Reference(network)
    spread = float(np.std(np.concatenate([reference.run(normalization.apply(s))[0] for s in held_out])))
    runtime = edgelstm.load(bundle)
    squared, count = 0.0, 0
    if window is None:  # streaming: every step of every held-out engine
        for sequence in held_out:
            expected = reference.run(normalization.apply(sequence))[0]
            runtime.reset()
            got = np.array([np.array(runtime.step(reading)) for reading in sequence], np.float64)
            squared, count = squared + float(np.sum((got - expected) ** 2)), count + got.size
    else:  # many-to-one: each window from a zero state, its last step
        for w in windows_of(held_out, window, EVAL_WINDOWS, seed=0):
            expected = reference.run(normalization.apply(w))[0][-1]
            runtime.reset()
            got = np.array(runtime.run(w)[-1], np.float64)
            squared, count = squared + float(np.sum((got - expected) ** 2)), count + got.size
    return float(np.sqrt(squared / count)) / spread


@pytest.mark.parametrize("name", list(CASES))
def test_int8_error_stays_under_its_bound_and_the_report_says_so(name, fd001, tmp_path):
    model, scaler, window, full_int8_ceiling = CASES[name]
    out = tmp_path / name
    formats = ["tflite", "onnx"] if name == "cmapss_lstm_stream" else ["tflite"]
    convert(ConvertOptions(model=ROOT / model, scaler=ROOT / scaler, calibration=fd001["calibration"],
                           eval_data=fd001["eval"], out=out, formats=formats, window=window,
                           max_samples=5000, long_steps=1000, eval_windows=EVAL_WINDOWS, attribution_sequences=0))
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert manifest["target"]["name"] == "x86_64" and {"int8", "dynamic", "float32"} <= {m["quant"] for m in manifest["models"]}
    assert report["uses"] == (["last_of_window"] if window else ["every_step"])

    choice = report["verdict"]["cpu_choice"]
    fmt, quant, *stream = choice.split()
    default = next(m for m in manifest["models"] if m["file"] == manifest["default_model"])
    assert (default["format"], default["quant"], default["io"] == "stream") == (fmt, quant, bool(stream))
    assert report["models"][choice]["relative_rmse"] <= CPU_BOUND, report["verdict"]
    assert report["models"]["tflite int8 stream"]["relative_rmse"] <= full_int8_ceiling
    assert report["models"]["tflite float32"]["relative_rmse"] < 1e-5

    measured = _independent_error(out, fd001["held_out"], window)
    assert edgelstm.load(out).model_file == manifest["default_model"]
    assert measured <= CPU_BOUND
    assert abs(measured - report["models"][choice]["relative_rmse"]) <= 2e-3 * measured + 1e-6
    if "onnx" in formats:  # the dynamic-range default exists only as TFLite: onnxruntime runs ONNX int8, not float
        assert edgelstm.load(out, backend="onnxruntime").model_entry["quant"] == "int8"


def _report(**errors) -> dict:
    return {"models": {name.replace("_", " "): {"relative_rmse": e} for name, e in errors.items()}}


def test_the_cpu_default_is_full_int8_when_it_keeps_within_one_percent_else_the_closest_within():
    from edgelstm.convert.fidelity import verdict

    assert verdict(_report(tflite_int8=0.009, tflite_int8_stream=0.009, tflite_dynamic=0.004))["cpu_choice"] == "tflite int8 stream"
    decision = verdict(_report(tflite_int8=0.03, tflite_int8_stream=0.03, tflite_dynamic=0.006, tflite_int16x8=0.002))
    assert decision["cpu_choice"] == "tflite dynamic" and decision["edge_tpu_choice"] == "tflite int8"
    assert "ABOVE 2 %" in decision["lines"][0] and not decision["warnings"]
    decision = verdict(_report(tflite_int8=0.05, tflite_int8_stream=0.05, tflite_dynamic=0.03, tflite_int16x8=0.025))
    assert decision["cpu_choice"] == "tflite int16x8" and "none within 1 %" in decision["lines"][1]
    assert decision["warnings"] and "no int8 variant is within 2 %" in decision["warnings"][0]


def test_the_opt_in_grid_search_lowers_the_full_int8_error(fd001, tmp_path):
    """``--grid-search`` (off by default, see docs/converting.md): the same GRU converted with and
    without it, measured on the same held-out engines; it must not be worse, and the manifest logs it."""
    model, scaler, window, _ = CASES["torch_gru4_forecaster"]
    errors = {}
    for search in (False, True):
        out = tmp_path / f"search{int(search)}"
        convert(ConvertOptions(model=ROOT / model, scaler=ROOT / scaler, calibration=fd001["calibration"],
                               eval_data=fd001["eval"], out=out, formats=["tflite"], quant=["int8", "float32"],
                               max_samples=5000, long_steps=1000, attribution_sequences=0, grid_search=search,
                               grid_sequences=20, grid_steps=300, progress=False))
        errors[search] = json.loads((out / "report.json").read_text())["models"]["tflite int8 stream"]["relative_rmse"]
    assert errors[True] <= errors[False] * 1.02, errors
    manifest = json.loads((tmp_path / "search1" / "manifest.json").read_text())
    assert "grid_search" in manifest["conversion"]
