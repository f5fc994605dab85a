"""Wire protocols between the MCU and the bridge: ``frame`` (binary) and ``csv`` (text lines).

**frame** (version 2). On the wire a frame is ``0x00 || COBS(payload || crc32(payload)) || 0x00``
(back-to-back frames share nothing: the empty run between two delimiters is ignored).
Payload, little-endian::

    u8   version          2 (1: the same without the flags byte; still decoded)
    u8   encoding         0: float32 values; 1: int16 values times a float32 scale
    u8   flags            bit 0 RESTARTED: the first frame since the device started
    u16  sequence         0 at start, +1 per frame, wraps at 65536
    u64  timestamp_us     device clock, microseconds since start, never decreasing while it runs
    u8   channels         N (1..64)
    f32  scale            only when encoding == 1
    N x  value            f32 (encoding 0) or i16 (encoding 1)

Restarts are said by the device, not guessed: the RESTARTED flag, or (when that first frame
was lost) its clock going backwards. Either way the decoder counts one restart and, since a
device counts from sequence 0 when it starts, the frames of the new run that never arrived as
lost. A version-1 device has neither, so for its frames a sequence number far behind the
last one is taken as a restart and one a little behind as a repeat (the old heuristic).

``crc32`` is CRC-32/ISO-HDLC (zlib's ``crc32``: reflected polynomial 0xEDB88320, init and
xorout 0xFFFFFFFF), appended little-endian. COBS removes every 0x00 from the encoded bytes
so 0x00 only ever delimits frames: a decoder that starts mid-frame, or loses bytes, finds
the next boundary at the next 0x00, and the leading delimiter keeps line noise that arrives
between frames from running into the next frame. COBS comes from the ``cobs`` package,
CRC-32 from zlib.

:class:`FrameDecoder` is a packetizer in the style of ``serial.threaded.Packetizer``: feed
it any chunks of bytes, it returns decoded frames and keeps exact counts of every reading's
fate: good frames; readings lost to corruption (a CRC-failed or malformed frame where a
sequence number is missing); readings lost in transit (missing sequence numbers no corrupted
frame accounts for); duplicates; restarts; and, apart from readings, line noise (corrupted
runs beyond the missing sequence numbers) and oversized runs. Its buffer is bounded: a run of
bytes without a delimiter longer than a frame can be is dropped and counted, never
accumulated. Its sequence survives a reconnect (:meth:`FrameDecoder.resync`), so frames lost
while a cable was out are counted as lost.

**csv**: one reading per line, numbers separated by comma, tab or spaces (Edge Impulse's
data forwarder format), optional leading timestamp, CR/LF tolerant, blank lines ignored,
the partial first line after connecting discarded, garbage lines counted and skipped.
A line may end in a checksum of the bytes before it: ``*HH``, NMEA 0183's (XOR of the bytes,
two hex digits) or ``#HH``, CRC-8/SMBUS (polynomial 0x07, from the ``crc`` package). A line
whose checksum does not match is counted (``checksum_failed``) and skipped; once a device has
sent a checksummed line, a line without one is counted the same way (a flipped ``*`` must not
smuggle a damaged line in). CSV lines carry no sequence number, so a lost line is not counted.
"""

from __future__ import annotations

import collections
import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from cobs import cobs

VERSION = 2
#: Versions this decoder reads.
VERSIONS = (1, 2)
FLOAT32, INT16 = 0, 1
#: Frame flags (version 2).
RESTARTED = 0x01
MAX_CHANNELS = 64
#: A sequence number at most this far behind the last one is a repeat; further back (version
#: 1 frames only, or a device without a clock), a restart.
RESTART_WINDOW = 16
HEADER = struct.Struct("<BBBHQB")  # version, encoding, flags, sequence, timestamp_us, channels
HEADER_V1 = struct.Struct("<BBHQB")  # version, encoding, sequence, timestamp_us, channels
#: Largest payload + CRC: header, scale, 64 int16-or-float32 values, CRC-32.
MAX_RAW_BYTES = HEADER.size + 4 + 4 * MAX_CHANNELS + 4
#: Largest COBS-encoded frame between two delimiters (COBS adds one byte per 254, plus one).
MAX_FRAME_BYTES = MAX_RAW_BYTES + MAX_RAW_BYTES // 254 + 1


@dataclass
class Frame:
    sequence: int
    timestamp_us: int
    values: np.ndarray  # float32 (channels,)
    encoding: int = FLOAT32
    scale: float = 1.0
    flags: int = 0
    version: int = VERSION


