"""``edgelstm profile``: per-step latency, throughput, CPU time and memory, per backend.

Runs on the device with only the runtime installed. For each backend it steps the bundle's
model ``steps`` times (after ``warmup`` steps) with readings drawn around the calibration
statistics, timing every call with ``perf_counter_ns``, and times the bare interpreter call
(``Invoke`` for TFLite, ``session.run`` for onnxruntime) the same way, so the runtime's own
overhead shows as a ratio measured in the same run.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .interpreters import available_backends
from .stream import BACKENDS, load

PERCENTILES = (50, 90, 99, 99.9)


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def latency_stats(samples_ns: np.ndarray) -> dict:
    us = samples_ns.astype(np.float64) / 1000.0
    stats = {"min_us": float(us.min()), "max_us": float(us.max()), "mean_us": float(us.mean()), "std_us": float(us.std())}
    for p in PERCENTILES:
        stats[f"p{p:g}_us"] = float(np.percentile(us, p))
    stats["steps_per_s"] = 1e6 / stats["mean_us"]
    return stats


def _time_calls(call, steps: int, warmup: int) -> tuple:
    for _ in range(warmup):
        call()
    samples = np.empty(steps, np.int64)
    clock = time.perf_counter_ns
    cpu_start = time.process_time()
    for i in range(steps):
        start = clock()
        call()
        samples[i] = clock() - start
    cpu = (time.process_time() - cpu_start) / steps * 1e6
    return samples, cpu


def readings(bundle: Bundle, count: int, streams: int, seed: int = 0) -> np.ndarray:
    """Readings around the calibration data: ``(count, streams, features)`` float32."""
    rng = np.random.default_rng(seed)
    vocabulary = bundle.manifest["input"].get("vocabulary")
    if vocabulary:  # token ids for Embedding models
        return rng.integers(0, vocabulary, (count, streams, 1)).astype(np.int64)
    stats = bundle.manifest["input"].get("calibration_stats")
    n = int(bundle.manifest["input"]["n_features"])
    mean = np.asarray(stats["mean"]) if stats else np.zeros(n)
    std = np.asarray(stats["std"]) if stats else np.ones(n)
    return (mean + std * rng.standard_normal((count, streams, n))).astype(np.float32)


def profile_backend(bundle: Bundle, backend: str, model: str | None, steps: int, warmup: int, streams: int, threads: int) -> list:
    """Rows for one backend: the runtime's ``step()`` and, where there is one, the bare call."""
    rss_before = _rss_mb()
    runtime = load(bundle, backend=backend, model=model, streams=streams, threads=threads, delegate=None)
    data = readings(bundle, 1024, streams)
    feed = [data[i, 0] if streams == 1 else data[i] for i in range(len(data))] * ((steps + warmup) // 1024 + 1)
    upcoming = iter(feed)
    runtime_step = runtime.step

    def step():
        runtime_step(next(upcoming))

    samples, cpu = _time_calls(step, steps, warmup)
    info = runtime.describe()
    entry = runtime.model_entry
    size = (bundle.path / entry["file"]).stat().st_size
    rows = [
        dict(
            label=f"{backend} {entry['quant']} step()",
            backend=backend, engine=info["engine"], engine_version=info["engine_version"], model=entry["file"],
            quant=entry["quant"], streams=streams, threads=threads, kind="step", cpu_us_per_step=cpu,
            rss_mb=_rss_mb(), rss_added_mb=_rss_mb() - rss_before, model_bytes=size, _samples_us=samples / 1000.0,
            **latency_stats(samples),
        )
    ]
    bare = _bare_call(runtime)
    if bare is not None:
        samples, cpu = _time_calls(bare, steps, warmup)
        rows.append(dict(rows[0], label=f"{backend} {entry['quant']} bare invoke", kind="bare", cpu_us_per_step=cpu,
                         _samples_us=samples / 1000.0, **latency_stats(samples)))
    for row in rows:
        row["per_stream_us"] = row["mean_us"] / streams
    return rows


def _bare_call(runtime):
    stepper = runtime._stepper
    if hasattr(stepper, "invoke"):
        return stepper.invoke
    if hasattr(stepper, "session"):
        names, feed = stepper._output_names, stepper._feed
        run = stepper.session.run
        return lambda: run(names, feed)
    return None


def profile(bundle_path, backends=("auto",), steps: int = 10_000, warmup: int = 500, streams: int = 1, threads: int = 1, models=None) -> dict:
    """Profile each (backend, model) pair; ``backends=("all",)`` takes every installed one."""
    bundle = Bundle.open(bundle_path)
    if "all" in backends:
        installed = available_backends()
        pairs = []
        for backend in BACKENDS:
            if backend not in installed:
                continue
            fmt = {"onnxruntime": "onnx", "numpy": None}.get(backend, "tflite")
            quants = [None] if fmt is None else sorted({m["quant"] for m in bundle.models(fmt)}, key=("int8", "int16x8", "dynamic", "float16", "float32").index)
            pairs += [(backend, q) for q in quants]
    else:
        pairs = [(b if b != "auto" else load(bundle, delegate=None).backend, m) for b in backends for m in (models or [None])]
    rows = []
    for backend, model in pairs:
        numpy_steps = min(steps, 2000) if backend == "numpy" else steps  # the oracle is slow
        rows += profile_backend(bundle, backend, model, numpy_steps, min(warmup, numpy_steps), streams, threads)
    return {
        "bundle": str(bundle_path),
        "bundle_id": bundle.bundle_id,
        "steps": steps,
        "warmup": warmup,
        "streams": streams,
        "threads": threads,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "cpu": _cpu_name(),
        "rows": rows,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def format_table(result: dict) -> str:
    header = f"{'':<34}{'min':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'max':>9}{'std':>7}{'steps/s':>10}{'cpu/step':>9}{'RSS MB':>8}{'model B':>9}"
    lines = [
        f"profile {result['bundle']}: {result['steps']} steps after {result['warmup']} warm-up, "
        f"{result['streams']} stream(s), {result['threads']} thread(s), on {result['cpu']}; latencies in us",
        header,
        "-" * len(header),
    ]
    steps_by_backend = {}
    for row in result["rows"]:
        lines.append(
            f"{row['label']:<34}{row['min_us']:>7.1f}{row['p50_us']:>8.1f}{row['p90_us']:>8.1f}{row['p99_us']:>8.1f}"
            f"{row['p99.9_us']:>8.1f}{row['max_us']:>9.1f}{row['std_us']:>7.1f}{row['steps_per_s']:>10.0f}"
            f"{row['cpu_us_per_step']:>9.1f}{row['rss_mb']:>8.0f}{row['model_bytes']:>9}"
        )
        key = (row["backend"], row["model"])
        steps_by_backend.setdefault(key, {})[row["kind"]] = row
    for (backend, model), kinds in steps_by_backend.items():
        if "bare" in kinds:
            ratio = kinds["step"]["p50_us"] / kinds["bare"]["p50_us"]
            lines.append(f"  {backend} {model}: step() / bare call = {ratio:.2f}x at p50")
    if result["streams"] > 1:
        lines.append(f"  per stream: " + ", ".join(f"{r['label']} {r['per_stream_us']:.2f} us" for r in result["rows"] if r["kind"] == "step"))
    lines.append(f"peak RSS of this process {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def plot(result: dict, path) -> bool:
    """Latency histograms (log scale), one per row; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if "_samples_us" in r]
    low = min(float(np.percentile(r["_samples_us"], 0.1)) for r in rows)
    high = max(float(np.percentile(r["_samples_us"], 99.9)) for r in rows)
    bins = np.geomspace(max(low * 0.8, 0.1), high * 1.2, 80)
    figure, axis = plt.subplots(figsize=(10, 5.5))
    # one colour per backend and model (a step() row and its bare invoke share it, dashed):
    # tab20 keeps up to 20 series apart (`profile --backend all` draws 13)
    colours = plt.get_cmap("tab20").colors
    keys = list(dict.fromkeys((r["backend"], r.get("quant")) for r in rows))
    for row in rows:
        colour = colours[keys.index((row["backend"], row.get("quant"))) * 2 % len(colours) if len(keys) <= 10
                         else keys.index((row["backend"], row.get("quant"))) % len(colours)]
        axis.hist(row["_samples_us"], bins=bins, histtype="step", linewidth=1.5, color=colour,
                  label=f"{row['label']} (p50 {row['p50_us']:.1f} us)", linestyle="--" if row["kind"] == "bare" else "-")
    axis.set_xscale("log")
    axis.set_xlabel("latency per step (us)")
    axis.set_ylabel("steps")
    axis.set_title(f"Latency per step by backend and model: {result['streams']} stream(s), {result['threads']} thread(s), "
                   f"{result['cpu']}", fontsize=10)
    axis.legend(fontsize=7, ncol=2 if len(rows) > 8 else 1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def public(result: dict) -> dict:
    """The result without the raw samples (kept only for the plot)."""
    return dict(result, rows=[{k: v for k, v in row.items() if not k.startswith("_")} for row in result["rows"]])


def write_json(result: dict, path) -> None:
    Path(path).write_text(json.dumps(public(result), indent=2) + "\n")
