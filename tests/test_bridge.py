"""The bridge over real serial I/O: a pty pair and pyserial's loop://, fault injection with
exact counts, reconnects, CSV, sinks, alarms, signals; and a hypothesis test of the decoder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgelstm
from firmware_bridge.alarms import AlarmRule
from firmware_bridge.bridge import Bridge
from firmware_bridge.protocol import INT16, RESTARTED, CsvDecoder, FrameDecoder, encode_frame
from firmware_bridge.simulator import Faults, Simulator, cmapss_units
from firmware_bridge.sinks import CsvFileSink, PrometheusSink
from firmware_bridge.transport import PtyLink

from .conftest import ROOT


class ListSink:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)

    def close(self):
        self.closed = True

    def predictions(self):
        return [e for e in self.events if e["event"] == "prediction"]


def _start(bridge):
    bridge.start()
    assert bridge.wait(lambda: bridge._port is not None, 5), "bridge did not open the port"
    return bridge


@pytest.fixture(scope="module")
def units():
    return cmapss_units([1, 2, 3])


def test_pty_fault_injection_exact_counts_and_no_frame_lost_or_doubled(cmapss_bundle, units):
    runtime = edgelstm.load(cmapss_bundle)
    sink = ListSink()
    with PtyLink() as link:
        bridge = _start(Bridge(link.path, runtime, sinks=[sink]))
        simulator = Simulator(units, rate=0, faults=Faults(noise_every=7, drop_every=11, flip_every=13, seed=3))
        truth = simulator.play(link.write)
        assert bridge.wait(lambda: bridge.stats.readings_stepped >= truth.sent, 10)
        bridge.stop()
    c = bridge.counters
    assert c["frames_good"] == truth.sent
    assert c["frames_crc_failed"] + c["frames_malformed"] == truth.flipped + truth.noise_bursts
    # sequence numbers never received intact: corrupt where a bad run stands in their place, else lost
    # (a noise burst next to a dropped frame takes the corrupt label: the split is a best guess, the sum exact)
    assert c["frames_corrupt"] + c["frames_dropped"] == truth.dropped + truth.flipped
    assert c["frames_corrupt"] + c["frames_noise"] == truth.flipped + truth.noise_bursts
    assert c["frames_duplicates"] == 0 and c["queue_overflow"] == 0
    assert bridge.ledger["total"] == truth.readings
    assert [e["seq"] for e in sink.predictions()] == truth.intact_sequences  # none lost, none twice
    # the predictions are the runtime's on exactly the intact readings, in order
    readings = np.concatenate(units)
    intact = readings[np.asarray(truth.intact_sequences)]
    expected = edgelstm.load(cmapss_bundle).run(intact)[:, 0]
    assert np.array_equal(np.array([e["y"][0] for e in sink.predictions()], np.float32), expected)


def test_loop_url_and_int16_frames(cmapss_bundle, units):
    runtime = edgelstm.load(cmapss_bundle)
    sink = ListSink()
    bridge = _start(Bridge("loop://", runtime, sinks=[sink]))
    engine = units[0][:20]
    for i, values in enumerate(engine):
        bridge._port.write(encode_frame(i, i * 1000, values, INT16, scale=0.5))
    assert bridge.wait(lambda: len(sink.predictions()) == 20, 5)
    bridge.stop()
    assert [e["t_device_us"] for e in sink.predictions()] == [i * 1000 for i in range(20)]
    quantized = np.clip(np.rint(engine.astype(np.float64) / 0.5), -32768, 32767).astype(np.float32) * np.float32(0.5)
    expected = edgelstm.load(cmapss_bundle).run(quantized)[:, 0]
    assert np.allclose([e["y"][0] for e in sink.predictions()], expected)


def test_window_mode_filling_is_not_rejection(cmapss_bundle, units):
    """In window mode the runtime outputs NaN until its window is full: those readings are
    stepped (a "filling" event), not rejected, and predictions follow from the window-th on."""
    runtime = edgelstm.load(cmapss_bundle, window=5)
    sink = ListSink()
    bridge = _start(Bridge("loop://", runtime, sinks=[sink]))
    engine = units[0][:12]
    for i, values in enumerate(engine):
        bridge._port.write(encode_frame(i, i * 1000, values))
    assert bridge.wait(lambda: len(sink.predictions()) == 8, 5)
    bridge.stop()
    assert [e["seq"] for e in sink.events if e["event"] == "filling"] == [0, 1, 2, 3]
    assert bridge.stats.readings_rejected == 0 and bridge.stats.readings_stepped == 12
    expected = edgelstm.load(cmapss_bundle, window=5).run(engine.astype(np.float32))[4:, 0]
    assert np.allclose([e["y"][0] for e in sink.predictions()], expected)


def test_csv_protocol_over_pty(cmapss_bundle, units):
    runtime = edgelstm.load(cmapss_bundle)
    sink = ListSink()
    with PtyLink() as link:
        bridge = _start(Bridge(link.path, runtime, protocol="csv", sinks=[sink]))
        lines = [b"5,12.0,3\r\n"]  # the tail of a line the device was sending when we connected
        for t, row in enumerate(units[0][:10]):
            sep = [",", "\t", " "][t % 3]
            stamp = f"{t * 100}{sep}" if t % 2 else ""
            lines.append((stamp + sep.join(repr(float(v)) for v in row) + ("\r\n" if t % 2 else "\n")).encode())
            if t == 4:
                lines += [b"\r\n", b"hello world\n", b"1,2,3\n"]
        link.write(b"".join(lines))
        assert bridge.wait(lambda: len(sink.predictions()) == 10, 5)
        bridge.stop()
    counters = bridge.counters
    assert (counters["frames_good"], counters["frames_partial"], counters["frames_garbage"], counters["frames_wrong_count"]) == (10, 1, 1, 1)
    expected = edgelstm.load(cmapss_bundle).run(units[0][:10])[:, 0]
    assert np.allclose([e["y"][0] for e in sink.predictions()], expected, atol=1e-3)


def test_unplug_reconnects_and_carries_the_stream_state(cmapss_bundle, units):
    engine = units[2][:60]  # unit 3: 126 cycles
    sink = ListSink()
    with PtyLink() as link:
        bridge = _start(Bridge(link.path, edgelstm.load(cmapss_bundle), sinks=[sink], backoff=(0.02, 0.2)))
        link.write(b"\x00" + b"".join(encode_frame(i, i, v) for i, v in enumerate(engine[:30])))
        assert bridge.wait(lambda: len(sink.predictions()) == 30, 5)
        link.unplug()
        assert bridge.wait(lambda: bridge.stats.disconnects >= 1, 5)
        link.replug()
        assert bridge.wait(lambda: bridge.stats.reconnects >= 1 and bridge._port is not None, 5)
        link.write(b"\x00" + b"".join(encode_frame(i, i, v) for i, v in enumerate(engine[30:])))  # the device restarted: seq from 0
        assert bridge.wait(lambda: len(sink.predictions()) == 60, 5)
        bridge.stop()
    assert bridge.stats.disconnects >= 1 and bridge.counters["frames_duplicates"] == 0
    expected = edgelstm.load(cmapss_bundle).run(engine)[:, 0]
    assert np.array_equal(np.array([e["y"][0] for e in sink.predictions()], np.float32), expected)


def test_reset_on_reconnect_restarts_the_stream(cmapss_bundle, units):
    engine = units[1][:20]
    sink = ListSink()
    with PtyLink() as link:
        bridge = _start(Bridge(link.path, edgelstm.load(cmapss_bundle), sinks=[sink], reset_on_reconnect=True, backoff=(0.02, 0.2)))
        link.write(b"\x00" + b"".join(encode_frame(i, i, v) for i, v in enumerate(engine[:10])))
        assert bridge.wait(lambda: len(sink.predictions()) == 10, 5)
        link.unplug()
        assert bridge.wait(lambda: bridge.stats.disconnects >= 1, 5)
        link.replug()
        assert bridge.wait(lambda: bridge.stats.reconnects >= 1 and bridge._port is not None, 5)
        # the device restarted while unplugged: its sequence and clock start again, its first frame says so
        link.write(b"\x00" + b"".join(encode_frame(i, i, v, flags=RESTARTED if i == 0 else 0) for i, v in enumerate(engine[10:])))
        assert bridge.wait(lambda: len(sink.predictions()) == 20, 5)
        bridge.stop()
    assert bridge.decoder.counters.restarts == 1 and bridge.ledger["outcomes"]["duplicates"] == 0
    fresh = edgelstm.load(cmapss_bundle).run(engine[10:])[:, 0]
    assert np.array_equal(np.array([e["y"][0] for e in sink.predictions()[10:]], np.float32), fresh)


@pytest.mark.parametrize("port", ["loop://", "pty"])
def test_full_queue_is_counted_never_silent(cmapss_bundle, units, port):
    """Both readers: a link's own thread (loop://) and the shared selector thread (a pty)."""
    class SlowSink(ListSink):
        def emit(self, event):
            time.sleep(0.01)
            super().emit(event)

    sink = SlowSink()
    wire = b"".join(encode_frame(i, i, v) for i, v in enumerate(units[0][:30]))
    with PtyLink() as link:
        bridge = _start(Bridge(link.path if port == "pty" else port, edgelstm.load(cmapss_bundle), sinks=[sink], queue_size=4))
        assert bridge.wait(lambda: bridge._port is not None, 5)
        (link.write if port == "pty" else bridge._port.write)(wire)
        assert bridge.wait(lambda: bridge.stats.readings_queued + bridge.stats.queue_overflow == 30, 5)
        bridge.stop()
    assert bridge.stats.queue_overflow > 0
    assert len(sink.predictions()) + bridge.stats.queue_overflow == 30
    assert bridge.ledger["outcomes"]["stepped"] + bridge.ledger["outcomes"]["queue_overflow"] == 30