#: ``zlib.crc32(payload + crc32(payload) as u32 little-endian)`` for every payload: a frame's check in one call
_CRC32_RESIDUE = 0x2144DF1C


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_payload(sequence: int, timestamp_us: int, values, encoding: int = FLOAT32, scale: float = 1.0,
                   flags: int = 0, version: int = VERSION) -> bytes:
    values = np.asarray(values)
    count = int(values.shape[0])
    if not 1 <= count <= MAX_CHANNELS:
        raise ValueError(f"{count} channels; the frame protocol carries 1..{MAX_CHANNELS}")
    if version == 1:
        head = HEADER_V1.pack(1, encoding, sequence & 0xFFFF, timestamp_us & 0xFFFFFFFFFFFFFFFF, count)
    elif version == VERSION:
        head = HEADER.pack(VERSION, encoding, flags & 0xFF, sequence & 0xFFFF, timestamp_us & 0xFFFFFFFFFFFFFFFF, count)
    else:
        raise ValueError(f"unknown protocol version {version}")
    if encoding == FLOAT32:
        body = values.astype("<f4").tobytes()
    elif encoding == INT16:
        raw = np.clip(np.rint(values.astype(np.float64) / scale), -32768, 32767).astype("<i2")
        body = struct.pack("<f", scale) + raw.tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding}")
    return head + body


def encode_frame(sequence: int, timestamp_us: int, values, encoding: int = FLOAT32, scale: float = 1.0,
                 flags: int = 0, version: int = VERSION) -> bytes:
    """One complete frame on the wire, both delimiters included."""
    payload = encode_payload(sequence, timestamp_us, values, encoding, scale, flags, version)
    return b"\x00" + cobs.encode(payload + struct.pack("<I", crc32(payload))) + b"\x00"


def decode_payload(payload: bytes) -> Frame:
    """Parse a CRC-checked payload; raises ValueError naming what is wrong."""
    version = payload[0] if payload else None
    if version not in VERSIONS:
        raise ValueError(f"protocol version {version}, this bridge reads {' and '.join(map(str, VERSIONS))}")
    header = HEADER if version == VERSION else HEADER_V1
    if len(payload) < header.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than the {header.size}-byte header")
    if version == VERSION:
        _, encoding, flags, sequence, timestamp, count = header.unpack_from(payload)
    else:
        (_, encoding, sequence, timestamp, count), flags = header.unpack_from(payload), 0
    if not 1 <= count <= MAX_CHANNELS:
        raise ValueError(f"{count} channels")
    body = payload[header.size :]
    if encoding == FLOAT32:
        if len(body) != 4 * count:
            raise ValueError(f"{len(body)} value bytes for {count} float32 channels")
        return Frame(sequence, timestamp, np.frombuffer(body, "<f4").astype(np.float32), FLOAT32, 1.0, flags, version)
    if encoding == INT16:
        if len(body) != 4 + 2 * count:
            raise ValueError(f"{len(body)} value bytes for {count} int16 channels and a scale")
        (scale,) = struct.unpack_from("<f", body)
        values = np.frombuffer(body, "<i2", offset=4).astype(np.float32) * np.float32(scale)
        return Frame(sequence, timestamp, values, INT16, float(scale), flags, version)
    raise ValueError(f"unknown value encoding {encoding}")


@dataclass
class FrameCounters:
    good: int = 0
    corrupt: int = 0  # readings lost to corruption: a CRC-failed or malformed frame where a sequence number is missing
    dropped: int = 0  # readings lost in transit: missing sequence numbers no corrupted frame accounts for
    duplicates: int = 0  # the same frame again, or a late repeat a little behind the last one
    restarts: int = 0  # the device started again (RESTARTED flag or its clock going back; v1: the sequence far back)
    crc_failed: int = 0  # link diagnostics from here on: runs between delimiters by what was wrong with them
    malformed: int = 0  # COBS-invalid, too short, bad version or lengths
    oversized: int = 0  # delimiter-free runs longer than any frame
    noise: int = 0  # corrupted runs beyond the missing sequence numbers: line noise, not readings
    bytes: int = 0

    def as_dict(self) -> dict:
        return dict(vars(self))

    def readings(self) -> dict:
        """The readings' outcomes the decoder decides (the bridge's ledger adds the rest)."""
        return {"corrupt": self.corrupt, "lost_in_transit": self.dropped, "duplicates": self.duplicates}


