"""The bridge's ledger: every reading the device sent ends in exactly one counted outcome.

The device is the simulator (C-MAPSS test engines as frames) writing into a real pseudo-terminal
or pyserial's ``loop://``; the bridge reads it with pyserial and steps the real int8 runtime.
For each fault kind alone, and for a 60 s run mixing all of them, ``sent == sum(outcomes)``
exactly, where ``sent`` is every reading the simulated device produced (intact, corrupted,
dropped on the wire, or lost in an unplug). Restarts are said by the device (protocol version
2's RESTARTED flag, or its clock going back) and counted once each, at low and at high
sequence numbers, without losing the new run's frames.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import edgelstm
from firmware_bridge.bridge import Bridge
from firmware_bridge.protocol import RESTARTED, FrameDecoder, encode_frame
from firmware_bridge.simulator import Faults, Simulator, cmapss_units
from firmware_bridge.transport import PtyLink, open_port

VALUES = np.ones(3, np.float32)


@pytest.fixture(scope="module")
def units():
    return cmapss_units([1, 2, 3])  # FD001 test engines: 31 + 49 + 126 readings


def _balanced(bridge, readings: int, timeout: float = 20.0) -> dict:
    """Wait until every reading has an outcome (nothing in flight), stop, return the ledger."""
    bridge.wait(lambda: bridge.ledger["outcomes"]["in_flight"] == 0 and bridge.ledger["total"] >= readings, timeout)
    bridge.stop()
    return bridge.ledger


# ---------------------------------------------------------------- the decoder alone


@pytest.mark.parametrize("last_before", [16, 40_000])
def test_a_restart_at_a_low_or_high_sequence_is_one_restart_and_no_frame_lost(last_before):
    decoder = FrameDecoder()
    first = [encode_frame(s, 1000 * (s + 1), VALUES, flags=RESTARTED if s == 0 else 0) for s in range(last_before + 1)]
    after = [encode_frame(s, 1000 * (s + 1), VALUES, flags=RESTARTED if s == 0 else 0) for s in range(40)]
    frames = decoder.feed(b"".join(first)) + decoder.feed(b"".join(after))
    c = decoder.counters
    assert len(frames) == c.good == last_before + 1 + 40
    assert (c.restarts, c.duplicates, c.dropped, c.corrupt) == (1, 0, 0, 0)


def test_a_restart_whose_flagged_frame_was_lost_is_seen_in_the_clock_and_its_losses_counted():
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(s, 1000 * (s + 1), VALUES) for s in range(10, 20)))
    # the device restarts: frames 0 (flagged) and 1 are lost, 2.. arrive with its clock started again
    frames = decoder.feed(b"".join(encode_frame(s, 1000 * (s + 1), VALUES) for s in range(2, 12)))
    c = decoder.counters
    assert len(frames) == 10 and (c.restarts, c.dropped, c.duplicates) == (1, 2, 0)


def test_a_repeated_frame_is_a_duplicate_and_a_corrupted_one_is_not_counted_twice():
    decoder = FrameDecoder()
    frames = [encode_frame(s, 1000 * (s + 1), VALUES) for s in range(10)]
    damaged = bytearray(frames[5])
    damaged[8] ^= 0x10
    stream = b"".join(frames[:5]) + bytes(damaged) + frames[6] + frames[6] + frames[3] + b"".join(frames[7:])
    decoded = decoder.feed(stream)
    c = decoder.counters
    assert [f.sequence for f in decoded] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert (c.good, c.corrupt, c.dropped, c.duplicates, c.noise) == (9, 1, 0, 2, 0)
    assert c.good + c.corrupt + c.dropped + c.duplicates == 12  # frames on the wire: 10 + 2 repeats


def test_version_1_frames_still_decode():
    decoder = FrameDecoder()
    frames = decoder.feed(b"".join(encode_frame(s, s, VALUES, version=1) for s in range(5)))
    assert [f.sequence for f in frames] == list(range(5)) and frames[0].version == 1 and frames[0].flags == 0


def test_opening_a_port_keeps_what_the_kernel_buffered():
    """pyserial's open() flushes the input buffer; the bridge's open_port() does not."""
    with PtyLink() as link:
        link.write(b"sent before the bridge opened")
        port = open_port(link.path)
        try:
            deadline, got = time.monotonic() + 2, b""
            while len(got) < 29 and time.monotonic() < deadline:
                got += port.read(64)
        finally:
            port.close()
    assert got == b"sent before the bridge opened"


# ---------------------------------------------------------------- the bridge, fault by fault

FAULTS = {
    "noise": Faults(noise_every=7, seed=1),
    "drops": Faults(drop_every=11),
    "bit flips": Faults(flip_every=13, seed=2),
    "restarts": Faults(restart_every=50),
    "unplugs": Faults(disconnect_every=60),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_the_ledger_balances_exactly_under_each_fault_over_a_pty(kind, cmapss_bundle, units):
    with PtyLink() as link:
        bridge = Bridge(link.path, edgelstm.load(cmapss_bundle), backoff=(0.02, 0.2)).start()
        assert bridge.wait(lambda: bridge._port is not None, 5)
        # 1,000 readings/s: a device's pace (at full speed the pty would hold all of them unread when unplugged)
        truth = Simulator(units, rate=1000, faults=FAULTS[kind]).play(link.write, unplug=link.unplug, replug=link.replug)
        ledger = _balanced(bridge, truth.readings)
    outcomes = ledger["outcomes"]
    assert ledger["total"] == truth.readings, (kind, ledger, truth)
    assert outcomes["stepped"] == bridge.decoder.counters.good
    assert outcomes["unstepped"] == outcomes["in_flight"] == outcomes["failed"] == 0
    if kind == "drops":
        assert outcomes["lost_in_transit"] == truth.dropped and outcomes["corrupt"] == 0
    if kind == "bit flips":
        assert outcomes["corrupt"] == truth.flipped and outcomes["lost_in_transit"] == 0
    if kind == "noise":
        assert ledger["noise"] == truth.noise_bursts and outcomes["stepped"] == truth.readings
    if kind == "restarts":
        assert ledger["restarts"] == truth.restarts == 4 and outcomes["stepped"] == truth.readings
    if kind == "unplugs":
        # an unplug while the bridge is still reconnecting from the last one is one outage to it
        assert 1 <= bridge.stats.reconnects <= truth.disconnects == 3


def test_the_ledger_balances_over_loop_url_with_drops_and_flips(cmapss_bundle, units):
    bridge = Bridge("loop://", edgelstm.load(cmapss_bundle)).start()
    assert bridge.wait(lambda: bridge._port is not None, 5)
    truth = Simulator(units, rate=0, faults=Faults(drop_every=9, flip_every=14, noise_every=17, seed=4)).play(bridge._port.write)
    ledger = _balanced(bridge, truth.readings)
    assert ledger["total"] == truth.readings and ledger["outcomes"]["stepped"] == truth.sent


def test_readings_still_queued_when_stop_gives_up_are_counted_unstepped(cmapss_bundle, units):
    class StalledSink:
        def emit(self, event):
            time.sleep(0.2)

        def close(self):
            pass

    bridge = Bridge("loop://", edgelstm.load(cmapss_bundle), sinks=[StalledSink()]).start()
    assert bridge.wait(lambda: bridge._port is not None, 5)
    truth = Simulator(units[:1], rate=0).play(bridge._port.write)
    bridge.wait(lambda: bridge.stats.readings_queued == truth.readings, 5)
    bridge.stop(timeout=0.5)
    outcomes = bridge.ledger["outcomes"]
    assert outcomes["unstepped"] > 0 and outcomes["in_flight"] <= 1  # at most the one in the stalled sink's hands
    assert bridge.ledger["total"] - outcomes["in_flight"] + outcomes["in_flight"] == truth.readings


def test_a_60_s_mixed_fault_run_balances_exactly(cmapss_bundle):
    """Noise, drops, flips, five unplugs and seven device restarts in one minute over a pty.

    Unplugs and restarts are at least 200 readings (1 s) apart: readings lost in an unplug just
    before a device restarts leave no trace in any later frame (the restarted device counts from
    0 again), so no decoder could count them."""
    engines = cmapss_units(split="test")
    faults = Faults(noise_every=97, drop_every=89, flip_every=101, disconnect_every=2000, restart_every=1700, seed=7)
    with PtyLink() as link:
        bridge = Bridge(link.path, edgelstm.load(cmapss_bundle), backoff=(0.02, 0.2)).start()
        assert bridge.wait(lambda: bridge._port is not None, 5)
        started = time.monotonic()
        truth = Simulator(engines, rate=200, faults=faults).play(link.write, unplug=link.unplug, replug=link.replug, limit=12_000)
        elapsed = time.monotonic() - started
        health = bridge.health()
        ledger = _balanced(bridge, truth.readings)
    assert elapsed > 55 and truth.readings == 12_000
    assert (truth.disconnects, truth.restarts) == (5, 7)
    assert ledger["total"] == truth.readings, (ledger, truth)
    assert ledger["restarts"] == truth.restarts and bridge.stats.reconnects == truth.disconnects  # 10 s apart: each seen
    assert ledger["outcomes"]["corrupt"] + ledger["outcomes"]["lost_in_transit"] >= truth.dropped + truth.flipped
    assert health["readings"]["total"] <= truth.readings  # /healthz carries the ledger