def test_csv_file_sink_and_prometheus_endpoint(cmapss_bundle, units, tmp_path):
    csv_path = tmp_path / "predictions.csv"
    prometheus = PrometheusSink(port=0)
    bridge = Bridge("loop://", edgelstm.load(cmapss_bundle), sinks=[CsvFileSink(csv_path, 1, sync_every=5), prometheus],
                    alarms=["y0<200:210"], device="pump7")
    _start(bridge)
    bridge._port.write(b"\x00" + b"".join(encode_frame(i, i, v) for i, v in enumerate(units[0][:12])))
    assert bridge.wait(lambda: bridge.stats.readings_stepped == 12, 5)
    port = prometheus._server.server_address[1]
    assert prometheus._server.server_address[0] == "127.0.0.1"
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'edgelstm_frames_total{device="pump7",outcome="good"} 12.0' in text
    assert 'edgelstm_step_seconds_count{device="pump7"} 12.0' in text
    assert 'edgelstm_alarm{device="pump7",rule="y0<200"} 1.0' in text
    assert 'edgelstm_prediction{device="pump7",output="0"}' in text
    bridge.stop()
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "time,device,seq,t_device_us,y0" and len(rows) == 13


def test_alarm_rule_hysteresis():
    rule = AlarmRule.parse("y0<30:35")
    events = [rule.update([v]) for v in (50, 31, 29, 28, 31, 34, 36, 29, float("nan"), 40)]
    assert events == [None, None, "alarm", None, None, None, "clear", "alarm", None, "clear"]
    assert AlarmRule.parse("y1>0.8:0.6").update([0, 0.9]) == "alarm"
    with pytest.raises(ValueError, match="safe side"):
        AlarmRule.parse("y0<30:20")


