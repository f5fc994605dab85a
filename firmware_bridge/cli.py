"""``edgelstm bridge`` and ``edgelstm simulate``."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from edgelstm.errors import ConfigError


def add_commands(sub) -> None:
    p = sub.add_parser("bridge", help="read sensor frames from a serial port, step the runtime, publish predictions")
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="read every option from a TOML file (firmware_bridge/gateway.example.toml); flags given here override it")
    p.add_argument("--port", help="device path (/dev/ttyACM0) or pyserial URL (loop://, socket://host:port, rfc2217://...)")
    p.add_argument("--bundle", type=Path, help="the bundle directory to step")
    p.add_argument("--baud", type=int, default=115200, help="serial speed (default 115200)")
    p.add_argument("--protocol", choices=("frame", "csv"), default="frame",
                   help="binary COBS frames with CRC-32 (default) or CSV lines")
    p.add_argument("--sink", action="append", default=[],
                   help="stdout (default), csv:PATH, mqtt://[user:pass@]host[:port][/prefix], mqtts://..., "
                        "prometheus[:[HOST:]PORT] (repeatable)")
    p.add_argument("--sync-every", type=int, default=100, help="CSV sink: flush and fsync every N lines")
    p.add_argument("--log-readings", action="store_true",
                   help="CSV and stdout sinks: record each raw reading with device, stream, sequence, device time and "
                        "frame flags beside the prediction (a log `edgelstm dataset` turns into training data)")
    p.add_argument("--rotate-mb", type=float, default=None, metavar="MB",
                   help="CSV sink: start a new file when the current one reaches MB megabytes (the full one is renamed "
                        "STEM.NNNNNN.csv)")
    p.add_argument("--mqtt-ca", help="CA file for mqtts://")
    p.add_argument("--mqtt-spool", type=Path, metavar="FILE",
                   help="keep MQTT messages the broker has not taken in FILE (bounded by --mqtt-queue) and send them "
                        "first on the next connection, this run's or the next start's")
    p.add_argument("--mqtt-queue", type=int, default=100_000, help="MQTT messages kept while the broker is away (default 100000)")
    p.add_argument("--metrics-address", default="127.0.0.1", help="address the Prometheus endpoint binds (default 127.0.0.1)")
    p.add_argument("--healthz-detail", choices=("full", "anonymous", "status"), default="full",
                   help="what GET /healthz shows: full (default), anonymous (without the bundle id, model file and hash) "
                        "or status (only the status)")
    p.add_argument("--alarm", action="append", default=[], help="alarm rule, e.g. 'y0<30:35' (alarm below 30, clear above 35)")
    p.add_argument("--device", default=None, help="device name in events and topics (default: the port's name)")
    p.add_argument("--backend", default="auto", help="auto (default), litert, tflite_runtime, tensorflow, onnxruntime or numpy")
    p.add_argument("--on-bad-input", choices=("error", "skip", "hold"), default="skip",
                   help="a bad reading is rejected with an event (error), skipped (default), or held at the last good values")
    p.add_argument("--state", type=Path, help="resume the stream state from this file and save it on exit")
    p.add_argument("--reset-on-reconnect", action="store_true", help="restart the stream state after the device reconnects")
    p.add_argument("--queue", type=int, default=4096, help="readings buffered between reader and worker")
    p.add_argument("--gather-ms", type=float, default=5.0,
                   help="a gateway (several [[devices]]) waits up to this long for the other devices' readings so one "
                        "Invoke steps them together (default 5 ms; 0: step what has arrived)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--watch-bundle", type=float, default=2.0, metavar="SECONDS",
                   help="look at the bundle folder every SECONDS and load a new bundle placed there (default 2; 0: only "
                        "on SIGHUP / systemctl reload)")
    p.set_defaults(handler=run_bridge)
    global _BRIDGE_PARSER
    _BRIDGE_PARSER = p

    s = sub.add_parser("simulate", help="play C-MAPSS engines as an MCU would, on a pty or a TCP port")
    s.add_argument("--dataset", default="cmapss-fd001", choices=("cmapss-fd001",), help="what to play (the shipped C-MAPSS FD001)")
    s.add_argument("--split", default="test", choices=("test", "train"), help="C-MAPSS test engines (default) or training engines (run to failure)")
    s.add_argument("--unit", type=int, action="append", help="engine number(s) (default: all)")
    s.add_argument("--rate", type=float, default=10.0, help="readings per second (0: as fast as possible)")
    s.add_argument("--protocol", choices=("frame", "csv"), default="frame", help="what to send: binary frames (default) or CSV lines")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="make a pseudo-terminal and print the path to open")
    s.add_argument("--wait-reader", type=float, default=30.0, metavar="SECONDS",
                   help="with --pty: wait up to SECONDS for a reader (the bridge) to open the path before playing, "
                        "so it gets the whole engine (0: do not wait; default 30)")
    where.add_argument("--port", help="write to this serial device or pyserial URL")
    where.add_argument("--listen", help="serve on HOST:PORT (the bridge connects with socket://HOST:PORT)")
    s.add_argument("--noise-every", type=int, default=0, help="a burst of random bytes every N readings (0: none)")
    s.add_argument("--drop-every", type=int, default=0, help="leave out every N-th reading (0: none)")
    s.add_argument("--flip-every", type=int, default=0, help="flip a bit in every N-th frame (0: none)")
    s.add_argument("--disconnect-every", type=int, default=0, help="unplug the link every N readings (0: never)")
    s.add_argument("--csv-checksum", choices=("xor", "crc8"), default=None,
                   help="csv protocol: end each line in *HH (NMEA XOR) or #HH (CRC-8/SMBUS)")
    s.add_argument("--restart-every", type=int, default=0,
                   help="restart the device every N readings: sequence and clock from 0, the RESTARTED flag (0: never)")
    s.add_argument("--seed", type=int, default=0, help="seed of the fault injection (default 0)")
    s.set_defaults(handler=run_simulate)


def _port(text: str, spec: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"--sink {spec!r}: port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"--sink {spec!r}: port {port} is outside 1..65535")
    return port


def parse_sink(spec: str, args) -> tuple:
    """``(kind, options)`` of one ``--sink`` spec, checked before anything starts."""
    if spec == "stdout":
        return "stdout", {}
    if spec.startswith("csv:"):
        path = Path(spec[4:])
        if not spec[4:]:
            raise ConfigError("--sink csv:PATH needs a file name")
        if not path.parent.is_dir():
            raise ConfigError(f"--sink {spec!r}: folder {path.parent} does not exist")
        return "csv", {"path": path}
    if spec.startswith(("mqtt://", "mqtts://")):
        url = urlparse(spec)
        tls = url.scheme == "mqtts"
        try:
            port = url.port
        except ValueError:
            raise ConfigError(f"--sink {spec!r}: the port after the host is not a number in 1..65535") from None
        if not url.hostname:
            raise ConfigError(f"--sink {spec!r}: no broker host")
        if tls and args.mqtt_ca and not Path(args.mqtt_ca).is_file():
            raise ConfigError(f"--mqtt-ca {args.mqtt_ca}: no such file")
        return "mqtt", {"host": url.hostname, "port": port or (8883 if tls else 1883),
                        "prefix": (url.path or "/edgelstm").strip("/") or "edgelstm",
                        "username": url.username, "password": url.password, "tls_ca": args.mqtt_ca if tls else None}
    if spec == "prometheus" or spec.startswith("prometheus:"):
        address, port = args.metrics_address, 9108
        rest = spec[len("prometheus:"):] if ":" in spec else ""
        if rest:
            host, _, port_text = rest.rpartition(":")
            port = _port(port_text, spec)
            address = host or address
        return "prometheus", {"port": port, "address": address}
    raise ConfigError(f"unknown sink {spec!r}: use stdout, csv:PATH, mqtt://[user:pass@]host[:port][/prefix], "
                      "mqtts://..., prometheus[:[HOST:]PORT]")


def build_sinks(args, runtime, device: str, specs=None) -> list:
    from .sinks import CsvFileSink, JsonLinesSink, MqttSink, PrometheusSink

    sinks = []
    for kind, options in specs if specs is not None else [parse_sink(spec, args) for spec in args.sink or ["stdout"]]:
        readings = getattr(args, "log_readings", False)
        if kind == "stdout":
            sinks.append(JsonLinesSink(readings=readings))
        elif kind == "csv":
            rotate = getattr(args, "rotate_mb", None)
            sinks.append(CsvFileSink(options["path"], runtime.output_size, sync_every=args.sync_every,
                                     readings=runtime.feature_names if readings else None,
                                     rotate_bytes=int(rotate * 1e6) if rotate else None))
        elif kind == "mqtt":
            sinks.append(MqttSink(device=device, spool=getattr(args, "mqtt_spool", None),
                                  max_queued=getattr(args, "mqtt_queue", 100_000), **options))
        else:
            sinks.append(PrometheusSink(healthz=getattr(args, "healthz_detail", "full"), **options))
    return sinks


_BRIDGE_PARSER = None


def _apply_config(args) -> None:
    """Options from ``--config`` for every flag the command line did not give."""
    from .config import load_config

    options = load_config(args.config)
    devices = options.pop("devices", None)
    if devices is not None:
        given = [flag for flag, dest in (("--port", "port"), ("--device", "device"), ("--baud", "baud"), ("--protocol", "protocol"))
                 if getattr(args, dest) != _BRIDGE_PARSER.get_default(dest)]
        if given:
            raise ConfigError(f"{args.config}: {len(devices)} [[devices]]; {', '.join(given)} on the command line would "
                              "not say which one (change the device in the file)")
    args.devices = devices
    for dest, value in options.items():
        if getattr(args, dest, None) == _BRIDGE_PARSER.get_default(dest):
            setattr(args, dest, value)


def _notify(state: str) -> None:
    """Tell systemd (Type=notify) our state: one datagram to $NOTIFY_SOCKET, as sd_notify(3)
    specifies; nothing without it. (Five lines of the documented protocol rather than a
    dependency on libsystemd's Python binding, which needs a C toolchain on the Pi.)"""
    import os
    import socket

    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as channel:
        channel.sendto(state.encode(), address)


def run_bridge(args) -> int:
    import edgelstm

    from .bridge import Bridge

    args.devices = None
    if args.config:
        _apply_config(args)
    if not (args.port or args.devices) or not args.bundle:
        raise ConfigError("edgelstm bridge needs --port and --bundle (or a --config file that gives bundle and a [[devices]] port)")
    specs = [parse_sink(spec, args) for spec in args.sink or ["stdout"]]  # a bad spec is refused before anything opens
    devices = _devices(args)
    runtime = edgelstm.load(args.bundle, backend=args.backend, on_bad_input=args.on_bad_input, delegate=None,
                            streams=len(devices))
    if args.state and args.state.exists():
        runtime.load_state(args.state)
    sinks = build_sinks(args, runtime, devices[0].name if len(devices) == 1 else "gateway", specs)
    for sink in sinks:  # a sink that cannot deliver at all is refused now, not discovered later
        sink.check()
    def loader(path):  # a model update: the same options, one stream per device
        return edgelstm.load(path, backend=args.backend, on_bad_input=args.on_bad_input, delegate=None, streams=len(devices))

    try:
        bridge = Bridge(runtime=runtime, devices=devices, sinks=sinks, alarms=args.alarm, queue_size=args.queue,
                        reset_on_reconnect=args.reset_on_reconnect, state_path=args.state, gather=args.gather_ms / 1000,
                        loader=loader, watch=args.watch_bundle or None)
    except ValueError as exc:  # an alarm rule on an output the model does not have, a protocol, ...
        raise ConfigError(str(exc)) from None
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: bridge.request_update())  # systemctl reload: load the bundle again
    bridge.start()
    ports = ", ".join(f"{d.port} ({d.protocol})" if len(devices) == 1 else f"{d.name}={d.port} ({d.protocol})" for d in devices)
    print(f"edgelstm bridge: {ports} -> {runtime.model_file} on {runtime.backend}", file=sys.stderr)
    _notify(f"READY=1\nSTATUS=reading {ports}")
    wait_for_signals(done, args.duration)
    _notify("STOPPING=1")
    bridge.stop()
    print("edgelstm bridge: " + ", ".join(f"{k} {v}" for k, v in bridge.counters.items()), file=sys.stderr)
    for link in bridge.links:
        ledger = link.ledger
        who = "" if len(bridge.links) == 1 else f"{link.name}: "
        print(f"edgelstm bridge: {who}readings {ledger['total']}: " + ", ".join(f"{k} {v}" for k, v in ledger["outcomes"].items() if v)
              + f"; device restarts {ledger['restarts']}", file=sys.stderr)
    return _exit_status(bridge)


