"""The bridge: serial bytes -> frames -> the runtime's ``step`` -> sinks, for one device or many.

Each device a :class:`~firmware_bridge.device_link.DeviceLink` (port, decoder, reconnects, its
counts), one thread that reads every device port at once and gathers their readings
(:class:`~firmware_bridge.port_reader.PortReader`), one bounded queue, and one **worker** that takes readings
in order, steps the runtime (its public ``step`` and ``step_streams``, the only runtime API
the bridge uses), evaluates each device's alarm rules and hands every event to the sinks.

A gateway: with several devices the runtime is loaded with ``streams=K`` and device ``k`` is
stream ``k``. The worker takes whatever readings have arrived (at most one per device per
call, each device's readings in its order) and steps them with one ``step_streams`` call, one
Invoke for every device that has a new reading; the other devices' state is untouched.
Devices keep their own names (in events, MQTT topics, metrics labels), alarm rules, ledgers
and health; one device unplugged never stalls the others (its link reconnects, theirs read).

Model updates (:meth:`Bridge.request_update`: SIGHUP, ``systemctl reload``, or a new bundle
placed at the bundle's path, which the bridge watches): the new bundle is loaded beside the
running one by a thread of its own (its hashes checked by the load), then the worker switches
between two readings, so no reading is lost or stepped twice. Each stream's state carries over
through the float state when the layouts match (``StreamRuntime.carry_state_from``); otherwise
every stream restarts from a zero state and says so. A bundle that does not load, or does not fit
(other features or outputs), is refused with an event, a count and a line on stderr, and the
running model goes on.

``stop()`` drains the queue, flushes and closes the sinks and saves the runtime state if a
state file was given; the CLI calls it on SIGINT and SIGTERM.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .device_link import RESET, BridgeStats, Device, DeviceLink
from .port_reader import PortReader
from .reading_queue import ReadingQueue

__all__ = ["Bridge", "BridgeStats", "Device"]

_OUTCOME_KEYS = ("stepped", "rejected", "failed", "queue_overflow", "unstepped")


class Bridge:
    """Reads serial ports, steps a runtime, feeds sinks.

    One device: ``Bridge(port, runtime, protocol=..., device=NAME)``. Several:
    ``Bridge(runtime=runtime, devices=[Device(name, port, protocol, baud), ...])`` with a
    runtime loaded with ``streams=len(devices)``."""

    def __init__(self, port: str | None = None, runtime=None, protocol: str = "frame", baud: int = 115200, sinks=(),
                 alarms=(), device: str = "device", queue_size: int = 4096, reset_on_reconnect: bool = False,
                 backoff: tuple = (0.05, 5.0), state_path=None, open_timeout: float | None = None,
                 stale_after: float = 30.0, devices=None, gather: float = 0.005, loader=None,
                 watch: float | None = None):
        if runtime is None:
            raise ValueError("Bridge needs a runtime (edgelstm.load(bundle))")
        if devices is None:
            if port is None:
                raise ValueError("Bridge needs a port, or devices=[Device(...), ...]")
            devices = [Device(name=device, port=port, protocol=protocol, baud=baud)]
        devices = list(devices)
        names = [d.name for d in devices]
        if not devices or len(set(names)) != len(names):
            raise ValueError(f"devices {names}: at least one, each with a name of its own")
        if runtime.streams != len(devices):
            raise ValueError(f"{len(devices)} device(s) need a runtime with one stream each: load the bundle with "
                             f"streams={len(devices)} (it has {runtime.streams})")
        self.runtime = runtime
        self.sinks = list(sinks)
        self.state_path = state_path
        self.stale_after = stale_after
        #: a gateway's worker waits up to this many seconds after a reading for the other devices'
        #: readings, so one Invoke steps several (stepping one stream of K costs the restore of the
        #: K-1 others: docs/runtime.md); never longer once every device has one waiting
        self.gather = gather if len(devices) > 1 else 0.0
        self._queue = ReadingQueue(maxsize=queue_size)
        self._stop = threading.Event()
        self._reader = PortReader(self._queue, self._stop, self.gather)
        self.links = [DeviceLink(d, k, runtime.n_features, runtime.output_size, self._queue, self._stop, alarms=alarms,
                                 backoff=backoff, open_timeout=open_timeout, reset_on_reconnect=reset_on_reconnect)
                      for k, d in enumerate(devices)]
        self._by_name = {link.name: link for link in self.links}
        #: a sink logs raw readings (a log a trainer can use): events then carry them
        self._with_readings = any(getattr(sink, "readings", None) for sink in self.sinks)
        self._worker = None
        self._error: BaseException | None = None
        self.worker_errors = 0
        self._sinks_said = set()
        self.started = time.time()
        self.lock = threading.Lock()  # the runtime is stepped by the worker, read by /healthz and stop()
        #: where updates come from (SIGHUP reloads it; with ``watch`` a change there is noticed)
        self.bundle_path = Path(runtime.bundle.path)
        self._loader = loader
        self.watch = watch  # seconds between looks at the bundle folder; None: no watching
        self.updates = {"applied": 0, "refused": 0, "state_carried": 0, "state_restarted": 0, "last": None}
        self._next_runtime = None  # (runtime, path): loaded, checked, waiting for the worker to switch
        self._update_lock = threading.Lock()
        self._loading = None
        self._load_again = None

    # ---------------------------------------------------------------- one device's view
    # A single-device bridge is used as it always was: these name its one device.
    @property
    def device(self) -> str:
        return self.links[0].name if len(self.links) == 1 else "gateway"

    @property
    def stats(self) -> BridgeStats:
        return self.links[0].stats

    @property
    def decoder(self):
        return self.links[0].decoder

    @property
    def alarms(self) -> list:
        return self.links[0].alarms

    @property
    def protocol(self) -> str:
        return self.links[0].protocol

    @property
    def port_name(self) -> str:
        return self.links[0].port_name

    @property
    def _port(self):
        return self.links[0]._port

    @property
    def unstepped(self) -> int:
        return sum(link.unstepped for link in self.links)

    @property
    def error(self) -> BaseException | None:
        """The first thing that went wrong (a sink, the worker, a reader), or None."""
        return self._error or next((link.error for link in self.links if link.error is not None), None)

    @error.setter
    def error(self, value) -> None:
        self._error = value

    def link(self, name: str) -> DeviceLink:
        return self._by_name[name]

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "Bridge":
        for sink in self.sinks:
            bind = getattr(sink, "bind", None)
            if bind:
                bind(self)
        self._worker = threading.Thread(target=self._work_loop, name="bridge-worker", daemon=True)
        self._reader.start()
        for link in self.links:
            link.start(self._reader)
        self._worker.start()
        if self.watch:
            threading.Thread(target=self._watch_loop, name="bridge-bundle-watch", daemon=True).start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, step what is queued, flush and close sinks, save the state."""
        self._stop.set()
        self._reader.wake()
        deadline = time.monotonic() + timeout
        if self._reader.thread.ident is not None:  # first: once it has stopped it hands no port back
            self._reader.thread.join(timeout)
        threads = [self._reader.thread] + [link.thread for link in self.links if link.thread is not None]
        threads += [self._worker] if self._worker else []
        for thread in threads:
            if thread.ident is not None:
                thread.join(max(deadline - time.monotonic(), 0.0))
        alive = [t.name for t in threads if t.is_alive()]
        with self._queue.mutex:  # readings left behind (a reset marker is not one)
            left = collections.Counter(stream for stream, item, _ in self._queue.queue if item is not RESET)
        for link in self.links:
            link.unstepped = left.get(link.stream, 0)
            link.close_port()
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

    def restart_stream(self, device: str | None = None) -> None:
        """Start a device's stream afresh (a new machine on that port; default: the only
        device): the worker resets its state and alarm rules in order with its readings."""
        link = self.links[0] if device is None and len(self.links) == 1 else self._by_name[device]
        link.request_reset(block=True)

    def wait(self, condition, timeout: float) -> bool:
        """Poll ``condition()`` until true or ``timeout`` seconds pass (for tests and tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.005)
        return condition()

    # ---------------------------------------------------------------- model updates
    def request_update(self, path=None) -> threading.Thread:
        """Load the bundle at ``path`` (default: :attr:`bundle_path`, replaced in place) beside the
        running one, in a thread of its own; the worker switches to it between two readings.
        Returns the loading thread (join it to wait for the load; the switch follows at the
        worker's next turn). A request while one is loading is done after it."""
        path = Path(path) if path is not None else self.bundle_path
        with self._update_lock:
            if self._loading is not None and self._loading.is_alive():
                self._load_again = path
                return self._loading
            self._loading = threading.Thread(target=self._load_update, args=(path,), name="bridge-update", daemon=True)
            self._loading.start()
            return self._loading

    def _load_update(self, path: Path) -> None:
        while path is not None:
            try:
                new = self._load(path)
                problem = self._misfit(new)
            except Exception as exc:  # BundleError names the file; anything else is said too
                new, problem = None, str(exc) or type(exc).__name__
            if problem:
                self._refuse(path, problem)
            else:
                self._next_runtime = (new, path)  # the newest loaded wins
            with self._update_lock:  # the end is decided under the lock request_update takes: no request lost
                path, self._load_again = self._load_again, None
                if path is None:
                    self._loading = None

    def _load(self, path: Path):
        if self._loader is not None:
            return self._loader(path)
        import edgelstm

        running = self.runtime
        return edgelstm.load(path, backend=running.backend, on_bad_input=running.on_bad_input, streams=running.streams,
                             delegate=None)

    def _misfit(self, new) -> str | None:
        """Why ``new`` cannot replace the running runtime (readings, sinks and alarms must fit)."""
        running = self.runtime
        if new.n_features != running.n_features:
            return f"the new model reads {new.n_features} features, the devices send {running.n_features}"
        if new.output_size != running.output_size:
            return (f"the new model has {new.output_size} output(s), the running one {running.output_size} "
                    "(the sinks' columns and the alarm rules are made for those)")
        if new.streams != running.streams:
            return f"the new runtime has {new.streams} stream(s), the bridge {running.streams} device(s)"
        return None

    def _refuse(self, path: Path, reason: str) -> None:
        self.updates["refused"] += 1
        self.updates["last"] = {"outcome": "refused", "bundle": str(path), "reason": reason, "time": time.time()}
        print(f"edgelstm bridge: model update from {path} refused, the running model goes on: {reason}",
              file=sys.stderr, flush=True)
        self._emit({"event": "model_update_refused", "bundle": str(path), "reason": reason, "time": time.time()})

    def _switch(self) -> None:
        """Make the loaded runtime the running one (the worker, between two readings)."""
        new, path = self._next_runtime
        self._next_runtime = None
        with self.lock:
            old = self.runtime
            leftover = old.events()
            try:
                new.carry_state_from(old)
                restarted = None
            except Exception as exc:  # another layout: every stream starts again, and says so
                new.reset()
                restarted = str(exc)
            self.runtime = new
        self._monitor_events(leftover, {})
        outcome = "state_restarted" if restarted else "state_carried"
        self.updates["applied"] += 1
        self.updates[outcome] += 1
        self.updates["last"] = {"outcome": "applied", "bundle": str(path), "state": outcome[6:], "time": time.time()}
        event = {"event": "model_update", "bundle": str(path), "from": old.bundle.bundle_id, "to": new.bundle.bundle_id,
                 "model": new.model_file, "state": outcome[6:], "time": time.time()}
        if restarted:
            event["reason"] = restarted
        print(f"edgelstm bridge: model updated from {path}: {new.model_file} on {new.backend}, state {outcome[6:]}"
              + (f" ({restarted})" if restarted else ""), file=sys.stderr, flush=True)
        self._emit(event)
        if restarted:
            for link in self.links:
                for rule in link.alarms:
                    rule.active = False
                self._emit({"event": "stream_restarted", "device": link.name, "reason": f"model update: {restarted}",
                            "time": time.time()})

    def _signature(self):
        """What the bundle folder holds now: its resolved path and each file's name, size and
        modification time (a folder renamed into place or a symlink switched changes it too)."""
        try:
            folder = self.bundle_path.resolve()
            return (str(folder), tuple(sorted((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                                              for entry in folder.iterdir() if entry.is_file())))
        except OSError:
            return None  # missing for a moment (being replaced): look again

    def _watch_loop(self) -> None:
        """A new bundle placed at the path: load it once the folder has stopped changing for one
        look (a copy in progress is not loaded half-written; a refused one is not retried until it
        changes again)."""
        seen, candidate = self._signature(), None
        while not self._stop.wait(self.watch):
            now = self._signature()
            if now is None or now == seen:
                candidate = None
            elif now != candidate:
                candidate = now  # changed: wait one more look for it to settle
            else:
                seen, candidate = now, None
                self.request_update()

    # ---------------------------------------------------------------- health and counts
    def health(self, stale_after: float | None = None) -> dict:
        """Status for /healthz: ``failing`` when no good reading arrived for ``stale_after``
        seconds (or the model's inputs saturate), ``degraded`` on drift, stuck sensors or
        saturation, else ``ok``. With several devices each has its own entry under
        ``devices``; the gateway is ``failing`` when every device is, ``degraded`` when any is
        not ``ok``."""
        stale_after = self.stale_after if stale_after is None else stale_after
        now = time.time()
        with self.lock:
            runtime = self.runtime.health()
        streams = {s["stream"]: s for s in runtime.get("streams", [])}
        devices = {link.name: self._device_health(link, streams.get(link.stream), runtime, now, stale_after)
                   for link in self.links}
        statuses = [d["status"] for d in devices.values()]
        if len(self.links) == 1:
            status = statuses[0]
        else:
            status = "failing" if all(s == "failing" for s in statuses) else (
                "ok" if all(s == "ok" for s in statuses) else "degraded")
        sinks = self.sink_report()
        delivering = [r for r in sinks if not r["sink"].startswith("prometheus")]
        if delivering and all(r["status"] == "failing" for r in delivering):
            status = "failing"  # nothing the bridge computes reaches anyone
        elif any(r["status"] == "failing" for r in sinks) and status == "ok":
            status = "degraded"
        elapsed = max(now - self.started, 1e-9)
        report = {"status": status, "device": self.device, "uptime_s": round(now - self.started, 3),
                  "worker_errors": self.worker_errors, "sinks": sinks}
        if len(self.links) == 1:
            one = dict(devices[self.links[0].name])
            one.pop("status")
            one.pop("port")
            report.update(one)
        else:
            report["readings"] = self.ledger
            report["steps_per_s"] = round(sum(link.stats.readings_stepped for link in self.links) / elapsed, 3)
            report["devices"] = devices
        report.update({
            "model_updates": {k: v for k, v in self.updates.items() if k != "last"}
            | {"last": None if self.updates["last"] is None else {k: v for k, v in self.updates["last"].items() if k != "bundle"}},
            "monitor": runtime["status"],
            "bundle_id": self.runtime.bundle.bundle_id,
            "model": self.runtime.model_file,
            "model_sha256": next((m["sha256"] for m in self.runtime.bundle.manifest["models"] if m["file"] == self.runtime.model_file), None),
        })
        return report

    def _device_health(self, link: DeviceLink, stream: dict | None, runtime: dict, now: float, stale_after: float) -> dict:
        last = link.stats.last_good_reading
        age = (now - last) if last else None
        if len(self.links) == 1:
            status = runtime["status"] if runtime["status"] in ("ok", "degraded", "failing") else "ok"
        else:  # this device's stream alone
            status = "ok"
            if stream is not None and stream.get("saturating"):
                status = "failing"
            elif stream is not None and any(f["drifting"] or f["stuck"] or f["saturated"] > 0 for f in stream["features"].values()):
                status = "degraded"
            if link.stream in runtime.get("state_reset_streams", []) and status == "ok":
                status = "degraded"
        if age is None or age > stale_after:
            status = "failing"
        counters = link.counters
        flags = {}
        for name, feature in (stream or {}).get("features", {}).items():
            if feature["drifting"] or feature["stuck"] or feature["saturated"] > 0:
                flags[name] = {k: feature[k] for k in ("drifting", "stuck", "saturated", "psi", "mean_shift")}
        elapsed = max(now - link.stats.started, 1e-9)
        return {
            "status": status,
            "port": link.port_name,
            "last_good_reading_age_s": None if age is None else round(age, 3),
            "frames": {"good": counters["frames_good"],
                       "bad": sum(counters.get(f"frames_{k}", 0) for k in ("crc_failed", "malformed", "oversized", "garbage", "wrong_count")),
                       "dropped": counters.get("frames_dropped", 0), "queue_overflow": counters["queue_overflow"]},
            "readings": link.ledger,
            "steps_per_s": round(link.stats.readings_stepped / elapsed, 3),
            "features": flags,
            "saturating": bool((stream or {}).get("saturating")),
        }

    @property
    def ledger(self) -> dict:
        """Where every reading that reached the bridge ended: exactly one outcome each.

        ``stepped`` (a prediction, or a reading that filled the window), ``rejected`` (the
        runtime refused it: out of range, NaN, wrong count), ``failed`` (its handling raised),
        ``queue_overflow`` (the worker was behind), ``unstepped`` (still queued when ``stop()``
        gave up), from the frame decoder ``corrupt``, ``lost_in_transit`` and ``duplicates``,
        from the CSV decoder ``malformed_lines`` and ``partial_lines``; ``in_flight`` is what
        is queued now. Their ``total`` is every reading the devices sent that the bridge can
        know of (a frame lost at the very end of a run, with no later frame, leaves no trace).
        With several devices: the sum; each device's own is ``link(name).ledger``."""
        ledgers = [link.ledger for link in self.links]
        if len(ledgers) == 1:
            return ledgers[0]
        outcomes = collections.Counter()
        for one in ledgers:
            outcomes.update(one["outcomes"])
        outcomes = dict(outcomes)
        return {"outcomes": outcomes, "total": sum(outcomes.values()), "restarts": sum(one["restarts"] for one in ledgers),
                "noise": sum(one["noise"] for one in ledgers)}

    @property
    def counters(self) -> dict:
        """Every count the bridge keeps: decoder, queue, runtime and link (summed over devices)."""
        if len(self.links) == 1:
            return self.links[0].counters
        total = collections.Counter()
        for link in self.links:
            total.update(link.counters)
        return dict(total)

    # ---------------------------------------------------------------- worker
    def _work_loop(self) -> None:
        get = self._queue.get
        pending = collections.deque()
        limit = 4 * len(self.links)
        while True:
            if self._next_runtime is not None:
                self._switch()  # between two readings: none lost, none stepped twice
            if not pending:
                try:
                    pending.append(get(timeout=0.02))
                except queue.Empty:
                    if self._stop.is_set() and all(link.done.is_set() for link in self.links):
                        return
                    continue
                self._gather(pending, limit)
            batch = self._next_batch(pending)
            if batch:
                self._step_batch(batch)

    def _gather(self, pending: collections.deque, limit: int) -> None:
        """Add what else has arrived, waiting for the other devices until :attr:`gather` after
        the first reading arrived (the shared reader has gathered already: its batches come
        complete, or that late, and are not held again)."""
        get = self._queue.get
        first = next((arrived for _, _, arrived in pending if arrived), time.monotonic_ns())
        deadline = first / 1e9 + self.gather
        everyone = len(self.links)
        while len(pending) < limit:
            pending.extend(self._queue.get_all_nowait(limit - len(pending)))
            if len(pending) >= limit:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len({stream for stream, _, _ in pending}) == everyone:
                return
            try:
                pending.append(get(timeout=remaining))
            except queue.Empty:
                return

    def _next_batch(self, pending: collections.deque) -> list:
        """Take at most one reading per device from ``pending``, each device's in its order;
        a reset marker is applied at once when none of its device's readings is taken yet."""
        taken, rest, batch = set(), collections.deque(), []
        while pending:
            item = pending.popleft()
            stream, frame, _ = item
            if stream in taken:
                rest.append(item)
            elif frame is RESET:
                self._reset(self.links[stream])
            else:
                taken.add(stream)
                batch.append(item)
        pending.extend(rest)
        return batch

    def _reset(self, link: DeviceLink) -> None:
        try:
            with self.lock:
                self.runtime.reset(None if self.runtime.streams == 1 else link.stream)
            for rule in link.alarms:
                rule.active = False
        except Exception as exc:
            self.worker_errors += 1
            self.error = exc

    def _step_batch(self, batch: list) -> None:
        """Step the batch's readings with one call; per reading an outcome and its events."""
        links = [self.links[stream] for stream, _, _ in batch]
        before = [(link.stats.readings_stepped + link.stats.readings_rejected) for link in links]
        try:
            with self.lock:
                results, elapsed = self._run(batch)
                monitor_events = self.runtime.events()
            now = time.time()
            for (stream, frame, arrived), link, (values, refused) in zip(batch, links, results):
                self._outcome(link, frame, arrived, values, refused, elapsed, now)
            self._monitor_events(monitor_events, {stream: frame for stream, frame, _ in batch})
        except Exception as exc:  # counted and kept; the worker carries on with the next reading
            self.worker_errors += 1
            for link, done in zip(links, before):
                if link.stats.readings_stepped + link.stats.readings_rejected == done:
                    link.stats.failed += 1  # the reading itself got no outcome: it failed
            self.error = exc

    def _run(self, batch: list) -> tuple:
        """``([(outputs or None, refusal or None), ...], seconds)``: per reading of the batch,
        and the time of the runtime call that stepped it (lock held)."""
        runtime = self.runtime
        if runtime.streams == 1:
            frame = batch[0][1]
            rejected_before = runtime.counters["rejected"]
            start = time.perf_counter()
            try:
                y = runtime.step(frame.values)
            except Exception as exc:  # the runtime's InputError under the "error" policy, and anything else
                return [(None, str(exc))], 0.0
            elapsed = time.perf_counter() - start
            values = np.ravel(y).tolist()
            skipped = runtime.counters["rejected"] != rejected_before
            if values and values[0] != values[0] and skipped:  # NaN: the runtime skipped a bad reading
                return [(None, "bad reading skipped")], elapsed
            return [(values, None)], elapsed
        streams = [stream for stream, _, _ in batch]
        try:
            readings = np.array([frame.values for _, frame, _ in batch], np.float32)
            start = time.perf_counter()
            y = runtime.step_streams(readings, streams)
            elapsed = time.perf_counter() - start
        except Exception as exc:  # a reading refused under "error" (or a wrong shape): step them one by one
            if len(batch) == 1:
                return [(None, str(exc))], 0.0
            results = [self._run([item]) for item in batch]
            return [one for result, _ in results for one in result], max(seconds for _, seconds in results)
        refused = runtime.last_rejected.tolist()
        return [(None, "bad reading skipped") if gone else (row, None) for row, gone in zip(y.tolist(), refused)], elapsed

    def _outcome(self, link: DeviceLink, frame, arrived_ns: int, values, refusal, elapsed: float, now: float) -> None:
        stats = link.stats
        if values is None:
            stats.readings_rejected += 1
            self._emit({"event": "rejected", "device": link.name, "seq": frame.sequence, "reason": refusal})
            return
        stats.readings_stepped += 1
        stats.last_good_reading = now
        if values and values[0] != values[0]:
            if self.runtime.window:  # a good reading, but the runtime's window is still filling
                event = {"event": "filling", "device": link.name, "seq": frame.sequence, "t_device_us": frame.timestamp_us,
                         "window": self.runtime.window, "time": stats.last_good_reading}
                self._emit(self._with_reading(event, link, frame) if self._with_readings else event)
            return  # a state reset (the stream started again) says why, among the monitor's events
        event = {
            "event": "prediction", "device": link.name, "seq": frame.sequence, "t_device_us": frame.timestamp_us,
            "time": stats.last_good_reading, "y": values, "step_us": elapsed * 1e6, "arrived_ns": arrived_ns,
        }
        self._emit(self._with_reading(event, link, frame) if self._with_readings else event)
        for rule in link.alarms:
            change = rule.update(values)
            if change:
                self._emit({"event": change, "device": link.name, "rule": rule.name, "value": values[rule.output],
                            "seq": frame.sequence, "time": stats.last_good_reading})

    @staticmethod
    def _with_reading(event: dict, link: DeviceLink, frame) -> dict:
        """The raw reading, the device's stream and the frame flags (bit 0: the device restarted)."""
        event["stream"], event["flags"] = link.stream, int(getattr(frame, "flags", 0))
        event["x"] = [float(v) for v in frame.values]
        return event

    def _monitor_events(self, events: list, frames: dict) -> None:
        """Drift, saturation, stuck sensors and state resets, each under its device's name."""
        now = time.time()
        for event in events:
            stream = event.get("stream", 0) if self.runtime.streams > 1 else 0
            if stream >= len(self.links):
                continue
            frame = frames.get(stream)
            event = dict(event, device=self.links[stream].name, time=now)
            if frame is not None:
                event["seq"] = frame.sequence
            self._emit(event)

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
