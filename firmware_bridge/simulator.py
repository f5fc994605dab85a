"""A device simulator: plays C-MAPSS engines (or any sequences) as an MCU would send them.

It encodes each reading as a frame (or a CSV line) with the device's own sequence number
and microsecond clock, paces them at ``rate`` readings per second, and injects faults on a
fixed schedule so tests can assert exact counts:

- ``noise_every=N``: before every N-th reading, a burst of random bytes with no 0x00 in it
  (one bad piece for the decoder, the next frame still intact);
- ``drop_every=N``: the N-th reading is never sent (a sequence gap);
- ``flip_every=N``: one bit of the N-th encoded frame is flipped (never into a 0x00, so the
  frame stays one piece and fails its CRC or COBS check);
- ``disconnect_every=N``: after the N-th reading the link is unplugged and plugged again;
- ``restart_every=N``: the device restarts before the N-th reading (and every N after): its
  sequence and clock start again from 0 and its first frame carries the RESTARTED flag. The
  frame just before a restart is always sent intact: readings lost at the very end of a run
  leave no trace in any later frame, so no decoder could count them. For the same reason the
  last reading played is never dropped, flipped or followed by an unplug.

The device starts as a device does: its first frame is flagged RESTARTED.

:attr:`Simulator.truth` counts what was actually done, the ground truth for the bridge's
counters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .protocol import FLOAT32, RESTARTED, csv_line, encode_frame


@dataclass
class Faults:
    noise_every: int = 0
    drop_every: int = 0
    flip_every: int = 0
    disconnect_every: int = 0
    restart_every: int = 0
    noise_bytes: int = 24
    seed: int = 0


@dataclass
class Truth:
    readings: int = 0  # readings the device produced
    sent: int = 0  # frames sent intact
    dropped: int = 0
    flipped: int = 0
    noise_bursts: int = 0
    disconnects: int = 0
    restarts: int = 0
    intact_sequences: list = field(default_factory=list)


class Simulator:
    def __init__(self, sequences, rate: float = 10.0, protocol: str = "frame", faults: Faults | None = None,
                 encoding: int = FLOAT32, scale: float = 1.0, start_time_us: int = 0, csv_checksum: str | None = None):
        self.sequences = [np.asarray(s, np.float32) for s in sequences]
        self.rate = rate
        self.protocol = protocol
        self.faults = faults or Faults()
        self.encoding, self.scale = encoding, scale
        self.csv_checksum = csv_checksum  # csv lines: None, "xor" (*HH) or "crc8" (#HH)
        self.truth = Truth()
        self._rng = np.random.default_rng(self.faults.seed)
        self._clock_us = start_time_us

    def readings(self):
        for sequence in self.sequences:
            yield from sequence

    def chunks(self, limit: int | None = None):
        """``(bytes, reading_number, disconnect_after)`` for every reading (the first ``limit``), faults applied."""
        faults = self.faults
        sequence, first = 0, True
        last = sum(len(s) for s in self.sequences) if limit is None else min(limit, sum(len(s) for s in self.sequences))
        for number, values in enumerate(self.readings(), start=1):
            if number > last:
                return
            if faults.restart_every and number > 1 and (number - 1) % faults.restart_every == 0:
                sequence, first, self._clock_us = 0, True, 0  # the device restarts
                self.truth.restarts += 1
            before_restart = bool(faults.restart_every and number % faults.restart_every == 0) or number == last
            self._clock_us += int(1e6 / self.rate) if self.rate else 1000
            self.truth.readings += 1
            data = b""
            if faults.noise_every and number % faults.noise_every == 0:
                data += bytes(self._rng.integers(1, 256, faults.noise_bytes, dtype=np.uint8))
                self.truth.noise_bursts += 1
            if faults.drop_every and number % faults.drop_every == 0 and not before_restart:
                self.truth.dropped += 1
            else:
                frame = self._encode(sequence, values, first)
                if faults.flip_every and number % faults.flip_every == 0 and not before_restart:
                    frame = self._flip(frame)
                    self.truth.flipped += 1
                else:
                    self.truth.sent += 1
                    self.truth.intact_sequences.append(sequence)
                data += frame
            sequence, first = (sequence + 1) & 0xFFFF, False
            disconnect = bool(faults.disconnect_every and number % faults.disconnect_every == 0) and number != last
            yield data, number, disconnect

    def _encode(self, sequence: int, values, first: bool = False) -> bytes:
        if self.protocol == "frame":
            return encode_frame(sequence, self._clock_us, values, self.encoding, self.scale, RESTARTED if first else 0)
        return csv_line(values, self._clock_us, self.csv_checksum)

    def _flip(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        while True:
            index = int(self._rng.integers(1, len(data) - 1))  # inside the delimiters
            bit = 1 << int(self._rng.integers(0, 8))
            if data[index] ^ bit and data[index] != 0:
                data[index] ^= bit
                return bytes(data)

    def play(self, write, unplug=None, replug=None, limit: int | None = None, stop=None) -> Truth:
        """Write every chunk with ``write(bytes)`` at the simulated rate.

        ``unplug()`` / ``replug()`` are called for disconnect faults; ``stop`` is an optional
        ``threading.Event``. Returns :attr:`truth`.
        """
        if self.protocol == "frame":
            write(b"\x00")  # a device sends one delimiter when it starts
        period = 1.0 / self.rate if self.rate else 0.0
        next_time = time.monotonic()
        for data, number, disconnect in self.chunks(limit):
            if stop is not None and stop.is_set():
                break
            if period:
                next_time += period
                delay = next_time - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if data:
                write(data)
            if disconnect and unplug is not None:
                unplug()
                self.truth.disconnects += 1
                time.sleep(0.2)
                replug()
                if self.protocol == "frame":
                    write(b"\x00")
            if limit is not None and number >= limit:
                break
        return self.truth


def cmapss_units(units=None, split: str = "test") -> list:
    """C-MAPSS FD001 engines (14 sensors, raw units) from the shipped data."""
    from edgelstm.convert.calibration_data import load_cmapss
    from edgelstm.recipes.cmapss import data_dir

    data = load_cmapss(data_dir() / f"{split}_FD001.txt")
    ids = data.extras["units"]
    if units:
        return [data.sequences[ids.index(u)] for u in units]
    return data.sequences
