"""The report measures the output a model is used for, and its figure is the one a user measures.

A streaming model is measured at every step; a many-to-one model run over windows at the last
step of each window (from a zero state, as the runtime's window mode runs it); a many-to-one
model of unknown use at both, the headline being the worse. Each test recomputes the report's
figure independently: the float output from Keras itself, the int8 output from the device
runtime (``edgelstm.load``), the spread from the numpy reference over every held-out step.
"""

from __future__ import annotations

import json

import numpy as np

import edgelstm
from edgelstm.convert.calibration_data import load_cmapss
from edgelstm.convert.fidelity import windows_of
from edgelstm.model.network_file import load_network_file
from edgelstm.model.reference import Reference
from edgelstm.runtime.normalization import Normalization

from .conftest import EXAMPLE_MODEL, RECIPE, ROOT, TEST_SET, run_cli

WINDOW_MODEL = ROOT / "examples" / "cmapss_fd001_window30.keras"
WINDOW_SCALER = ROOT / "examples" / "cmapss_fd001_window30.scaler.json"


def _spread(bundle, sequences) -> float:
    manifest = json.loads((bundle / "manifest.json").read_text())
    network = load_network_file(bundle / "network.npz", manifest["network"])
    normalization = Normalization.from_json(manifest["input"]["normalization"], manifest["input"]["n_features"])
    reference = Reference(network)
    return float(np.std(np.concatenate([reference.run(normalization.apply(s))[0] for s in sequences])))


def test_a_window_run_many_to_one_model_is_measured_at_each_windows_last_step(tmp_path, keras):
    out = tmp_path / "w30"
    run_cli("convert", WINDOW_MODEL, "--calibration", RECIPE, "--scaler", WINDOW_SCALER, "--eval", TEST_SET,
            "--window", "30", "--eval-windows", "300", "--formats", "tflite", "--quant", "int8,float32",
            "--out", out, "--quiet")
    report = json.loads((out / "report.json").read_text())
    assert report["uses"] == ["last_of_window"]
    assert report["models"]["tflite int8 stream"]["measured_at"] == "last_of_window"

    sequences = load_cmapss(TEST_SET).sequences
    windows = windows_of(sequences, 30, 300, seed=0)
    scaler = json.loads(WINDOW_SCALER.read_text())
    model = keras.saving.load_model(WINDOW_MODEL, compile=False)
    expected = model.predict((windows - np.asarray(scaler["offset"])) / np.asarray(scaler["scale"]), verbose=0)
    runtime = edgelstm.load(out, model="step_int8_stream.tflite")
    got = []
    for window in windows:  # the runtime's window mode: the model rerun over the last 30 readings
        runtime.reset()
        for reading in window:
            y = runtime.step(reading)
        got.append(np.array(y))
    rmse = float(np.sqrt(np.mean((np.asarray(got, np.float64) - expected) ** 2)))
    measured = report["models"]["tflite int8 stream"]
    assert abs(measured["rmse"] - rmse) <= 1e-3 * rmse + 1e-4
    assert abs(measured["relative_rmse"] - rmse / _spread(out, sequences)) <= 1e-3 * measured["relative_rmse"] + 1e-6
    assert report["models"]["tflite float32"]["relative_rmse"] < 1e-5


def test_a_many_to_one_model_of_unknown_use_reports_its_last_step_and_every_step(tmp_path):
    out = tmp_path / "m2o"
    run_cli("convert", WINDOW_MODEL, "--calibration", RECIPE, "--scaler", WINDOW_SCALER, "--eval", TEST_SET,
            "--formats", "tflite", "--quant", "int8,float32", "--out", out, "--quiet")
    report = json.loads((out / "report.json").read_text())
    assert report["uses"] == ["last_step", "every_step"]
    m = report["models"]["tflite int8"]
    assert m["relative_rmse"] == max(m["last_step"]["relative_rmse"], m["every_step"]["relative_rmse"])
    assert m["measured_at"] in ("last_step", "every_step")
    printed = run_cli("convert", WINDOW_MODEL, "--calibration", RECIPE, "--scaler", WINDOW_SCALER, "--eval", TEST_SET,
                      "--formats", "tflite", "--quant", "int8", "--out", tmp_path / "again").stdout
    assert "measured at the output the model is used for: last step of each sequence and every step" in printed
    assert "Verdict:" in printed


