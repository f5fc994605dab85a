"""What a newcomer meets: too little calibration data is said, ``simulate --pty`` waits for its
reader, and ``/healthz`` shows no more than the operator chose."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np

import edgelstm
from firmware_bridge.bridge import Bridge
from firmware_bridge.protocol import FrameDecoder
from firmware_bridge.sinks import PrometheusSink
from firmware_bridge.transport import open_port

from .conftest import ROOT, run_cli


def test_tiny_calibration_is_said_and_a_2d_array_explained(keras, tmp_path):
    L = keras.layers
    keras.Sequential([keras.Input((None, 14)), L.LSTM(4, return_sequences=True), L.Dense(1)]).save(tmp_path / "m.keras")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(200, 14)).astype("float32"))
    result = run_cli("convert", tmp_path / "m.keras", "--calibration", tmp_path / "c.npy", "--out", tmp_path / "b",
                     "--formats", "tflite", "--quant", "int8,float32", "--long-steps", "100", "--quiet")
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    text = " ".join(report["data_warnings"])
    assert "holds one array of shape (200, 14), read as ONE sequence of 200 steps" in text
    assert "the report is measured on" in text
    assert "read as ONE sequence of 200 steps" in result.stdout  # printed with the verdict


def test_simulate_on_a_pty_waits_for_its_reader_and_the_reader_gets_the_whole_engine():
    simulator = subprocess.Popen([sys.executable, "-m", "edgelstm", "simulate", "--pty", "--unit", "1", "--rate", "500",
                                  "--wait-reader", "20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = simulator.stdout.readline().strip()
        time.sleep(1.5)  # a bridge started a while after the simulator
        port = open_port(path)
        decoder, frames = FrameDecoder(), []
        deadline = time.monotonic() + 20
        while len(frames) < 31 and time.monotonic() < deadline:
            frames += decoder.feed(port.read(4096))
        port.close()
        _, stderr = simulator.communicate(timeout=30)
    finally:
        simulator.kill()
    assert [f.sequence for f in frames] == list(range(31)), stderr  # FD001 test engine 1: 31 cycles, none missed
    assert "no reader" not in stderr


def test_simulate_says_when_no_reader_came():
    result = subprocess.run([sys.executable, "-m", "edgelstm", "simulate", "--pty", "--unit", "1", "--rate", "0",
                             "--wait-reader", "0.3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "no reader opened" in result.stderr and "within 0.3 s" in result.stderr


def _healthz(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as failing:  # 503 while no reading has arrived: the body is the same JSON
        return json.loads(failing.read())


def test_healthz_shows_only_the_detail_chosen(cmapss_bundle):
    import socket

    shown = {}
    for detail in ("full", "anonymous", "status"):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        bridge = Bridge("loop://", edgelstm.load(cmapss_bundle), sinks=[PrometheusSink(port=port, healthz=detail)]).start()
        try:
            assert bridge.wait(lambda: bridge._port is not None, 5)
            shown[detail] = _healthz(port)
        finally:
            bridge.stop()
    assert {"bundle_id", "model", "model_sha256", "readings", "status"} <= set(shown["full"])
    assert not {"bundle_id", "model", "model_sha256"} & set(shown["anonymous"]) and "readings" in shown["anonymous"]
    assert set(shown["status"]) == {"status"}


def test_every_option_of_every_subcommand_has_help_and_no_help_shows_rest_markup():
    import argparse

    from edgelstm.cli import build_parser

    parser = build_parser()
    texts = [parser.description or ""]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        texts.append(sub.description or "")
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"edgelstm {name} {action.option_strings[0]} has no help text"
                texts.append(action.help)
    markup = [t for t in texts if "``" in t or ":func:" in t or ":class:" in t or ":mod:" in t]
    assert not markup, markup
