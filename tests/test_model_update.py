"""Model updates while the bridge runs: no reading lost, none stepped twice.

A new bundle is loaded beside the running one (hashes checked by the load) and the worker
switches between two readings; state carries over through the float state when the layouts
match, otherwise each stream restarts and says so; a bundle that does not load is refused with
an event and a count while the old one keeps running. Devices are simulators on real ptys at
1,000 readings/s each; the runtime is the real LiteRT interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

import edgelstm
from firmware_bridge.bridge import Bridge, Device
from firmware_bridge.simulator import Simulator, cmapss_units
from firmware_bridge.transport import PtyLink

from .conftest import ROOT, ListSink, free_port, wait_until


def _variant(source, target, bundle_id: str, default_model: str):
    """A copy of a bundle that is another bundle to the runtime: its own id, another default model."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["bundle_id"], manifest["default_model"] = bundle_id, default_model
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def bundles(cmapss_bundle, tmp_path_factory):
    base = tmp_path_factory.mktemp("updates")
    floating = _variant(cmapss_bundle, base / "float", "f10a7000000000aa", "step_float32.tflite")
    broken = _variant(cmapss_bundle, base / "broken", "b40ce0000000000b", "step_int8_stream.tflite")
    model = broken / "step_int8_stream.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit: the hash check must refuse it
    model.write_bytes(bytes(data))
    return {"int8": cmapss_bundle, "float": floating, "broken": broken}


@pytest.fixture(scope="module")
def other_layout(tmp_path_factory):
    """The same inputs and output, another network (LSTM 16): its state cannot carry over."""
    import keras

    from edgelstm.convert.pipeline import ConvertOptions, convert

    base = tmp_path_factory.mktemp("layout")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((None, 14)), keras.layers.LSTM(16, return_sequences=True), keras.layers.Dense(1)])
    model.save(base / "lstm16.keras")
    convert(ConvertOptions(model=base / "lstm16.keras", scaler=ROOT / "examples/cmapss_fd001_lstm.scaler.json",
                           calibration=ROOT / "calibration/cmapss-fd001.json", out=base / "bundle", formats=["tflite"],
                           quant=["int8"], attribution_sequences=0, progress=False))
    return base / "bundle"


@pytest.fixture(scope="module")
def engines():
    return cmapss_units()  # the 100 FD001 test engines: 13,096 readings


def test_ten_swaps_at_1khz_per_device_lose_no_reading_and_step_none_twice(bundles, engines):
    links = [PtyLink(), PtyLink()]
    sink = ListSink()
    readings = [np.concatenate(engines[:50])[:5000], np.concatenate(engines[50:])[:5000]]
    try:
        bridge = Bridge(runtime=edgelstm.load(bundles["int8"], streams=2),
                        devices=[Device("pump1", links[0].path), Device("pump2", links[1].path)],
                        sinks=[sink], backoff=(0.02, 0.2)).start()
        for link in links:
            assert link.wait_for_reader(10)
        simulators = [Simulator([r], rate=1000) for r in readings]
        plays = [threading.Thread(target=sim.play, args=(link.write,), daemon=True) for sim, link in zip(simulators, links)]
        for play in plays:
            play.start()
        swapped_at = []

        def stepped():
            return sum(bridge.link(n).stats.readings_stepped for n in ("pump1", "pump2"))

        for swap in range(10):  # every 800 readings (0.4 s at 2 x 1 kHz), alternately to float32 and back to int8
            mark = stepped()
            assert wait_until(lambda: stepped() >= mark + 800, 10)
            bridge.request_update(bundles["float" if swap % 2 == 0 else "int8"]).join(30)
            assert wait_until(lambda: bridge.updates["applied"] == swap + 1, 10), bridge.updates
            swapped_at.append(stepped())
        for play in plays:
            play.join(60)
        assert wait_until(lambda: all(bridge.link(n).ledger["outcomes"]["in_flight"] == 0 and bridge.link(n).ledger["total"] == 5000
                                 for n in ("pump1", "pump2")), 20), [bridge.link(n).ledger for n in ("pump1", "pump2")]
        bridge.stop()
    finally:
        for link in links:
            link.unplug()
    assert bridge.updates["applied"] == 10 and bridge.updates["state_carried"] == 10 and bridge.updates["refused"] == 0
    assert all(sim.truth.sent == 5000 for sim in simulators)
    assert swapped_at[-1] < 2 * 5000, "the swaps did not happen while the devices streamed"
    for name in ("pump1", "pump2"):
        seqs = [e["seq"] for e in sink.events if e["event"] == "prediction" and e["device"] == name]
        assert sorted(seqs) == seqs == list(range(5000)), name  # each reading once, in order: none lost, none twice
        assert bridge.link(name).ledger["outcomes"]["stepped"] == 5000
    assert bridge.runtime.steps.tolist() == [5000, 5000]  # the step counts carried across ten models
    assert bridge.runtime.bundle.bundle_id == edgelstm.load(bundles["int8"]).bundle.bundle_id
    updates = [e for e in sink.events if e["event"] == "model_update"]
    assert len(updates) == 10 and {e["state"] for e in updates} == {"carried"}
    assert updates[0]["model"] == "step_float32.tflite" and updates[1]["model"] == "step_int8_stream.tflite"


