"""``edgelstm dataset``: device logs and maintenance events become labelled training sequences.

In predictive maintenance the label of a reading, its remaining useful life, becomes known
late: when the machine fails. ``maintenance.csv`` says when that happened, one row per event::

    device,time,kind          (time: host Unix seconds or ISO 8601, as in the log's time column)
    pump7,1796164451.2,failure
    device,seq,kind           (or: the sequence number of the last reading before the event)
    pump7,4711,service

Each event ends one *life* of that device's machine: the readings after the previous event of
the device, up to and including the event's reading. A ``failure`` gives every reading of its
life its RUL, ``min(cap, cycles until the failure)`` as the recipe caps it; a ``service``
(repaired before failing) only says the RUL was longer, so that life is kept unlabelled, as is
the run still in progress after a device's last event: usable for calibration and as a drift
reference, not for training.

Cycles are counted from the sequence numbers, so gaps are handled: a missing sequence number
(a reading lost on the wire, refused, or lost in an unplug) is a cycle without a reading, filled
by repeating the last reading (counted as ``filled``), so the RUL of every later reading stays
right. A device restart (the frame's RESTARTED flag, or the sequence going back) restarts the
sequence numbers; the cycles lost across it cannot be known and are counted as none (said per
device as ``restarts``; the RUL of earlier readings may then be short by those cycles).
Duplicated rows were dropped by :mod:`.logs`. Everything is reported in ``report``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from edgelstm.errors import InputError

from .logs import Logs, read_logs

RESTARTED = 0x01
WRAP = 1 << 16  # frame sequence numbers are 16 bits
KINDS = ("failure", "service")


@dataclass
class Event:
    device: str
    kind: str
    time: float | None = None
    seq: int | None = None
    line: int = 0


@dataclass
class Dataset:
    features: list
    sequences: list = field(default_factory=list)  # (cycles, features) float32, one per labelled life
    targets: list = field(default_factory=list)  # (cycles,) float32 RUL, capped
    devices: list = field(default_factory=list)  # the device of each labelled life
    unlabelled: list = field(default_factory=list)  # (cycles, features): serviced lives and runs in progress
    unlabelled_devices: list = field(default_factory=list)
    report: dict = field(default_factory=dict)

    def save(self, path) -> None:
        """An ``.npz`` of plain arrays (no pickle): ``x``/``y`` concatenated, ``offsets`` per life."""
        def packed(sequences):
            offsets = np.cumsum([0] + [len(s) for s in sequences]).astype(np.int64)
            width = len(self.features)
            return (np.concatenate(sequences).astype(np.float32) if sequences else np.zeros((0, width), np.float32)), offsets

        x, offsets = packed(self.sequences)
        u, u_offsets = packed(self.unlabelled)
        np.savez(path, x=x, y=np.concatenate(self.targets).astype(np.float32) if self.targets else np.zeros(0, np.float32),
                 offsets=offsets, devices=np.array(self.devices, dtype=str), features=np.array(self.features, dtype=str),
                 unlabelled_x=u, unlabelled_offsets=u_offsets, unlabelled_devices=np.array(self.unlabelled_devices, dtype=str),
                 report=np.array(json.dumps(self.report)))


def load_dataset(path) -> Dataset:
    """Read what :meth:`Dataset.save` wrote (refusing anything else by name)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a dataset edgelstm dataset wrote ({exc})") from None
    missing = [k for k in ("x", "y", "offsets", "features") if k not in arrays]
    if missing:
        raise InputError(f"{path}: not a dataset edgelstm dataset wrote (no {', '.join(missing)})")
    offsets = arrays["offsets"]
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(arrays["x"]) or (np.diff(offsets) < 0).any() \
            or len(arrays["y"]) != len(arrays["x"]):
        raise InputError(f"{path}: offsets, x and y do not agree")

    def unpack(x, offsets):
        return [x[a:b] for a, b in zip(offsets[:-1], offsets[1:])]

    dataset = Dataset(features=arrays["features"].tolist(), sequences=unpack(arrays["x"], offsets),
                      targets=unpack(arrays["y"], offsets), devices=arrays.get("devices", np.array([])).tolist())
    if "unlabelled_x" in arrays:
        dataset.unlabelled = unpack(arrays["unlabelled_x"], arrays["unlabelled_offsets"])
        dataset.unlabelled_devices = arrays["unlabelled_devices"].tolist()
    if "report" in arrays:
        dataset.report = json.loads(str(arrays["report"]))
    return dataset


