"""The fidelity report: how far each exported model is from the float reference.

Measured on held-out sequences that calibration never saw, each streamed step by step
from a zero state exactly as the device will run it. Per model: max and mean absolute
error, RMSE, and RMSE relative to the spread (standard deviation) of the float output.
One long stream (held-out sequences played back to back, at least 10,000 steps, state
never reset) is measured in blocks, to show whether quantization error drifts over time.
"""

from __future__ import annotations

import math

import numpy as np

from edgelstm.model.network import OutputsLayer
from edgelstm.model.reference import Reference

LONG_STREAM_STEPS = 10_000
BLOCKS = 10


def error_metrics(reference: np.ndarray, candidate: np.ndarray, spread: float | None = None) -> dict:
    """Errors of ``candidate`` against ``reference``; ``relative_rmse`` is the RMSE over ``spread``
    (default: the standard deviation of ``reference``)."""
    diff = np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)
    spread = float(np.std(reference)) if spread is None else float(spread)
    rmse = float(np.sqrt(np.mean(diff**2)))
    return {
        "max_abs_error": float(np.max(np.abs(diff))),
        "mean_abs_error": float(np.mean(np.abs(diff))),
        "rmse": rmse,
        "output_std": spread,
        "relative_rmse": rmse / spread if spread > 0 else math.nan,
    }


def heads_of(network, reference: np.ndarray) -> list | None:
    """A model with several heads (an :class:`OutputsLayer`, each head scaled inside the model):
    ``[(name, columns, factor, spread)]`` per head, ``factor`` undoing its scale and ``spread`` the
    standard deviation of its true values in ``reference`` (model outputs, ``(..., outputs)``)."""
    last = network.layers[-1]
    if not isinstance(last, OutputsLayer):
        return None
    heads, start = [], 0
    flat = np.asarray(reference, np.float64).reshape(-1, network.output_size)
    for name, size, scale in zip(last.heads, last.sizes, last.head_scales()):
        columns = slice(start, start + int(size))
        heads.append((name, columns, 1.0 / scale, float(np.std(flat[:, columns] / scale))))
        start += int(size)
    return heads


def measure(reference: np.ndarray, candidate: np.ndarray, spread: float, heads: list | None) -> dict:
    """:func:`error_metrics`; with several heads, each head's in its own units over its own spread
    (``outputs``), and the headline figures those of the worst head: a probability head's error
    is not averaged away behind a RUL head's range."""
    if not heads:
        return error_metrics(reference, candidate, spread)
    reference = np.asarray(reference, np.float64).reshape(-1, reference.shape[-1])
    candidate = np.asarray(candidate, np.float64).reshape(-1, candidate.shape[-1])
    per_head = {name: error_metrics(reference[:, columns] * factor, candidate[:, columns] * factor, head_spread)
                for name, columns, factor, head_spread in heads}
    worst = max(per_head, key=lambda name: _finite(per_head[name]["relative_rmse"]))
    return dict(per_head[worst], worst_output=worst, outputs=per_head)


def stream(stepper, sequences: list, output_size: int) -> list:
    """Outputs of ``stepper`` over each sequence, state reset before each."""
    results = []
    for sequence in sequences:
        stepper.reset()
        out = np.empty((len(sequence), output_size), np.float32)
        for t in range(len(sequence)):
            out[t] = stepper.step(sequence[t : t + 1])[0]
        results.append(out)
    return results


def long_stream(sequences: list, minimum: int = LONG_STREAM_STEPS) -> np.ndarray:
    """Held-out sequences played back to back (repeated as needed) to at least ``minimum`` steps."""
    if sum(len(s) for s in sequences) == 0:
        raise ValueError("no held-out steps to measure on")
    parts, total = [], 0
    while total < minimum:
        for sequence in sequences:
            parts.append(sequence)
            total += len(sequence)
            if total >= minimum:
                break
    return np.concatenate(parts)[:max(minimum, 1)]


def uses_of(network, window: int | None = None) -> list:
    """Which output of a step model the user relies on, so the report measures that one.

    ``"every_step"``: a streaming model (one output per reading, state carried for ever);
    ``"last_of_window"``: a model run by the runtime over its last ``window`` readings (from a
    zero state each time), used at the window's last step; ``"last_step"``: a many-to-one model
    (one output per sequence) whose deployment is unknown, measured at each held-out sequence's
    last step and at every step, the headline being the worse of the two. Averaging every step
    of a many-to-one model flatters it: its first steps, from a state near zero, are easy.
    """
    if window:
        return ["last_of_window"]
    if network.output_mode == "last":
        return ["last_step", "every_step"]
    return ["every_step"]