def test_a_streaming_model_is_measured_at_every_step_as_the_runtime_streams_it(cmapss_bundle, keras):
    report = json.loads((cmapss_bundle / "report.json").read_text())
    assert report["uses"] == ["every_step"]
    sequences = load_cmapss(TEST_SET).sequences
    scaler = json.loads((ROOT / "examples" / "cmapss_fd001_lstm.scaler.json").read_text())
    model = keras.saving.load_model(EXAMPLE_MODEL, compile=False)
    runtime = edgelstm.load(cmapss_bundle, model="step_int8_stream.tflite")
    squared, count, expected_all = 0.0, 0, []
    for sequence in sequences:
        expected = model.predict(((sequence - np.asarray(scaler["offset"])) / np.asarray(scaler["scale"]))[None], verbose=0)[0]
        runtime.reset()
        got = np.array([np.array(runtime.step(reading)) for reading in sequence])
        squared += float(np.sum((got - expected) ** 2))
        count += got.size
        expected_all.append(expected)
    rmse = np.sqrt(squared / count)
    spread = float(np.std(np.concatenate(expected_all)))
    measured = report["models"]["tflite int8 stream"]
    assert abs(measured["rmse"] - rmse) <= 1e-3 * rmse
    assert abs(measured["relative_rmse"] - rmse / spread) <= 2e-3 * measured["relative_rmse"]
    assert report["verdict"]["lines"] and report["held_out"]["output_std"] > 0


def test_the_report_names_the_costliest_int8_tensors_from_a_replay_that_matches_the_interpreter(cmapss_bundle):
    from edgelstm.convert.attribution import Replay

    report = json.loads((cmapss_bundle / "report.json").read_text())
    attribution = report["attribution"]
    costs = [c["relative_rmse_alone"] for c in attribution["costliest"]]
    assert len(costs) == 3 and costs == sorted(costs, reverse=True) and costs[0] > 0
    assert all(c["tensors"] and not c["tensors"].startswith("other") for c in attribution["costliest"])
    # the replay with every tensor on its grid is the int8 model: same error as the interpreter's
    manifest = json.loads((cmapss_bundle / "manifest.json").read_text())
    normalization = Normalization.from_json(manifest["input"]["normalization"], manifest["input"]["n_features"])
    sequences = load_cmapss(TEST_SET).sequences[:5]
    replay = Replay(cmapss_bundle / "step_int8_stream.tflite")
    reference = Replay(cmapss_bundle / "step_float32.tflite")
    runtime = edgelstm.load(cmapss_bundle, model="step_int8_stream.tflite")
    every = frozenset(i for i in replay.grid if i not in replay.constants)
    for sequence in sequences:
        z = normalization.apply(sequence)[None]
        replayed, expected = replay.run(z, every)[0, :, 0], reference.run(z)[0, :, 0]
        runtime.reset()
        interpreted = runtime.run(sequence)[:, 0]
        off = np.sqrt(np.mean((interpreted - expected) ** 2))
        assert abs(np.sqrt(np.mean((replayed - expected) ** 2)) - off) <= 0.1 * off + 1e-3
    printed = run_cli("convert", EXAMPLE_MODEL, "--calibration", RECIPE, "--eval", TEST_SET, "--formats", "tflite",
                      "--quant", "int8,float32", "--long-steps", "1000", "--out", cmapss_bundle.parent / "again").stdout
    assert "Costliest int8 tensors" in printed and "1. layer" in printed
