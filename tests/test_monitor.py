"""Input drift, stuck sensors and int8 saturation on the device (C-MAPSS FD001 test engines)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import edgelstm
from edgelstm.calibration import load_cmapss
from firmware_bridge.bridge import Bridge
from firmware_bridge.protocol import encode_frame
from firmware_bridge.sinks import PrometheusSink

from .conftest import TEST_SET

OFFSET_SENSOR, STUCK_SENSOR = 3, 7  # s7 (HPC outlet pressure) and s12 (fuel flow ratio)


@pytest.fixture(scope="module")
def engines():
    return load_cmapss(TEST_SET).sequences


def _stream(runtime, engine):
    events = []
    runtime.reset()
    for t, reading in enumerate(engine):
        runtime.step(reading)
        events += [dict(e, t=t) for e in runtime.events()]
    return events


def test_clean_test_engines_raise_no_drift_or_stuck_event(cmapss_bundle, engines):
    runtime = edgelstm.load(cmapss_bundle)
    events = [e for engine in engines for e in _stream(runtime, engine)]
    assert [e for e in events if e["event"] in ("drift", "stuck")] == []
    assert len([e for e in events if e["event"] == "saturation"]) <= 2  # int8 state at its limit in a few long engines


def test_offset_and_stuck_sensors_are_named_within_30_readings_and_cleared(cmapss_bundle, engines):
    runtime = edgelstm.load(cmapss_bundle)
    names = runtime.feature_names
    std = runtime.bundle.manifest["input"]["reference"]["std"]
    long_engines = [e for e in engines if len(e) >= 100]
    drift_delays, stuck_delays, cleared = [], [], 0
    for engine in long_engines:
        faulty = engine.copy()
        end = min(len(engine), 110)  # the fault lasts from cycle 50 to 110, then the sensors are repaired
        faulty[50:end, OFFSET_SENSOR] += 3 * std[OFFSET_SENSOR]
        faulty[50:end, STUCK_SENSOR] = faulty[50, STUCK_SENSOR]
        events = _stream(runtime, faulty)
        drift = [e["t"] - 50 for e in events if e["event"] == "drift" and e["feature"] == names[OFFSET_SENSOR] and e["t"] >= 50]
        stuck = [e["t"] - 50 for e in events if e["event"] == "stuck" and e["feature"] == names[STUCK_SENSOR] and e["t"] >= 50]
        assert drift and stuck, (len(engine), events)
        drift_delays.append(drift[0])
        stuck_delays.append(stuck[0])
        wrong = [e for e in events if e["event"] in ("drift", "stuck") and e["feature"] not in (names[OFFSET_SENSOR], names[STUCK_SENSOR])]
        assert wrong == []
        if len(engine) >= end + 60:
            clears = {e["event"] for e in events if e["t"] >= end}
            assert {"drift_clear", "stuck_clear"} <= clears, events
            cleared += 1
    assert max(drift_delays) <= 30 and max(stuck_delays) <= 30
    assert cleared >= 20
    print(f"{len(long_engines)} engines: drift delay max {max(drift_delays)}, stuck delay max {max(stuck_delays)}, cleared in {cleared}")


def test_health_reports_status_and_per_feature_statistics(cmapss_bundle, engines):
    runtime = edgelstm.load(cmapss_bundle)
    assert runtime.health()["status"] == "warming_up"
    engine = engines[30]
    runtime.run(engine[:80])
    health = runtime.health()
    assert health["status"] == "ok" and set(health["streams"][0]["features"]) == set(runtime.feature_names)
    assert health["thresholds"]["psi"] == 0.25 and health["thresholds"]["saturation"] == 0.01
    broken = engine[80:120].copy()
    broken[:, 0] += 50 * runtime.bundle.manifest["input"]["reference"]["std"][0]  # far outside the int8 input range
    runtime.run(broken)
    events = runtime.events()
    assert {"drift", "saturation"} <= {e["event"] for e in events}
    health = runtime.health()
    assert health["status"] in ("degraded", "failing")
    feature = health["streams"][0]["features"][runtime.feature_names[0]]
    assert feature["drifting"] and feature["saturated"] > 0.5


def test_healthz_and_drift_gauges_on_the_metrics_endpoint(cmapss_bundle, engines):
    runtime = edgelstm.load(cmapss_bundle)
    prometheus = PrometheusSink(port=0)
    bridge = Bridge("loop://", runtime, sinks=[prometheus], device="engine1", stale_after=0.5).start()
    assert bridge.wait(lambda: bridge._port is not None, 5)
    bridge._port.write(b"\x00" + b"".join(encode_frame(i, i, v) for i, v in enumerate(engines[40][:60])))
    assert bridge.wait(lambda: bridge.stats.readings_stepped == 60, 5)
    port = prometheus._server.server_address[1]
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    assert health["status"] == "ok" and health["frames"]["good"] == 60 and health["bundle_id"] == runtime.bundle.bundle_id
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'edgelstm_input_psi{device="engine1",feature="s2"}' in metrics
    assert 'edgelstm_input_drift{device="engine1",feature="s2"} 0.0' in metrics
    bridge.wait(lambda: False, 0.7)  # no reading for longer than stale_after
    with pytest.raises(urllib.error.HTTPError) as failing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert failing.value.code == 503 and json.loads(failing.value.read())["status"] == "failing"
    bridge.stop()
