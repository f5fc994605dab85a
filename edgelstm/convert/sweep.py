"""The quantization sweep table: every variant of a bundle side by side.

For each model file: its size, its error against the float reference on held-out data (from
the fidelity report), its step latency on this machine (p50 of the runtime's ``step()``, one
thread, same run), and whether it can run on the Edge TPU (full int8 with integer I/O).
"""

from __future__ import annotations

import json
import time

import numpy as np

from edgelstm.runtime.bundle import Bundle


def report_name(entry: dict) -> str:
    return f"{entry['format']} {entry['quant']}" + (" stream" if entry.get("io") == "stream" else "")


def sweep(bundle_path, steps: int = 2000) -> list:
    from edgelstm.runtime.profiler import readings
    from edgelstm.runtime.stream import load

    bundle = Bundle.open(bundle_path)
    report = json.loads((bundle.path / "report.json").read_text())
    data = list(readings(bundle, 256, 1)[:, 0])
    rows = []
    for entry in bundle.manifest["models"]:
        backend = "litert" if entry["format"] == "tflite" else "onnxruntime"
        runtime = load(bundle, backend=backend, model=entry["file"], monitor=False, delegate=None)
        step = runtime.step
        for x in data:
            step(x)
        samples = np.empty(steps)
        for i in range(steps):
            start = time.perf_counter_ns()
            step(data[i & 255])
            samples[i] = time.perf_counter_ns() - start
        metrics = report["models"].get(report_name(entry), {})
        rows.append({
            "file": entry["file"], "format": entry["format"], "quant": entry["quant"], "io": entry.get("io"),
            "bytes": entry["bytes"], "relative_rmse": metrics.get("relative_rmse"), "max_abs_error": metrics.get("max_abs_error"),
            "step_p50_us": float(np.percentile(samples, 50)) / 1000.0,
            "edgetpu": bool(entry.get("edgetpu", {}).get("compatible", False)),
        })
    return rows


def format_sweep(rows: list) -> str:
    header = f"{'variant':<26}{'file':<26}{'bytes':>9}{'RMSE/std':>10}{'max abs':>10}{'step p50':>11}{'Edge TPU':>10}"
    lines = ["Quantization sweep (error vs the float reference on held-out data; latency on this machine, 1 thread)",
             header, "-" * len(header)]
    for r in rows:
        error = "" if r["relative_rmse"] is None else f"{100 * r['relative_rmse']:.2f}%"
        max_abs = "" if r["max_abs_error"] is None else f"{r['max_abs_error']:.3g}"
        lines.append(f"{r['format'] + ' ' + r['quant'] + (' (stream)' if r['io'] == 'stream' else ''):<26}{r['file']:<26}"
                     f"{r['bytes']:>9}{error:>10}{max_abs:>10}{r['step_p50_us']:>9.1f}us{'yes' if r['edgetpu'] else 'no':>10}")
    return "\n".join(lines)