@dataclass
class FrameDecoder:
    """Bytes in, frames out; resynchronises on 0x00, counts every outcome exactly."""

    max_frame: int = MAX_FRAME_BYTES
    counters: FrameCounters = field(default_factory=FrameCounters)
    _buffer: bytearray = field(default_factory=bytearray)
    _overflowing: bool = False
    _last_sequence: int | None = None
    _last_time: int = 0
    _pending_corrupt: int = 0  # corrupted runs since the last good frame, not yet matched to missing numbers
    _recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RESTART_WINDOW))
    _recent_set: set = field(default_factory=set)

    def feed(self, data: bytes) -> list:
        """Decode what ``data`` completes; keep the unfinished tail for the next call."""
        self.counters.bytes += len(data)
        runs = data.split(b"\x00")
        if len(runs) == 1:  # no delimiter: all of it continues the current run
            self._append(data)
            return []
        frames = []
        # the first run continues what the buffer holds; the ones between delimiters are whole
        self._append(runs[0])
        if self._overflowing:
            self._overflowing = False  # the oversized run ends here; already counted
        elif self._buffer:
            self._decode_into(bytes(self._buffer), frames)
        self._buffer.clear()
        for run in runs[1:-1]:
            if len(run) > self.max_frame:
                self.counters.oversized += 1
            elif run:
                self._decode_into(run, frames)
        self._append(runs[-1])  # the unfinished tail
        return frames

    def _decode_into(self, encoded: bytes, frames: list) -> None:
        frame = self._decode(encoded)
        if frame is not None:
            frames.append(frame)

    def _append(self, chunk: bytes) -> None:
        if self._overflowing or not chunk:
            return
        if len(self._buffer) + len(chunk) > self.max_frame:
            self.counters.oversized += 1
            self._buffer.clear()
            self._overflowing = True
            return
        self._buffer += chunk

    def _decode(self, encoded: bytes):
        try:
            raw = cobs.decode(encoded)
        except cobs.DecodeError:
            return self._corrupted("malformed")
        if len(raw) < 5:
            return self._corrupted("malformed")
        # the CRC-32 of a payload followed by its own CRC (little-endian) is always this residue
        if zlib.crc32(raw) != _CRC32_RESIDUE:
            return self._corrupted("crc_failed")
        try:
            frame = decode_payload(raw[:-4])
        except ValueError:
            return self._corrupted("malformed")
        return self._account(frame)

    def _corrupted(self, kind: str) -> None:
        setattr(self.counters, kind, getattr(self.counters, kind) + 1)
        self._pending_corrupt += 1
        return None

    def _account(self, frame: Frame):
        """Place ``frame`` in the sequence: a repeat (returns None), or good after ``missing``
        readings that never arrived intact (corrupt as far as corrupted runs account for them)."""
        counters, last = self.counters, self._last_sequence
        restarted = bool(frame.flags & RESTARTED)
        if restarted:
            self._forget_recent()
        elif last is not None and self._is_repeat(frame, last):
            counters.duplicates += 1
            return None
        missing = 0
        if last is not None:  # the first frame since the bridge started: what came before is not ours to count
            gap = (frame.sequence - last) & 0xFFFF
            clocked = frame.version >= 2 and frame.timestamp_us != self._last_time
            if restarted:
                counters.restarts += 1  # the new run's first frame: nothing of it is missing
            elif clocked and frame.timestamp_us < self._last_time:
                counters.restarts += 1  # the clock went back: restarted, and its flagged first frame was lost
                missing = frame.sequence  # a run counts from 0
            elif not clocked and gap > 0x8000:
                counters.restarts += 1  # version 1 or no clock: a sequence far behind is a restart
                missing = frame.sequence if frame.version >= 2 else 0
            else:
                missing = gap - 1 if gap else 0xFFFF
        corrupt = min(self._pending_corrupt, missing)
        counters.corrupt += corrupt
        counters.dropped += missing - corrupt
        counters.noise += self._pending_corrupt - corrupt
        self._pending_corrupt = 0
        self._last_sequence, self._last_time = frame.sequence, frame.timestamp_us
        self._remember((frame.sequence, frame.timestamp_us))
        counters.good += 1
        return frame

    def _remember(self, key: tuple) -> None:
        """The last :data:`RESTART_WINDOW` frames' (sequence, time), a deque for their order and a set to look them up."""
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_set.discard(recent[0])
        recent.append(key)
        self._recent_set.add(key)

    def _forget_recent(self) -> None:
        self._recent.clear()
        self._recent_set.clear()

    def _is_repeat(self, frame: Frame, last: int) -> bool:
        """A frame seen already: the same sequence and device time as one of the last
        :data:`RESTART_WINDOW` frames; without a clock (time 0), a sequence at most that far behind."""
        if frame.timestamp_us:
            return (frame.sequence, frame.timestamp_us) in self._recent_set
        behind = (last - frame.sequence) & 0xFFFF
        return behind <= RESTART_WINDOW

    def readings(self) -> dict:
        """The readings' outcomes the decoder decides (the bridge's ledger adds the rest)."""
        return self.counters.readings()

    def resync(self) -> None:
        """After a reconnect: drop the half-read frame, keep the sequence (gaps across the
        reconnect are counted; a device restart says so itself)."""
        self._buffer.clear()
        self._overflowing = False

    def reset_sequence(self) -> None:
        """Forget the last sequence number: the next frame starts a new stream (a new machine)."""
        self._last_sequence = None
        self._last_time = 0
        self._pending_corrupt = 0
        self._forget_recent()
        self.resync()


