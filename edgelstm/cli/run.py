"""``edgelstm run``: readings from a CSV file or stdin through the runtime, one step per line.

Input: one reading per line, numbers separated by commas (or tabs/spaces). A first line
that is not numeric is a header: when it names every feature of the bundle the columns
are taken by name (in any order, extra columns ignored), otherwise by position. Blank
lines are skipped. Output: one JSON object per line (``{"line": 3, "step": 1, "y": [...]}``; an autoencoder's
``"anomaly_score"`` instead of ``"y"``; ``{"line": 1, "step": 1, "filling": 30}`` while a window fills)
or CSV (``line,y0,y1,...``), flushed per line so it can feed a pipe. A line that cannot be
used is, by ``--on-bad-input``: ``error`` (exit 2 naming the line), ``skip`` (reported on
stdout as ``{"line": n, "rejected": "why"}`` and counted; the state is untouched) or
``hold`` (the last good value of each bad feature is used).
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys

import numpy as np

from edgelstm.errors import InputError

_SPLIT = re.compile(r"[,\t ;]+")


def run_stream(args) -> int:
    from edgelstm.runtime.stream import load

    runtime = load(args.bundle, backend=args.backend, on_bad_input=args.on_bad_input, delegate=None)
    output_name = runtime.bundle.manifest["outputs"][0]["name"]  # "y", or an autoencoder's "anomaly_score"
    if args.state and args.state.exists():
        runtime.load_state(args.state)
    source = sys.stdin if args.input == "-" else open(args.input, newline="")
    out = sys.stdout
    writer = csv.writer(out) if args.format == "csv" else None
    if writer:
        writer.writerow(["line"] + [f"y{i}" for i in range(runtime.output_size)])
    columns = None
    rejected = 0
    try:
        for number, line in enumerate(source, start=1):
            text = line.strip()
            if not text:
                continue
            fields = [f for f in _SPLIT.split(text) if f != ""]
            if columns is None and number == 1 and not _numeric(fields[0]):
                names = [f.strip() for f in fields]
                if all(name in names for name in runtime.feature_names):
                    columns = [names.index(name) for name in runtime.feature_names]
                continue
            try:
                values = np.array([float(fields[c]) for c in columns] if columns else [float(f) for f in fields], np.float32)
            except (ValueError, IndexError):
                values = None
            try:
                if values is None:
                    raise InputError(f"line {number}: not {runtime.n_features} numbers: {text[:80]!r}")
                rejected_before = runtime.counters["rejected"]
                y = runtime.step(values)
            except InputError as exc:
                if args.on_bad_input == "error":
                    raise InputError(f"{args.input}, line {number}: {exc}") from None
                rejected += 1
                if writer is None:
                    out.write(json.dumps({"line": number, "rejected": str(exc)}) + "\n")
                continue
            if not np.isfinite(y).all():
                filling = runtime.window and int(runtime.steps[0]) < runtime.window
                if filling and runtime.counters["rejected"] == rejected_before:  # a good reading; the window is still filling
                    if writer is None:
                        out.write(json.dumps({"line": number, "step": int(runtime.steps[0]), "filling": runtime.window}) + "\n")
                    continue
                rejected += 1
                if writer is None:
                    out.write(json.dumps({"line": number, "rejected": "bad reading skipped"}) + "\n")
                continue
            if writer:
                writer.writerow([number] + [f"{v:.6g}" for v in y])
            else:
                out.write(json.dumps({"line": number, "step": int(runtime.steps[0]), output_name: [round(float(v), 6) for v in y]}) + "\n")
            for event in runtime.events():  # drift, saturation, stuck sensors: JSON lines (stderr with --format csv)
                event["line"] = number
                print(json.dumps(event), file=sys.stderr if writer else out)
            out.flush()
    finally:
        if source is not sys.stdin:
            source.close()
        if args.state:  # also when stopping on a bad line: keep what was stepped
            runtime.save_state(args.state)
    counters = runtime.counters
    print(f"edgelstm run: {counters['steps']} steps, {rejected} rejected, {counters['held']} held "
          f"({runtime.model_file} on {runtime.backend})", file=sys.stderr)
    return 0


def _numeric(text: str) -> bool:
    try:
        return math.isfinite(float(text)) or True
    except ValueError:
        return False