def test_the_carried_state_continues_the_stream(bundles, engines):
    """After a swap to the float32 model the next outputs are the float32 model's outputs for the
    whole history (within int8's error), not those of a stream started afresh."""
    history, future = engines[2][:100], engines[2][100:110]
    running = edgelstm.load(bundles["int8"])
    for x in history:
        running.step(x)
    new = edgelstm.load(bundles["float"])
    new.carry_state_from(running)
    carried = np.array([np.array(new.step(x)) for x in future])
    reference = edgelstm.load(bundles["float"])
    whole = np.array([np.array(reference.step(x)) for x in np.concatenate([history, future])])[-10:]
    fresh = edgelstm.load(bundles["float"])
    afresh = np.array([np.array(fresh.step(x)) for x in future])
    assert np.abs(carried - whole).max() < 0.25 * np.abs(afresh - whole).max()
    assert int(new.steps[0]) == 110


def test_a_bundle_that_fails_its_hash_is_refused_and_the_running_model_goes_on(bundles, engines):
    link = PtyLink()
    sink = ListSink()
    try:
        bridge = Bridge(link.path, edgelstm.load(bundles["int8"]), sinks=[sink], backoff=(0.02, 0.2)).start()
        assert link.wait_for_reader(10)
        before = bridge.runtime.bundle.bundle_id
        bridge.request_update(bundles["broken"]).join(30)
        Simulator([engines[0]], rate=1000).play(link.write)
        assert wait_until(lambda: bridge.ledger["outcomes"]["stepped"] == len(engines[0]), 10)
        health = bridge.health()
        bridge.stop()
    finally:
        link.unplug()
    assert bridge.updates["refused"] == 1 and bridge.updates["applied"] == 0
    assert bridge.runtime.bundle.bundle_id == before
    refused = [e for e in sink.events if e["event"] == "model_update_refused"]
    assert len(refused) == 1 and "step_int8_stream.tflite was changed or damaged" in refused[0]["reason"]
    assert health["model_updates"]["refused"] == 1 and health["model_updates"]["last"]["outcome"] == "refused"


