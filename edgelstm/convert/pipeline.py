"""The converter: model file + calibration data -> a bundle of int8 step models.

Order of work, each stage refusing bad input before the next starts: import the model
(no code from it runs), load and check the calibration data, fit or read the
normalisation, record ``(x, h, c)`` trajectories with the numpy reference, export each
requested format and quantization, measure every export against the reference on
held-out sequences, write the bundle. Workstation only: needs TensorFlow, onnx and
onnxruntime (``pip install "edgelstm[convert]"``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import shutil
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgelstm import __version__
from . import edgetpu, fidelity
from edgelstm.runtime.bundle import MANIFEST, SCHEMA, SCHEMA_VERSION, sha256_of, write_json_atomic
from .recording import record
from .calibration_data import load_calibration, too_little
from edgelstm.errors import CalibrationError, ConversionError
from .export.state_plan import ResidualCellPlan, StatePlan, plan_states
from .drift_reference import reference_statistics
from .importers import load_network, sniff_format
from edgelstm.model.network import OutputsLayer
from edgelstm.model.network_file import save_network
from edgelstm.runtime.normalization import Normalization
from edgelstm.runtime.targets import load_target


@dataclass
class ConvertOptions:
    model: Path
    calibration: Path
    out: Path
    target: str = "x86_64"
    formats: list | None = None
    quant: list | None = None
    normalization: str | None = None  # none | zscore | minmax; default: recipe's, else none
    scaler: Path | None = None
    features: list | None = None
    group: str | None = None
    eval_data: Path | None = None
    holdout: float = 0.2
    max_samples: int = 20_000  # representative steps for the TFLite quantizer
    window_samples: int = 1_000  # representative windows for window models (each is a whole unrolled graph run)
    eval_windows: int = 1_000  # held-out windows the report of a window model (or a --window step model) is measured on
    onnx_samples: int = 2_000  # onnxruntime's calibrator keeps every intermediate tensor of every sample in memory
    long_steps: int = fidelity.LONG_STREAM_STEPS
    window: int | None = None  # window length: of a window model (when its file does not fix it), or of a step
    # model trained on windows (the runtime then reruns it over the last N readings)
    drift_bins: int = 10  # quantile bins of the drift reference per feature
    cell_groups: int = 4  # at most this many cell-state tensors per LSTM layer (1: one per layer)
    attribution_sequences: int = 16  # held-out sequences the error attribution replays (0: none)
    cell_state: str = "residual"  # int8 TFLite LSTM cell state: "residual" (c = c_hi + c_lo, two int8 tensors) or "single"
    # int8 TFLite GRU hidden state: "single" (the window graph's step) or "residual" (h = h_hi + h_lo, one FC per
    # gate): with the grid search, residual measured 4.73 -> 4.41 % on tfkeras_gru_reset_before (p50 x1.2),
    # 2.00 -> 1.89 % on torch_gru4_forecaster (x1.7) and 3.48 -> 3.53 % on gru256x128_stream (x1.4): opt-in
    gru_state: str = "single"
    # int8 TFLite step models: activation grids chosen for the streamed output error (grid_search.py). Off by default:
    # it lowers the error over many sequences (FD001 LSTM 3.25 -> 2.8 %), but on single sequences TFLite's XNNPACK and
    # reference int8 kernels (and the attribution replay, which follows the latter) then differ by up to ~25 %
    grid_search: bool = False
    grid_sequences: int = 80  # calibration sequences the grid search streams (at most grid_steps steps each)
    grid_steps: int = 1000
    seed: int = 0
    progress: bool = True
    extra_manifest: dict = field(default_factory=dict)


def _progress(total: int, description: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=description, disable=not enabled, leave=False, file=sys.stderr)


@contextlib.contextmanager
def quiet_native_output():
    """Silence the C++ converter's prints on fd 1 and 2 (Python exceptions still propagate)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _tool_versions() -> dict:
    versions = {"edgelstm": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for module in ("tensorflow", "keras", "onnx", "onnxruntime", "h5py"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            versions[module] = getattr(loaded, "__version__", "?")
    return versions


def _tflite_tensors(path, model_class=None, output_copies: int = 1) -> tuple:
    """Tensor details (by signature name) and op names of a TFLite model, as the runtime sees them."""
    from .inspect import tensor_summary
    from edgelstm.runtime.steppers import TFLiteStepper

    stepper = model_class(path) if model_class else TFLiteStepper(path, output_copies=output_copies)
    tensors = {}
    for details in (stepper.inputs, stepper.outputs):
        for name, d in details.items():
            scale, zero_point = d["quantization"]
            tensors[name] = {
                "index": int(d["index"]),
                "dtype": np.dtype(d["dtype"]).name,
                "shape": [int(v) for v in d["shape"]],
                "scale": float(scale),
                "zero_point": int(zero_point),
            }
    all_tensors = tensor_summary(stepper)
    return tensors, stepper.ops(), all_tensors, stepper


def convert(options: ConvertOptions) -> dict:
    """Run the whole conversion; returns the manifest (also written into ``options.out``).

    The bundle is built in a hidden sibling directory and moved into place only when it is
    complete: a failed conversion leaves an existing bundle untouched."""
    final = Path(options.out)
    partial = final.parent / f".{final.name}.partial"
    try:
        return _build(options, final, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _build(options: ConvertOptions, final: Path, out: Path) -> dict:
    target = load_target(options.target)
    formats = options.formats or target.formats
    quants = options.quant or target.quant
    network = load_network(options.model, window=options.window)
    source_format = sniff_format(options.model)
    window_model = network.mode == "window"

    token = network.input_kind == "token"
    calibration = load_calibration(options.calibration, features=options.features, group=options.group, tokens=token)
    if token:
        calibration.check_tokens(network.vocabulary)
    else:
        calibration.check(network.n_features)
    if options.eval_data:
        calibration_part = calibration
        held_out = load_calibration(options.eval_data, features=options.features, group=options.group, tokens=token)
        held_out.check_tokens(network.vocabulary) if token else held_out.check(network.n_features)
    else:
        calibration_part, held_out = calibration.split(options.holdout)
    if sum(len(s) for s in held_out.sequences) == 0 or not calibration_part.sequences:
        raise CalibrationError(
            f"{calibration.source}: too little data to both calibrate and hold out sequences for the report; "
            "give more sequences or --eval HELDOUT"
        )
    # normalisation from the calibration part only: held-out data stays unseen
    if token:  # token ids are looked up, never normalised
        normalization = Normalization.identity(1)
    elif options.scaler:
        normalization = Normalization.from_file(options.scaler, network.n_features)
    else:
        kind = options.normalization or calibration.normalization or "none"
        normalization = Normalization.fit(kind, np.concatenate(calibration_part.sequences))
    calib_sequences = [normalization.apply(s) for s in calibration_part.sequences]
    scale_heads(network, calib_sequences)

    if window_model:  # no state: the quantizers see whole windows of the calibration data
        plan, state_ranges = StatePlan([]), {}
        residual = None
        try:
            windows = fidelity.windows_of(calib_sequences, network.window, options.window_samples, options.seed)
        except ValueError as exc:
            raise CalibrationError(f"{calibration.source}: {exc}") from None
        calibration_steps = int(sum(len(s) for s in calib_sequences))
        if token:
            windows = windows.reshape(len(windows), network.window)
        samples = [{"x": w[None].astype(np.int32) if token else w[None]} for w in windows]
        onnx_samples = [{"x": w[None].astype(np.int64) if token else w[None]} for w in windows[: options.onnx_samples // 4]]
    else:
        with _progress(len(calib_sequences), "calibrating", options.progress) as bar:
            recording = record(network, calib_sequences, progress=bar)
        calibration_steps = recording.n_steps
        plan = plan_states(network, recording.unit_ranges, max_groups=options.cell_groups)
        residual = None
        state_ranges = plan.tensor_ranges(recording.unit_ranges)
        samples = [plan.feed(sample) for sample in recording.samples(options.max_samples, seed=options.seed)]
        onnx_samples = [plan.feed(sample) for sample in recording.samples(options.onnx_samples, seed=options.seed)]
        if token:  # the step models take integer ids: int32 for TFLite, int64 for ONNX
            samples = [dict(s, x=s["x"].astype(np.int32)) for s in samples]
            onnx_samples = [dict(s, x=s["x"].astype(np.int64)) for s in onnx_samples]
        gru_h = options.gru_state == "residual"
        if (options.cell_state == "residual" and network.lstm_layers) or (gru_h and len(network.recurrent_layers) > len(network.lstm_layers)):
            residual = ResidualCellPlan(plan, state_ranges, gru_h=gru_h, cells=options.cell_state == "residual")  # int8 TFLite: c = c_hi + c_lo, h = h_hi + h_lo
            residual_samples = [dict(residual.feed(sample), x=feed["x"])
                                for sample, feed in zip(recording.samples(options.max_samples, seed=options.seed), samples)]

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    jobs = [(fmt, q, "quantized") for fmt in formats for q in quants if not (fmt == "onnx" and q in ("float16", "dynamic", "int16x8"))]
    if ("tflite", "int8", "quantized") in jobs:  # and the variant the device runtime drives
        jobs.insert(jobs.index(("tflite", "int8", "quantized")) + 1, ("tflite", "int8", "stream"))
    models, steppers, skipped = [], {}, []
    tuning = None  # int8 TFLite step models: grids from the grid search, found once for both variants
    if not window_model and not token and options.grid_search and ("tflite", "int8", "quantized") in jobs:
        tuning = {"sequences": _grid_sequences(calib_sequences, options)}
    with tempfile.TemporaryDirectory() as scratch, _progress(len(jobs), "converting", options.progress) as bar:
        for fmt, quant, io in jobs:
            try:
                if residual is not None and (fmt, quant) == ("tflite", "int8"):
                    entry, stepper = _export_one(network, residual, fmt, quant, io, residual_samples,
                                                 residual.tensor_ranges(), normalization, out, Path(scratch), target, tuning)
                else:
                    entry, stepper = _export_one(
                        network, plan, fmt, quant, io, samples if fmt == "tflite" else onnx_samples,
                        state_ranges, normalization, out, Path(scratch), target, tuning,
                    )
            except ConversionError as exc:
                if quant == "int16x8":  # optional: converts only where the converter supports every op
                    skipped.append({"format": fmt, "quant": quant, "reason": str(exc)})
                    continue
                raise
            finally:
                if bar is not None:
                    bar.update(1)
            models.append(entry)
            if entry["input"] == "normalized":
                stepper.set_normalization(normalization.offset, normalization.scale)
            steppers[f"{fmt} {quant}" + (" stream" if io == "stream" else "")] = stepper

    with _progress(len(steppers), "fidelity", options.progress) as bar:
        if window_model:
            try:
                held_windows = fidelity.windows_of(held_out.sequences, network.window, options.eval_windows, options.seed)
            except ValueError as exc:
                raise CalibrationError(f"held-out data: {exc}") from None
            report, traces = fidelity.build_window_report(network, steppers, held_windows, normalization, progress=bar)
        else:
            try:
                report, traces = fidelity.build_report(
                    network, steppers, held_out.sequences, normalization, long_steps=options.long_steps, progress=bar,
                    window=options.window, eval_windows=options.eval_windows, seed=options.seed,
                )
            except ValueError as exc:
                raise CalibrationError(f"held-out data: {exc}") from None
    report["verdict"] = fidelity.verdict(report)
    report["data_warnings"] = too_little(calibration, calibration_part, held_out)
    report["verdict"]["warnings"] = report["data_warnings"] + report["verdict"]["warnings"]
    if not window_model and options.attribution_sequences:
        report["attribution"] = _attribution(network, models, out, held_out.sequences, normalization, report, options)
    report["skipped"] = skipped
    files = []
    write_json_atomic(out / "report.json", report)
    files.append({"file": "report.json", "sha256": sha256_of(out / "report.json")})
    if fidelity.plot(report, traces, out / "report.png"):
        files.append({"file": "report.png", "sha256": sha256_of(out / "report.png")})

    save_network(network, out / "network.npz")
    files.append({"file": "network.npz", "sha256": sha256_of(out / "network.npz")})
    source_sha = sha256_of(options.model)
    window = network.window if window_model else options.window
    identity = {"models": [m["sha256"] for m in models], "network": network.describe(), "window": window,
                "normalization": normalization.to_json(), "plan": plan.describe()}
    bundle_id = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    raw_all = np.concatenate(calibration_part.sequences).astype(np.float64)
    reference = None if token else reference_statistics(raw_all, options.drift_bins, _int8_input_range(models, normalization, raw_all))
    residual_used = residual is not None and any(m["format"] == "tflite" and m["quant"] == "int8" for m in models)
    described, described_ranges = (residual, residual.tensor_ranges()) if residual_used else (plan, state_ranges)
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "bundle_id": bundle_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "file": Path(options.model).name,
            "sha256": source_sha,
            "format": source_format,
            "notes": network.notes,
            **({"external_data": _external_data(options.model)} if source_format == "onnx" else {}),
        },
        "network": network.describe(),
        "input": {
            "kind": network.input_kind,
            "vocabulary": network.vocabulary,
            "n_features": network.n_features,
            "features": list(calibration.feature_names),
            "normalization": normalization.to_json(),
            "calibration_stats": {
                "mean": raw_all.mean(axis=0).tolist(),
                "std": raw_all.std(axis=0).tolist(),
                "min": raw_all.min(axis=0).tolist(),
                "max": raw_all.max(axis=0).tolist(),
            },
            **({"reference": reference} if reference else {}),
        },
        "outputs": _outputs(network),
        "window": window,
        "state": [  # every state tensor of every model (a residual int8 model adds c_k_lo tensors)
            dict(entry, layer=network.recurrent_layers[int(entry["name"].split("_")[1])].name,
                 range=list(described_ranges[entry["name"]]))
            for entry in described.describe()
        ],
        "models": models,
        "default_model": _default_model(models, target, report["verdict"]),
        "files": files,
        "target": target.to_json(),
        "conversion": {
            "calibration": str(calibration.source),
            "calibration_sequences": len(calibration_part.sequences),
            "calibration_steps": calibration_steps,
            "representative_samples": {"tflite": len(samples), "onnx": len(onnx_samples)},
            **({"grid_search": tuning["log"]} if tuning and "log" in tuning else {}),
            "held_out_sequences": len(held_out.sequences),
            "holdout": None if options.eval_data else options.holdout,
            "seed": options.seed,
        },
        "tool_versions": _tool_versions(),
    }
    for entry in models:  # commands name the bundle where it will be, not the staging directory
        if "edgetpu" in entry:
            entry["edgetpu"].update(edgetpu.commands(final / entry["file"], bundle=final))
    manifest.update(options.extra_manifest)
    write_json_atomic(out / MANIFEST, manifest)
    if final.exists():
        retired = final.parent / f".{final.name}.old"
        if retired.exists():
            shutil.rmtree(retired)
        final.rename(retired)
        out.rename(final)
        shutil.rmtree(retired)
    else:
        out.rename(final)
    return manifest


#: What the manifest keeps of the Edge TPU check (``edgelstm inspect --target coral-usb`` shows it op by op).
_EDGETPU_KEYS = ("compatible", "verdict", "errors", "warnings", "problems", "notes", "offending_ops", "cpu_ops",
                 "first_unmapped", "parameter_bytes")


def _edgetpu_summary(path: Path) -> dict:
    result = edgetpu.check_file(path)
    return {key: result[key] for key in _EDGETPU_KEYS if key in result}


def _external_data(model: Path) -> list:
    """An ONNX model's external weight files (the dynamo exporter's ``.onnx.data``) with their hashes."""
    from .importers.onnx_import import external_data_files

    return [{"file": name, "sha256": sha256_of(Path(model).parent / name)} for name in external_data_files(model)]


def _outputs(network) -> list:
    """What ``step()`` returns per stream. A window model's sequence output is reduced to its
    last timestep, an autoencoder's reconstruction to its error (the anomaly score). Several
    heads: one entry each, in ``y``'s order, with the ``factor`` that undoes the head's scale."""
    if network.is_autoencoder:
        return [{"name": "anomaly_score", "size": 1, "mode": "reconstruction_error",
                 "reconstruction": [network.output_length(), network.output_size]}]
    mode = network.output_mode
    if network.mode == "window" and mode == "sequence":
        mode = "last_of_window"
    last = network.layers[-1]
    if isinstance(last, OutputsLayer):
        return [{"name": head, "size": int(size), "mode": mode, "factor": 1.0 / scale}
                for head, size, scale in zip(last.heads, last.sizes, last.head_scales())]
    return [{"name": "y", "size": network.output_size, "mode": mode}]


def scale_heads(network, sequences: list, samples: int = 64) -> None:
    """Several heads (an :class:`OutputsLayer`): scale each by the power of two that brings its
    largest magnitude over (up to ``samples``) normalised calibration sequences to within
    [0.5, 1), so one int8 grid for ``y`` serves every head alike. Powers of two keep the float
    exports exact after the runtime's ``factor``."""
    from edgelstm.model.reference import Reference, forward_sequence

    last = network.layers[-1]
    if not isinstance(last, OutputsLayer):
        return
    reference = Reference(network)
    peaks = np.zeros(network.output_size)
    last.scales = ()
    for sequence in sequences[:samples]:
        if network.mode == "window":
            window = int(network.window)
            if len(sequence) < window:
                continue
            values = forward_sequence(network, np.asarray(sequence[-window:])[None])
        else:
            values = reference.run(np.asarray(sequence))[0]
        peaks = np.maximum(peaks, np.abs(np.asarray(values, np.float64)).reshape(-1, network.output_size).max(axis=0))
    scales, start = [], 0
    for size in last.sizes:
        peak = float(peaks[start:start + size].max())
        scales.append(float(2.0 ** -math.floor(math.log2(peak))) / 2.0 if peak > 0 and math.isfinite(peak) else 1.0)
        start += size
    last.scales = tuple(scales)


def _attribution(network, models: list, out: Path, held_out: list, normalization, report: dict, options) -> dict | None:
    """Which tensors' int8 quantization costs the most at the output that matters (see
    :mod:`.attribution`), on a seeded sample of the held-out sequences (or windows)."""
    from .attribution import attribute

    files = {(m["quant"], m["io"]): m["file"] for m in models if m["format"] == "tflite"}
    int8 = files.get(("int8", "stream")) or files.get(("int8", "quantized"))
    if int8 is None or network.input_kind == "token":
        return None
    reference = next((file for (quant, _), file in files.items() if quant == "float32"), None)
    if reference is None:
        return {"skipped": "needs the float32 TFLite model as its reference: add float32 to --quant"}
    rng = np.random.default_rng(options.seed)
    use = report["uses"][0]
    if use == "last_of_window":
        pieces = list(fidelity.windows_of(held_out, options.window, options.attribution_sequences, options.seed))
    else:
        count = min(options.attribution_sequences, len(held_out))
        pieces = [held_out[i] for i in np.sort(rng.choice(len(held_out), size=count, replace=False))]
    sequences = [normalization.apply(p) for p in pieces]
    try:
        with quiet_native_output():
            return attribute(out / int8, out / reference, sequences, report["held_out"]["output_std"],
                             last_only=use != "every_step")
    except NotImplementedError as exc:  # an op the replay does not know: the report says so
        return {"skipped": str(exc)}


def _int8_input_range(models: list, normalization, raw_all) -> tuple:
    """The raw readings the int8 input grid covers (beyond it the model clips), per feature."""
    for m in models:
        x = m.get("tensors", {}).get("x", {})
        if m["quant"] == "int8" and x.get("dtype") == "int8":
            low = (-128 - x["zero_point"]) * x["scale"]
            high = (127 - x["zero_point"]) * x["scale"]
            return (low * normalization.scale + normalization.offset, high * normalization.scale + normalization.offset)
    return raw_all.min(axis=0), raw_all.max(axis=0)


def _default_model(models: list, target, decision: dict | None = None) -> str | None:
    """The file the runtime loads by default.

    Where an Edge TPU delegate is named: the integer-I/O full-int8 model. On a CPU target whose
    model is ``int8``: the fidelity verdict's CPU choice (the full-int8 stream model when it keeps
    within 1 % of the float model, else the dynamic-range or int16x8 model that does; see
    :func:`.fidelity.verdict`). Otherwise the target's quantization, the stream variant first."""
    if decision and decision.get("cpu_choice") and not target.delegate and target.model == "int8":
        fmt, quant, *stream = decision["cpu_choice"].split()
        for m in models:
            if (m["format"], m["quant"], m["io"] == "stream") == (fmt, quant, bool(stream)):
                return m["file"]
    io_order = ("quantized", "stream") if target.delegate else ("stream", "quantized", "float")
    for quant, fmt in ((target.model, "tflite"), (target.model, "onnx"), ("float32", "tflite")):
        for io in io_order + ("float",):
            for m in models:
                if (m["quant"], m["format"], m["io"]) == (quant, fmt, io):
                    return m["file"]
    return models[0]["file"] if models else None


def _grid_sequences(sequences: list, options: ConvertOptions) -> list:
    """The calibration sequences the grid search streams: at most ``grid_sequences`` (a seeded draw), each cut to ``grid_steps``."""
    chosen = list(range(len(sequences)))
    if len(chosen) > options.grid_sequences:
        chosen = sorted(np.random.default_rng(options.seed).choice(len(chosen), options.grid_sequences, replace=False))
    return [np.asarray(sequences[i][: options.grid_steps], np.float32) for i in chosen if len(sequences[i])]


def _tuned(model: bytes, network, plan, representative, batch: int, io: str, tuning: dict) -> bytes:
    """``model`` (an int8 step model) on the grids the grid search chose; the search itself runs once,
    on the stream variant (float ``x`` and ``y``), and its grids apply to both by tensor name."""
    from . import grid_search
    from .export import tflite_step
    from edgelstm.model.reference import Reference

    if "grids" not in tuning:
        stream = model if io == "stream" else tflite_step.convert(network, plan, "int8", representative=representative,
                                                                   batch=batch, io="stream")
        if io != "stream":
            stream = tflite_step.tie_state_quantization(stream, plan, tuning["ranges"])
        reference = Reference(network)
        expected = [reference.run(s)[0] for s in tuning["sequences"]]
        logged = {}
        tuning["grids"] = grid_search.search_grids(stream, tuning["sequences"], expected, log=logged.update)
        tuning["log"] = logged
    return grid_search.apply_grids(model, tuning["grids"])


def _export_one(network, plan, fmt, quant, io, samples, state_ranges, normalization, out: Path, scratch: Path, target,
                tuning: dict | None = None):
    if network.mode == "window":
        return _export_window(network, fmt, quant, io, samples, out, scratch, target)
    from .export import onnx_step, tflite_normalize, tflite_output_copies, tflite_step
    from edgelstm.runtime.steppers import OnnxStepper

    if fmt == "tflite":
        # Inputs stay normalised in every variant: one int8 grid for raw readings of sensors
        # with different units would destroy the small ones (measured: 335 % RMSE/std).
        path = out / (f"step_{quant}_stream.tflite" if io == "stream" else f"step_{quant}.tflite")
        representative = lambda: iter(samples)  # noqa: E731
        with quiet_native_output():
            model = tflite_step.convert(network, plan, quant, representative=representative, batch=target.batch, io=io)
        if quant in ("int8", "int16x8"):
            model = tflite_step.tie_state_quantization(model, plan, state_ranges)
        if quant == "int8" and tuning is not None:
            tuning.setdefault("ranges", state_ranges)
            with quiet_native_output():
                model = _tuned(model, network, plan, representative, target.batch, io, tuning)
        # a float x (the stream, float and dynamic-range models): the model normalises raw
        # readings itself and says how far they lie (tflite_normalize); integer x stays normalised
        raw = tflite_normalize.takes_float_input(model)
        if raw:
            model = tflite_normalize.fold_normalization(model, normalization.offset, normalization.scale)
        path.write_bytes(model)
        # the integer-I/O int8 model's y holds offset copies of each output, averaged by the runtime
        copies = tflite_output_copies.output_copies(network) if (quant, io) == ("int8", "quantized") else 1
        tensors, ops, all_tensors, stepper = _tflite_tensors(path, output_copies=copies)
        entry = _entry(path, fmt, quant, io, "raw" if raw else "normalized", target.batch, tensors, ops)
        if copies > 1:
            entry["output_copies"] = copies
        if quant == "int8" and io == "quantized":
            entry["edgetpu"] = _edgetpu_summary(path)
        return entry, stepper
    if fmt == "onnx":
        import onnx

        float_model = onnx_step.build_float_model(network, plan)
        float_path = out / "step_float32.onnx" if quant == "float32" else scratch / "step_float32.onnx"
        onnx.save(float_model, str(float_path))
        if quant == "float32":
            path = float_path
        elif quant == "int8":
            path = out / "step_int8.onnx"
            with quiet_native_output():
                onnx_step.quantize_int8(float_path, path, samples, state_ranges, plan)
        else:
            raise ConversionError(f"ONNX export supports float32 and int8, not {quant}")
        ops = onnx_step.list_ops(onnx.load(str(path)))
        return _entry(path, fmt, quant, "float", "normalized", "any", {}, ops), OnnxStepper(path)
    raise ConversionError(f"unknown format '{fmt}'; choose tflite or onnx")


def _export_window(network, fmt, quant, io, samples, out: Path, scratch: Path, target):
    """One window-model export (see :mod:`edgelstm.export.window_graph`)."""
    from .export import onnx_step, onnx_window, tflite_window
    from edgelstm.runtime.window_models import OnnxWindowModel, TFLiteWindowModel

    if fmt == "tflite":
        path = out / (f"window_{quant}_stream.tflite" if io == "stream" else f"window_{quant}.tflite")
        representative = lambda: iter(samples)  # noqa: E731
        with quiet_native_output():
            model = tflite_window.convert(network, quant, representative=representative, batch=target.batch, io=io)
        path.write_bytes(model)
        tensors, ops, all_tensors, stepper = _tflite_tensors(path, TFLiteWindowModel)
        entry = _entry(path, fmt, quant, io, "normalized", target.batch, tensors, ops)
        if quant == "int8" and io == "quantized":
            entry["edgetpu"] = _edgetpu_summary(path)
        return entry, stepper
    if fmt == "onnx":
        import onnx

        float_model = onnx_window.build_float_model(network)
        float_path = out / "window_float32.onnx" if quant == "float32" else scratch / "window_float32.onnx"
        onnx.save(float_model, str(float_path))
        if quant == "float32":
            path = float_path
        elif quant == "int8":
            path = out / "window_int8.onnx"
            with quiet_native_output():
                onnx_step.quantize_int8(float_path, path, samples, {}, StatePlan([]))
        else:
            raise ConversionError(f"ONNX export supports float32 and int8, not {quant}")
        ops = onnx_step.list_ops(onnx.load(str(path)))
        return _entry(path, fmt, quant, "float", "normalized", "any", {}, ops), OnnxWindowModel(path)
    raise ConversionError(f"unknown format '{fmt}'; choose tflite or onnx")


def _entry(path: Path, fmt, quant, io, input_units, batch, tensors, ops) -> dict:
    """A manifest entry. ``io``: quantized (integer boundary), stream (float x and y, integer
    state) or float; ``input``: whether ``x`` is normalised or in raw sensor units."""
    return {
        "file": path.name,
        "format": fmt,
        "quant": quant,
        "io": io,
        "input": input_units,
        "batch": batch,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "tensors": tensors,
        "ops": ops,
    }
