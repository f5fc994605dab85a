"""One thread that reads every open serial port of a gateway, and gathers their readings.

A gateway of 16 devices with a reader thread each paid for 17 threads waking per frame, each
taking the GIL in turn: measured 58-68 % of a core for 16 devices at 100 readings/s. Here one
thread waits on all the ports at once (``selectors``: epoll on Linux), reads what each has,
decodes it with that device's decoder and **gathers**: the readings wait in a batch until
every device it serves has one, or ``gather`` seconds after the batch's first reading, then go
to the worker in one put (one wake of the worker per batch, not per reading). While a batch
waits for the others the thread sleeps until it closes and then reads every port that has
something, rather than waking for each arrival: devices with clocks of their own send at
moments of their own, and a wake per reading cost as much again as the rest of the gateway.

Only ports that are file descriptors are served here (device paths: ``/dev/ttyACM0``, a pty);
pyserial URLs with their own machinery (``loop://``, ``socket://``, ``rfc2217://``) keep a
thread of their own in :class:`~firmware_bridge.device_link.DeviceLink`. A port that fails
(USB unplugged: the read returns nothing or fails) is taken out of the selector, the batch is
handed on first (a reset marker after a reconnect must follow that device's earlier
readings), and the link reconnects in a thread of its own, then comes back here.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import threading
import time

import serial

_READ_BYTES = 1 << 16
_IDLE_WAIT = 0.5  # seconds between looks at the stop flag while nothing is gathered


class PortReader:
    """The shared reader thread: ``attach(link)`` hands it a link whose port is open."""

    def __init__(self, shared_queue, stop: threading.Event, gather: float):
        self._queue = shared_queue
        self._stop = stop
        self.gather = gather
        self._selector = None  # made by start(): a bridge built and never started holds no descriptors
        self._wake_read = self._wake_write = None
        self._arriving: list = []  # links handed over by their threads, registered by this one
        self._lock = threading.Lock()
        self._finished = False
        self._served: dict = {}  # fd -> link
        self._batch: list = []
        self._batch_streams: set = set()
        self._batch_started = 0.0
        self.thread = threading.Thread(target=self._loop, name="bridge-port-reader", daemon=True)

    @staticmethod
    def serves(port) -> bool:
        """A port this thread can wait on: a POSIX device (pyserial's ``Serial``, non-blocking fd)."""
        return isinstance(port, serial.Serial) and getattr(port, "fd", None) is not None

    def start(self) -> "PortReader":
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)  # a full pipe already wakes the thread: never block on it
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self.thread.start()
        return self

    def attach(self, link) -> bool:
        """Serve ``link`` (its port open) from now on; False when this reader cannot (the port
        is no file descriptor, or the reader has stopped): the link reads it itself."""
        if not self.serves(link._port):
            return False
        with self._lock:  # under the lock the thread takes to finish: a link is taken, or refused
            if self._finished or self._stop.is_set() or not self.thread.is_alive():
                return False
            self._arriving.append(link)
        self.wake()
        return True

    def wake(self) -> None:
        """Make the thread look at its hand-overs and the stop flag now (nothing once it has
        finished: its pipe is closed, and the number may belong to another file by then)."""
        with self._lock:
            if self._finished or self._wake_write is None:
                return
            try:
                os.write(self._wake_write, b"\x01")
            except OSError:
                pass

    # ---------------------------------------------------------------- the thread
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._register_arrivals()
                timeout = _IDLE_WAIT
                if self._batch:
                    timeout = max(self._batch_started + self.gather - time.monotonic(), 0.0)
                    if timeout and len(self._batch_streams) < len(self._served):
                        # the batch waits for the others anyway: sleep until it closes and read
                        # every port then, instead of waking for each arrival (devices with
                        # clocks of their own: one wake per reading, 1,600 per second at 16 x 100)
                        select.select([self._wake_read], [], [], timeout)  # a hand-over or stop ends it early
                        timeout = 0.0
                ready = self._selector.select(timeout)
                for key, _ in ready:
                    if key.data is None:
                        self._drain_wake()
                    else:
                        self._read(key.fd, key.data)
                if self._batch and (len(self._batch_streams) >= len(self._served)
                                    or time.monotonic() - self._batch_started >= self.gather):
                    self._hand_on()
        finally:
            with self._lock:
                self._finished = True  # attach() refuses from here on; what arrived before is served below
            self._register_arrivals()
            self._hand_on()
            for fd, link in list(self._served.items()):
                self._selector.unregister(fd)
                link.done.set()
            self._served.clear()
            self._selector.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _register_arrivals(self) -> None:
        with self._lock:
            arriving, self._arriving = self._arriving, []
        for link in arriving:
            fd = link._port.fd
            self._selector.register(fd, selectors.EVENT_READ, link)
            self._served[fd] = link

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _read(self, fd: int, link) -> None:
        try:
            data = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return
            data = b""  # EIO: the device went away
        if not data:  # ready but empty: disconnected (as pyserial reads it)
            self._lose(fd, link)
            return
        try:
            frames = link.decoder.feed(data)
        except Exception as exc:  # a decoder bug must not stop the reading
            link.error = exc
            return
        if not frames:
            return
        arrived = time.monotonic_ns()
        if not self._batch:
            self._batch_started = arrived / 1e9
        stream = link.stream
        self._batch.extend((stream, frame, arrived) for frame in frames)
        self._batch_streams.add(stream)
        link.stats.readings_queued += len(frames)  # in flight from here (a reading that does not fit moves on)

    def _hand_on(self) -> None:
        """The gathered batch to the worker in one put; what does not fit is counted per device."""
        batch, self._batch, self._batch_streams = self._batch, [], set()
        if not batch:
            return
        put = self._queue.put_many_nowait(batch)
        if put < len(batch):
            links = {link.stream: link for link in self._served.values()}
            for stream, _, _ in batch[put:]:
                links[stream].stats.readings_queued -= 1
                links[stream].stats.queue_overflow += 1

    def _lose(self, fd: int, link) -> None:
        self._hand_on()  # its readings before the gap go first
        self._selector.unregister(fd)
        del self._served[fd]
        link.lost()
