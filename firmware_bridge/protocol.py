"""Wire protocols between the MCU and the bridge: ``frame`` (binary) and ``csv`` (text lines).

**frame** (version 1). On the wire a frame is ``0x00 || COBS(payload || crc32(payload)) || 0x00``
(back-to-back frames share nothing: the empty run between two delimiters is ignored).
Payload, little-endian::

    u8   version          1
    u8   encoding         0: float32 values; 1: int16 values times a float32 scale
    u16  sequence         +1 per frame, wraps at 65536
    u64  timestamp_us     device clock, microseconds
    u8   channels         N (1..64)
    f32  scale            only when encoding == 1
    N x  value            f32 (encoding 0) or i16 (encoding 1)

``crc32`` is CRC-32/ISO-HDLC (zlib's ``crc32``: reflected polynomial 0xEDB88320, init and
xorout 0xFFFFFFFF), appended little-endian. COBS removes every 0x00 from the encoded bytes
so 0x00 only ever delimits frames: a decoder that starts mid-frame, or loses bytes, finds
the next boundary at the next 0x00, and the leading delimiter keeps line noise that arrives
between frames from running into the next frame. COBS comes from the ``cobs`` package,
CRC-32 from zlib.

:class:`FrameDecoder` is a packetizer in the style of ``serial.threaded.Packetizer``: feed
it any chunks of bytes, it returns decoded frames and keeps exact counts of good frames,
CRC failures, malformed and oversized frames, sequence gaps (frames lost) and duplicates.
Its buffer is bounded: a run of bytes without a delimiter longer than a frame can be is
dropped and counted, never accumulated.

**csv**: one reading per line, numbers separated by comma, tab or spaces (Edge Impulse's
data forwarder format), optional leading timestamp, CR/LF tolerant, blank lines ignored,
the partial first line after connecting discarded, garbage lines counted and skipped.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from cobs import cobs

VERSION = 1
FLOAT32, INT16 = 0, 1
MAX_CHANNELS = 64
#: A sequence number at most this far behind the last one is a repeat; further back, a restart.
RESTART_WINDOW = 16
HEADER = struct.Struct("<BBHQB")
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


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_payload(sequence: int, timestamp_us: int, values, encoding: int = FLOAT32, scale: float = 1.0) -> bytes:
    values = np.asarray(values)
    count = int(values.shape[0])
    if not 1 <= count <= MAX_CHANNELS:
        raise ValueError(f"{count} channels; the frame protocol carries 1..{MAX_CHANNELS}")
    head = HEADER.pack(VERSION, encoding, sequence & 0xFFFF, timestamp_us & 0xFFFFFFFFFFFFFFFF, count)
    if encoding == FLOAT32:
        body = values.astype("<f4").tobytes()
    elif encoding == INT16:
        raw = np.clip(np.rint(values.astype(np.float64) / scale), -32768, 32767).astype("<i2")
        body = struct.pack("<f", scale) + raw.tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding}")
    return head + body


def encode_frame(sequence: int, timestamp_us: int, values, encoding: int = FLOAT32, scale: float = 1.0) -> bytes:
    """One complete frame on the wire, both delimiters included."""
    payload = encode_payload(sequence, timestamp_us, values, encoding, scale)
    return b"\x00" + cobs.encode(payload + struct.pack("<I", crc32(payload))) + b"\x00"


def decode_payload(payload: bytes) -> Frame:
    """Parse a CRC-checked payload; raises ValueError naming what is wrong."""
    if len(payload) < HEADER.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than the {HEADER.size}-byte header")
    version, encoding, sequence, timestamp, count = HEADER.unpack_from(payload)
    if version != VERSION:
        raise ValueError(f"protocol version {version}, this bridge speaks {VERSION}")
    if not 1 <= count <= MAX_CHANNELS:
        raise ValueError(f"{count} channels")
    body = payload[HEADER.size :]
    if encoding == FLOAT32:
        if len(body) != 4 * count:
            raise ValueError(f"{len(body)} value bytes for {count} float32 channels")
        return Frame(sequence, timestamp, np.frombuffer(body, "<f4").astype(np.float32), FLOAT32)
    if encoding == INT16:
        if len(body) != 4 + 2 * count:
            raise ValueError(f"{len(body)} value bytes for {count} int16 channels and a scale")
        (scale,) = struct.unpack_from("<f", body)
        values = np.frombuffer(body, "<i2", offset=4).astype(np.float32) * np.float32(scale)
        return Frame(sequence, timestamp, values, INT16, float(scale))
    raise ValueError(f"unknown value encoding {encoding}")


@dataclass
class FrameCounters:
    good: int = 0
    crc_failed: int = 0
    malformed: int = 0  # COBS-invalid, too short, bad version or lengths
    oversized: int = 0  # delimiter-free runs longer than any frame
    dropped: int = 0  # frames missing from the sequence (gaps)
    duplicates: int = 0  # same sequence number again, or a little behind the last one
    restarts: int = 0  # the sequence jumped far back: the device restarted, counting begins again
    bytes: int = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class FrameDecoder:
    """Bytes in, frames out; resynchronises on 0x00, counts every outcome exactly."""

    max_frame: int = MAX_FRAME_BYTES
    counters: FrameCounters = field(default_factory=FrameCounters)
    _buffer: bytearray = field(default_factory=bytearray)
    _overflowing: bool = False
    _last_sequence: int | None = None

    def feed(self, data: bytes) -> list:
        """Decode what ``data`` completes; keep the unfinished tail for the next call."""
        self.counters.bytes += len(data)
        frames = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                return frames
            self._append(data[start:end])
            if self._overflowing:
                self._overflowing = False  # the oversized run ends here; already counted
            elif self._buffer:
                frame = self._decode(bytes(self._buffer))
                if frame is not None:
                    frames.append(frame)
            self._buffer.clear()
            start = end + 1

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
            self.counters.malformed += 1
            return None
        if len(raw) < 5:
            self.counters.malformed += 1
            return None
        payload, (crc,) = raw[:-4], struct.unpack("<I", raw[-4:])
        if crc32(payload) != crc:
            self.counters.crc_failed += 1
            return None
        try:
            frame = decode_payload(payload)
        except ValueError:
            self.counters.malformed += 1
            return None
        if self._last_sequence is not None:
            gap = (frame.sequence - self._last_sequence) & 0xFFFF
            behind = (0x10000 - gap) & 0xFFFF
            if gap == 0 or 0 < behind <= RESTART_WINDOW:  # the same frame again, or a late repeat
                self.counters.duplicates += 1
                return None
            if gap > 0x8000:  # far behind: the device restarted (a reboot behind a USB-UART adapter)
                self.counters.restarts += 1
            else:
                self.counters.dropped += gap - 1
        self._last_sequence = frame.sequence
        self.counters.good += 1
        return frame

    def reset_sequence(self) -> None:
        """Forget the last sequence number (after a reconnect the device may have restarted)."""
        self._last_sequence = None
        self._buffer.clear()
        self._overflowing = False


_SEPARATORS = re.compile(r"[,\t ]+")


@dataclass
class CsvCounters:
    good: int = 0
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
        text = line.strip(b"\r \t").decode("ascii", "replace")
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

    def reset_sequence(self) -> None:
        self._buffer.clear()
        self._first = True
        self._overflowing = False
