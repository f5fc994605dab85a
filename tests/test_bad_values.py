"""Values a model cannot have seen are refused before they reach it; a broken float state is reset.

One huge finite reading (1e30 passes a finiteness check) used to turn a float32 model's state
into NaN for ever. Now a value more than ``max_deviation`` (default 1000) calibration standard
deviations from the calibration mean is a bad reading under the ``on_bad_input`` policy, on
every backend; and a stream whose float state turns non-finite anyway is reset, with an event,
a counter and a ``degraded`` health status, instead of emitting NaN for ever.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgelstm
from edgelstm.errors import InputError


def _mean(runtime) -> np.ndarray:
    return np.asarray(runtime.bundle.manifest["input"]["calibration_stats"]["mean"], np.float32)


def _std(runtime) -> np.ndarray:
    return np.asarray(runtime.bundle.manifest["input"]["calibration_stats"]["std"], np.float32)


@pytest.mark.parametrize("model, backend", [("float32", "litert"), ("step_int8_stream.tflite", "litert"),
                                            ("float32", "onnxruntime"), ("float32", "numpy")])
@pytest.mark.parametrize("huge", [1e30, 3e38, -1e30])
def test_a_huge_finite_reading_is_rejected_and_the_state_untouched(cmapss_bundle, model, backend, huge):
    runtime = edgelstm.load(cmapss_bundle, model=model, backend=backend)
    reading = _mean(runtime)
    runtime.step(reading)
    before = runtime.get_state()
    bad = reading.copy()
    bad[3] = huge
    with pytest.raises(InputError, match=r"feature 's7'.*standard deviations.*max_deviation=1000"):
        runtime.step(bad)
    after = runtime.get_state()
    assert all(np.array_equal(before["raw"][k], after["raw"][k]) for k in before["raw"])
    assert np.all(np.isfinite(runtime.step(reading)))


def test_skip_and_hold_apply_to_far_values(cmapss_bundle):
    reference = edgelstm.load(cmapss_bundle, model="float32")
    mean = _mean(reference)
    expected = [np.array(reference.step(mean + k * _std(reference))) for k in (0.0, 0.5)]
    bad = mean.copy()
    bad[0] = 1e30
    skipping = edgelstm.load(cmapss_bundle, model="float32", on_bad_input="skip")
    got = [np.array(skipping.step(mean)), np.array(skipping.step(bad)), np.array(skipping.step(mean + 0.5 * _std(skipping)))]
    assert np.all(np.isnan(got[1])) and np.allclose(got[0], expected[0]) and np.allclose(got[2], expected[1])
    assert skipping.counters["rejected"] == 1
    holding = edgelstm.load(cmapss_bundle, model="float32", on_bad_input="hold")
    holding.step(mean)
    held = np.array(holding.step(bad))  # the far value is replaced by the stream's last good one
    assert np.all(np.isfinite(held)) and holding.counters["held"] == 1


def test_one_far_stream_does_not_stop_the_others(cmapss_bundle):
    runtime = edgelstm.load(cmapss_bundle, model="step_int8_stream.tflite", streams=3, on_bad_input="skip")
    readings = np.tile(_mean(runtime), (3, 1))
    readings[1, 5] = 1e30
    y = runtime.step(readings)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()
    assert runtime.steps.tolist() == [1, 0, 1]


def test_plausible_readings_are_never_refused(cmapss_bundle):
    runtime = edgelstm.load(cmapss_bundle, model="step_int8_stream.tflite")
    mean, std = _mean(runtime), _std(runtime)
    for k in (-50.0, 50.0, 900.0, -900.0):  # far outside anything real, still within 1000 std
        assert np.all(np.isfinite(runtime.step(mean + k * std)))
    assert runtime.counters["rejected"] == 0


def test_the_bound_can_be_widened_or_turned_off(cmapss_bundle):
    runtime = edgelstm.load(cmapss_bundle, model="step_int8_stream.tflite", max_deviation=None)
    reading = _mean(runtime)
    reading[0] = 1e30
    runtime.step(reading)  # int8 input clips it: accepted, as before the bound existed
    assert runtime.counters["rejected"] == 0


def test_a_non_finite_float_state_is_reset_and_reported(cmapss_bundle):
    runtime = edgelstm.load(cmapss_bundle, model="float32", max_deviation=None)
    fresh = edgelstm.load(cmapss_bundle, model="float32")
    reading = _mean(runtime)
    runtime.step(reading)
    runtime._stepper.state[0][...] = np.nan  # as one value beyond float32's range leaves a state
    assert np.all(np.isnan(runtime.step(reading)))  # the poisoned step itself; then a fresh start
    events = [e for e in runtime.events() if e["event"] == "state_reset"]
    assert len(events) == 1 and events[0]["stream"] == 0
    assert runtime.counters["state_resets"] == 1
    assert runtime.health()["status"] == "degraded" and runtime.health()["state_reset_streams"] == [0]
    assert np.allclose(runtime.step(reading), fresh.step(reading))  # started again from a zero state


def test_an_infinite_cell_state_behind_a_saturated_tanh_is_found_too(cmapss_bundle):
    from edgelstm.runtime.stream import STATE_CHECK_EVERY

    runtime = edgelstm.load(cmapss_bundle, model="float32")
    reading = _mean(runtime)
    runtime.step(reading)
    runtime._stepper.state[1][...] = np.inf  # c = inf: h = o * tanh(inf) stays finite
    for _ in range(STATE_CHECK_EVERY):
        runtime.step(reading)
    assert [e["event"] for e in runtime.events()].count("state_reset") == 1
    assert all(np.isfinite(a).all() for a in runtime._stepper.state)
