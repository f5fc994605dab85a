"""Where the bridge's events go: stdout, a CSV file, MQTT, a Prometheus endpoint.

Every sink has ``emit(event)``, ``flush()`` and ``close()``; events are dicts with an
``"event"`` key: ``prediction`` (``seq``, ``t_device_us``, ``time``, ``y``, ``step_us``),
``alarm`` / ``clear`` (``rule``, ``value``) and ``rejected`` (``reason``).

No sink fails quietly. ``check()`` runs before streaming and raises :class:`SinkError` when
delivery is impossible from the start (the broker refuses the credentials, its certificate does
not verify, the file cannot be opened); later failures are counted (``failures``,
``last_failure``), and ``undelivered()`` says at the end how many events never arrived: the CLI
prints it and exits non-zero.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from edgelstm.errors import SinkError


class Sink:
    """What every sink shares: a name for messages and the failure bookkeeping."""

    name = "sink"
    failures = 0  # events (or rows) this sink could not deliver
    last_failure: str | None = None

    def emit(self, event: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self, timeout: float = 5.0) -> None:
        """Raise :class:`SinkError` if this sink cannot deliver at all (called before streaming)."""

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()

    def failed(self, count: int, cause) -> None:
        self.failures += count
        self.last_failure = str(cause)

    def undelivered(self) -> int:
        """Events this sink took and did not deliver (after ``close``: final)."""
        return self.failures


def _public(event: dict, readings: bool = False) -> dict:
    """What a sink publishes of an event: not the bridge's own bookkeeping (``arrived_ns``),
    and the raw reading (``x``) only where a sink logs readings."""
    return {k: v for k, v in event.items() if k != "arrived_ns" and (readings or k != "x")}


class JsonLinesSink(Sink):
    """One JSON object per line on a text stream (stdout by default), flushed per line."""

    name = "stdout"

    def __init__(self, stream=None, readings: bool = False):
        self.stream = stream or sys.stdout
        self.readings = readings  # the raw reading (``x``), stream and flags in each prediction

    def emit(self, event: dict) -> None:
        try:
            self.stream.write(json.dumps(_public(event, self.readings)) + "\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:  # a closed pipe, a closed stream
            self.failed(1, exc)
            raise SinkError(f"stdout: {exc}") from None


class CsvFileSink(Sink):
    """Predictions appended to a CSV file, flushed and fsynced every ``sync_every`` lines.

    A row counts as delivered once an fsync after it succeeded; rows a failed write or fsync
    (a full disk) took with it are counted as undelivered, and the next row opens the file
    again (the disk may have room by then). An existing file whose header is not this sink's
    columns is refused (rows of two layouts in one file would be read wrongly).

    ``readings`` (the model's feature names): a log a trainer can use
    (:mod:`edgelstm.learn.logs` reads it). Each row then also holds the device's stream index,
    the frame flags (bit 0: the device restarted) and the raw reading, columns ``x_NAME``;
    readings that only filled a window get a row with empty outputs. ``rotate_bytes``: once
    the file reaches this size it is synced, closed and renamed ``STEM.NNNNNN.SUFFIX`` (the next
    free number), and a new file with the header starts.

    Columns: ``time`` (host Unix time), ``device``, [``stream``], ``seq``, ``t_device_us``,
    [``flags``, ``x_...``], ``y0``...
    """

    def __init__(self, path, outputs: int, sync_every: int = 100, readings=None, rotate_bytes: int | None = None):
        self.path = Path(path)
        self.name = f"csv:{path}"
        self.sync_every = max(1, int(sync_every))
        self.readings = list(readings) if readings else None
        self.rotate_bytes = rotate_bytes
        self.rotated = 0
        columns = ["time", "device"] + (["stream"] if self.readings else []) + ["seq", "t_device_us"]
        if self.readings:
            columns += ["flags"] + [f"x_{name}" for name in self.readings]
        self._columns = ",".join(columns + [f"y{i}" for i in range(outputs)]) + "\n"
        self._outputs = outputs
        self._file = None
        self._pending = 0  # rows written since the last successful fsync
        self.rows = 0
        self.synced = 0
        try:
            self._open()
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot open ({exc.strerror or exc})") from None

    def _open(self) -> None:
        path = Path(self.path)
        if path.is_file() and path.stat().st_size:
            with open(path, encoding="utf-8", errors="replace") as existing:
                header = existing.readline()
            if header != self._columns:
                raise SinkError(f"{self.name}: the file's header is {header.strip()[:200]!r}, this sink writes "
                                f"{self._columns.strip()[:200]!r}; write to a new file (or move this one away)")
        self._file = open(self.path, "a", buffering=1 << 16)
        if self._file.tell() == 0:  # a new (or empty) file starts with the header
            self._file.write(self._columns)

    def check(self, timeout: float = 5.0) -> None:
        """fsync what is written (the header of a new file): a full or read-only disk fails
        here, before streaming."""
        try:
            self._sync()
        except OSError as exc:
            self._drop_file()
            raise SinkError(f"{self.name}: cannot write ({exc.strerror or exc})") from None

    def emit(self, event: dict) -> None:
        kind = event["event"]
        if kind != "prediction" and not (kind == "filling" and self.readings):
            return
        row = [f"{event['time']:.6f}", event["device"]]
        if self.readings:
            row.append(str(event.get("stream", 0)))
        row += [str(event["seq"]), str(event.get("t_device_us", ""))]
        if self.readings:
            row.append(str(event.get("flags", 0)))
            row += [repr(float(v)) for v in event["x"]]  # exact: a trainer reads back what the device sent
        outputs = [f"{v:.6g}" for v in event["y"]] if kind == "prediction" else [""] * self._outputs
        self.rows += 1
        self._pending += 1
        try:
            if self._file is None:
                self._open()
            self._file.write(",".join(row + outputs) + "\n")
            if self._pending >= self.sync_every:
                self._sync()
            if self.rotate_bytes and self._file.tell() >= self.rotate_bytes:
                self._rotate()
        except OSError as exc:
            self._lose(exc)

    def _rotate(self) -> None:
        """Sync and close the full file, rename it to the next free ``STEM.NNNNNN.SUFFIX``."""
        self._sync()
        self._drop_file()
        path, number = Path(self.path), 1
        while (target := path.with_name(f"{path.stem}.{number:06d}{path.suffix}")).exists():
            number += 1
        os.replace(path, target)
        self.rotated += 1

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self.synced += self._pending
        self._pending = 0

    def _drop_file(self) -> None:
        """Close the file, dropping what its buffer could not write."""
        try:
            self._file.close()
        except OSError:
            pass
        self._file = None

    def _lose(self, exc) -> None:
        """A write or fsync failed: the rows not yet synced are lost, and counted."""
        self.failed(self._pending, exc.strerror or exc)
        self._pending = 0
        self._drop_file()
        raise SinkError(f"{self.name}: {exc.strerror or exc}; rows lost so far: {self.failures}") from None

    def flush(self) -> None:
        if self._pending and self._file is not None:
            try:
                self._sync()
            except OSError as exc:
                self._lose(exc)

    def close(self) -> None:
        if self._file is not None:
            try:
                self.flush()
            finally:
                if self._file is not None:
                    self._drop_file()


def _count_lines(path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


class MqttSink(Sink):
    """Events published with paho-mqtt, QoS 1, one topic tree per device.

    Topics: ``{prefix}/{device}/prediction``, ``.../alarm`` (alarm and clear events),
    ``.../rejected``. paho keeps QoS 1 messages queued while the broker is away and resends
    them after its automatic reconnect (``max_queued`` bounds that queue; ``dropped`` counts
    what did not fit). TLS (``tls_ca``, optional client certificate) and user/password are
    options, for a fleet of Pis reporting to one broker.

    With ``spool`` (a file), what the broker has not taken survives the process: while the
    broker is away each message is appended to the spool (one JSON line, flushed; at most
    ``max_queued`` lines, ``dropped`` counts the rest), messages still unacknowledged at
    ``close()`` are appended too, and the spool is published first, in order, on the next
    connection (this run's or the next start's). ``spooled`` is what is waiting there.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, prefix: str = "edgelstm", device: str = "device",
                 qos: int = 1, username: str | None = None, password: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, client_id: str | None = None,
                 max_queued: int = 100_000, keepalive: int = 30, spool=None):
        import paho.mqtt.client as mqtt

        self.host, self.port, self.tls_ca = host, port, tls_ca
        self.name = f"{'mqtts' if (tls_ca or tls_cert) else 'mqtt'}://{host}:{port}"
        self.prefix, self.device, self.qos = prefix.rstrip("/"), device, qos
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"edgelstm-{device}-{os.getpid()}",
                                  clean_session=False)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca or tls_cert:
            self.client.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key)
        self.client.max_queued_messages_set(max_queued)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.connected = threading.Event()
        self.refused = None  # the broker's reason when it refused us (bad credentials, ...)

        def on_connect(client, userdata, flags, reason, properties):
            if getattr(reason, "is_failure", False):
                self.refused = str(reason)
            else:
                self.connected.set()

        self.client.on_connect = on_connect
        self.spool = Path(spool) if spool else None
        self.max_queued = max_queued
        self._spool_lock = threading.Lock()
        self._spool_count = _count_lines(self.spool) if self.spool and self.spool.exists() else 0
        self.client.on_disconnect = lambda client, userdata, flags, reason, properties: self.connected.clear()
        self.published = 0
        self.queued_offline = 0
        self.dropped = 0
        self.unacknowledged = 0  # set by close(): messages the broker never acknowledged
        self._queue_full, self._no_connection = mqtt.MQTT_ERR_QUEUE_SIZE, mqtt.MQTT_ERR_NO_CONN
        self.client.connect_async(host, port, keepalive=keepalive)
        self.client.loop_start()

    def check(self, timeout: float = 5.0) -> None:
        """Wait for the broker's answer: refused credentials, a certificate that does not
        verify or no broker at all are a :class:`SinkError` naming the cause."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.refused is not None:
                raise SinkError(f"{self.name}: the broker refused the connection ({self.refused})")
            if self.connected.wait(0.05):
                if self.spool is not None and self._spool_count:
                    self._replay()  # what the last run could not deliver goes first
                return
        raise SinkError(f"{self.name}: no connection within {timeout:g} s ({self._probe()})")

    def _probe(self) -> str:
        """Why a connection does not come up, from one plain attempt of our own."""
        import socket
        import ssl

        try:
            with socket.create_connection((self.host, self.port), timeout=2) as raw:
                if self.tls_ca is None and not self.name.startswith("mqtts"):
                    return "the broker accepts TCP but did not answer MQTT"
                context = ssl.create_default_context(cafile=self.tls_ca)
                with context.wrap_socket(raw, server_hostname=self.host):
                    return "TLS verifies, but the broker did not answer MQTT"
        except ssl.SSLError as exc:
            return f"TLS: {exc.reason or exc}"
        except OSError as exc:
            return exc.strerror or str(exc)

    def undelivered(self) -> int:
        """Dropped from a full offline queue or spool, plus (after ``close``) what was never
        acknowledged and not kept in the spool, plus what waits in the spool for the broker."""
        return self.dropped + self.unacknowledged + self.spooled

    @property
    def spooled(self) -> int:
        return self._spool_count

    def topic(self, kind: str, device: str | None = None) -> str:
        """``{prefix}/{device}/{kind}``: the event's own device (a gateway's sink serves several)."""
        return f"{self.prefix}/{device or self.device}/{kind}"

    def emit(self, event: dict) -> None:
        kind = {"prediction": "prediction", "alarm": "alarm", "clear": "alarm"}.get(event["event"], event["event"])
        topic, payload = self.topic(kind, event.get("device")), json.dumps(_public(event))
        if self.spool is not None:
            if self.connected.is_set() and self._spool_count:
                self._replay()  # the spool first, in order
            if not self.connected.is_set() or self._spool_count:
                self._append([(topic, payload)])
                return
        info = self.client.publish(topic, payload, qos=self.qos)
        if info.rc == self._queue_full:  # the offline queue is full: this one is lost, and counted
            self.dropped += 1
            self.last_failure = "offline queue full"
        elif info.rc == self._no_connection:  # kept in paho's queue, sent after the reconnect
            self.queued_offline += 1
        else:
            self.published += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued messages are acknowledged (while connected), up to ``timeout``."""
        import time

        deadline = time.monotonic() + timeout
        while self.client.want_write() or self._unacked():
            if time.monotonic() > deadline or not self.connected.is_set():
                return
            time.sleep(0.01)

    def _unacked(self) -> bool:
        return bool(getattr(self.client, "_out_messages", {}))

    def _append(self, messages: list) -> None:
        """Messages to the end of the spool (flushed and fsynced); what does not fit is dropped, counted."""
        with self._spool_lock:
            room = max(self.max_queued - self._spool_count, 0)
            kept, lost = messages[:room], len(messages) - min(room, len(messages))
            if kept:
                with open(self.spool, "a", encoding="utf-8") as handle:
                    handle.writelines(json.dumps({"topic": t, "payload": m}) + "\n" for t, m in kept)
                    handle.flush()
                    os.fsync(handle.fileno())
                self._spool_count += len(kept)
                self.queued_offline += len(kept)
            if lost:
                self.dropped += lost
                self.last_failure = f"spool {self.spool} full ({self.max_queued} messages)"

    def _replay(self, timeout: float = 10.0) -> None:
        """Publish the spool in order and wait for the broker's acknowledgements; keep what it did not take."""
        import time

        with self._spool_lock:
            try:
                lines = self.spool.read_text(encoding="utf-8").splitlines()
            except OSError:
                return
            sent = []
            for line in lines:
                try:
                    record = json.loads(line)
                    sent.append(self.client.publish(record["topic"], record["payload"], qos=self.qos))
                except (ValueError, KeyError, TypeError):  # a torn last line of a killed process: not a message
                    continue
            deadline = time.monotonic() + timeout
            while any(not info.is_published() for info in sent) and time.monotonic() < deadline and self.connected.is_set():
                time.sleep(0.01)
            done = sum(1 for info in sent if info.is_published())
            rest = lines[done:] if done < len(sent) else []
            temporary = self.spool.with_name(f".{self.spool.name}.tmp")
            temporary.write_text("".join(line + "\n" for line in rest), encoding="utf-8")
            os.replace(temporary, self.spool)
            self._spool_count = len(rest)
            self.published += done

    def close(self) -> None:
        if self.spool is not None and self._spool_count and self.connected.is_set():
            self._replay()
        self.flush()
        waiting = getattr(self.client, "_out_messages", {})
        if self.spool is not None and waiting:  # kept for the next start instead of lost
            self._append([(m.topic, m.payload.decode() if isinstance(m.payload, bytes) else m.payload)
                          for m in list(waiting.values())])
            waiting = {}
        self.unacknowledged = len(waiting)
        if self.unacknowledged:
            self.last_failure = f"{self.unacknowledged} message(s) never acknowledged by the broker"
        if self._spool_count:
            self.last_failure = f"{self._spool_count} message(s) kept in {self.spool} for the next start"
        self.client.disconnect()
        self.client.loop_stop()


