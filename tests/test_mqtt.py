"""The MQTT sink against a real mosquitto on loopback (installed by .ci/run with apt-get)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading

import pytest

import edgelstm
from firmware_bridge.bridge import Bridge
from firmware_bridge.protocol import encode_frame
from firmware_bridge.simulator import cmapss_units
from firmware_bridge.sinks import MqttSink

from .conftest import free_port, wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    def __init__(self, directory):
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nuser root\nallow_anonymous true\npersistence true\n"
            f"persistence_location {directory}/\nautosave_interval 1\n"
        )
        self.process = None

    def start(self):
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if not wait_until(lambda: _port_open(self.port), 10, every=0.05):
            raise RuntimeError("mosquitto did not start")
        return self

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


class Subscriber:
    """A persistent-session QoS 1 subscriber: its messages wait in the broker while it is away."""

    def __init__(self, port):
        import paho.mqtt.client as mqtt

        self.messages = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgelstm-test-subscriber", clean_session=False)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("plant/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = self._message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def broker(tmp_path):
    if not shutil.which("mosquitto") and not shutil.os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    broker = Broker(tmp_path).start()
    yield broker
    if broker.process.poll() is None:
        broker.stop()


def test_predictions_and_alarms_reach_the_broker_and_survive_an_outage(broker, cmapss_bundle):
    subscriber = Subscriber(broker.port)
    assert subscriber.subscribed.wait(5)
    sink = MqttSink(port=broker.port, prefix="plant", device="pump7")
    assert sink.connected.wait(5)
    bridge = Bridge("loop://", edgelstm.load(cmapss_bundle), sinks=[sink], alarms=["y0<500:510"], device="pump7")
    bridge.start()
    assert bridge.wait(lambda: bridge._port is not None, 5)
    engine = cmapss_units([3])[0]
    bridge._port.write(b"\x00" + b"".join(encode_frame(i, i, v) for i, v in enumerate(engine[:10])))
    assert wait_until(lambda: len(subscriber.messages) >= 11, 10)  # 10 predictions + 1 alarm
    topics = {topic for topic, _ in subscriber.messages}
    assert topics == {"plant/pump7/prediction", "plant/pump7/alarm"}
    first = [m for t, m in subscriber.messages if t.endswith("prediction")][0]
    assert first["seq"] == 0 and len(first["y"]) == 1

    broker.stop()  # the broker goes away; the bridge keeps stepping and paho queues QoS 1 messages
    assert wait_until(lambda: not sink.connected.is_set(), 10)
    bridge._port.write(b"".join(encode_frame(i, i, v) for i, v in enumerate(engine[10:25], start=10)))
    assert bridge.wait(lambda: bridge.stats.readings_stepped == 25, 5)
    broker.start()
    assert wait_until(lambda: len([1 for t, _ in subscriber.messages if t.endswith("prediction")]) >= 25, 20)
    bridge.stop()
    subscriber.close()
    sequences = sorted({m["seq"] for t, m in subscriber.messages if t.endswith("prediction")})
    assert sequences == list(range(25))  # nothing lost across the outage (QoS 1 may deliver twice)
    assert sink.dropped == 0 and sink.queued_offline == 15


def test_tls_and_password_through_the_bridge_cli_options(tmp_path, cmapss_bundle):
    """mqtts://user:password@host:port with --mqtt-ca, against mosquitto with TLS and a password file."""
    if not shutil.which("openssl") or not shutil.which("mosquitto_passwd"):
        pytest.skip("openssl or mosquitto_passwd missing")
    run = lambda *args: subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=edgelstm-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-extfile", "san.ext", "-out", "server.crt")
    run("mosquitto_passwd", "-b", "-c", "passwords", "pi7", "s3cret")
    port = free_port()
    (tmp_path / "tls.conf").write_text(
        f"listener {port} 127.0.0.1\nuser root\nallow_anonymous false\npassword_file {tmp_path}/passwords\n"
        f"cafile {tmp_path}/ca.crt\ncertfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key\n"
    )
    log = open(tmp_path / "mosquitto.log", "w")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "tls.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: _port_open(port), 10), (tmp_path / "mosquitto.log").read_text()
        import argparse

        from firmware_bridge.cli import build_sinks

        args = argparse.Namespace(sink=[f"mqtts://pi7:s3cret@127.0.0.1:{port}/plant"], mqtt_ca=str(tmp_path / "ca.crt"),
                                  sync_every=1, metrics_address="127.0.0.1")
        runtime = edgelstm.load(cmapss_bundle)
        (sink,) = build_sinks(args, runtime, "pump9")
        assert sink.connected.wait(10), "TLS + password connection failed"
        bad = argparse.Namespace(**dict(vars(args), sink=[f"mqtts://pi7:wrong@127.0.0.1:{port}/plant"]))
        (refused,) = build_sinks(bad, runtime, "pump9")
        assert not refused.connected.wait(2)
        assert wait_until(lambda: refused.refused is not None, 5) and "authori" in refused.refused.lower()
        refused.client.loop_stop()
        sink.emit({"event": "prediction", "device": "pump9", "seq": 0, "y": [1.0]})
        sink.close()
        assert sink.published == 1 and sink.undelivered() == 0

        # the bridge refuses to start when a sink cannot deliver at all, naming sink and cause (exit 2)
        from .conftest import run_cli

        def bridge_with(spec, ca):
            return run_cli("bridge", "--port", "loop://", "--bundle", cmapss_bundle, "--sink", spec, "--mqtt-ca", ca,
                           "--duration", "2", check=False)

        wrong_password = bridge_with(f"mqtts://pi7:wrong@127.0.0.1:{port}/plant", tmp_path / "ca.crt")
        assert wrong_password.returncode == 2 and "Traceback" not in wrong_password.stderr
        assert f"mqtts://127.0.0.1:{port}" in wrong_password.stderr and "refused" in wrong_password.stderr
        assert "authori" in wrong_password.stderr.lower()
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=another-ca",
            "-keyout", "other.key", "-out", "other.crt")
        wrong_ca = bridge_with(f"mqtts://pi7:s3cret@127.0.0.1:{port}/plant", tmp_path / "other.crt")
        assert wrong_ca.returncode == 2 and f"mqtts://127.0.0.1:{port}" in wrong_ca.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in wrong_ca.stderr or "certificate verify failed" in wrong_ca.stderr.lower()
        good = bridge_with(f"mqtts://pi7:s3cret@127.0.0.1:{port}/plant", tmp_path / "ca.crt")
        assert good.returncode == 0, good.stderr
    finally:
        broker.terminate()
        broker.wait(10)


