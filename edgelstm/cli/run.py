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
                columns = header_columns([f.strip() for f in fields], runtime.feature_names, args)
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


def header_columns(names: list, features: list, args) -> list | None:
    """Column index of each model feature, from a header line that must name exactly the
    model's features (in any order; ``--ignore-column`` drops extra ones such as a timestamp).
    Anything else is an error naming the missing and the unknown columns: mapping by position
    would silently feed one sensor's values to another's input. ``--by-position`` maps the
    columns in order instead, explicitly."""
    ignored = set(getattr(args, "ignore_column", None) or [])
    kept = [(k, name) for k, name in enumerate(names) if name not in ignored]
    if getattr(args, "by_position", False):
        if len(kept) != len(features):
            raise InputError(f"{args.input}, line 1: {len(kept)} columns, the model has {len(features)} features "
                             "(--by-position maps them in order)")
        return [k for k, _ in kept]
    duplicates = sorted({name for _, name in kept if [n for _, n in kept].count(name) > 1})
    missing = [f for f in features if f not in {name for _, name in kept}]
    unknown = [name for _, name in kept if name not in features]
    if duplicates or missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(unknown)}"] if unknown else []) + \
                ([f"repeated {', '.join(duplicates)}"] if duplicates else [])
        raise InputError(f"{args.input}, line 1: the header does not name the model's features ({'; '.join(parts)}); "
                         f"the model reads {', '.join(features)}. Fix the header, drop extra columns with "
                         "--ignore-column NAME, or map columns in order with --by-position")
    index = {name: k for k, name in kept}
    return [index[f] for f in features]


def _numeric(text: str) -> bool:
    try:
        return math.isfinite(float(text)) or True
    except ValueError:
        return False