class PrometheusSink(Sink):
    """A Prometheus endpoint with prometheus_client, and ``GET /healthz``.

    ``/metrics``: frame counters, step latency histogram, last prediction, alarm state, and
    the monitor's per-feature PSI, mean shift, drift / stuck flags and saturation shares.
    Counters and monitor values are read from the bridge when Prometheus scrapes (a custom
    collector), so they always equal what the bridge counted. ``/healthz``: the bridge's
    :meth:`~firmware_bridge.bridge.Bridge.health` as JSON, HTTP 200 unless ``failing`` (503),
    in as much detail as ``healthz`` says (:data:`HEALTHZ_DETAILS`). Binds 127.0.0.1 unless
    told otherwise.
    """

    def __init__(self, port: int = 9108, address: str = "127.0.0.1", registry=None, healthz: str = "full"):
        if healthz not in HEALTHZ_DETAILS:
            raise ValueError(f"healthz detail {healthz!r}: choose {', '.join(HEALTHZ_DETAILS)}")
        self.healthz = healthz
        from prometheus_client import CollectorRegistry, Gauge, Histogram

        self.name = f"prometheus:{address}:{port}"
        self.registry = registry or CollectorRegistry()
        self.port, self.address = port, address
        self.latency = Histogram(
            "edgelstm_step_seconds", "Time of one runtime step", ["device"], registry=self.registry,
            buckets=(5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 1e-2),
        )
        self.prediction = Gauge("edgelstm_prediction", "Last prediction", ["device", "output"], registry=self.registry)
        self.alarm = Gauge("edgelstm_alarm", "1 while an alarm rule is active", ["device", "rule"], registry=self.registry)
        self._bridge = None
        self._server = None

    def bind(self, bridge) -> None:
        """Called by the bridge at start: expose its counters and start the HTTP server."""
        self._bridge = bridge
        self.registry.register(_BridgeCollector(bridge))
        for link in bridge.links:
            for rule in link.alarms:
                self.alarm.labels(link.name, rule.name).set(0)
        try:
            self._server = _serve(self.address, self.port, self.registry, bridge, self.healthz)
        except OSError as exc:
            from edgelstm.errors import EdgeLSTMError

            raise EdgeLSTMError(f"metrics endpoint {self.address}:{self.port}: {exc.strerror or exc}") from None

    def emit(self, event: dict) -> None:
        kind = event["event"]
        if kind == "prediction":
            self.latency.labels(event["device"]).observe(event["step_us"] / 1e6)
            for index, value in enumerate(event["y"]):
                self.prediction.labels(event["device"], str(index)).set(value)
        elif kind in ("alarm", "clear"):
            self.alarm.labels(event["device"], event["rule"]).set(1 if kind == "alarm" else 0)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


