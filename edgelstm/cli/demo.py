"""``edgelstm demo``: predictive maintenance end to end on NASA C-MAPSS FD001.

1. Takes the best FD001 model the project's own recipe trained and ships
   (``examples/cmapss_fd001_lstm_128x64.keras``: LSTM 128, LSTM 64, Dense 1, two seeds folded
   into one model, trained on whole engine trajectories with an output at every cycle; test
   RMSE 13.82 against 14.89 for the first recipe's LSTM 64/32), or trains one (``--retrain``).
2. Converts it to int8 (and float32) TFLite and ONNX with the shipped calibration recipe.
3. Scores float and int8 models on all 100 test engines, stepped one cycle at a time from
   each engine's first cycle (the test score is at the last cycle, against RUL_FD001.txt).
4. Plays a few test engines as a device would (the simulator on a pseudo-terminal), with the
   bridge reading the other end and stepping the int8 runtime; prints each engine's RUL
   predictions per cycle with the alarms (RUL below 30 cycles).
5. Prints a summary table and writes ``summary.json`` and PNG plots into the output folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgelstm.errors import EdgeLSTMError

ROOT = Path(__file__).resolve().parents[2]  # the source tree (edgelstm/cli/demo.py)
EXAMPLE_MODEL = ROOT / "examples" / "cmapss_fd001_lstm_128x64.keras"  # the recipe's best FD001 model; the demo runs in ~40 s
EXAMPLE_SCALER = ROOT / "examples" / "cmapss_fd001_lstm_128x64.scaler.json"
RECIPE = ROOT / "calibration" / "cmapss-fd001.json"
TEST_SET = ROOT / "calibration" / "cmapss_fd001" / "test_FD001.txt"
ALARM = "y0<30:35"
#: Published FD001 RMSE for comparison (last-cycle protocol, RUL capped at 125 or 130).
PUBLISHED = [
    ("LSTM (Zheng et al. 2017)", 16.14, 338.0),
    ("Deep CNN (Li et al. 2018)", 12.61, 273.7),
]


def _bar(total, description, enabled):
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=description, disable=not enabled, leave=False, file=sys.stderr)


def run_demo(out: Path, progress: bool = True, engines: int = 3, rate: float = 500.0, retrain: bool = False,
             epochs: int = 60, every: int = 10) -> int:
    for needed in (EXAMPLE_MODEL, EXAMPLE_SCALER, RECIPE, TEST_SET):
        if not needed.exists():
            raise EdgeLSTMError(f"demo file {needed} missing: run the demo from a checkout of the repository")
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_path, scaler_path = EXAMPLE_MODEL, EXAMPLE_SCALER
    if retrain:
        from edgelstm.recipes import cmapss as recipe

        print(f"training the C-MAPSS recipe ({epochs} epochs) ...", flush=True)
        model, data = recipe.train(epochs=epochs)
        model_path, scaler_path = out / "cmapss_fd001_lstm.keras", out / "cmapss_fd001_lstm.scaler.json"
        model.save(model_path)
        scaler_path.write_text(json.dumps(data["scaler"].to_json(), indent=2) + "\n")

    print(f"edgelstm demo: C-MAPSS FD001 remaining useful life, model {model_path.name}")
    bundle = out / "bundle"
    _convert(model_path, scaler_path, bundle, progress)
    scores, traces = _score(bundle, progress)
    stream = _stream_engines(bundle, engines, rate, every)
    latency = _latency(bundle)
    summary = {"model": str(model_path), "bundle": str(bundle), "scores": scores, "streamed": stream, "latency": latency,
               "seconds": round(time.perf_counter() - started, 1)}
    _print_summary(summary)
    plots = _plots(out, traces, latency)
    summary["plots"] = plots
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"summary: {out / 'summary.json'}; plots: {', '.join(plots) or 'none (matplotlib not installed)'}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def _convert(model_path: Path, scaler_path: Path, bundle: Path, progress: bool) -> None:
    from edgelstm.convert.pipeline import ConvertOptions, convert
    from edgelstm.convert.fidelity import format_table

    options = ConvertOptions(model=model_path, calibration=RECIPE, scaler=scaler_path, eval_data=TEST_SET, out=bundle,
                             formats=["tflite", "onnx"], quant=["int8", "dynamic", "float32"], progress=progress)
    manifest = convert(options)
    report = json.loads((bundle / "report.json").read_text())
    print(f"converted to {bundle}: " + ", ".join(f"{m['file']} ({m['bytes'] // 1024} kB)" for m in manifest["models"]))
    print(format_table(report))


def _score(bundle: Path, progress: bool) -> tuple:
    """Float and int8 models on every test engine, stepped cycle by cycle; RMSE and PHM08."""
    from edgelstm import load
    from edgelstm.recipes.cmapss import load as load_data, scores

    data = load_data()
    runs = {"float32 (numpy reference)": dict(backend="numpy"), "int8 TFLite, full integer": dict(model="int8"),
            "int8 TFLite, dynamic range": dict(model="dynamic"), "int8 ONNX (onnxruntime)": dict(backend="onnxruntime", model="int8")}
    results, traces = {}, {}
    watched = _first_streamed(data)  # the RUL plot shows an engine the demo also streams through the bridge
    with _bar(len(runs) * len(data["test"].sequences), "scoring test engines", progress) as bar:
        for name, options in runs.items():
            runtime = load(bundle, **options)
            last = []
            for index, engine in enumerate(data["test"].sequences):
                runtime.reset()
                outputs = runtime.run(engine)[:, 0]
                last.append(float(outputs[-1]))
                if index == watched:
                    traces[name] = outputs
                if bar is not None:
                    bar.update(1)
            results[name] = scores(np.array(last), data["truth"])
    length = len(data["test"].sequences[watched])
    traces["true RUL"] = data["truth"][watched] + np.arange(length - 1, -1, -1)
    traces["engine"] = int(data["test"].extras["units"][watched])
    return results, traces


def _first_streamed(data) -> int:
    """Index of the first engine :func:`_stream_engines` plays: the one closest to failure."""
    return int(np.argsort(data["truth"])[0])


def _stream_engines(bundle: Path, count: int, rate: float, every: int) -> list:
    """A few test engines through simulator -> pty -> bridge -> int8 runtime, printed per cycle."""
    from firmware_bridge.bridge import Bridge
    from firmware_bridge.simulator import Simulator, cmapss_units
    from firmware_bridge.transport import PtyLink

    from edgelstm import load
    from edgelstm.recipes.cmapss import test_truth

    truth = test_truth()
    # engines that come close to failure within their record: the interesting ones to watch
    candidates = [int(u) for u in np.argsort(truth)[: max(count, 1)] + 1]
    units = cmapss_units(candidates)

    class Printer:
        def __init__(self):
            self.engine, self.length, self.final, self.rows, self.alarms = None, 0, 0.0, [], []

        def emit(self, event):
            if event["event"] == "prediction":
                cycle = event["seq"] + 1
                true_now = self.final + (self.length - cycle)
                self.rows.append((cycle, event["y"][0], true_now))
                if cycle % every == 0 or cycle == self.length:
                    print(f"  engine {self.engine:>3} cycle {cycle:>3}: predicted RUL {event['y'][0]:6.1f}   "
                          f"true {min(true_now, 125):5.0f} (capped at 125{', uncapped %d' % true_now if true_now > 125 else ''})")
            elif event["event"] in ("alarm", "clear"):
                self.alarms.append((event["event"], event["seq"] + 1, event["value"]))
                print(f"  engine {self.engine:>3} cycle {event['seq'] + 1:>3}: {event['event'].upper()} {event['rule']} "
                      f"(predicted RUL {event['value']:.1f})")

        def close(self):
            pass

    printer = Printer()
    results = []
    runtime = load(bundle)
    with PtyLink() as link:
        bridge = Bridge(link.path, runtime, sinks=[printer], alarms=[ALARM], device="engine").start()
        try:
            if not bridge.wait(lambda: bridge._port is not None, 10):
                raise EdgeLSTMError(f"the bridge could not open {link.path}")
            print(f"streaming {len(units)} test engines through a pty ({link.path}) into the bridge at {rate:g} cycles/s, "
                  f"alarm {ALARM} (RUL below 30 cycles, clear above 35)")
            for unit, engine in zip(candidates, units):
                bridge.restart_stream()  # a new engine: fresh state and alarms, in order with its readings
                stepped_before = bridge.stats.readings_stepped
                printer.engine, printer.length, printer.final = unit, len(engine), float(truth[unit - 1])
                printer.rows, printer.alarms = [], []
                Simulator([engine], rate=rate).play(link.write)  # its device counts from sequence 0: a restart
                if not bridge.wait(lambda: bridge.stats.readings_stepped >= stepped_before + len(engine), 30):
                    raise EdgeLSTMError(f"engine {unit}: only {bridge.stats.readings_stepped - stepped_before} of {len(engine)} cycles arrived")
                final = printer.rows[-1]
                results.append({"engine": unit, "cycles": len(engine), "predicted_rul": round(final[1], 2), "true_rul": final[2],
                                "alarms": printer.alarms})
        finally:
            bridge.stop()
    results.append({"bridge": bridge.counters})
    return results


def _latency(bundle: Path) -> dict:
    from edgelstm.runtime.profiler import profile

    result = profile(bundle, backends=("litert",), steps=5000, warmup=500)
    rows = {row["kind"]: row for row in result["rows"]}
    return {
        "model": rows["step"]["model"], "step_p50_us": rows["step"]["p50_us"], "step_p99_us": rows["step"]["p99_us"],
        "invoke_p50_us": rows["bare"]["p50_us"], "steps_per_s": rows["step"]["steps_per_s"],
        "_samples": {"step": rows["step"]["_samples_us"], "bare": rows["bare"]["_samples_us"]},
    }


def _print_summary(summary: dict) -> None:
    print()
    print("FD001 test set, 100 engines, scored at each engine's last cycle (RUL capped at 125):")
    print(f"  {'model':<40}{'RMSE':>8}{'PHM08 score':>14}")
    for name, result in summary["scores"].items():
        print(f"  {name:<40}{result['rmse']:>8.2f}{result['phm08']:>14.1f}")
    for name, rmse, phm in PUBLISHED:
        print(f"  {name + ' (published)':<40}{rmse:>8.2f}{phm:>14.1f}")
    latency = summary["latency"]
    print(f"  runtime default {latency['model']}, step on this machine: p50 {latency['step_p50_us']:.1f} us, p99 {latency['step_p99_us']:.1f} us "
          f"({latency['steps_per_s']:.0f} steps/s; bare invoke p50 {latency['invoke_p50_us']:.1f} us)")
    bridge = summary["streamed"][-1]["bridge"]
    print(f"  bridge: {bridge['frames_good']} frames good, {bridge['frames_crc_failed']} CRC failures, "
          f"{bridge['frames_dropped']} dropped, {bridge['readings_stepped']} stepped")


def _plots(out: Path, traces: dict, latency: dict) -> list:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    figure, axis = plt.subplots(figsize=(9, 5))
    cycles = np.arange(1, len(traces["true RUL"]) + 1)
    axis.plot(cycles, np.minimum(traces["true RUL"], 125), "k--", label="true RUL (capped at 125)")
    for name in ("float32 (numpy reference)", "int8 TFLite, full integer", "int8 TFLite, dynamic range", "int8 ONNX (onnxruntime)"):
        axis.plot(cycles, traces[name], label=name, linewidth=1.2)
    axis.axhline(30, color="red", linewidth=0.6, label="alarm threshold")
    axis.set_xlabel("cycle")
    axis.set_ylabel("remaining useful life (cycles)")
    axis.set_title(f"Test engine {traces['engine']}: predicted vs true RUL, streamed one cycle at a time")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "rul_engine.png", dpi=100)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(9, 4))
    samples = latency.pop("_samples")
    bins = np.geomspace(max(1.0, min(np.percentile(s, 0.1) for s in samples.values()) * 0.8),
                        max(np.percentile(s, 99.9) for s in samples.values()) * 1.2, 60)
    for name, values in samples.items():
        axis.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{'runtime step()' if name == 'step' else 'bare invoke'} (p50 {np.percentile(values, 50):.1f} us)")
    axis.set_xscale("log")
    axis.set_xlabel(f"latency per step (us), {latency.get('model', 'int8')}, 1 thread")
    axis.set_ylabel("steps")
    axis.set_title("Runtime step() against the bare interpreter call, this machine")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=100)
    plt.close(figure)
    return ["rul_engine.png", "latency.png"]
