"""The streaming runtime on real interpreters: stepping, state, streams, bad input, window mode."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import edgelstm
from edgelstm.convert.calibration_data import load_cmapss
from edgelstm.errors import BackendUnavailableError, BundleError, InputError
from edgelstm.model.network_file import load_network_file
from edgelstm.runtime.normalization import Normalization
from edgelstm.model.reference import Reference
from edgelstm.runtime.steppers import TFLiteStepper

from .conftest import ROOT, TEST_SET, run_cli


@pytest.fixture(scope="module")
def engines():
    return load_cmapss(TEST_SET).sequences


def _reference(bundle_path):
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    network = load_network_file(bundle_path / "network.npz", manifest["network"])
    normalization = Normalization.from_json(manifest["input"]["normalization"], network.n_features)
    return Reference(network), normalization


def test_auto_picks_litert_and_the_stream_int8_model(cmapss_bundle):
    rt = edgelstm.load(cmapss_bundle)
    assert rt.backend == "litert" and rt.model_file == "step_int8_stream.tflite"
    assert rt.describe()["engine_version"]


def test_stream_model_equals_the_integer_io_model_bit_for_bit(cmapss_bundle, engines):
    rt = edgelstm.load(cmapss_bundle)
    manifest = rt.bundle.manifest
    entry = next(m for m in manifest["models"] if m["file"] == "step_int8.tflite")
    assert entry["output_copies"] == 4  # the Dense head's offset copies, averaged by the runtime
    canonical = TFLiteStepper(cmapss_bundle / "step_int8.tflite", output_copies=entry["output_copies"])
    canonical.set_normalization(manifest["input"]["normalization"]["offset"], manifest["input"]["normalization"]["scale"])
    for engine in engines[:3]:
        rt.reset()
        canonical.reset()
        ours = rt.run(engine)
        theirs = np.array([canonical.step(engine[t : t + 1])[0].copy() for t in range(len(engine))])
        assert np.array_equal(ours, theirs)


def test_numpy_backend_is_the_reference(cmapss_bundle, engines):
    reference, normalization = _reference(cmapss_bundle)
    rt = edgelstm.load(cmapss_bundle, backend="numpy")
    expected = reference.run(normalization.apply(engines[0]))[0]
    assert np.max(np.abs(rt.run(engines[0]) - expected)) < 1e-4  # raw -> normalised in float32


def test_every_backend_streams_close_to_the_reference(cmapss_bundle, engines):
    reference, normalization = _reference(cmapss_bundle)
    engine = engines[5]
    expected = reference.run(normalization.apply(engine))[0]
    spread = float(np.std(expected)) or 1.0
    for backend, model, tolerance in (
        ("litert", "float32", 1e-4), ("litert", "int8", 0.5), ("onnxruntime", "float32", 1e-4),
        ("onnxruntime", "int8", 0.5), ("tensorflow", "int8", 0.5),
    ):
        rt = edgelstm.load(cmapss_bundle, backend=backend, model=model)
        error = np.sqrt(np.mean((rt.run(engine) - expected) ** 2)) / spread
        assert error < tolerance, (backend, model, error)


def test_reset_and_snapshot_restore_are_bit_exact(cmapss_bundle, engines):
    rt = edgelstm.load(cmapss_bundle)
    engine = engines[10]
    first = rt.run(engine)
    rt.reset()
    assert np.array_equal(rt.run(engine), first)
    rt.reset()
    rt.run(engine[:50])
    snapshot = rt.get_state()
    assert snapshot["raw"]["h_0"].dtype == np.int8 and snapshot["state"]["h_0"].shape == (1, 64)
    tail = rt.run(engine[50:])
    rt.run(engine[:7])  # wander off
    rt.set_state(snapshot)
    assert np.array_equal(rt.run(engine[50:]), tail)
    assert np.array_equal(tail, first[50:])


def test_state_moves_between_backends_through_float_state(cmapss_bundle, engines):
    int8 = edgelstm.load(cmapss_bundle)
    reference = edgelstm.load(cmapss_bundle, backend="numpy")
    engine = engines[3]
    reference.run(engine[:40])
    int8.set_state(reference.get_state())  # float state, requantized into the int8 model
    expected = reference.run(engine[40:])
    assert np.sqrt(np.mean((int8.run(engine[40:]) - expected) ** 2)) < 3.0  # cycles


def test_save_and_load_state_atomically(cmapss_bundle, engines, tmp_path):
    rt = edgelstm.load(cmapss_bundle)
    rt.run(engines[0][:20])
    path = tmp_path / "state" / "pump7.npz"
    rt.save_state(path)
    assert [p.name for p in path.parent.iterdir()] == ["pump7.npz"]  # no temporary file left
    expected = rt.run(engines[0][20:])
    fresh = edgelstm.load(cmapss_bundle)
    fresh.load_state(path)
    assert np.array_equal(fresh.run(engines[0][20:]), expected)
    assert int(fresh.steps[0]) == len(engines[0])
    with np.load(path, allow_pickle=False) as data:  # plain arrays, no pickle
        assert "meta" in data.files
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match="unreadable state file"):
        fresh.load_state(path)


def test_many_streams_in_one_call_equal_each_stream_alone(cmapss_bundle, engines):
    chosen = [engines[i][:30] for i in (0, 1, 2, 3)]
    rt = edgelstm.load(cmapss_bundle, streams=4)
    together = rt.run(np.stack(chosen, axis=1))
    assert together.shape == (30, 4, 1)
    single = edgelstm.load(cmapss_bundle)
    for i, engine in enumerate(chosen):
        single.reset()
        assert np.array_equal(single.run(engine), together[:, i])
    rt.reset(stream=2)
    assert int(rt.steps[2]) == 0 and int(rt.steps[1]) == 30


def test_bad_readings_raise_and_change_no_state(cmapss_bundle, engines):
    rt = edgelstm.load(cmapss_bundle)
    rt.run(engines[0][:10])
    before = rt.get_state()
    reading = engines[0][10].copy()
    with pytest.raises(InputError, match="13 features, the model expects 14"):
        rt.step(reading[:13])
    with pytest.raises(InputError, match="dtype <U"):
        rt.step(np.array(["a"] * 14))
    reading[3] = np.nan
    with pytest.raises(InputError, match="feature 's7' \\(index 3\\) is nan"):
        rt.step(reading)
    reading[3] = np.inf
    with pytest.raises(InputError, match="is inf"):
        rt.step(reading)
    after = rt.get_state()
    for name in before["raw"]:
        assert np.array_equal(before["raw"][name], after["raw"][name])
    assert int(rt.steps[0]) == 10


def test_skip_and_hold_policies(cmapss_bundle, engines):
    engine = engines[0]
    clean = edgelstm.load(cmapss_bundle).run(engine[:12])
    skipping = edgelstm.load(cmapss_bundle, on_bad_input="skip")
    skipping.run(engine[:10])
    bad = engine[10].copy()
    bad[0] = np.nan
    assert np.isnan(skipping.step(bad)).all()
    assert skipping.counters["rejected"] == 1
    assert np.array_equal(skipping.step(engine[10]), clean[10])  # as if the bad one never came
    holding = edgelstm.load(cmapss_bundle, on_bad_input="hold")
    holding.run(engine[:10])
    held = engine[10].copy()
    held[0] = np.nan
    expected_input = engine[10].copy()
    expected_input[0] = engine[9][0]
    reference = edgelstm.load(cmapss_bundle)
    reference.run(engine[:10])
    assert np.array_equal(holding.step(held), reference.step(expected_input))
    assert holding.counters["held"] == 1


def test_skip_one_stream_of_a_batch_keeps_that_streams_state(cmapss_bundle, engines):
    rt = edgelstm.load(cmapss_bundle, streams=2, on_bad_input="skip")
    batch = np.stack([engines[0][:5], engines[1][:5]], axis=1)
    rt.run(batch[:4])
    before = rt.get_state(stream=1)
    readings = batch[4].copy()
    readings[1, 2] = np.nan
    y = rt.step(readings)
    assert np.isnan(y[1]).all() and np.isfinite(y[0]).all()
    after = rt.get_state(stream=1)
    for name in before["raw"]:
        assert np.array_equal(before["raw"][name], after["raw"][name])
    assert list(rt.steps) == [5, 4]


def test_window_mode_equals_the_float_model_on_each_window(cmapss_bundle, engines):
    reference, normalization = _reference(cmapss_bundle)
    window = 8
    rt = edgelstm.load(cmapss_bundle, backend="numpy", window=window)
    engine = engines[2][:20]
    out = rt.run(engine)
    assert np.isnan(out[: window - 1]).all()
    for t in range(window - 1, len(engine)):
        expected = reference.run(normalization.apply(engine[t - window + 1 : t + 1]))[0][-1]
        assert np.allclose(out[t], expected, atol=1e-4)
    int8 = edgelstm.load(cmapss_bundle, window=window).run(engine)
    assert np.nanmax(np.abs(int8 - out)) < 10.0


def test_coral_delegate_missing_gives_a_clear_error(cmapss_bundle):
    """No Edge TPU and no libedgetpu here: the path that reports it is what is tested."""
    with pytest.raises(BackendUnavailableError, match="libedgetpu.so.1 cannot be loaded.*apt-get install libedgetpu1-std"):
        edgelstm.load(cmapss_bundle, delegate="libedgetpu.so.1")


def test_coral_target_bundle_asks_for_the_delegate(keras, tmp_path, rng):
    L = keras.layers
    keras.Sequential([keras.Input((None, 3)), L.LSTM(4), L.Dense(1)]).save(tmp_path / "m.keras")
    np.save(tmp_path / "c.npy", rng.normal(size=(6, 20, 3)).astype("float32"))
    run_cli("convert", tmp_path / "m.keras", "--calibration", tmp_path / "c.npy", "--out", tmp_path / "b",
            "--target", "coral-usb", "--long-steps", "200", "--quiet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["default_model"] == "step_int8.tflite"
    assert {m["format"] for m in manifest["models"]} == {"tflite"}
    with pytest.raises(BackendUnavailableError, match="Edge TPU delegate"):
        edgelstm.load(tmp_path / "b")
    assert edgelstm.load(tmp_path / "b", delegate=None).model_file == "step_int8_stream.tflite"  # CPU fallback


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_running_a_bundle_imports_no_tensorflow_keras_or_onnx(cmapss_bundle, backend):
    code = f"""