#: What ``/healthz`` shows: ``full`` (everything, the bundle id, model file and hash included),
#: ``anonymous`` (all but what identifies the bundle and the model: for an endpoint others can
#: reach), ``status`` (only ``{"status": ...}``; the HTTP code says the same).
HEALTHZ_DETAILS = ("full", "anonymous", "status")
IDENTIFYING = ("bundle_id", "model", "model_sha256")


def healthz_view(health: dict, detail: str) -> dict:
    if detail == "status":
        return {"status": health["status"]}
    if detail == "anonymous":
        return {k: v for k, v in health.items() if k not in IDENTIFYING}
    return health


#: The metrics endpoint serves this many connections at once and drops a connection idle this long.
METRICS_CONNECTIONS = 16
METRICS_IDLE_SECONDS = 5.0


def _serve(address: str, port: int, registry, bridge, healthz: str = "full"):
    """One small HTTP server for ``/metrics`` (Prometheus text format) and ``/healthz`` (JSON)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.startswith("/metrics"):
                body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                health = bridge.health()
                body = json.dumps(healthz_view(health, healthz)).encode()
                status, kind = (503 if health["status"] == "failing" else 200), "application/json"
            else:
                body, status, kind = b"not found: try /metrics or /healthz\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    Handler.timeout = METRICS_IDLE_SECONDS  # an idle or slow client is dropped, never kept for ever

    class BoundedServer(ThreadingHTTPServer):
        """At most METRICS_CONNECTIONS connections at a time; one more is closed at once (and counted)."""

        daemon_threads = True
        slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)
        refused = 0

        def process_request(self, request, client_address):
            if not self.slots.acquire(blocking=False):
                type(self).refused += 1
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    server = BoundedServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


class _BridgeCollector:
    def __init__(self, bridge):
        self.bridge = bridge

    def collect(self):
        """Per device (label ``device``): frames and readings by outcome, link counts, the age
        of the last good reading, and the monitor's view of that device's stream."""
        import time

        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        bridge = self.bridge
        frames = CounterMetricFamily("edgelstm_frames", "Frames and lines by outcome", labels=["device", "outcome"])
        readings = CounterMetricFamily("edgelstm_readings", "Readings by outcome (the ledger: one outcome each)",
                                       labels=["device", "outcome"])
        keys = ("readings_stepped", "readings_rejected", "queue_overflow", "disconnects", "reconnects")
        links = {key: CounterMetricFamily(f"edgelstm_{key}", key.replace("_", " "), labels=["device"]) for key in keys}
        age = GaugeMetricFamily("edgelstm_last_reading_age_seconds", "Seconds since the last good reading", labels=["device"])
        for link in bridge.links:
            counters = link.counters
            for key, value in counters.items():
                if key.startswith("frames_"):
                    frames.add_metric([link.name, key[len("frames_"):]], value)
            for outcome, value in link.ledger["outcomes"].items():
                if outcome != "in_flight":
                    readings.add_metric([link.name, outcome], value)
            for key, family in links.items():
                family.add_metric([link.name], counters[key])
            last = link.stats.last_good_reading
            age.add_metric([link.name], (time.time() - last) if last else float("nan"))
        yield frames
        yield readings
        yield from links.values()
        yield age
        updates = CounterMetricFamily("edgelstm_model_updates", "Model updates by outcome", labels=["outcome"])
        for outcome in ("applied", "refused", "state_carried", "state_restarted"):
            updates.add_metric([outcome], bridge.updates[outcome])
        yield updates
        monitor = bridge.runtime.monitor
        if monitor is None:
            return
        health = monitor.health()
        families = {
            "psi": GaugeMetricFamily("edgelstm_input_psi", "PSI of the recent readings against the calibration data", labels=["device", "feature"]),
            "mean_shift": GaugeMetricFamily("edgelstm_input_mean_shift", "Standardised mean shift of the recent readings", labels=["device", "feature"]),
            "saturated": GaugeMetricFamily("edgelstm_input_saturated_ratio", "Share of recent readings outside the int8 input range", labels=["device", "feature"]),
            "drifting": GaugeMetricFamily("edgelstm_input_drift", "1 while the feature drifts", labels=["device", "feature"]),
            "stuck": GaugeMetricFamily("edgelstm_input_stuck", "1 while the feature has not changed over the window", labels=["device", "feature"]),
        }
        state = GaugeMetricFamily("edgelstm_state_saturated_ratio", "Share of int8 state values at -128 or 127", labels=["device", "stream"])
        for stream in health["streams"]:
            if stream["stream"] >= len(bridge.links):
                continue
            device = bridge.links[stream["stream"]].name
            for name, feature in stream["features"].items():
                for key, family in families.items():
                    family.add_metric([device, name], float(feature[key]))
            state.add_metric([device, str(stream["stream"])], stream["state_saturated"])
        yield from families.values()
        yield state
