"""``edgelstm bridge --config``: the shipped example config runs, flags override it, a bad file
is refused naming the line and the key; the systemd unit template passes ``systemd-analyze
verify``, and the bridge tells systemd it is ready (``Type=notify``) on a real notify socket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from firmware_bridge.config import load_config

from .conftest import ROOT

EXAMPLE = ROOT / "firmware_bridge" / "gateway.example.toml"
UNIT = ROOT / "firmware_bridge" / "systemd" / "edgelstm-bridge@.service"
LINES = len(EXAMPLE.read_text().splitlines())  # a key appended after a blank line lands on LINES + 2


def _config(tmp_path, bundle, extra: str = "", top: str = "") -> object:
    text = top + EXAMPLE.read_text().replace('bundle = "bundle"', f'bundle = "{bundle}"')
    text = text.replace('"/dev/serial/by-id/usb-Arduino_Uno-if00"', '"loop://"').replace('"stdout", "prometheus:9108"', '"stdout"')
    path = tmp_path / "pump7.toml"
    path.write_text(text + extra)
    return path


def test_the_example_config_is_valid_and_relative_paths_follow_the_file():
    options = load_config(EXAMPLE)
    assert options["device"] == "pump7" and options["port"].startswith("/dev/serial/by-id/") and options["baud"] == 115200
    assert options["bundle"] == (EXAMPLE.parent / "bundle").resolve() and options["sink"] == ["stdout", "prometheus:9108"]
    assert options["healthz_detail"] == "anonymous" and options["alarm"] == ["y0<30:35"]


def test_the_bridge_runs_from_a_config_and_a_flag_overrides_it(tmp_path, cmapss_bundle):
    config = _config(tmp_path, cmapss_bundle)
    result = subprocess.run([sys.executable, "-m", "edgelstm", "bridge", "--config", str(config), "--duration", "1",
                             "--device", "override7"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loop:// (frame) -> " in result.stderr and "readings 0" in result.stderr
    assert (tmp_path / "pump7.state.npz").exists()  # the config's state path, relative to the config file


@pytest.mark.parametrize("top, extra, words", [
    ("baud_rate = 9600\n", "", ":1: key baud_rate: Additional properties are not allowed"),
    ("", "\nbaud_rat = 9600\n", f":{LINES + 2}: key devices[0].baud_rat: Additional properties are not allowed"),
    ("", '\n[[devices]]\nport = "loop://"\nbaud = "fast"\n', "key devices[1].baud: 'fast' is not of type 'integer'"),
    ("queue = 0\n", "", ":1: key queue: 0 is less than the minimum of 1"),
    ("", "\nbundle = [\n", "not valid TOML"),
])
def test_a_bad_config_is_refused_naming_the_line_and_the_key(tmp_path, cmapss_bundle, top, extra, words):
    config = _config(tmp_path, cmapss_bundle, extra, top)
    result = subprocess.run([sys.executable, "-m", "edgelstm", "bridge", "--config", str(config), "--duration", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and str(config) in result.stderr and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (.ci/run installs systemd)")
def test_the_unit_template_verifies(tmp_path):
    unit = tmp_path / "edgelstm-bridge@pump7.service"
    unit.write_text(UNIT.read_text().replace("/opt/edgelstm/bin/edgelstm", shutil.which("edgelstm") or sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr + result.stdout
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "User=edgelstm", "StateDirectory=edgelstm/%i", "KillSignal=SIGTERM",
                 "ExecStart=/opt/edgelstm/bin/edgelstm bridge --config /etc/edgelstm/%i.toml"):
        assert line in text


def test_the_bridge_says_ready_on_the_notify_socket(tmp_path, cmapss_bundle):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(60)
        bridge = subprocess.Popen([sys.executable, "-m", "edgelstm", "bridge", "--config", str(_config(tmp_path, cmapss_bundle)),
                                   "--duration", "2"], cwd=ROOT, env=dict(os.environ, NOTIFY_SOCKET=path),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        messages = [listener.recv(4096).decode(), listener.recv(4096).decode()]
        bridge.communicate(timeout=60)
    assert messages[0].startswith("READY=1") and messages[1] == "STOPPING=1" and bridge.returncode == 0