def _port_open(port) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_no_broker_at_start_up_is_refused_naming_the_cause(cmapss_bundle):
    from .conftest import run_cli

    port = free_port()  # nothing listens there
    result = run_cli("bridge", "--port", "loop://", "--bundle", cmapss_bundle, "--sink", f"mqtt://127.0.0.1:{port}/plant",
                     "--duration", "1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"mqtt://127.0.0.1:{port}" in result.stderr and "refused" in result.stderr.lower()


def test_messages_the_broker_never_took_wait_in_the_spool_and_go_first_at_the_next_start(broker, tmp_path):
    """The broker goes away, 15 events are emitted, the process ends: they are on disk, counted as
    undelivered (exit status 1), and the next start publishes them first, in order."""
    spool = tmp_path / "pump7.spool"
    subscriber = Subscriber(broker.port)
    assert subscriber.subscribed.wait(5)
    sink = MqttSink(port=broker.port, prefix="plant", device="pump7", spool=spool)
    sink.check()
    sink.emit({"event": "prediction", "device": "pump7", "seq": 0, "y": [1.0]})
    assert wait_until(lambda: len(subscriber.messages) == 1, 10)
    broker.stop()
    assert wait_until(lambda: not sink.connected.is_set(), 10)
    for seq in range(1, 16):
        sink.emit({"event": "prediction", "device": "pump7", "seq": seq, "y": [float(seq)]})
    sink.close()
    assert sink.spooled == 15 and sink.undelivered() == 15 and sink.dropped == 0
    assert len(spool.read_text().splitlines()) == 15 and "kept in" in sink.last_failure

    broker.start()
    again = MqttSink(port=broker.port, prefix="plant", device="pump7", spool=spool)
    again.check()  # connects, then sends the spool before anything new
    again.emit({"event": "prediction", "device": "pump7", "seq": 16, "y": [16.0]})
    assert wait_until(lambda: len({m["seq"] for _, m in subscriber.messages}) == 17, 20)
    again.close()
    subscriber.close()
    assert again.spooled == 0 and again.undelivered() == 0 and spool.read_text() == ""
    sequences = [m["seq"] for _, m in subscriber.messages]
    assert sorted(set(sequences)) == list(range(17))
    first_after = [s for s in sequences if s > 0]
    assert first_after[:15] == list(range(1, 16))  # the spooled ones first, in order


def test_a_full_spool_drops_and_counts(broker, tmp_path):
    spool = tmp_path / "small.spool"
    sink = MqttSink(port=broker.port, prefix="plant", device="pump8", spool=spool, max_queued=5)
    sink.check()
    broker.stop()
    assert wait_until(lambda: not sink.connected.is_set(), 10)
    for seq in range(8):
        sink.emit({"event": "prediction", "device": "pump8", "seq": seq, "y": [0.0]})
    sink.close()
    assert (sink.spooled, sink.dropped, sink.undelivered()) == (5, 3, 8)  # 5 kept for the next start, 3 lost and counted
