"""Debian's Prometheus server scrapes the bridge on loopback (installed by scripts/test.sh)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request

import pytest

import edgelstm
from firmware_bridge.bridge import Bridge
from firmware_bridge.protocol import encode_frame
from firmware_bridge.simulator import cmapss_units
from firmware_bridge.sinks import PrometheusSink

from .conftest import ROOT, free_port, wait_until


def _query(port, expression):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]


def test_prometheus_scrapes_counters_latency_and_drift(cmapss_bundle, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus is not installed (scripts/test.sh installs it)")
    metrics = PrometheusSink(port=0)
    bridge = Bridge("loop://", edgelstm.load(cmapss_bundle), sinks=[metrics], device="engine3").start()
    assert bridge.wait(lambda: bridge._port is not None, 5)
    stop = threading.Event()
    engine = cmapss_units([3])[0]

    def device():  # the simulator's engine, 50 readings per second, with a stuck sensor from cycle 40
        bridge._port.write(b"\x00")
        for i, values in enumerate(engine):
            if stop.is_set():
                return
            values = values.copy()
            if i >= 40:
                values[7] = engine[40][7]
            bridge._port.write(encode_frame(i, i * 20_000, values))
            stop.wait(0.02)

    threading.Thread(target=device, daemon=True).start()
    target = f"127.0.0.1:{metrics._server.server_address[1]}"
    config = tmp_path / "prometheus.yml"
    example = (ROOT / "firmware_bridge" / "monitoring" / "prometheus.yml").read_text()
    config.write_text(example.replace("scrape_interval: 5s", "scrape_interval: 1s").replace("127.0.0.1:9108", target)
                      .replace("rule_files:\n  - alerts.yml\n", ""))
    web = free_port()
    server = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        found = {}
        wanted = {
            "frames": 'edgelstm_frames_total{outcome="good"}',
            "latency": "edgelstm_step_seconds_bucket",
            "psi": "edgelstm_input_psi",
            "stuck": 'edgelstm_input_stuck{feature="s12"} == 1',
        }

        def scraped() -> bool:
            for key, expression in wanted.items():
                try:
                    result = _query(web, expression)
                except OSError:
                    result = []
                if result:
                    found[key] = result
            return len(found) == len(wanted)

        wait_until(scraped, 60, every=0.5)
        assert set(found) == set(wanted), f"found only {sorted(found)}"
        assert float(found["frames"][0]["value"][1]) > 0
        assert found["frames"][0]["metric"]["device"] == "engine3"
        assert len(found["psi"]) == 14
    finally:
        stop.set()
        server.terminate()
        server.wait(10)
        bridge.stop()


def test_idle_connections_cannot_exhaust_the_metrics_endpoint(cmapss_bundle):
    """Hundreds of idle connections: the server keeps at most METRICS_CONNECTIONS threads,
    drops idle clients after METRICS_IDLE_SECONDS, and answers a scrape again after that."""
    from firmware_bridge import sinks

    port = free_port()
    sink = PrometheusSink(port=port)
    bridge = Bridge("loop://", edgelstm.load(cmapss_bundle), sinks=[sink]).start()
    try:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
        # the server takes what it can, then closes the rest at once
        wait_until(lambda: threading.active_count() - before >= sinks.METRICS_CONNECTIONS, 5, every=0.05)
        assert threading.active_count() - before <= sinks.METRICS_CONNECTIONS
        body = []

        def answered() -> bool:
            try:
                body.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read())
                return True
            except OSError:
                return False

        assert wait_until(answered, sinks.METRICS_IDLE_SECONDS + 10, every=0.2), "the endpoint stayed exhausted"
        assert b"edgelstm_frames" in body[0]
        for connection in idle:
            connection.close()
    finally:
        bridge.stop()
