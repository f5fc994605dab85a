"""Bridge throughput and added latency over a pseudo-terminal (one process, one run).

    python bench/bridge.py [--seconds 2]

Builds a 24-channel model (LSTM 64 + LSTM 32 + Dense 1, random weights, int8), then for
rising frame rates writes 24-float-channel frames into a pty at that rate from a writer
thread while the bridge reads the other end, and checks that every frame became a
prediction (no CRC failure, no gap, no queue overflow). Reports the highest lossless rate,
and at a rate well inside it the latency the bridge adds from the frame's write to the
prediction's emission (p50, p99) beside the runtime's own step time measured in the same run.
Also prints the frame rates that fit 115200 and 921600 baud (8N1: 10 bits per byte).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import edgelstm  # noqa: E402
from firmware_bridge.bridge import Bridge  # noqa: E402
from firmware_bridge.protocol import encode_frame  # noqa: E402
from firmware_bridge.transport import PtyLink  # noqa: E402

CHANNELS = 24


def make_bundle(directory: Path) -> Path:
    import keras

    from edgelstm.convert.pipeline import ConvertOptions, convert

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, CHANNELS)), keras.layers.LSTM(64, return_sequences=True),
                              keras.layers.LSTM(32), keras.layers.Dense(1)])
    model.save(directory / "m24.keras")
    np.save(directory / "c24.npy", np.random.default_rng(0).normal(size=(20, 100, CHANNELS)).astype("float32"))
    convert(ConvertOptions(model=directory / "m24.keras", calibration=directory / "c24.npy", out=directory / "b24",
                           formats=["tflite"], quant=["int8"], long_steps=1000, progress=False))
    return directory / "b24"


class TimingSink:
    def __init__(self):
        self.emitted = {}
        self.step_us = []

    def emit(self, event):
        if event["event"] == "prediction":
            self.emitted[event["seq"]] = time.monotonic_ns()
            self.step_us.append(event["step_us"])

    def close(self):
        pass


WRITER = r"""
import os, sys, time
import numpy as np
sys.path.insert(0, sys.argv[5])
from firmware_bridge.protocol import encode_frame
fd, rate, count, out = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
frames = [encode_frame(i & 0xFFFF, i, v) for i, v in enumerate(np.random.default_rng(1).normal(size=(count, 24)).astype(np.float32))]
written = np.zeros(count, np.int64)
os.write(fd, b"\x00")
period = 1.0 / rate
start = time.monotonic()
for i, frame in enumerate(frames):
    target = start + i * period
    while time.monotonic() < target:
        pass
    written[i] = time.monotonic_ns()
    view = memoryview(frame)
    while view:
        view = view[os.write(fd, view):]
np.save(out, written)
"""


def trial(bundle: Path, rate: float, seconds: float) -> dict:
    """The device is a separate process (its own GIL) writing frames into the pty at ``rate``;
    CLOCK_MONOTONIC is shared, so write and emit times compare directly."""
    import subprocess

    count = int(rate * seconds)
    sink = TimingSink()
    with PtyLink() as link, tempfile.TemporaryDirectory() as scratch:
        bridge = Bridge(link.path, edgelstm.load(bundle), sinks=[sink], queue_size=4096).start()
        bridge.wait(lambda: bridge._port is not None, 5)
        out = Path(scratch) / "written.npy"
        subprocess.run([sys.executable, "-c", WRITER, str(link.master), str(rate), str(count), str(out), str(ROOT)],
                       pass_fds=(link.master,), check=True)
        writer_done = time.monotonic_ns()
        bridge.wait(lambda: bridge.stats.readings_stepped >= count, 5)
        bridge.stop()
        written = np.load(out)
    c = bridge.counters
    lossless = c["frames_good"] == count and c["readings_stepped"] == count and c["queue_overflow"] == 0 and c["frames_dropped"] == 0
    latency = np.array([(sink.emitted[i & 0xFFFF] - written[i]) / 1e3 for i in range(min(count, 65536)) if (i & 0xFFFF) in sink.emitted])
    kept_up = sum(1 for t in sink.emitted.values() if t <= writer_done + 20_000_000) / count  # within 20 ms of the last write
    return {"rate": rate, "frames": count, "lossless": lossless, "kept_up": kept_up, "counters": c, "latency_us": latency,
            "step_us": np.array(sink.step_us)}


def main() -> int:
    seconds = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 2.0
    with tempfile.TemporaryDirectory() as scratch:
        bundle = make_bundle(Path(scratch))
        frame_bytes = len(encode_frame(1, 1, np.ones(CHANNELS, np.float32))) - 1  # back to back frames share a 0x00
        best = None
        for rate in (100, 1000, 2000, 5000, 10000, 20000, 40000):
            result = trial(bundle, rate, seconds)
            lat, step = result["latency_us"], result["step_us"]
            sustained = result["lossless"] and result["kept_up"] >= 0.99
            print(f"{rate:>6} frames/s for {seconds:g} s: {'lossless' if result['lossless'] else 'LOSS'}, "
                  f"{100 * result['kept_up']:.1f} % emitted by the end of writing; write -> prediction p50 "
                  f"{np.percentile(lat, 50):.0f} us, p99 {np.percentile(lat, 99):.0f} us; step() p50 {np.percentile(step, 50):.1f} us, "
                  f"p99 {np.percentile(step, 99):.1f} us")
            if not sustained:
                break
            best = result
        if best is not None:
            print(f"highest sustained lossless rate: {best['rate']} frames/s of {CHANNELS} float32 channels ({frame_bytes} bytes per frame)")
        for baud in (115200, 921600):
            print(f"{baud} baud (8N1) carries {baud / 10 / frame_bytes:.0f} frames/s of {CHANNELS} float32 channels "
                  f"({baud / 10 / (frame_bytes - 48):.0f} with int16 values)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