def _devices(args) -> list:
    """The devices to serve: the config file's ``[[devices]]``, or the one ``--port``."""
    from .bridge import Device

    if args.devices:
        return [Device(name=d["name"], port=d["port"], protocol=d.get("protocol", "frame"), baud=d.get("baud", 115200),
                       alarms=d.get("alarms")) for d in args.devices]
    name = args.device or Path(urlparse(args.port).path or args.port).name or "device"
    return [Device(name=name, port=args.port, protocol=args.protocol, baud=args.baud)]


def _exit_status(bridge) -> int:
    """0 when everything read was stepped and delivered; else 1, with what was lost and why."""
    lost = [r for r in bridge.sink_report() if r["undelivered"]]
    for r in lost:
        print(f"edgelstm bridge: error: sink {r['sink']}: {r['undelivered']} event(s) undelivered ({r['last_failure']})",
              file=sys.stderr)
    if bridge.error is not None and not lost:
        print(f"edgelstm bridge: error: {bridge.error}", file=sys.stderr)
    return 1 if lost or bridge.error is not None or bridge.unstepped else 0


def run_simulate(args) -> int:
    from .simulator import Faults, Simulator, cmapss_units
    from .transport import PtyLink, open_port

    faults = Faults(args.noise_every, args.drop_every, args.flip_every, args.disconnect_every, args.restart_every, seed=args.seed)
    simulator = Simulator(cmapss_units(args.unit, args.split), rate=args.rate, protocol=args.protocol, faults=faults,
                          csv_checksum=args.csv_checksum)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.pty:
        with PtyLink() as link:
            print(link.path, flush=True)
            if args.wait_reader > 0 and not link.wait_for_reader(args.wait_reader):
                print(f"edgelstm simulate: no reader opened {link.path} within {args.wait_reader:g} s; playing anyway "
                      "(what nobody reads is lost)", file=sys.stderr, flush=True)
            truth = simulator.play(link.write, link.unplug, link.replug, stop=stop)
            stop.wait(0.5)  # let the reader drain before the pty closes
    elif args.listen:
        truth = _serve(simulator, args.listen, stop)
    else:
        port = open_port(args.port)
        truth = simulator.play(port.write, stop=stop)
        port.flush()
        port.close()
    print(f"simulated {truth.readings} readings: {truth.sent} sent intact, {truth.dropped} dropped, "
          f"{truth.flipped} bit-flipped, {truth.noise_bursts} noise bursts, {truth.disconnects} disconnects", file=sys.stderr)
    return 0