import sys, time, resource
start = time.perf_counter()
import edgelstm
rt = edgelstm.load({str(cmapss_bundle)!r}, backend={backend!r})
import numpy as np
rt.step(np.asarray(rt.bundle.manifest["input"]["calibration_stats"]["mean"], np.float32))
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'onnx'))
print(heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_manifest_cannot_name_an_arbitrary_delegate_library(cmapss_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(cmapss_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"]["delegate"] = "/tmp/evil.so"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="only libedgetpu"):
        edgelstm.load(copy)
    manifest["target"]["delegate"] = None
    manifest["models"][0]["file"] = "../outside.tflite"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="points outside the bundle"):
        edgelstm.load(copy)


def test_state_of_another_stream_count_is_refused_before_anything_changes(cmapss_bundle, engines):
    four = edgelstm.load(cmapss_bundle, streams=4)
    two = edgelstm.load(cmapss_bundle, streams=2)
    two.run(np.stack([engines[0][:5], engines[1][:5]], axis=1))
    before = two.get_state()
    with pytest.raises(BundleError, match="holds 4 stream"):
        two.set_state(four.get_state())
    after = two.get_state()
    assert all(np.array_equal(before["raw"][n], after["raw"][n]) for n in before["raw"])


def test_a_rejected_reading_leaves_no_trace_in_the_monitor(cmapss_bundle, engines):
    rt = edgelstm.load(cmapss_bundle, streams=2, on_bad_input="skip")
    bad = np.full(14, np.nan, np.float32)
    for t in range(60):
        rt.step(np.stack([engines[3][t], bad]))
    events = rt.events()
    assert [e for e in events if e.get("stream") == 1] == []


def test_a_failed_conversion_leaves_the_existing_bundle_untouched(cmapss_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(cmapss_bundle, copy)
    np.save(tmp_path / "c13.npy", np.zeros((4, 10, 13), np.float32))
    from .conftest import EXAMPLE_MODEL

    result = run_cli("convert", EXAMPLE_MODEL, "--calibration", tmp_path / "c13.npy", "--out", copy, check=False)
    assert result.returncode == 2
    from edgelstm.runtime.bundle import Bundle

    Bundle.open(copy)  # still complete and verified
    assert not (tmp_path / ".bundle.partial").exists()
