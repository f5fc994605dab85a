"""The device side: a runtime-only install, `edgelstm run`, `edgelstm profile`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from edgelstm.convert.calibration_data import load_cmapss

from .conftest import ROOT, TEST_SET, run_cli


def test_runtime_extra_alone_runs_a_bundle_without_tensorflow(cmapss_bundle):
    """A fresh venv with only `pip install edgelstm[runtime]`: numpy + LiteRT, no converter."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_minimal_check.py"), str(cmapss_bundle)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy_modules"] == []
    assert report["backend"] == "litert" and report["model"] == "step_int8_stream.tflite"
    assert not {"tensorflow", "tensorflow-cpu", "keras", "onnx", "onnxruntime", "h5py"} & set(report["installed_packages"])
    assert {"numpy", "ai-edge-litert", "edgelstm"} <= set(report["installed_packages"])
    assert "coral-usb" in report["targets"]  # the profiles are installed with the package


def test_run_streams_a_csv_with_header_and_reports_bad_lines(cmapss_bundle, tmp_path):
    engine = load_cmapss(TEST_SET).sequences[0][:5]
    names = json.loads((cmapss_bundle / "manifest.json").read_text())["input"]["features"]
    lines = [",".join(["cycle"] + names[::-1])]  # an extra column (named to drop), features in another order: by name
    for t, row in enumerate(engine):
        lines.append(",".join([str(t)] + [repr(float(v)) for v in row[::-1]]))
    lines.insert(3, "1,2,oops")
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    result = run_cli("run", cmapss_bundle, "--input", tmp_path / "r.csv", "--on-bad-input", "skip", "--ignore-column", "cycle")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("rejected") is not None for r in records] == [False, False, True, False, False, False]
    assert records[2]["line"] == 4
    import edgelstm

    expected = edgelstm.load(cmapss_bundle).run(engine)
    assert np.allclose([r["y"][0] for r in records if "y" in r], expected[:, 0], atol=1e-4)
    assert "5 steps, 1 rejected" in result.stderr
    strict = run_cli("run", cmapss_bundle, "--input", tmp_path / "r.csv", "--ignore-column", "cycle", check=False)
    assert strict.returncode == 2 and "line 4" in strict.stderr and "Traceback" not in strict.stderr


def test_run_reads_stdin_and_keeps_state_in_a_file(cmapss_bundle, tmp_path):
    engine = load_cmapss(TEST_SET).sequences[1][:6]
    text = "\n".join(" ".join(repr(float(v)) for v in row) for row in engine) + "\n"
    state = tmp_path / "s.npz"
    first = subprocess.run([sys.executable, "-m", "edgelstm", "run", str(cmapss_bundle), "--state", str(state), "--format", "csv"],
                           input="\n".join(text.splitlines()[:3]) + "\n", capture_output=True, text=True, cwd=ROOT)
    second = subprocess.run([sys.executable, "-m", "edgelstm", "run", str(cmapss_bundle), "--state", str(state), "--format", "csv"],
                            input="\n".join(text.splitlines()[3:]) + "\n", capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    resumed = [float(line.split(",")[1]) for line in second.stdout.splitlines()[1:]]
    import edgelstm

    expected = edgelstm.load(cmapss_bundle).run(engine)[3:, 0]
    assert np.allclose(resumed, expected, atol=1e-4)


def test_profile_reports_every_backend_with_bare_invoke_rows(cmapss_bundle, tmp_path):
    result = run_cli("profile", cmapss_bundle, "--backend", "all", "--steps", "300", "--warmup", "50",
                     "--json", tmp_path / "p.json", "--plot", tmp_path / "p.png")
    assert "bare invoke" in result.stdout and "step() / bare call" in result.stdout
    data = json.loads((tmp_path / "p.json").read_text())
    labels = {row["label"] for row in data["rows"]}
    assert {"litert int8 step()", "litert int8 bare invoke", "onnxruntime int8 step()", "numpy float32 step()"} <= labels
    for row in data["rows"]:
        assert row["min_us"] <= row["p50_us"] <= row["p99_us"] <= row["max_us"]
        assert row["steps_per_s"] > 0 and row["model_bytes"] > 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    streams = json.loads(run_cli("profile", cmapss_bundle, "--streams", "8", "--steps", "200", "--json", tmp_path / "s.json").stdout and (tmp_path / "s.json").read_text())
    assert streams["streams"] == 8 and streams["rows"][0]["per_stream_us"] < streams["rows"][0]["mean_us"]


def test_shortened_demo_end_to_end(tmp_path):
    """The README's first command, shortened to one engine: convert, score, pty bridge, plots."""
    result = run_cli("demo", "--out", tmp_path / "demo", "--engines", "1", "--every", "50", "--quiet")
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    scores = summary["scores"]
    float_rmse = scores["float32 (numpy reference)"]["rmse"]
    for name in ("int8 TFLite, full integer", "int8 TFLite, dynamic range", "int8 ONNX (onnxruntime)"):
        assert abs(scores[name]["rmse"] - float_rmse) < 0.5, (name, scores)
        assert scores[name]["engines"] == 100
    engine = summary["streamed"][0]
    assert engine["cycles"] > 100 and abs(engine["predicted_rul"] - engine["true_rul"]) < 30
    assert [a[0] for a in engine["alarms"]][:1] == ["alarm"]  # it comes within 30 cycles of failure
    bridge = summary["streamed"][-1]["bridge"]
    assert bridge["frames_good"] == engine["cycles"] == bridge["readings_stepped"]
    assert "ALARM y0<30" in result.stdout and "PHM08" in result.stdout
    manifest = json.loads((tmp_path / "demo" / "bundle" / "manifest.json").read_text())
    assert manifest["default_model"] == "step_dynamic.tflite"  # full int8 is not within 1 % on this model
    assert summary["latency"]["model"] == manifest["default_model"]
    for plot in ("rul_engine.png", "latency.png"):
        assert (tmp_path / "demo" / plot).stat().st_size > 10_000


def test_tflite_runtime_backend_gives_the_same_int8_output(cmapss_bundle):
    """tflite-runtime 2.14 (numpy<2 only) in its own venv, against LiteRT here: bit-identical output."""
    import edgelstm

    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_minimal_check.py"), str(cmapss_bundle), "--tflite-runtime"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "tflite_runtime" and report["heavy_modules"] == []
    assert "tflite-runtime" in report["installed_packages"] and "ai-edge-litert" not in report["installed_packages"]
    runtime = edgelstm.load(cmapss_bundle)
    mean = np.asarray(runtime.bundle.manifest["input"]["calibration_stats"]["mean"], np.float32)
    assert report["y"] == [float(v) for v in runtime.step(mean)]