def _serve(simulator, address: str, stop) -> object:
    """A TCP server standing in for a networked serial device; disconnect = drop the client."""
    import socket

    host, port = address.rsplit(":", 1)
    server = socket.create_server((host, int(port)))
    print(f"socket://{host}:{port}", flush=True)
    state = {}

    def accept():
        connection, _ = server.accept()
        state["connection"] = connection

    def write(data):
        while "connection" not in state:
            accept()
        state["connection"].sendall(data)

    def unplug():
        state.pop("connection").close()

    try:
        return simulator.play(write, unplug, lambda: None, stop=stop)
    finally:
        if "connection" in state:
            state["connection"].close()
        server.close()


def wait_for_signals(done: threading.Event, duration: float | None, tick: float = 0.2) -> bool:
    """Wait until ``done`` is set (True) or ``duration`` has passed (False), waking every ``tick`` seconds.

    Python runs signal handlers in the main thread only, between bytecodes: a SIGHUP (``systemctl
    reload``) that the kernel delivers to one of the bridge's other threads does not interrupt a
    main thread blocked in one long ``Event.wait``, so its handler would wait for the next wake.
    Measured: under load, the full suite's reload test saw no reload within 30 s."""
    deadline = None if duration is None else time.monotonic() + duration
    while not done.is_set():
        left = tick if deadline is None else min(tick, deadline - time.monotonic())
        if left <= 0:
            return False
        done.wait(left)
    return True
