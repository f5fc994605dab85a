"""Stepping a subset of streams: the gateway's call. One Invoke for all rows; the streams not
named keep their state, window and step count exactly; each named stream's outputs equal
those of a runtime of its own fed the same readings."""

from __future__ import annotations

import numpy as np
import pytest

import edgelstm
from edgelstm.errors import InputError
from edgelstm.recipes.cmapss import load as load_cmapss


@pytest.fixture(scope="module")
def engines():
    return load_cmapss()["test"].sequences[:4]


@pytest.mark.parametrize("model", ["int8", "float32"])
def test_each_stream_stepped_alone_equals_its_own_runtime(cmapss_bundle, engines, model):
    gateway = edgelstm.load(cmapss_bundle, model=model, streams=4, on_bad_input="skip")
    alone = [edgelstm.load(cmapss_bundle, model=model) for _ in range(4)]
    rng = np.random.default_rng(3)
    position = [0, 0, 0, 0]
    for _ in range(120):  # readings arrive independently: a random subset each call
        ready = [k for k in range(4) if rng.random() < 0.5 and position[k] < len(engines[k])]
        if not ready:
            continue
        readings = np.stack([engines[k][position[k]] for k in ready])
        got = gateway.step_streams(readings, ready)
        for row, k in enumerate(ready):
            expected = alone[k].step(engines[k][position[k]])
            assert np.array_equal(got[row], expected), (model, k, position[k])
            position[k] += 1
    assert gateway.steps.tolist() == position  # the idle calls did not count as steps
    assert gateway.counters["rejected"] == 0


def test_idle_streams_state_is_untouched_and_bad_readings_follow_the_policy(cmapss_bundle, engines):
    runtime = edgelstm.load(cmapss_bundle, model="int8", streams=3, on_bad_input="skip")
    runtime.step_streams(np.stack([engines[0][0], engines[1][0], engines[2][0]]), [0, 1, 2])
    before = runtime.get_state()["raw"]
    bad = engines[1][1].copy()
    bad[0] = 1e30
    runtime.step_streams(np.stack([engines[0][1], bad]), [0, 1])  # stream 1's reading is rejected, 2 is idle
    after = runtime.get_state()["raw"]
    for name in before:
        assert np.array_equal(before[name][1:], after[name][1:]), name  # streams 1 and 2 unchanged
    assert runtime.counters["rejected"] == 1 and runtime.steps.tolist() == [2, 1, 1]
    strict = edgelstm.load(cmapss_bundle, model="int8", streams=3)
    with pytest.raises(InputError, match="stream 1"):
        strict.step_streams(np.stack([engines[0][1], bad]), [0, 1])
    with pytest.raises(ValueError, match="each at most once"):
        strict.step_streams(np.stack([engines[0][1], engines[0][1]]), [0, 0])
    with pytest.raises(InputError, match="expected \\(2, 14\\)"):
        strict.step_streams(np.ones((3, 14)), [0, 1])