def read_events(path) -> list:
    """The maintenance events of ``path``, checked: columns, devices, kinds, times."""
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    events = []
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if header not in (["device", "time", "kind"], ["device", "seq", "kind"]):
            raise InputError(f"{path}:1: the header is {','.join(header) or '(empty)'}; expected device,time,kind "
                             "or device,seq,kind")
        by = header[1]
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise InputError(f"{path}:{line}: {len(row)} fields; expected {','.join(header)}")
            device, when, kind = (v.strip() for v in row)
            if kind not in KINDS:
                raise InputError(f"{path}:{line}: kind {kind!r}; expected one of {', '.join(KINDS)}")
            event = Event(device=device, kind=kind, line=line)
            try:
                if by == "seq":
                    event.seq = int(when)
                else:
                    event.time = float(when) if _is_number(when) else datetime.fromisoformat(when).timestamp()
            except ValueError:
                raise InputError(f"{path}:{line}: {by} {when!r} is not "
                                 + ("a whole number" if by == "seq" else "Unix seconds or an ISO 8601 time")) from None
            events.append(event)
    return events


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _cycles(log) -> tuple:
    """The cycle index of each reading (sequence numbers unwrapped, restarts joined) and what it saw."""
    n = len(log.seq)
    cycle = np.zeros(n, np.int64)
    restarts = gaps = 0
    for i in range(1, n):
        step = (int(log.seq[i]) - int(log.seq[i - 1])) % WRAP
        restarted = bool(log.flags[i] & RESTARTED) or (
            log.t_device_us[i] >= 0 and log.t_device_us[i - 1] >= 0 and log.t_device_us[i] < log.t_device_us[i - 1])
        if restarted or step == 0 or step > WRAP // 2:
            restarts += 1
            step = 1  # what was lost across a restart is not known
        elif step > 1:
            gaps += step - 1
        cycle[i] = cycle[i - 1] + step
    return cycle, restarts, gaps


def _dense(x: np.ndarray, cycle: np.ndarray) -> tuple:
    """The readings on every cycle from the first to the last, gaps filled with the last reading."""
    length = int(cycle[-1] - cycle[0]) + 1
    index = np.searchsorted(cycle, np.arange(cycle[0], cycle[0] + length), side="right") - 1
    return x[index], length - len(cycle)


def build(logs: Logs, events: list, cap: float = 125.0) -> Dataset:
    """Label the logs' readings from the events (see the module docstring)."""
    dataset = Dataset(features=logs.features)
    report = {"files": logs.files, "repeated_rows_dropped": logs.repeated_rows, "cap": cap, "devices": {}}
    unknown = sorted({e.device for e in events} - set(logs.devices))
    if unknown:
        line = next(e.line for e in events if e.device == unknown[0])
        raise InputError(f"maintenance events line {line}: device {unknown[0]!r} is in no log "
                         f"(the logs have {', '.join(sorted(logs.devices))})")
    for device, log in sorted(logs.devices.items()):
        cycle, restarts, gaps = _cycles(log)
        mine = [e for e in events if e.device == device]
        mine.sort(key=lambda e: (e.time if e.time is not None else 0.0, e.line))
        start, lives, filled_total = 0, [], 0
        for event in mine:
            if event.time is not None:
                end = int(np.searchsorted(log.time, event.time, side="right"))  # readings up to the event's time
            else:
                matches = np.flatnonzero(log.seq[start:] == event.seq)
                if not len(matches):
                    raise InputError(f"maintenance events line {event.line}: {device} has no reading with seq "
                                     f"{event.seq} after its previous event")
                end = start + int(matches[0]) + 1
            if end <= start:
                lives.append({"kind": event.kind, "line": event.line, "readings": 0, "note": "no readings in this life"})
                continue
            x, filled = _dense(log.x[start:end], cycle[start:end])
            filled_total += filled
            life = {"kind": event.kind, "line": event.line, "readings": end - start, "cycles": len(x), "filled": filled}
            if event.kind == "failure":
                dataset.sequences.append(x)
                dataset.targets.append(np.minimum(cap, np.arange(len(x) - 1, -1, -1)).astype(np.float32))
                dataset.devices.append(device)
                life["labelled"] = True
            else:
                dataset.unlabelled.append(x)
                dataset.unlabelled_devices.append(device)
                life["labelled"] = False
            lives.append(life)
            start = end
        if start < len(cycle):  # the run still in progress
            x, filled = _dense(log.x[start:], cycle[start:])
            filled_total += filled
            dataset.unlabelled.append(x)
            dataset.unlabelled_devices.append(device)
            lives.append({"kind": "in_progress", "readings": len(cycle) - start, "cycles": len(x), "filled": filled,
                          "labelled": False})
        report["devices"][device] = {"readings": len(cycle), "restarts": restarts, "missing_cycles": gaps,
                                     "filled": filled_total, "lives": lives}
    report["labelled_lives"] = len(dataset.sequences)
    report["labelled_cycles"] = int(sum(len(s) for s in dataset.sequences))
    report["unlabelled_runs"] = len(dataset.unlabelled)
    dataset.report = report
    return dataset


def make_dataset(log_paths, events_path, out, cap: float = 125.0) -> Dataset:
    dataset = build(read_logs(log_paths), read_events(events_path), cap=cap)
    dataset.save(out)
    return dataset