def build_report(network, steppers: dict, held_out: list, normalization, long_steps: int = LONG_STREAM_STEPS,
                 progress=None, window: int | None = None, eval_windows: int = 1_000, seed: int = 0) -> tuple:
    """Compare every stepper (name -> stepper, each taking raw readings) with the reference
    on the raw ``held_out`` sequences, at the output the model is used for (:func:`uses_of`).

    Relative errors are over one spread, the float model's output std over every held-out step.
    Each model's headline metrics (``relative_rmse`` and the rest at the top level) are those of
    the output that matters (the worse one when two are measured; ``measured_at`` names it);
    each measured output also has its own entry (``every_step``, ``last_step``, ``last_of_window``).
    """
    reference = Reference(network)
    uses = uses_of(network, window)
    report = {
        "held_out": {"sequences": len(held_out), "steps": int(sum(len(s) for s in held_out))},
        "uses": uses,
        "models": {},
    }
    # One spread for every measured output: the float model's over every held-out step. The
    # last steps alone can have almost none (run-to-failure sequences all end near RUL 0).
    float_outputs = [reference.run(normalization.apply(s))[0] for s in held_out]
    expected = {"every_step": np.concatenate(float_outputs), "last_step": np.stack([o[-1] for o in float_outputs])}
    spread = float(np.std(expected["every_step"]))
    report["held_out"]["output_std"] = spread
    heads = heads_of(network, expected["every_step"])
    if "last_of_window" in uses:
        windows = windows_of(held_out, window, eval_windows, seed)
        expected["last_of_window"] = reference.run(normalization.apply(windows))[0][:, -1]
        report["held_out"].update(windows=int(len(windows)), window=int(window))
    traces = {"float": float_outputs[0] if "every_step" in uses else expected["last_of_window"]}
    streaming = "every_step" in uses
    if streaming:
        stream_input = long_stream(held_out, long_steps)
        float_stream = reference.run(normalization.apply(stream_input))[0]
        block = max(1, len(stream_input) // BLOCKS)
        report["long_stream"] = {"steps": int(len(stream_input)), "block_steps": block}
    for name, stepper in steppers.items():
        measured = {}
        if "last_of_window" in uses:
            outputs = np.stack([o[-1] for o in stream(stepper, list(windows), network.output_size)])
            measured["last_of_window"] = measure(expected["last_of_window"], outputs, spread, heads)
            traces[name] = outputs
        if "every_step" in uses:
            outputs = stream(stepper, held_out, network.output_size)
            measured["every_step"] = measure(expected["every_step"], np.concatenate(outputs), spread, heads)
            if "last_step" in uses:
                measured["last_step"] = measure(expected["last_step"], np.stack([o[-1] for o in outputs]), spread, heads)
            traces[name] = outputs[0]
        headline = max((use for use in uses), key=lambda use: _finite(measured[use]["relative_rmse"]))
        metrics = dict(measured[headline], measured_at=headline, **measured)
        if streaming:
            stream_out = stream(stepper, [stream_input], network.output_size)[0]
            blocks = [
                error_metrics(float_stream[i : i + block], stream_out[i : i + block])["rmse"]
                for i in range(0, block * BLOCKS, block)
            ]
            metrics["long_stream_block_rmse"] = blocks
            metrics["long_stream_drift"] = blocks[-1] / blocks[0] if blocks[0] > 0 else (1.0 if blocks[-1] == 0 else math.inf)
        report["models"][name] = metrics
        if progress is not None:
            progress.update(1)
    return report, traces


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -1.0


#: Where each use is measured, in words, for tables and plots.
USE_LABELS = {
    "every_step": "every step",
    "last_step": "last step of each sequence",
    "last_of_window": "last step of each window",
    "window": "every window",
}


#: Bounds of the verdict: what "keeps the float model's answers" means, as RMSE / output std.
FULL_INT8_BOUND = 0.02
CPU_BOUND = 0.01
#: Variants by where they run: the Edge TPU takes only the integer-I/O full-int8 model; a CPU
#: target runs any of the others.
EDGE_TPU_VARIANTS = ("tflite int8",)
#: CPU int8 variants in the order the CPU default prefers them when several keep within
#: :data:`CPU_BOUND`: full int8 first (the smallest state, the same file an Edge TPU runs), then
#: dynamic range (int8 weights per channel, activations quantized to int8 per call inside each
#: FULLY_CONNECTED, float elsewhere; about full int8's speed on XNNPACK), then int16x8 (2-4x slower).
CPU_INT8_VARIANTS = ("tflite int8 stream", "tflite int8", "tflite dynamic", "tflite int16x8", "onnx int8")


def verdict(report: dict) -> dict:
    """Which variant to deploy on which target, from the measured errors, and a warning when
    no int8 variant keeps within :data:`FULL_INT8_BOUND` of the float model.

    ``cpu_choice`` is the variant a CPU target's bundle loads by default: the first of
    :data:`CPU_INT8_VARIANTS` within :data:`CPU_BOUND`, else the one with the smallest error.
    ``edge_tpu_choice`` is the integer-I/O full-int8 model (the only form the Edge TPU takes)."""
    errors = {name: m["relative_rmse"] for name, m in report["models"].items() if math.isfinite(m["relative_rmse"])}
    lines, warnings = [], []
    edge = [(errors[n], n) for n in EDGE_TPU_VARIANTS if n in errors]
    edge_choice = cpu_choice = None
    if edge:
        error, edge_choice = min(edge)
        ok = error <= FULL_INT8_BOUND
        lines.append(f"Edge TPU (coral-usb, coral-devboard): {edge_choice}, {100 * error:.2f} % "
                     + ("(within 2 %)" if ok else "(ABOVE 2 %: its answers differ from the float model's)"))
    # the integer-I/O model is the stream model's twin (the same int8 graph): a CPU drives the stream one
    cpu = [(errors[n], n) for n in CPU_INT8_VARIANTS if n in errors and not (n == "tflite int8" and "tflite int8 stream" in errors)]
    if cpu:
        within = [n for e, n in cpu if e <= CPU_BOUND]
        cpu_choice = within[0] if within else min(cpu, key=lambda pair: pair[0])[1]  # ties: the preferred one
        lines.append(f"CPU (rpi4, rpi5, x86_64): {cpu_choice}, {100 * errors[cpu_choice]:.2f} % "
                     + ("(within 1 %)" if within else "(none within 1 %)"))
    if (edge or cpu) and min([e for e, _ in edge + cpu]) > FULL_INT8_BOUND:
        best_error, best = min(edge + cpu)
        warnings.append(f"WARNING: no int8 variant is within 2 % of the float model (best: {best}, "
                        f"{100 * best_error:.2f} %); deploy a float variant or calibrate on more representative data")
    return {"lines": lines, "warnings": warnings, "full_int8_bound": FULL_INT8_BOUND, "cpu_bound": CPU_BOUND,
            "cpu_choice": cpu_choice, "edge_tpu_choice": edge_choice}


def format_table(report: dict) -> str:
    """A readable table of the report for the terminal, ending in the verdict."""
    held = report["held_out"]
    uses = report.get("uses", ["every_step"])
    per_use = len(uses) > 1
    header = f"{'model':<22}{'max abs':>11}{'mean abs':>11}{'RMSE':>11}{'RMSE/std':>10}"
    header += "".join(f"{'at ' + u.split('_')[0]:>10}" for u in uses) if per_use else ""
    header += f"{'drift':>8}"
    if "long_stream" in report or "sequences" in held:
        where = f"{held['sequences']} held-out sequences, {held['steps']} steps"
        if "windows" in held:
            where = f"{held['windows']} held-out windows of {held['window']} steps from {held['sequences']} sequences"
        if "long_stream" in report:
            where += f"; long stream {report['long_stream']['steps']} steps"
    else:
        where = f"{held['windows']} held-out windows of {held['window']} steps"
    lines = [
        f"Fidelity vs float reference: {where}",
        "measured at the output the model is used for: " + " and ".join(USE_LABELS[u] for u in uses)
        + (" (RMSE/std: the worse)" if per_use else ""),
        header,
        "-" * len(header),
    ]
    for name, m in report["models"].items():
        line = (f"{name:<22}{m['max_abs_error']:>11.4g}{m['mean_abs_error']:>11.4g}{m['rmse']:>11.4g}"
                f"{100 * m['relative_rmse']:>9.2f}%")
        if per_use:
            line += "".join(f"{100 * m[u]['relative_rmse']:>9.2f}%" for u in uses)
        line += f"{m['long_stream_drift']:>8.2f}" if "long_stream_drift" in m else f"{'-':>8}"
        lines.append(line)
        if "anomaly_score" in m:
            lines.append(f"{'  anomaly score':<22}{m['anomaly_score']['max_abs_error']:>11.4g}"
                         f"{m['anomaly_score']['mean_abs_error']:>11.4g}{m['anomaly_score']['rmse']:>11.4g}"
                         f"{100 * m['anomaly_score']['relative_rmse']:>9.2f}%")
    lines.append("drift = RMSE of the last long-stream block / RMSE of the first (1.0 = flat; - without a long stream)")
    attribution = report.get("attribution") or {}
    if attribution.get("costliest"):
        lines.append(f"Costliest int8 tensors, each alone on its grid (weights float; replay of the int8 model: "
                     f"{100 * attribution['replay_relative_rmse']:.2f} % on {attribution['sequences']} sequences, "
                     f"{attribution['measured_at']}):")
        lines += [f"  {k}. {c['tensors']}: {100 * c['relative_rmse_alone']:.2f} %" for k, c in enumerate(attribution["costliest"], 1)]
    elif attribution.get("skipped"):
        lines.append(f"Error attribution skipped: {attribution['skipped']}")
    decision = report.get("verdict") or verdict(report)
    lines += ["Verdict:"] + [f"  {line}" for line in decision["lines"]] + decision["warnings"]
    return "\n".join(lines)


def plot(report: dict, traces: dict, path) -> bool:
    """Float vs exported traces on one held-out sequence, and the long-stream blocks. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if "long_stream" not in report:  # window models: output 0 per held-out window
        figure, top = plt.subplots(1, 1, figsize=(9, 4))
        for name, trace in traces.items():
            top.plot(trace[:, 0], label=name, linewidth=2.0 if name == "float" else 1.0)
        top.set_title("Output 0 at the last step of each held-out window" if report.get("uses") == ["last_of_window"]
                      else "Output 0 on held-out windows")
        top.set_xlabel("window")
        top.set_ylabel("output 0")
        top.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return True
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7))
    for name, trace in traces.items():
        top.plot(trace[:, 0], label=name, linewidth=2.0 if name == "float" else 1.0)
    top.set_title("Output 0 on the first held-out sequence")
    top.set_xlabel("step")
    top.set_ylabel("output 0")
    top.legend()
    for name, m in report["models"].items():
        bottom.plot(m["long_stream_block_rmse"], marker="o", label=name)
    bottom.set_title(f"RMSE per block over a {report['long_stream']['steps']}-step stream")
    bottom.set_xlabel(f"block ({report['long_stream']['block_steps']} steps)")
    bottom.set_yscale("log")
    bottom.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def windows_of(sequences: list, length: int, limit: int, seed: int = 0) -> np.ndarray:
    """Every window of ``length`` consecutive steps in ``sequences`` (at most ``limit``,
    drawn at random, seeded): ``(count, length, features)``."""
    starts = [(k, t) for k, s in enumerate(sequences) for t in range(len(s) - length + 1)]
    if not starts:
        raise ValueError(f"no sequence has {length} steps, the window length")
    if len(starts) > limit:
        chosen = np.sort(np.random.default_rng(seed).choice(len(starts), size=limit, replace=False))
        starts = [starts[i] for i in chosen]
    return np.stack([sequences[k][t : t + length] for k, t in starts]).astype(np.float32)


def reconstruction_error(outputs: np.ndarray, normalized_windows: np.ndarray) -> np.ndarray:
    """An autoencoder's anomaly score per window: mean squared error of the reconstruction
    (in normalised units, over every step and feature of the window)."""
    diff = np.asarray(outputs, np.float64) - np.asarray(normalized_windows, np.float64)
    return np.mean(diff.reshape(len(diff), -1) ** 2, axis=1)


def build_window_report(network, models: dict, held_out_windows: np.ndarray, normalization, progress=None) -> tuple:
    """Compare window models (name -> model taking raw windows) with the reference on
    held-out windows. Autoencoders also get the error of their anomaly score."""
    from edgelstm.model.reference import forward_sequence

    token = network.input_kind == "token"
    normalized = held_out_windows if token else normalization.apply(held_out_windows)
    windows_in = normalized.reshape(len(normalized), network.window).astype(np.int64) if token else normalized
    reference = np.concatenate([forward_sequence(network, windows_in[i : i + 256]) for i in range(0, len(windows_in), 256)])
    report = {"held_out": {"windows": int(len(held_out_windows)), "window": int(network.window)}, "uses": ["window"],
              "models": {}}
    traces = {"float": reference.reshape(len(reference), -1)[:200]}
    reference_score = reconstruction_error(reference, normalized) if network.is_autoencoder else None
    heads = heads_of(network, reference)
    for name, model in models.items():
        outputs = np.stack([np.array(model.run(held_out_windows[i : i + 1])[0]) for i in range(len(held_out_windows))])
        metrics = dict(measure(reference, outputs, float(np.std(reference)), heads), measured_at="window")
        if reference_score is not None:
            metrics["anomaly_score"] = error_metrics(reference_score, reconstruction_error(outputs, normalized))
        report["models"][name] = metrics
        traces[name] = outputs.reshape(len(outputs), -1)[:200]
        if progress is not None:
            progress.update(1)
    return report, traces
