"""Reading logs the bridge wrote (``--sink csv:PATH --log-readings``), back as arrays per device.

A log is a CSV file whose header is ``time,device,stream,seq,t_device_us,flags,x_NAME...,y0...``
(:class:`firmware_bridge.sinks.CsvFileSink` with ``readings``); rotated files
(``STEM.NNNNNN.csv``) and the live one are read together. Anything else is refused naming the
file and line: a header without the reading columns (the log was written without
``--log-readings``), logs of different feature sets, a value that is not a number. Rows of
one device are put in time order (host time, stable), and a row repeated across files (the
same device, sequence, device time and reading) is kept once and counted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgelstm.errors import InputError

FIXED = ("time", "device", "stream", "seq", "t_device_us", "flags")


@dataclass
class DeviceLog:
    """One device's logged readings in time order."""

    device: str
    time: np.ndarray  # host Unix time of each reading (float64)
    seq: np.ndarray  # the frame sequence number (int64; 16 bits on the wire)
    t_device_us: np.ndarray  # the device clock (int64; -1 where the protocol has none)
    flags: np.ndarray  # frame flags (bit 0: the device restarted)
    x: np.ndarray  # (n, features) float32 raw readings


@dataclass
class Logs:
    features: list
    devices: dict  # name -> DeviceLog
    files: list
    repeated_rows: int = 0
    notes: list = field(default_factory=list)


def read_logs(paths) -> Logs:
    """Read every log in ``paths`` (files; order does not matter)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no log files given")
    features, rows = None, {}
    for path in paths:
        try:
            handle = open(path, newline="", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        with handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                continue  # an empty file (a log rotated just now)
            if tuple(header[:len(FIXED)]) != FIXED:
                raise InputError(f"{path}:1: the header is {','.join(header[:8])}...; a reading log starts with "
                                 f"{','.join(FIXED)} (write it with edgelstm bridge --log-readings)")
            names = [h[2:] for h in header[len(FIXED):] if h.startswith("x_")]
            if not names:
                raise InputError(f"{path}:1: no x_ columns: the log holds predictions but not the readings")
            if features is None:
                features = names
            elif names != features:
                raise InputError(f"{path}:1: features {','.join(names)}; the other logs have {','.join(features)}")
            first_x, count = len(FIXED), len(names)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise InputError(f"{path}:{line}: {len(row)} fields, the header has {len(header)} (a torn line?)")
                try:
                    key = (float(row[0]), int(row[3]), int(row[4]) if row[4] else -1, int(row[5]),
                           tuple(float(v) for v in row[first_x:first_x + count]))
                except ValueError as exc:
                    raise InputError(f"{path}:{line}: not a number ({exc})") from None
                rows.setdefault(row[1], []).append(key)
    if features is None:
        raise InputError(f"{', '.join(map(str, paths))}: no readings in the logs")
    logs = Logs(features=features, devices={}, files=[str(p) for p in paths])
    for device, entries in rows.items():
        seen, kept = set(), []
        for entry in entries:
            identity = entry[1:]  # seq, device time, flags, reading: the same reading logged twice
            if identity in seen:
                logs.repeated_rows += 1
                continue
            seen.add(identity)
            kept.append(entry)
        kept.sort(key=lambda e: e[0])  # stable: rows of one time stay in file order
        logs.devices[device] = DeviceLog(
            device=device, time=np.array([e[0] for e in kept]), seq=np.array([e[1] for e in kept], np.int64),
            t_device_us=np.array([e[2] for e in kept], np.int64), flags=np.array([e[3] for e in kept], np.int64),
            x=np.array([e[4] for e in kept], np.float32).reshape(len(kept), len(features)))
    return logs
