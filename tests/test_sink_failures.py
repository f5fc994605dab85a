"""A sink that cannot deliver is an error the operator sees: at start-up when it can be known
then, else a line on stderr, a counter, ``/healthz`` ``failing``/``degraded`` and a non-zero exit.

The full disk is /dev/full (every write fails with ENOSPC), or a sink whose file is pointed
there mid-run.
"""

from __future__ import annotations

import io

import pytest

import edgelstm
from edgelstm.errors import SinkError
from firmware_bridge.bridge import Bridge
from firmware_bridge.cli import _exit_status
from firmware_bridge.protocol import encode_frame
from firmware_bridge.simulator import cmapss_units
from firmware_bridge.sinks import CsvFileSink, JsonLinesSink

from .conftest import run_cli


@pytest.fixture(scope="module")
def units():
    return cmapss_units([1], "train")  # a long engine (192 cycles)


def test_a_full_disk_at_start_up_refuses_the_bridge(cmapss_bundle):
    result = run_cli("bridge", "--port", "loop://", "--bundle", cmapss_bundle, "--sink", "csv:/dev/full",
                     "--duration", "1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "csv:/dev/full" in result.stderr and "No space left on device" in result.stderr


def test_a_disk_that_fills_mid_run_is_counted_said_and_ends_non_zero(cmapss_bundle, units, tmp_path, capsys):
    runtime = edgelstm.load(cmapss_bundle)
    csv = CsvFileSink(tmp_path / "out.csv", runtime.output_size, sync_every=5)
    csv.check()
    bridge = Bridge("loop://", runtime, sinks=[csv]).start()
    assert bridge.wait(lambda: bridge._port is not None, 5)
    engine = units[0][:40]
    bridge._port.write(b"".join(encode_frame(i, i, v) for i, v in enumerate(engine[:10])))
    assert bridge.wait(lambda: bridge.stats.readings_stepped == 10, 5)
    csv.path = "/dev/full"  # the disk is full from here on
    csv._drop_file()
    for start in (10, 20, 30):  # in pieces: pyserial's loop:// holds a limited number of bytes
        bridge._port.write(b"".join(encode_frame(i, i, engine[i]) for i in range(start, start + 10)))
        assert bridge.wait(lambda: bridge.stats.readings_stepped == start + 10, 5)
    health = bridge.health()
    assert health["status"] == "failing"  # the only delivering sink fails: nothing reaches anyone
    bridge.stop()
    (report,) = bridge.sink_report()
    assert report["undelivered"] == 30 and "No space left" in report["last_failure"]
    assert csv.synced == 10 and csv.rows == 40
    assert (tmp_path / "out.csv").read_text().count("\n") == 11  # header + the 10 rows before the disk filled
    err = capsys.readouterr().err
    assert err.count(f"sink csv:{tmp_path / 'out.csv'} failing") == 1  # said once, counted always
    assert _exit_status(bridge) == 1
    assert "30 event(s) undelivered" in capsys.readouterr().err


def test_a_closed_stdout_is_a_failing_sink(cmapss_bundle, units):
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    stream.close()
    with pytest.raises(SinkError, match="stdout"):
        sink.emit({"event": "prediction", "y": [1.0]})
    assert sink.undelivered() == 1


def test_a_worker_blocked_by_a_sink_is_reported_with_what_was_left_unstepped(cmapss_bundle, units):
    import threading

    release = threading.Event()

    class Stalled(JsonLinesSink):  # a stdout reader that stopped reading
        def emit(self, event):
            release.wait(10)

    runtime = edgelstm.load(cmapss_bundle)
    bridge = Bridge("loop://", runtime, sinks=[Stalled(io.StringIO())]).start()
    assert bridge.wait(lambda: bridge._port is not None, 5)
    for start in range(0, 50, 10):
        bridge._port.write(b"".join(encode_frame(i, i, units[0][i]) for i in range(start, start + 10)))
        assert bridge.wait(lambda: bridge.stats.readings_queued == start + 10, 5)
    bridge.stop(timeout=0.5)
    release.set()
    assert bridge.unstepped > 0 and "left unstepped" in str(bridge.error)
    assert _exit_status(bridge) == 1
