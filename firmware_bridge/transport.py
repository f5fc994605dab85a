"""Opening the serial link: a device path or any pyserial URL, and a simulated USB unplug.

``open_port`` accepts ``/dev/ttyACM0``, ``loop://``, ``socket://host:port``,
``rfc2217://host:port`` and every other URL pyserial's ``serial_for_url`` knows, so tests and
remote serial servers use the same code path as a USB cable.

:class:`PtyLink` is the test double for real hardware that cannot exist here: a
pseudo-terminal pair whose slave is reached through a stable symlink (like udev's
``/dev/serial/by-id/...``); ``unplug()`` closes it (the bridge's reads fail as on a USB
unplug) and ``replug()`` makes a new pair behind the same path.
"""

from __future__ import annotations

import os
import tempfile
import tty
from pathlib import Path

import serial


def open_port(port: str, baud: int = 115200, timeout: float = 0.05):
    """Open a serial device or pyserial URL, non-exclusive, with a short read timeout, keeping
    what the kernel already buffered.

    pyserial's ``open()`` of a device path (3.5) ends with ``_reset_input_buffer()`` (a TCIFLUSH):
    readings the device sent while the bridge was reconnecting would vanish without a count
    (measured: 125-175 frames per reconnect, and those sent before start-up). The flush is
    skipped for that one call; the bytes are decoded like any others (a half frame at the
    front fails its check and is counted).

    ``socket://`` (and ``rfc2217://``) end their ``open()`` with ``reset_input_buffer()``, which
    reads and discards whatever the device sent once the connection stood: a device that
    speaks first (a serial server replaying its buffer, the simulator catching up after an
    unplug) lost those readings, more the slower the bridge (measured: 46 of 126 stepped
    across three reconnects under load). Skipped for that call in the same way."""
    link = serial.serial_for_url(port, baudrate=baud, timeout=timeout, do_not_open=True)
    # a device path (POSIX) flushes through the private _reset_input_buffer; URL handlers
    # through the public method
    flush = "_reset_input_buffer" if isinstance(link, serial.Serial) else "reset_input_buffer"
    setattr(link, flush, lambda: None)
    try:
        link.open()
    finally:
        delattr(link, flush)  # later calls flush as documented
    return link


class PtyLink:
    """A pseudo-terminal pair: the device writes to ``master``; the bridge opens ``path``."""

    def __init__(self, path: str | None = None):
        self._directory = None
        if path is None:
            self._directory = tempfile.TemporaryDirectory(prefix="edgelstm-pty-")
            path = str(Path(self._directory.name) / "ttySIM0")
        self.path = path
        self.master = self.slave = None
        self.replug()

    def replug(self) -> None:
        """A fresh pty pair behind :attr:`path` (a device plugged in again)."""
        self.close()
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing: bytes pass untouched
        temporary = f"{self.path}.new"
        if os.path.lexists(temporary):
            os.unlink(temporary)
        os.symlink(os.ttyname(self.slave), temporary)
        os.replace(temporary, self.path)

    def wait_for_reader(self, timeout: float) -> bool:
        """Wait until another process opens :attr:`path` (the bridge), up to ``timeout`` seconds.

        Linux reports POLLHUP on a pty master while no slave is open; this object's own slave
        is closed for the wait and opened again after it (so bytes written during a later
        unplug/replug gap stay buffered). True when a reader came."""
        import select
        import time

        os.close(self.slave)
        self.slave = None
        poller = select.poll()
        poller.register(self.master, select.POLLHUP)
        deadline = time.monotonic() + timeout
        came = False
        while True:
            if not any(event & select.POLLHUP for _, event in poller.poll(0)):
                came = True
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        self.slave = os.open(os.readlink(self.path), os.O_RDWR | os.O_NOCTTY)
        return came

    def unplug(self) -> None:
        """Close both ends: reads on the bridge side fail like a USB device removed."""
        self.close()
        if os.path.lexists(self.path):
            os.unlink(self.path)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]

    def close(self) -> None:
        for fd in (self.master, self.slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unplug()
        if self._directory is not None:
            self._directory.cleanup()
