"""The gateway's CPU cost: 16 devices at 100 readings/s each, one ``edgelstm bridge`` process.

    python bench/gateway.py [--devices 16] [--rate 100] [--seconds 10] [--repeats 5]

Each repeat runs, one after the other, on the same readings (FD001 test engines, each device
its own offset): the gateway from a config file with ``gather_ms = 5`` (the default), with the
devices sending in step (all 16 readings of a period at once) and spread (device k sends k/16 of
a period after device 0, as devices with clocks of their own do: the reader then wakes for
almost every reading), the gateway with ``gather_ms = 0`` (step whatever has arrived; in step),
and the baseline a gateway replaces:
one single-device ``edgelstm bridge`` process per device (one systemd instance each), CPU
summed. The devices are pty pairs fed by one writer thread in this process. The bridge's CPU
time (user + system, from ``/proc/PID/stat``) is taken over ``--seconds`` after every device
has been read for one second; reported as a share of one core, min/median/max over repeats,
and as a ratio to the baseline of the same repeat. Every run's ledger is checked at exit: each
device's readings all stepped (the process exits 0).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


class Devices:
    """``n`` pty devices, one writer thread sending each a frame every ``1/rate`` s."""

    def __init__(self, n: int, rate: float, readings: np.ndarray, spread: bool = False):
        from firmware_bridge.transport import PtyLink

        self.links = [PtyLink() for _ in range(n)]
        self.rate, self.readings = rate, readings
        self.spread = spread  # device k sends k/n of a period after device 0 (independent clocks), not all at once
        self.sent = [0] * n
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)

    def start(self):
        for link in self.links:
            link.write(b"\x00")
        self._thread.start()

    def _write(self):
        from firmware_bridge.protocol import encode_frame

        period, n = 1.0 / self.rate, len(self.readings)
        offsets = [k * period / len(self.links) if self.spread else 0.0 for k in range(len(self.links))]
        next_time = time.monotonic()
        while not self._stop.is_set():
            next_time += period
            for k, link in enumerate(self.links):
                delay = next_time + offsets[k] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sequence = self.sent[k]
                link.write(encode_frame(sequence & 0xFFFF, sequence * 10_000, self.readings[(997 * k + sequence) % n]))
                self.sent[k] += 1

    def stop(self):
        self._stop.set()
        self._thread.join()

    def close(self):
        for link in self.links:
            link.unplug()


def _config(directory: Path, bundle: Path, links, gather_ms: float, name: str) -> Path:
    devices = "".join(f'\n[[devices]]\nname = "dev{k}"\nport = "{link.path}"\n' for k, link in enumerate(links))
    path = directory / f"{name}.toml"
    path.write_text(f'bundle = "{bundle}"\nsinks = ["csv:{directory / name}.csv"]\ngather_ms = {gather_ms}\n' + devices)
    return path


def _run(processes, devices: Devices, seconds: float) -> float:
    """Start the device writer, wait until each bridge reads, measure their CPU for ``seconds``."""
    for link in devices.links:
        if not link.wait_for_reader(120):
            raise SystemExit(f"no bridge opened {link.path}: " + " | ".join(p.stderr.read()[-500:] for p in processes if p.poll() is not None))
    devices.start()
    time.sleep(1.0)
    before = sum(_cpu_seconds(p.pid) for p in processes)
    started = time.monotonic()
    time.sleep(seconds)
    used = sum(_cpu_seconds(p.pid) for p in processes) - before
    share = used / (time.monotonic() - started)
    devices.stop()
    time.sleep(0.5)  # the last frames reach the bridges
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        totals = [(int(a), int(b)) for a, b in re.findall(r"readings (\d+): stepped (\d+)", stderr)]
        if process.returncode != 0 or not totals or any(a != b for a, b in totals):
            raise SystemExit(f"a bridge lost readings or failed (exit {process.returncode}):\n{stderr[-2000:]}")
    return share


def main(argv=None) -> int:
    from edgelstm.recipes.cmapss import load as load_cmapss
    from step_streams import _bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a bundle (default: convert the C-MAPSS example into build/)")
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--rate", type=float, default=100.0, help="readings per second per device")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    bundle = args.bundle or _bundle()
    readings = np.concatenate(load_cmapss()["test"].sequences).astype(np.float32)
    command = [sys.executable, "-m", "edgelstm", "bridge"]
    kinds = ("gateway, gather 5 ms", "gateway, gather 5 ms, spread", "gateway, gather 0",
             f"{args.devices} single-device bridges")
    shares = {kind: [] for kind in kinds}
    print(f"bundle {bundle}, {args.devices} devices x {args.rate:g} readings/s, {args.seconds:g} s measured, {args.repeats} repeats")
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            for kind in kinds:
                devices = Devices(args.devices, args.rate, readings, spread=kind.endswith("spread"))
                try:
                    if kind.startswith("gateway"):
                        gather = 5 if "5 ms" in kind else 0
                        config = _config(scratch, bundle, devices.links, gather, f"g{gather}")
                        processes = [subprocess.Popen(command + ["--config", str(config)], stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.PIPE, text=True, cwd=ROOT)]
                    else:
                        processes = [subprocess.Popen(command + ["--port", link.path, "--bundle", str(bundle), "--sink",
                                                                 f"csv:{scratch / f'single{k}.csv'}"],
                                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                                     for k, link in enumerate(devices.links)]
                    shares[kind].append(_run(processes, devices, args.seconds))
                finally:
                    devices.close()
        print(f"  repeat {repeat + 1}: " + ", ".join(f"{kind} {shares[kind][-1] * 100:.1f} %" for kind in kinds), flush=True)
    baseline = shares[kinds[-1]]
    print(f"\n{'':>34}{'share of one core (min / median / max)':>42}{'ratio to baseline (min / med / max)':>38}")
    for kind in kinds:
        values = np.array(shares[kind]) * 100
        ratios = np.array(shares[kind]) / np.array(baseline)
        print(f"{kind:>34}{f'{values.min():.1f} / {np.median(values):.1f} / {values.max():.1f} %':>42}"
              f"{f'{ratios.min():.2f} / {np.median(ratios):.2f} / {ratios.max():.2f}':>38}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
