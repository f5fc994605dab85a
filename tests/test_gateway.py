"""The gateway: several devices behind one bridge, one runtime with a stream per device.

Devices are simulators (C-MAPSS FD001 test engines as frames) writing into real pseudo-terminals;
the bridge reads them with pyserial and steps the real int8 LiteRT runtime with ``step_streams``.
Each device's predictions equal those of a runtime of its own fed the same readings; every
reading of each device ends in a counted outcome of that device; one device unplugged and
replugged never stalls the others; a device that stops sending is not a stuck sensor.
"""

from __future__ import annotations

import json
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
from firmware_bridge.config import load_config
from firmware_bridge.simulator import Faults, Simulator, cmapss_units
from firmware_bridge.transport import PtyLink

from .conftest import ROOT, ListSink, free_port, wait_until


@pytest.fixture(scope="module")
def engines():
    return cmapss_units([1, 2, 3, 4, 5, 6])  # FD001 test engines: 31, 49, 126, 106, 98, 105 readings


def _all_accounted(bridge, truths) -> bool:
    """Every reading each device sent has an outcome, nothing in flight."""
    return all(link.ledger["total"] == truth.readings and link.ledger["outcomes"]["in_flight"] == 0
               for link, truth in zip(bridge.links, truths))


def _play_all(links, simulators, **play):
    threads = [threading.Thread(target=sim.play, args=(link.write,), kwargs=play.get(k, {}), daemon=True)
               for k, (link, sim) in enumerate(zip(links, simulators))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [sim.truth for sim in simulators]


def test_each_device_gets_the_predictions_of_a_runtime_of_its_own(cmapss_bundle, engines):
    links = [PtyLink() for _ in range(3)]
    sink = ListSink()
    try:
        runtime = edgelstm.load(cmapss_bundle, streams=3)
        bridge = Bridge(runtime=runtime, devices=[Device(f"pump{k}", link.path) for k, link in enumerate(links)],
                        sinks=[sink], backoff=(0.02, 0.2)).start()
        for link in links:
            assert link.wait_for_reader(10)
        # different lengths and rates: the devices' readings interleave differently in every batch
        sequences = [engines[0], engines[1], engines[2]]
        truths = _play_all(links, [Simulator([s], rate=rate) for s, rate in zip(sequences, (150, 400, 1000))])
        assert bridge.wait(lambda: _all_accounted(bridge, truths), 20)
        bridge.stop()
    finally:
        for link in links:
            link.unplug()
    for k, sequence in enumerate(sequences):
        got = np.array([e["y"] for e in sink.events if e["event"] == "prediction" and e["device"] == f"pump{k}"])
        alone = edgelstm.load(cmapss_bundle)
        expected = np.array([np.array(alone.step(x)) for x in sequence])
        assert got.shape == expected.shape and np.array_equal(got, expected), k
        assert bridge.link(f"pump{k}").ledger["outcomes"]["stepped"] == len(sequence)
    # pump0 finished first and sat idle while the others streamed: that is not a stuck sensor
    assert not [e for e in sink.events if e["event"] in ("stuck", "drift", "saturation")]
    health = bridge.health()
    assert set(health["devices"]) == {"pump0", "pump1", "pump2"} and health["readings"]["total"] == sum(map(len, sequences))


def test_a_bad_reading_of_one_device_is_its_own_and_the_others_step(cmapss_bundle, engines):
    """Under ``on_bad_input="error"`` a refused reading must not take its batch-mates with it."""
    links = [PtyLink() for _ in range(2)]
    sink = ListSink()
    bad = engines[3].copy()
    bad[10:20, 2] = 1e30  # ten readings far outside anything the model was calibrated on
    try:
        runtime = edgelstm.load(cmapss_bundle, streams=2, on_bad_input="error")
        bridge = Bridge(runtime=runtime, devices=[Device("good", links[0].path), Device("bad", links[1].path)],
                        sinks=[sink], backoff=(0.02, 0.2)).start()
        for link in links:
            assert link.wait_for_reader(10)
        truths = _play_all(links, [Simulator([engines[4]], rate=500), Simulator([bad], rate=500)])
        assert bridge.wait(lambda: _all_accounted(bridge, truths), 20)
        bridge.stop()
    finally:
        for link in links:
            link.unplug()
    good, faulty = bridge.link("good").ledger["outcomes"], bridge.link("bad").ledger["outcomes"]
    assert good["stepped"] == len(engines[4]) and good["rejected"] == 0
    assert faulty["rejected"] == 10 and faulty["stepped"] == len(bad) - 10
    rejected = [e for e in sink.events if e["event"] == "rejected"]
    assert {e["device"] for e in rejected} == {"bad"} and sorted(e["seq"] for e in rejected) == list(range(10, 20))
    assert "feature 's4'" in rejected[0]["reason"] or "feature" in rejected[0]["reason"]


def _healthz(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as failing:  # 503 while a device is failing: the body says which
        return json.load(failing)


def test_three_devices_from_a_config_each_accounted_for_and_an_unplug_stalls_no_other(cmapss_bundle, engines, tmp_path):
    """The issue's test: three pty devices (simulator) behind one ``edgelstm bridge --config``;
    every reading of each device accounted for per device (good, bad, dropped); one device
    unplugged and replugged while the others keep streaming."""
    metrics = free_port()
    links = {name: PtyLink() for name in ("pumpA", "pumpB", "pumpC")}
    devices = "".join(f'\n[[devices]]\nname = "{name}"\nport = "{link.path}"\nprotocol = "frame"\n' for name, link in links.items())
    config = tmp_path / "gateway.toml"
    config.write_text(f'bundle = "{cmapss_bundle}"\nstate = "gateway.state.npz"\n'
                      f'sinks = ["csv:out.csv", "prometheus:{metrics}"]\nalarms = ["y0<30:35"]\n' + devices)
    assert len(load_config(config)["devices"]) == 3
    sink_path = tmp_path / "out.csv"
    config.write_text(config.read_text().replace('"csv:out.csv"', f'"csv:{sink_path}"'))
    bridge = subprocess.Popen([sys.executable, "-m", "edgelstm", "bridge", "--config", str(config)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_while_unplugged = {}
    try:
        for name, link in links.items():
            assert link.wait_for_reader(60), (name, bridge.poll())

        def stepped(name):
            return _healthz(metrics)["devices"][name]["readings"]["outcomes"]["stepped"]

        def unplug_b():
            # unplugged once the bridge has what was sent (what a pty holds at an unplug is lost, and
            # counted: tests/test_ledger.py); here every reading must be stepped, so the count is exact
            wait_until(lambda: stepped("pumpB") >= simulators["pumpB"].truth.sent, 10)
            links["pumpB"].unplug()
            before = {name: stepped(name) for name in ("pumpA", "pumpC")}
            # the others go on while pumpB is away: 50 more readings each (0.25 s at their rate)
            moved = wait_until(lambda: all(stepped(name) >= before[name] + 50 for name in before), 20)
            health = _healthz(metrics)
            seen_while_unplugged.setdefault("moved", []).append(moved)
            seen_while_unplugged["pumpB"] = health["devices"]["pumpB"]["status"]

        simulators = {
            # pumpA and pumpC stream for about 2.3 s; pumpB is unplugged once, after 120 of its 203 readings
            "pumpA": Simulator([engines[2], engines[3]] * 2, rate=200, faults=Faults(drop_every=37, noise_every=53, seed=1)),
            "pumpB": Simulator([engines[4], engines[5]], rate=200, faults=Faults(disconnect_every=120, seed=2)),
            "pumpC": Simulator([engines[3], engines[2]] * 2, rate=200, faults=Faults(flip_every=41, seed=3)),
        }
        plays = {name: threading.Thread(target=sim.play, args=(links[name].write,),
                                        kwargs={"unplug": unplug_b, "replug": links[name].replug} if name == "pumpB" else {},
                                        daemon=True) for name, sim in simulators.items()}
        for thread in plays.values():
            thread.start()
        for thread in plays.values():
            thread.join(120)
        truths = {name: sim.truth for name, sim in simulators.items()}
        assert wait_until(lambda: all(d["readings"]["total"] == truths[name].readings and d["readings"]["outcomes"]["in_flight"] == 0
                                 for name, d in _healthz(metrics)["devices"].items()), 30), _healthz(metrics)
        health = _healthz(metrics)
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
    finally:
        bridge.send_signal(signal.SIGTERM)
        _, stderr = bridge.communicate(timeout=30)
        for link in links.values():
            link.unplug()
    assert bridge.returncode == 0, stderr
    assert seen_while_unplugged["moved"] == [True], "pumpA and pumpC stalled while pumpB was unplugged"
    for name, truth in truths.items():
        outcomes = health["devices"][name]["readings"]["outcomes"]
        assert outcomes["stepped"] == truth.sent, (name, outcomes, truth.readings, truth.sent, truth.disconnects, stderr[-3000:])  # every intact frame stepped
        # the receiver cannot tell a lost frame from line noise where it should have been: the two together
        assert outcomes["lost_in_transit"] + outcomes["corrupt"] == truth.dropped + truth.flipped, (name, outcomes)
        assert sum(v for k, v in outcomes.items() if k != "in_flight") == truth.readings
        assert f"{name}: readings {truth.readings}: stepped {truth.sent}" in stderr
        assert f'edgelstm_readings_total{{device="{name}",outcome="stepped"}} {float(truth.sent)}' in scrape
    assert truths["pumpB"].disconnects == 1 and health["devices"]["pumpB"]["readings"]["outcomes"]["stepped"] == truths["pumpB"].sent
    rows = sink_path.read_text().splitlines()[1:]
    per_device = {name: sum(1 for row in rows if row.split(",")[1] == name) for name in links}
    assert per_device == {name: truth.sent for name, truth in truths.items()}
    state = edgelstm.load(cmapss_bundle, streams=3)
    state.load_state(tmp_path / "gateway.state.npz")
    assert state.steps.tolist() == [truths[name].sent for name in ("pumpA", "pumpB", "pumpC")]


def test_a_gateway_config_refuses_ambiguity(tmp_path, cmapss_bundle):
    two = f'bundle = "{cmapss_bundle}"\n[[devices]]\nname = "a"\nport = "loop://"\n[[devices]]\nname = "a"\nport = "loop://"\n'
    config = tmp_path / "two.toml"
    config.write_text(two)
    with pytest.raises(Exception, match=r":6: key devices\[1\].name: 'a' is the name of devices\[0\] too"):
        load_config(config)
    config.write_text(two.replace('name = "a"\nport', 'port', 1))
    with pytest.raises(Exception, match=r"devices\[0\]: a gateway's devices each need a name"):
        load_config(config)
    config.write_text(two.replace('name = "a"\nport = "loop://"\n[[devices]]\nname = "a"', 'name = "a"\nport = "loop://"\n[[devices]]\nname = "b"'))
    result = subprocess.run([sys.executable, "-m", "edgelstm", "bridge", "--config", str(config), "--port", "loop://",
                             "--duration", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--port on the command line would not say which one" in result.stderr, result.stderr