def test_another_state_layout_restarts_every_stream_and_says_so(bundles, other_layout, engines):
    links = [PtyLink(), PtyLink()]
    sink = ListSink()
    try:
        bridge = Bridge(runtime=edgelstm.load(bundles["int8"], streams=2),
                        devices=[Device("a", links[0].path), Device("b", links[1].path)], sinks=[sink],
                        backoff=(0.02, 0.2)).start()
        for link in links:
            assert link.wait_for_reader(10)
        Simulator([engines[0]], rate=1000).play(links[0].write)
        assert wait_until(lambda: bridge.link("a").stats.readings_stepped == len(engines[0]), 10)
        bridge.request_update(other_layout).join(60)
        assert wait_until(lambda: bridge.updates["applied"] == 1, 10)
        Simulator([engines[1]], rate=1000).play(links[1].write)
        assert wait_until(lambda: bridge.link("b").stats.readings_stepped == len(engines[1]), 10)
        bridge.stop()
    finally:
        for link in links:
            link.unplug()
    assert bridge.updates["state_restarted"] == 1
    update = next(e for e in sink.events if e["event"] == "model_update")
    assert update["state"] == "restarted" and "state layouts differ" in update["reason"]
    assert sorted(e["device"] for e in sink.events if e["event"] == "stream_restarted") == ["a", "b"]
    assert bridge.runtime.steps.tolist() == [0, len(engines[1])]  # a restarted from zero; b stepped on the new model


def test_the_cli_loads_a_bundle_placed_at_its_path_and_reloads_on_sighup(bundles, tmp_path, engines):
    current = tmp_path / "current"
    current.symlink_to(bundles["int8"])
    link = PtyLink()
    metrics = free_port()
    bridge = subprocess.Popen([sys.executable, "-m", "edgelstm", "bridge", "--port", link.path, "--bundle", str(current),
                               "--sink", f"csv:{tmp_path / 'out.csv'}", "--sink", f"prometheus:{metrics}",
                               "--watch-bundle", "0.2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def health():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as failing:  # 503 until the first reading
            return json.load(failing)

    def stepped(count):
        return wait_until(lambda: health()["readings"]["outcomes"]["stepped"] >= count, 30)

    try:
        assert link.wait_for_reader(60)
        Simulator([engines[0]], rate=500).play(link.write)
        assert stepped(len(engines[0]))
        swap = tmp_path / "next"
        swap.symlink_to(bundles["float"])
        os.replace(swap, current)  # a new bundle placed at the path, atomically; the watcher notices it
        assert wait_until(lambda: health()["model_updates"]["applied"] == 1, 30)
        Simulator([engines[1]], rate=500).play(link.write)
        assert stepped(len(engines[0]) + len(engines[1]))
        bridge.send_signal(signal.SIGHUP)  # systemctl reload: the same path loaded again
        assert wait_until(lambda: health()["model_updates"]["applied"] == 2, 30), health()["model_updates"]
        Simulator([engines[2]], rate=500).play(link.write)
        assert stepped(sum(len(e) for e in engines[:3]))
    finally:
        bridge.send_signal(signal.SIGTERM)
        _, stderr = bridge.communicate(timeout=60)
        link.unplug()
    assert bridge.returncode == 0, stderr
    updated = [line for line in stderr.splitlines() if "model updated from" in line]
    assert len(updated) == 2 and all("step_float32.tflite" in line and "state carried" in line for line in updated), stderr
    total = sum(len(e) for e in engines[:3])
    assert f"readings {total}: stepped {total}" in stderr
    assert len((tmp_path / "out.csv").read_text().splitlines()) == total + 1


def test_a_reload_signal_another_thread_receives_is_handled_while_the_bridge_waits():
    """The kernel may deliver SIGHUP to any of the bridge's threads; Python runs the handler in the
    main thread only when that thread next runs bytecode. The bridge's main thread waits in short
    ticks (``wait_for_signals``), so the reload happens then, not at exit."""
    from firmware_bridge.cli import wait_for_signals

    done, ready, handled = threading.Event(), threading.Event(), []

    def other_thread():  # the only thread that takes SIGUSR1
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
        ready.set()
        done.wait(10)

    previous = signal.signal(signal.SIGUSR1, lambda *_: (handled.append(True), done.set()))
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    thread = threading.Thread(target=other_thread, daemon=True)
    thread.start()
    try:
        assert ready.wait(5)
        os.kill(os.getpid(), signal.SIGUSR1)
        # True: the handler set `done` during the wait (one long Event.wait(8) returns False at its
        # timeout instead, the handler running only after it)
        assert wait_for_signals(done, 8) and handled
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
        signal.signal(signal.SIGUSR1, previous)
        done.set()
        thread.join(5)