_SEPARATORS = re.compile(r"[,\t ]+")


_CHECKED = re.compile(rb"^(.*)([*#])([0-9A-Fa-f]{2})$", re.S)
_crc8 = None


def xor_checksum(body: bytes) -> int:
    """NMEA 0183's checksum: the XOR of every byte."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def crc8(body: bytes) -> int:
    """CRC-8/SMBUS (polynomial 0x07, init 0, no reflection, xorout 0) with the ``crc`` package."""
    global _crc8
    if _crc8 is None:
        from crc import Calculator, Crc8

        _crc8 = Calculator(Crc8.CCITT)  # the crc package's name for poly 0x07 / init 0: CRC-8/SMBUS
    return int(_crc8.checksum(body))


def csv_line(values, timestamp_us: int | None = None, checksum: str | None = None) -> bytes:
    """One CSV reading line as a device sends it, with an optional ``*HH`` (``xor``) or ``#HH``
    (``crc8``) checksum, CRLF-terminated."""
    body = ",".join(([str(timestamp_us)] if timestamp_us is not None else []) + [repr(float(v)) for v in values]).encode()
    if checksum == "xor":
        body += b"*%02X" % xor_checksum(body)
    elif checksum == "crc8":
        body += b"#%02X" % crc8(body)
    elif checksum is not None:
        raise ValueError(f"checksum {checksum!r}: choose xor or crc8")
    return body + b"\r\n"


@dataclass
class CsvCounters:
    good: int = 0
    checksum_failed: int = 0  # a checksum that does not match, or missing once the device sends them
    garbage: int = 0  # lines that are not numbers
    wrong_count: int = 0  # numbers, but not the expected count
    partial: int = 0  # the first, partial line after connecting
    bytes: int = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class CsvDecoder:
    """Text lines in, readings out. ``channels`` values per line, optionally after a timestamp."""

    channels: int
    max_line: int = 4096
    counters: CsvCounters = field(default_factory=CsvCounters)
    _buffer: bytearray = field(default_factory=bytearray)
    _first: bool = True
    _overflowing: bool = False
    _sequence: int = 0
    _checksummed: bool = False  # the device sends checksums: every line must carry one

    def feed(self, data: bytes) -> list:
        self.counters.bytes += len(data)
        frames = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._append(data[start:])
                return frames
            self._append(data[start:end])
            line, overflowed = bytes(self._buffer), self._overflowing
            self._buffer.clear()
            self._overflowing = False
            start = end + 1
            if self._first:
                self._first = False
                self.counters.partial += 1  # we cannot know where the device was in this line
                continue
            if overflowed:
                self.counters.garbage += 1
                continue
            frame = self._parse(line)
            if frame is not None:
                frames.append(frame)

    def _append(self, chunk: bytes) -> None:
        if self._overflowing:
            return
        if len(self._buffer) + len(chunk) > self.max_line:
            self._buffer.clear()
            self._overflowing = True
            return
        self._buffer += chunk

    def _parse(self, line: bytes):
        line = line.strip(b"\r \t")
        if not line:
            return None
        checked = _CHECKED.match(line)
        if checked:
            body, kind, digits = checked.groups()
            expected = xor_checksum(body) if kind == b"*" else crc8(body)
            self._checksummed = True  # this device sends checksums (even a failing one says so)
            if int(digits, 16) != expected:
                self.counters.checksum_failed += 1
                return None
            line = body.strip(b" \t")
        elif self._checksummed:
            self.counters.checksum_failed += 1  # its checksum is missing: damaged, not trusted
            return None
        text = line.decode("ascii", "replace")
        if not text:
            return None
        try:
            numbers = [float(part) for part in _SEPARATORS.split(text) if part]
            if len(numbers) == self.channels + 1:
                timestamp, numbers = int(numbers[0]), numbers[1:]  # nan/inf here: garbage
            else:
                timestamp = 0
        except (ValueError, OverflowError):
            self.counters.garbage += 1
            return None
        if len(numbers) != self.channels:
            self.counters.wrong_count += 1
            return None
        self.counters.good += 1
        self._sequence = (self._sequence + 1) & 0xFFFF
        return Frame(self._sequence, timestamp, np.asarray(numbers, np.float32))

    def resync(self) -> None:
        """After a reconnect: the next line may start mid-way."""
        self._buffer.clear()
        self._first = True
        self._overflowing = False

    reset_sequence = resync  # lines carry no sequence: a new stream is a resync

    def readings(self) -> dict:
        """The readings' outcomes the decoder decides (the bridge's ledger adds the rest)."""
        c = self.counters
        return {"malformed_lines": c.garbage + c.wrong_count, "partial_lines": c.partial, "checksum_failed": c.checksum_failed}
