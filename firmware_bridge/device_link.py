"""One device's side of the bridge: its serial port, its decoder, its counts, its reconnects.

A :class:`DeviceLink` reads whatever its port has, decodes it (``frame`` or ``csv``) and puts
each reading on the bridge's shared queue as ``(stream, reading, arrived_ns)`` without ever
blocking: when the queue is full the reading is dropped and counted (``queue_overflow``), so
a slow sink can never stall a serial link and no loss is silent. When the port fails (USB
unplugged) it closes it, counts the disconnect and reopens it with exponential backoff; the
decoder keeps its sequence across the gap, so readings lost while unplugged are counted.

Ports that are file descriptors (device paths, ptys) are read by the gateway's one shared
:class:`~firmware_bridge.port_reader.PortReader`; other pyserial URLs (``loop://``,
``socket://``) by a thread of the link's own. Opening and reconnecting always happen in the
link's own thread: one device unplugged, slow or babbling never stalls another. What happens to a reading after the queue (stepped, rejected, failed) is counted
here too, by the bridge's worker, so every device has a ledger of its own.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field

import serial

from .alarms import AlarmRule
from .protocol import CsvDecoder, FrameDecoder
from .transport import open_port

RESET = object()  # queued after a reconnect (or by restart_stream) when the stream must restart


@dataclass
class Device:
    """What the bridge needs to know of one device: its name (in events, topics, metrics
    labels), its port (a device path or pyserial URL), protocol, speed and, optionally, alarm
    rules of its own (``None``: the bridge's rules)."""

    name: str
    port: str
    protocol: str = "frame"
    baud: int = 115200
    alarms: list | None = None


@dataclass
class BridgeStats:
    """One device's counts (what the reader queued, and what the worker did with it)."""

    readings_queued: int = 0
    readings_stepped: int = 0
    readings_rejected: int = 0  # the runtime refused them (wrong channel count, NaN, ...)
    queue_overflow: int = 0
    failed: int = 0  # readings whose handling raised (a bug: said in ``error``)
    resets_lost: int = 0  # reset markers a full queue refused after a reconnect (not readings)
    disconnects: int = 0
    reconnects: int = 0
    started: float = field(default_factory=time.time)
    last_good_reading: float | None = None  # time.time() of the last stepped reading


class DeviceLink:
    """The reader of one device: port -> decoder -> the shared queue, with reconnects."""

    def __init__(self, device: Device, stream: int, n_features: int, output_size: int, shared_queue: queue.Queue,
                 stop: threading.Event, alarms=(), backoff: tuple = (0.05, 5.0), open_timeout: float | None = None,
                 reset_on_reconnect: bool = False):
        if device.protocol not in ("frame", "csv"):
            raise ValueError(f"device {device.name}: unknown protocol {device.protocol!r}; choose frame or csv")
        self.name = device.name
        self.port_name = device.port
        self.protocol = device.protocol
        self.baud = device.baud
        self.stream = stream
        rules = alarms if device.alarms is None else device.alarms
        # each device its own rule objects: an alarm on one pump is not an alarm on another
        self.alarms = [dataclasses.replace(a, active=False) if isinstance(a, AlarmRule) else AlarmRule.parse(a) for a in rules]
        for rule in self.alarms:
            if rule.output >= output_size:
                raise ValueError(f"alarm rule {rule.name}: the model has {output_size} output(s), y0..y{output_size - 1}")
        self.decoder = FrameDecoder() if device.protocol == "frame" else CsvDecoder(n_features)
        self.stats = BridgeStats()
        self.unstepped = 0  # readings still queued when the bridge's stop() gave up waiting
        self.error: BaseException | None = None
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.reset_on_reconnect = reset_on_reconnect
        self._queue = shared_queue
        self._stop = stop
        self._port = None
        self._reader = None
        self.done = threading.Event()  # this link is read no more (stopped, or its port stayed away)
        self.thread: threading.Thread | None = None  # the thread that opens (and, off the shared reader, reads) the port

    # ---------------------------------------------------------------- counts
    @property
    def ledger(self) -> dict:
        """Where every reading this device sent ended: exactly one outcome each (see
        :attr:`firmware_bridge.bridge.Bridge.ledger`)."""
        s = self.stats
        outcomes = {"stepped": s.readings_stepped, "rejected": s.readings_rejected, "failed": s.failed,
                    "queue_overflow": s.queue_overflow, "unstepped": self.unstepped, **self.decoder.readings()}
        finished = s.readings_stepped + s.readings_rejected + s.failed + self.unstepped
        outcomes["in_flight"] = max(s.readings_queued - finished, 0)
        return {"outcomes": outcomes, "total": sum(outcomes.values()), "restarts": getattr(self.decoder.counters, "restarts", 0),
                "noise": getattr(self.decoder.counters, "noise", 0)}

    @property
    def counters(self) -> dict:
        """Every count of this device: decoder, queue, runtime outcomes and link."""
        out = {f"frames_{k}" if k != "bytes" else "bytes": v for k, v in self.decoder.counters.as_dict().items()}
        s = self.stats
        out.update(
            readings_queued=s.readings_queued, readings_stepped=s.readings_stepped, readings_rejected=s.readings_rejected,
            readings_failed=s.failed, queue_overflow=s.queue_overflow, readings_unstepped=self.unstepped,
            disconnects=s.disconnects, reconnects=s.reconnects,
        )
        return out

    # ---------------------------------------------------------------- reader
    def start(self, reader=None) -> None:
        """Open the port (in a thread of this link's own, with backoff) and read it: handed to
        ``reader`` (a :class:`~firmware_bridge.port_reader.PortReader`) when it can serve the
        port, else read by that thread."""
        self._reader = reader
        self._spawn(reconnecting=False)

    def _spawn(self, reconnecting: bool) -> None:
        self.thread = threading.Thread(target=self._serve, args=(reconnecting,), name=f"bridge-link-{self.name}",
                                       daemon=True)
        self.thread.start()

    def lost(self) -> None:
        """The shared reader found the port gone: count it and reconnect in a thread of this link's."""
        self._spawn(reconnecting=True)

    def _open(self) -> bool:
        delay = self.backoff[0]
        deadline = None if self.open_timeout is None else time.monotonic() + self.open_timeout
        while not self._stop.is_set():
            try:
                self._port = open_port(self.port_name, self.baud)
                return True
            except (serial.SerialException, OSError, ValueError) as exc:
                if deadline is not None and time.monotonic() > deadline:
                    self.error = exc
                    return False
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
        return False

    def close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _serve(self, reconnecting: bool) -> None:
        """Open (again, after a loss), then hand the port to the shared reader or read it here;
        after a loss here, reconnect. ``done`` is set when this link stops being read (stopped,
        or the port stayed away longer than ``open_timeout``), unless the shared reader has it."""
        handed = False
        try:
            while True:
                if reconnecting:
                    self._count_loss()
                if not self._open():
                    return
                if reconnecting:
                    self.stats.reconnects += 1
                if self._reader is not None and self._reader.attach(self):
                    handed = True
                    return
                self._read_here()
                if self._stop.is_set():
                    return
                reconnecting = True
        finally:
            if not handed:
                self.done.set()

    def _read_here(self) -> None:
        """Read the port until it fails or the bridge stops (ports the shared reader cannot serve)."""
        while not self._stop.is_set():
            try:
                data = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError):
                return
            if data:
                try:
                    frames = self.decoder.feed(data)
                except Exception as exc:  # a decoder bug must not stop the reading
                    self.error = exc
                    continue
                self._enqueue(frames)

    def _enqueue(self, frames) -> None:
        put, stream = self._queue.put_nowait, self.stream
        for frame in frames:
            try:
                put((stream, frame, time.monotonic_ns()))
                self.stats.readings_queued += 1
            except queue.Full:
                self.stats.queue_overflow += 1

    def request_reset(self, block: bool = False) -> None:
        """Queue a restart of this device's stream, in order with its readings."""
        try:
            self._queue.put((self.stream, RESET, 0), block=block)
        except queue.Full:
            self.stats.resets_lost += 1

    def _count_loss(self) -> None:
        """The port failed: count the disconnect, close it, keep the decoder's sequence across
        the gap (readings lost while unplugged are counted) and restart the stream if asked."""
        self.stats.disconnects += 1
        self.close_port()
        self.decoder.resync()
        if self.reset_on_reconnect:
            self.request_reset()
