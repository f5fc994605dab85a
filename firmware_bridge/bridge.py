"""The bridge: serial bytes -> frames -> the runtime's ``step`` -> sinks.

Two threads and a bounded queue between them:

- the **reader** reads whatever the port has, decodes it (``frame`` or ``csv``) and puts each
  reading on the queue without ever blocking: when the queue is full the reading is
  dropped and counted (``queue_overflow``), so a slow sink can never stall the serial link
  and no loss is silent. When the port fails (USB unplugged) it closes it, counts the
  disconnect and reopens it with exponential backoff; the runtime's stream state carries
  on across the gap, or is reset when ``reset_on_reconnect`` is set.
- the **worker** takes readings in order, calls the runtime's public ``step`` (the only
  runtime API the bridge uses), evaluates the alarm rules and hands every event to the
  sinks.

``stop()`` drains the queue, flushes and closes the sinks and saves the runtime state if a
state file was given; the CLI calls it on SIGINT and SIGTERM.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import serial

from .alarms import AlarmRule
from .protocol import CsvDecoder, FrameDecoder
from .transport import open_port

_RESET = object()  # queued by the reader after a reconnect when the stream must restart


@dataclass
class BridgeStats:
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


class Bridge:
    """Reads a serial port, steps a runtime, feeds sinks."""

    def __init__(self, port: str, runtime, protocol: str = "frame", baud: int = 115200, sinks=(), alarms=(),
                 device: str = "device", queue_size: int = 4096, reset_on_reconnect: bool = False,
                 backoff: tuple = (0.05, 5.0), state_path=None, open_timeout: float | None = None,
                 stale_after: float = 30.0):
        if protocol not in ("frame", "csv"):
            raise ValueError(f"unknown protocol {protocol!r}; choose frame or csv")
        self.port_name = port
        self.runtime = runtime
        self.protocol = protocol
        self.baud = baud
        self.sinks = list(sinks)
        self.alarms = [a if isinstance(a, AlarmRule) else AlarmRule.parse(a) for a in alarms]
        for rule in self.alarms:
            if rule.output >= runtime.output_size:
                raise ValueError(f"alarm rule {rule.name}: the model has {runtime.output_size} output(s), y0..y{runtime.output_size - 1}")
        self.device = device
        self.reset_on_reconnect = reset_on_reconnect
        self.backoff = backoff
        self.state_path = state_path
        self.open_timeout = open_timeout
        self.stale_after = stale_after
        self.decoder = FrameDecoder() if protocol == "frame" else CsvDecoder(runtime.n_features)
        self.stats = BridgeStats()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._reader_done = threading.Event()
        self._threads = []
        self._port = None
        self.error: BaseException | None = None
        self.worker_errors = 0
        self.unstepped = 0  # readings still queued when stop() gave up waiting
        self._sinks_said = set()
        self.lock = threading.Lock()  # the runtime is stepped by the worker, read by /healthz and stop()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "Bridge":
        for sink in self.sinks:
            bind = getattr(sink, "bind", None)
            if bind:
                bind(self)
        self._threads = [
            threading.Thread(target=self._read_loop, name="bridge-reader", daemon=True),
            threading.Thread(target=self._work_loop, name="bridge-worker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, step what is queued, flush and close sinks, save the state."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        with self._queue.mutex:  # readings left behind (a reset marker is not one)
            self.unstepped = sum(1 for item, _ in self._queue.queue if item is not _RESET)
        self._close_port()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # one failing sink must not keep the others from closing
                self._sink_failed(sink, exc)
        if alive:  # never save a state a thread may still be changing
            self.error = self.error or RuntimeError(
                f"{', '.join(alive)} did not stop within {timeout} s ({self.unstepped} reading(s) left unstepped, "
                "a sink blocked?); state not saved")
        elif self.state_path:
            with self.lock:
                self.runtime.save_state(self.state_path)

    def restart_stream(self) -> None:
        """Start the stream afresh (a new machine on this port): the worker resets the runtime
        and the alarm rules in order with the readings, and the decoder forgets the sequence."""
        self._queue.put((_RESET, 0))

    def wait(self, condition, timeout: float) -> bool:
        """Poll ``condition()`` until true or ``timeout`` seconds pass (for tests and tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.005)
        return condition()

    def health(self, stale_after: float | None = None) -> dict:
        """Status for /healthz: ``failing`` when no good reading arrived for ``stale_after``
        seconds (or the model's inputs saturate), ``degraded`` on drift, stuck sensors or
        saturation, else ``ok``."""
        stale_after = self.stale_after if stale_after is None else stale_after
        now = time.time()
        with self.lock:
            runtime = self.runtime.health()
        last = self.stats.last_good_reading
        age = (now - last) if last else None
        status = runtime["status"] if runtime["status"] in ("ok", "degraded", "failing") else "ok"
        if age is None or age > stale_after:
            status = "failing"
        sinks = self.sink_report()
        delivering = [r for r in sinks if not r["sink"].startswith("prometheus")]
        if delivering and all(r["status"] == "failing" for r in delivering):
            status = "failing"  # nothing the bridge computes reaches anyone
        elif any(r["status"] == "failing" for r in sinks) and status == "ok":
            status = "degraded"
        elapsed = max(now - self.stats.started, 1e-9)
        counters = self.counters
        flags = {}
        for stream in runtime.get("streams", []):
            for name, feature in stream["features"].items():
                if feature["drifting"] or feature["stuck"] or feature["saturated"] > 0:
                    flags[name] = {k: feature[k] for k in ("drifting", "stuck", "saturated", "psi", "mean_shift")}
        return {
            "status": status,
            "device": self.device,
            "uptime_s": round(now - self.stats.started, 3),
            "last_good_reading_age_s": None if age is None else round(age, 3),
            "worker_errors": self.worker_errors,
            "sinks": sinks,
            "frames": {"good": counters["frames_good"], "bad": sum(counters.get(f"frames_{k}", 0) for k in ("crc_failed", "malformed", "oversized", "garbage", "wrong_count")),
                       "dropped": counters.get("frames_dropped", 0), "queue_overflow": counters["queue_overflow"]},
            "readings": self.ledger,
            "steps_per_s": round(self.stats.readings_stepped / elapsed, 3),
            "features": flags,
            "saturating": any(s.get("saturating") for s in runtime.get("streams", [])),
            "monitor": runtime["status"],
            "bundle_id": self.runtime.bundle.bundle_id,
            "model": self.runtime.model_file,
            "model_sha256": next((m["sha256"] for m in self.runtime.bundle.manifest["models"] if m["file"] == self.runtime.model_file), None),
        }

    @property
    def ledger(self) -> dict:
        """Where every reading that reached the bridge ended: exactly one outcome each.

        ``stepped`` (a prediction, or a reading that filled the window), ``rejected`` (the
        runtime refused it: out of range, NaN, wrong count), ``failed`` (its handling raised),
        ``queue_overflow`` (the worker was behind), ``unstepped`` (still queued when ``stop()``
        gave up), from the frame decoder ``corrupt``, ``lost_in_transit`` and ``duplicates``,
        from the CSV decoder ``malformed_lines`` and ``partial_lines``; ``in_flight`` is what
        is queued now. Their ``total`` is every reading the device sent that the bridge can know
        of (a frame lost at the very end of a run, with no later frame, leaves no trace)."""
        s = self.stats
        outcomes = {"stepped": s.readings_stepped, "rejected": s.readings_rejected, "failed": s.failed,
                    "queue_overflow": s.queue_overflow, "unstepped": self.unstepped, **self.decoder.readings()}
        finished = s.readings_stepped + s.readings_rejected + s.failed + self.unstepped
        outcomes["in_flight"] = max(s.readings_queued - finished, 0)
        return {"outcomes": outcomes, "total": sum(outcomes.values()), "restarts": getattr(self.decoder.counters, "restarts", 0),
                "noise": getattr(self.decoder.counters, "noise", 0)}

    @property
    def counters(self) -> dict:
        """Every count the bridge keeps: decoder, queue, runtime and link."""
        out = {f"frames_{k}" if k != "bytes" else "bytes": v for k, v in self.decoder.counters.as_dict().items()}
        s = self.stats
        out.update(
            readings_queued=s.readings_queued, readings_stepped=s.readings_stepped, readings_rejected=s.readings_rejected,
            readings_failed=s.failed, queue_overflow=s.queue_overflow, readings_unstepped=self.unstepped,
            disconnects=s.disconnects, reconnects=s.reconnects,
        )
        return out

    # ---------------------------------------------------------------- reader
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

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _read_loop(self) -> None:
        try:
            if not self._open():
                return
            while not self._stop.is_set():
                try:
                    data = self._port.read(max(1, self._port.in_waiting))
                except (serial.SerialException, OSError, TypeError, AttributeError):
                    if not self._reconnect():
                        return  # stopped, or the port stayed away longer than open_timeout
                    continue
                if data:
                    try:
                        frames = self.decoder.feed(data)
                    except Exception as exc:  # a decoder bug must not stop the reading
                        self.error = exc
                        continue
                    self._enqueue(frames)
        finally:
            self._reader_done.set()

    def _enqueue(self, frames) -> None:
        put = self._queue.put_nowait
        for frame in frames:
            try:
                put((frame, time.monotonic_ns()))
                self.stats.readings_queued += 1
            except queue.Full:
                self.stats.queue_overflow += 1

    def _reconnect(self) -> bool:
        self.stats.disconnects += 1
        self._close_port()
        self.decoder.resync()  # the sequence carries on: frames lost while unplugged are counted
        if self.reset_on_reconnect:
            try:
                self._queue.put_nowait((_RESET, 0))
            except queue.Full:
                self.stats.resets_lost += 1
        if self._open():
            self.stats.reconnects += 1
            return True
        return False

    # ---------------------------------------------------------------- worker
    def _work_loop(self) -> None:
        get = self._queue.get
        while True:
            try:
                frame, arrived = get(timeout=0.02)
            except queue.Empty:
                if self._stop.is_set() and self._reader_done.is_set():
                    return
                continue
            try:
                if frame is _RESET:
                    with self.lock:
                        self.runtime.reset()
                    for rule in self.alarms:
                        rule.active = False
                    continue
                before = self.stats.readings_stepped + self.stats.readings_rejected
                self._handle(frame, arrived)
            except Exception as exc:  # counted and kept; the worker carries on with the next reading
                self.worker_errors += 1
                if self.stats.readings_stepped + self.stats.readings_rejected == before:
                    self.stats.failed += 1  # the reading itself got no outcome: it failed
                self.error = exc

    def _handle(self, frame, arrived_ns: int) -> None:
        with self.lock:
            start = time.perf_counter()
            rejected_before = self.runtime.counters["rejected"]
            try:
                y = self.runtime.step(frame.values)
            except Exception as exc:  # the runtime's InputError under the "error" policy, and anything else
                self.stats.readings_rejected += 1
                self._emit({"event": "rejected", "device": self.device, "seq": frame.sequence, "reason": str(exc)})
                return
            elapsed = time.perf_counter() - start
            values = [float(v) for v in np.ravel(y)]
            monitor_events = self.runtime.events()
            skipped = self.runtime.counters["rejected"] != rejected_before
        if values and values[0] != values[0] and skipped:  # NaN: the runtime skipped a bad reading
            self.stats.readings_rejected += 1
            self._emit({"event": "rejected", "device": self.device, "seq": frame.sequence, "reason": "bad reading skipped"})
            return
        stats = self.stats
        stats.readings_stepped += 1
        stats.last_good_reading = time.time()
        if values and values[0] != values[0]:
            if self.runtime.window:  # a good reading, but the runtime's window is still filling
                self._emit({"event": "filling", "device": self.device, "seq": frame.sequence,
                            "window": self.runtime.window, "time": stats.last_good_reading})
            for monitor_event in monitor_events:  # a state_reset (the stream started again) says why
                self._emit(dict(monitor_event, device=self.device, seq=frame.sequence, time=stats.last_good_reading))
            return
        event = {
            "event": "prediction", "device": self.device, "seq": frame.sequence, "t_device_us": frame.timestamp_us,
            "time": stats.last_good_reading, "y": values, "step_us": elapsed * 1e6, "arrived_ns": arrived_ns,
        }
        self._emit(event)
        for monitor_event in monitor_events:  # drift, saturation, stuck sensors
            monitor_event["device"] = self.device
            monitor_event["seq"] = frame.sequence
            monitor_event["time"] = stats.last_good_reading
            self._emit(monitor_event)
        for rule in self.alarms:
            change = rule.update(values)
            if change:
                self._emit({"event": change, "device": self.device, "rule": rule.name, "value": values[rule.output],
                            "seq": frame.sequence, "time": stats.last_good_reading})

    def _emit(self, event: dict) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception as exc:  # a broken sink is counted and said, never fatal for the stream
                self._sink_failed(sink, exc)

    def _sink_failed(self, sink, exc) -> None:
        from edgelstm.errors import SinkError

        if not isinstance(exc, SinkError):  # the sink did not count it itself
            sink.failures = getattr(sink, "failures", 0) + 1
            sink.last_failure = str(exc)
        name = getattr(sink, "name", type(sink).__name__)
        if name not in self._sinks_said:  # one line per failing sink on stderr; the rest is counted
            self._sinks_said.add(name)
            print(f"edgelstm bridge: sink {name} failing: {exc}", file=sys.stderr, flush=True)
        self.error = self.error or exc

    def sink_report(self) -> list:
        """Per sink: name, status (``ok`` or ``failing``), undelivered events and the last failure."""
        report = []
        for sink in self.sinks:
            undelivered = sink.undelivered() if hasattr(sink, "undelivered") else 0
            report.append({"sink": getattr(sink, "name", type(sink).__name__), "undelivered": undelivered,
                           "status": "failing" if undelivered or getattr(sink, "failures", 0) else "ok",
                           "last_failure": getattr(sink, "last_failure", None)})
        return report