def test_sigterm_flushes_sinks_and_saves_state(cmapss_bundle, units, tmp_path):
    import threading

    with PtyLink() as link:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgelstm", "bridge", "--port", link.path, "--bundle", str(cmapss_bundle), "--sink", "stdout",
             "--sink", f"csv:{tmp_path / 'out.csv'}", "--sync-every", "1000", "--state", str(tmp_path / "state.npz")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,  # unbuffered: communicate() gets the rest
        )
        stop = threading.Event()

        def device():  # keeps sending until the bridge has shown it is reading
            sequence = 0
            while not stop.is_set():
                link.write(b"\x00" + encode_frame(sequence, sequence, units[2][sequence % 100]))
                sequence += 1
                stop.wait(0.05)

        writer = threading.Thread(target=device, daemon=True)
        writer.start()
        predictions = 0
        while predictions < 5:
            line = process.stdout.readline().decode()
            assert line, process.stderr.read().decode()
            predictions += '"prediction"' in line
        stop.set()
        writer.join()
        assert os.path.getsize(tmp_path / "out.csv") <= len("time,device,seq,t_device_us,y0\n")  # sync_every 1000: not yet
        process.send_signal(signal.SIGTERM)
        rest, stderr = (part.decode() for part in process.communicate(timeout=20))
    assert process.returncode == 0, stderr
    stepped = predictions + rest.count('"prediction"')
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0].startswith("time,device,seq") and len(rows) - 1 == stepped  # flushed on SIGTERM
    runtime = edgelstm.load(cmapss_bundle)
    runtime.load_state(tmp_path / "state.npz")
    assert int(runtime.steps[0]) == stepped


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_decoder(data):
    decoder = FrameDecoder()
    for start in range(0, len(data), 97):
        decoder.feed(data[start : start + 97])
    csv = CsvDecoder(3)
    csv.feed(data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=60), st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64)),
             min_size=1, max_size=8),
    st.binary(max_size=60),
    st.integers(min_value=1, max_value=50),
)
def test_every_valid_frame_embedded_in_noise_is_recovered(pieces, tail, chunk):
    stream, expected = b"", []
    for sequence, (noise, values) in enumerate(pieces):
        stream += noise + encode_frame(sequence, sequence * 7, values)
        expected.append((sequence, np.asarray(values, np.float32)))
    stream += tail
    decoder = FrameDecoder()
    frames = []
    for start in range(0, len(stream), chunk):
        frames += decoder.feed(stream[start : start + chunk])
    got = [(f.sequence, f.values) for f in frames]
    assert [s for s, _ in got] == [s for s, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        assert np.array_equal(a, b)


def test_socket_url_to_the_simulators_tcp_server_with_a_disconnect(cmapss_bundle):
    """`edgelstm simulate --listen` stands in for a networked serial device; the bridge uses socket://."""
    import socket as socket_module

    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    simulator = subprocess.Popen(
        [sys.executable, "-m", "edgelstm", "simulate", "--listen", f"127.0.0.1:{port}", "--unit", "3", "--rate", "200",
         "--disconnect-every", "40"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert simulator.stdout.readline().strip() == f"socket://127.0.0.1:{port}"
    sink = ListSink()
    bridge = Bridge(f"socket://127.0.0.1:{port}", edgelstm.load(cmapss_bundle), sinks=[sink], backoff=(0.05, 0.2)).start()
    _, stderr = simulator.communicate(timeout=60)
    bridge.wait(lambda: bridge.stats.readings_stepped >= 126, 20)
    bridge.stop()
    assert "126 sent intact" in stderr and "3 disconnects" in stderr
    assert bridge.stats.disconnects >= 3 and bridge.stats.reconnects >= 3
    # TCP delivers what was sent before the close, and the bridge keeps what the simulator sends
    # at once on the new connection (its catch-up after the unplug): every reading arrives, once
    assert bridge.stats.readings_stepped == 126, bridge.counters
    assert bridge.counters["frames_crc_failed"] == 0
    sequences = [e["seq"] for e in sink.predictions()]
    assert len(sequences) == len(set(sequences))  # nothing counted twice


def test_opening_a_socket_url_keeps_what_the_device_already_sent(monkeypatch):
    """pyserial's socket:// ``open()`` ends by reading and discarding whatever arrived once the
    connection stood: a device that speaks first (a serial server replaying its buffer, the
    simulator catching up after an unplug) lost those readings, more the slower the bridge
    (46 of 126 stepped under load). The open is slowed here as on a loaded machine, so that
    the device's bytes are there before it ends."""
    import socket as socket_module
    import threading

    from serial.urlhandler import protocol_socket

    from firmware_bridge.transport import open_port

    server = socket_module.create_server(("127.0.0.1", 0))
    payload = b"\x00" + b"".join(encode_frame(s, s, np.ones(3, np.float32)) for s in range(20))

    def device():
        connection, _ = server.accept()
        connection.sendall(payload)  # at once, as a device that speaks first
        time.sleep(2)
        connection.close()

    threading.Thread(target=device, daemon=True).start()
    reconfigure = protocol_socket.Serial._reconfigure_port
    monkeypatch.setattr(protocol_socket.Serial, "_reconfigure_port",
                        lambda self, *a, **k: (time.sleep(0.3), reconfigure(self, *a, **k))[1])
    link = open_port(f"socket://127.0.0.1:{server.getsockname()[1]}")
    received, deadline = b"", time.monotonic() + 5
    while len(received) < len(payload) and time.monotonic() < deadline:
        received += link.read(4096)
    link.close()
    server.close()
    assert received == payload


def test_device_restart_is_a_restart_not_thousands_of_duplicates():
    decoder = FrameDecoder()
    values = np.ones(3, np.float32)
    frames = decoder.feed(b"".join(encode_frame(s, s, values) for s in range(30000, 30010)))
    frames += decoder.feed(encode_frame(30005, 0, values))  # a late repeat
    frames += decoder.feed(b"".join(encode_frame(s, s, values) for s in range(0, 50)))  # the MCU rebooted
    c = decoder.counters
    assert (len(frames), c.good, c.duplicates, c.restarts, c.dropped) == (60, 60, 1, 1, 0)


def test_csv_nan_timestamp_is_garbage_not_a_dead_reader():
    decoder = CsvDecoder(2)
    frames = decoder.feed(b"partial\nnan,2,3\ninf,2,3\n5,1,2\n")
    assert len(frames) == 1 and decoder.counters.garbage == 2


def test_alarm_rule_beyond_the_outputs_is_refused(cmapss_bundle):
    with pytest.raises(ValueError, match="the model has 1 output"):
        Bridge("loop://", edgelstm.load(cmapss_bundle), alarms=["y1>5"])
