"""Input drift, stuck sensors and int8 saturation on the device (C-MAPSS FD001 test engines)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import edgelstm
from edgelstm.convert.calibration_data import load_cmapss
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
            # repaired for good: no new drift or stuck event after the clear, and the stream is healthy again
            last_clear = max(e["t"] for e in events if e["event"] in ("drift_clear", "stuck_clear"))
            assert [e for e in events if e["t"] > last_clear and e["event"] in ("drift", "stuck")] == [], events
            assert runtime.health()["status"] == "ok", runtime.health()
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


def test_delays_hold_wherever_the_fault_falls_between_two_evaluations(cmapss_bundle, engines):
    """The means are evaluated every ``every`` readings, so a fault can start at any phase of that
    schedule: an offset is named within 30 readings at every phase, and a stuck sensor exactly
    when a whole window has not changed (``window - 1`` readings after the first frozen one)."""
    runtime = edgelstm.load(cmapss_bundle)
    names = runtime.feature_names
    std = runtime.bundle.manifest["input"]["reference"]["std"]
    window, every = runtime.monitor.t.window, runtime.monitor.t.every
    long_engines = sorted(engines, key=len)[-15:]
    delays = {"drift": [], "stuck": []}
    for onset in range(50, 50 + every):
        for engine in long_engines:
            for kind, sensor in (("drift", OFFSET_SENSOR), ("stuck", STUCK_SENSOR)):  # one fault at a time
                faulty = engine[:onset + 60].copy()
                if kind == "drift":
                    faulty[onset:, sensor] += 3 * std[sensor]
                else:
                    faulty[onset:, sensor] = faulty[onset, sensor]
                events = _stream(runtime, faulty)
                named = [e["t"] - onset for e in events
                         if e["event"] == kind and e["feature"] == names[sensor] and e["t"] >= onset]
                assert named, (onset, len(engine), kind, events)
                delays[kind].append(named[0])
                assert [e for e in events if e["event"] in ("drift", "stuck") and e["feature"] != names[sensor]] == []
    assert max(delays["drift"]) <= 30
    assert max(delays["stuck"]) <= window - 1
    print(f"{every} onsets x {len(long_engines)} engines: drift delay max {max(delays['drift'])} "
          f"(median {int(np.median(delays['drift']))}), stuck delay max {max(delays['stuck'])}")


def test_stuck_float64_readings_are_named_too(cmapss_bundle, engines):
    """float64 readings that float32 cannot hold exactly: the stuck pre-check's tolerance covers them."""
    runtime = edgelstm.load(cmapss_bundle)
    faulty = engines[40][:100].astype(np.float64) + 1e-9
    faulty[43:, STUCK_SENSOR] = faulty[43, STUCK_SENSOR] + np.pi * 1e-7
    events = _stream(runtime, faulty)
    stuck = [e["t"] for e in events if e["event"] == "stuck"]
    assert stuck and stuck[0] == 43 + runtime.monitor.t.window - 1, events


def test_evaluation_cadence_on_clean_readings(cmapss_bundle, engines):
    """Nothing but a row copy per step: the means every ``every`` readings (from the first full
    window on), the input range and int8 state once per window."""
    runtime = edgelstm.load(cmapss_bundle)
    t = runtime.monitor.t
    engine = max(engines, key=len)
    runtime.run(engine)
    first = t.every * -(-t.window // t.every)  # the first multiple of every with a full window
    regular = len(range(first, len(engine) + 1, t.every))
    windows = len([k for k in range(t.window, len(engine) + 1, t.window) if k % t.every])
    assert runtime.health()["evaluations"] == regular + windows


def test_a_flag_up_does_not_keep_the_monitor_on_its_full_look(cmapss_bundle, engines, monkeypatch):
    """A stuck sensor or a drifting one used to send every evaluation to the full look (+94 % and
    +133 % of ``step()``); the full look is now skipped when it would change no flag. The drift
    and stuck events are exactly those of a monitor that always looks in full, and the full
    looks are counted: fewer than one in 200 readings on a stuck sensor, one in 40 on a drifting one."""
    from edgelstm.runtime.monitor import DriftMonitor

    std = np.asarray(edgelstm.load(cmapss_bundle).bundle.manifest["input"]["reference"]["std"])
    readings = np.concatenate(engines[:40]).astype(np.float32)
    stuck = np.repeat(readings[:1], 3000, axis=0)
    drifting = readings[:3000].copy()
    drifting[:, OFFSET_SENSOR] += (np.arange(3000) % 1000) * (3 * std[OFFSET_SENSOR] / 100)  # away, back, away ...

    def run(data, always_full: bool):
        if always_full:
            monkeypatch.setattr(DriftMonitor, "_accepts", lambda self, *args: False)
        else:
            monkeypatch.undo()
        runtime = edgelstm.load(cmapss_bundle)
        looks = []
        examine = runtime.monitor._examine
        runtime.monitor._examine = lambda *a: (looks.append(1), examine(*a))[1]
        events = []
        for t, reading in enumerate(data):
            runtime.step(reading)
            events += [(t, e["event"], e.get("feature")) for e in runtime.events() if e["event"] != "saturation"
                       and e["event"] != "saturation_clear"]  # int8 state saturation is sampled once per window
        return events, len(looks)

    for data, most in ((stuck, 3000 / 200), (drifting, 3000 / 40)):
        full_events, full_looks = run(data, always_full=True)
        events, looks = run(data, always_full=False)
        assert events == full_events and any(kind in ("stuck", "drift") for _, kind, _ in events)
        assert looks < most < full_looks, (looks, full_looks)
