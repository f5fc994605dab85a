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

from edgelstm.model.reference import Reference

LONG_STREAM_STEPS = 10_000
BLOCKS = 10


def error_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    diff = np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)
    spread = float(np.std(reference))
    rmse = float(np.sqrt(np.mean(diff**2)))
    return {
        "max_abs_error": float(np.max(np.abs(diff))),
        "mean_abs_error": float(np.mean(np.abs(diff))),
        "rmse": rmse,
        "output_std": spread,
        "relative_rmse": rmse / spread if spread > 0 else math.nan,
    }


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


def build_report(network, steppers: dict, held_out: list, normalization, long_steps: int = LONG_STREAM_STEPS, progress=None) -> dict:
    """Compare every stepper (name -> stepper, each taking raw readings) with the reference
    on the raw ``held_out`` sequences."""
    reference = Reference(network)
    float_outputs = [reference.run(normalization.apply(s))[0] for s in held_out]
    float_flat = np.concatenate(float_outputs)
    stream_input = long_stream(held_out, long_steps)
    float_stream = reference.run(normalization.apply(stream_input))[0]
    block = max(1, len(stream_input) // BLOCKS)
    report = {
        "held_out": {"sequences": len(held_out), "steps": int(sum(len(s) for s in held_out))},
        "long_stream": {"steps": int(len(stream_input)), "block_steps": block},
        "models": {},
    }
    traces = {"float": float_outputs[0]}
    for name, stepper in steppers.items():
        outputs = stream(stepper, held_out, network.output_size)
        metrics = error_metrics(float_flat, np.concatenate(outputs))
        stream_out = stream(stepper, [stream_input], network.output_size)[0]
        blocks = [
            error_metrics(float_stream[i : i + block], stream_out[i : i + block])["rmse"]
            for i in range(0, block * BLOCKS, block)
        ]
        metrics["long_stream_block_rmse"] = blocks
        metrics["long_stream_drift"] = blocks[-1] / blocks[0] if blocks[0] > 0 else (1.0 if blocks[-1] == 0 else math.inf)
        report["models"][name] = metrics
        traces[name] = outputs[0]
        if progress is not None:
            progress.update(1)
    return report, traces


def format_table(report: dict) -> str:
    """A readable table of the report for the terminal."""
    header = f"{'model':<22}{'max abs':>11}{'mean abs':>11}{'RMSE':>11}{'RMSE/std':>10}{'drift':>8}"
    held = report["held_out"]
    lines = [
        f"Fidelity vs float reference: {held['sequences']} held-out sequences, {held['steps']} steps; "
        f"long stream {report['long_stream']['steps']} steps" if "long_stream" in report else
        f"Fidelity vs float reference: {held['windows']} held-out windows of {held['window']} steps",
        header,
        "-" * len(header),
    ]
    for name, m in report["models"].items():
        lines.append(
            f"{name:<22}{m['max_abs_error']:>11.4g}{m['mean_abs_error']:>11.4g}{m['rmse']:>11.4g}"
            f"{100 * m['relative_rmse']:>9.2f}%" + (f"{m['long_stream_drift']:>8.2f}" if "long_stream_drift" in m else f"{'-':>8}")
        )
        if "anomaly_score" in m:
            lines.append(f"{'  anomaly score':<22}{m['anomaly_score']['max_abs_error']:>11.4g}"
                         f"{m['anomaly_score']['mean_abs_error']:>11.4g}{m['anomaly_score']['rmse']:>11.4g}"
                         f"{100 * m['anomaly_score']['relative_rmse']:>9.2f}%")
    lines.append("drift = RMSE of the last long-stream block / RMSE of the first (1.0 = flat; - for window models)")
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
        top.set_title("Output 0 on held-out windows")
        top.set_xlabel("window")
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
    report = {"held_out": {"windows": int(len(held_out_windows)), "window": int(network.window)}, "models": {}}
    traces = {"float": reference.reshape(len(reference), -1)[:200]}
    reference_score = reconstruction_error(reference, normalized) if network.is_autoencoder else None
    for name, model in models.items():
        outputs = np.stack([np.array(model.run(held_out_windows[i : i + 1])[0]) for i in range(len(held_out_windows))])
        metrics = error_metrics(reference, outputs)
        if reference_score is not None:
            metrics["anomaly_score"] = error_metrics(reference_score, reconstruction_error(outputs, normalized))
        report["models"][name] = metrics
        traces[name] = outputs.reshape(len(outputs), -1)[:200]
        if progress is not None:
            progress.update(1)
    return report, traces
