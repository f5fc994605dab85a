"""C-MAPSS FD001 anomaly score: the shipped LSTM autoencoder, int8 on the runtime, held-out lives.

    python bench/autoencoder.py [--model MODEL.keras] [--out DIR] [--plot PNG] [--json]

Trains nothing. The model (default ``examples/cmapss_fd001_autoencoder.keras``, made by
``python -m edgelstm.recipes.cmapss_autoencoder``; its ``.scaler.json`` and ``.json`` metadata
beside it) is converted with the command line a user would type::

    python -m edgelstm convert MODEL --calibration calibration/cmapss_fd001_healthy.npz
        --scaler MODEL.scaler.json --formats tflite,onnx --quant int8,float32 --out DIR --quiet

(calibration = the healthy early cycles of the training engines; the converter holds out every
5th of those sequences for its report). Then every held-out training engine (listed in the
metadata; its whole run-to-failure life was never used in training) is fed from its first
cycle to its failure, one raw reading per ``step()``, through

- int8 TFLite: ``edgelstm.load(DIR)`` (the bundle's default model),
- int8 ONNX: ``edgelstm.load(DIR, backend="onnxruntime", model="int8")``,
- float: ``edgelstm.load(DIR, backend="numpy")`` (the float32 numpy reference, equal to Keras).

The runtime's window mode returns, per step, the reconstruction error of the last 30 readings
(the anomaly score; NaN until 30 readings arrived). Printed per engine: the mean score over
its healthy cycles (windows ending in the first 30 % of its life, as in training), over its
last 30 cycles, their ratio, and the Spearman correlation of score with cycle; the medians
over engines. The alarm threshold is the 99th percentile of the held-out engines' healthy
scores (per model); printed: the share of engines whose score crosses it after their healthy
cycles and before failure, the median lead time (cycles left at the first crossing), and
healthy cycles above it. Also the int8-vs-float agreement of the per-step scores and the
bundle's own fidelity report. ``docs/cmapss_autoencoder_scores.png`` plots score against
cycles to failure. Every number printed is measured in the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgelstm.convert.calibration_data import CMAPSS_FD001_SENSORS, load_cmapss  # noqa: E402
from edgelstm.recipes import cmapss_autoencoder as recipe  # noqa: E402

DEFAULT_MODEL = ROOT / "examples" / "cmapss_fd001_autoencoder.keras"
CALIBRATION = ROOT / "calibration" / "cmapss_fd001_healthy.npz"
TRAIN_SET = ROOT / "calibration" / "cmapss_fd001" / "train_FD001.txt"
DEFAULT_PLOT = ROOT / "docs" / "cmapss_autoencoder_scores.png"
RUNS = {
    "int8 TFLite": {},
    "int8 ONNX": dict(backend="onnxruntime", model="int8"),
    "float": dict(backend="numpy"),
}
PERCENTILE = 99.0
PLOTTED = 6  # engines drawn one by one (the first held-out engines by unit number)


def convert(model: Path, out: Path, calibration: Path, window_samples: int | None, eval_windows: int | None) -> float:
    command = [sys.executable, "-m", "edgelstm", "convert", str(model), "--calibration", str(calibration),
               "--scaler", str(model.with_suffix(".scaler.json")), "--formats", "tflite,onnx",
               "--quant", "int8,float32", "--out", str(out), "--quiet"]
    if window_samples:
        command += ["--window-samples", str(window_samples)]
    if eval_windows:
        command += ["--eval-windows", str(eval_windows)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"conversion of {model} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def stream(bundle: Path, lives: dict) -> dict:
    """Per-step anomaly scores of each life, one raw reading per ``step()``; and the time per step."""
    import edgelstm

    results = {}
    for name, options in RUNS.items():
        runtime = edgelstm.load(bundle, **options)
        scores, steps, started = {}, 0, time.perf_counter()
        for unit, raw in lives.items():
            runtime.reset()
            out = np.empty(len(raw))
            # the numpy reference's sigmoid overflows exp() for large negative pre-activations: the result (0) is right
            with np.errstate(over="ignore"):
                for t, reading in enumerate(raw):
                    out[t] = runtime.step(reading)[0]
            scores[unit] = out
            steps += len(raw)
        results[name] = {"scores": scores, "us_per_step": 1e6 * (time.perf_counter() - started) / steps,
                         "model_file": runtime.model_file}
    return results


def healthy_scores(scores: dict, window: int) -> np.ndarray:
    return np.concatenate([s[window - 1:recipe.healthy_length(len(s), window=window)] for s in scores.values()])


def analyse(scores: dict, window: int) -> dict:
    per = {unit: recipe.summarize_life(s, window) for unit, s in scores.items()}
    threshold = float(np.percentile(healthy_scores(scores, window), PERCENTILE))
    for unit, s in scores.items():
        per[unit].update(recipe.first_alarm(s, threshold, window))
    leads = [v["lead"] for v in per.values() if v["lead"] is not None]
    sustained = [v["sustained_lead"] for v in per.values() if v["sustained_lead"] is not None]
    return {
        "engines": per,
        "threshold": threshold,
        "median_healthy_mean": float(np.median([v["healthy_mean"] for v in per.values()])),
        "median_last_mean": float(np.median([v["last_mean"] for v in per.values()])),
        "median_ratio": float(np.median([v["ratio"] for v in per.values()])),
        "min_ratio": float(min(v["ratio"] for v in per.values())),
        "median_spearman": float(np.median([v["spearman"] for v in per.values()])),
        "min_spearman": float(min(v["spearman"] for v in per.values())),
        "alarmed": len(leads),
        "alarmed_fraction": len(leads) / len(per),
        "median_lead": float(np.median(leads)) if leads else None,
        "min_lead": int(min(leads)) if leads else None,
        "max_lead": int(max(leads)) if leads else None,
        "sustained": len(sustained),
        "median_sustained_lead": float(np.median(sustained)) if sustained else None,
        "min_sustained_lead": int(min(sustained)) if sustained else None,
        "max_sustained_lead": int(max(sustained)) if sustained else None,
        "healthy_cycles_above": int(sum(v["healthy_exceed"] for v in per.values())),
        "healthy_cycles": int(len(healthy_scores(scores, window))),
    }


def agreement(a: dict, b: dict) -> dict:
    """Per-step |a - b| over every scored step of every life, absolute and relative to b."""
    x = np.concatenate([a[u] for u in a])
    y = np.concatenate([b[u] for u in a])
    valid = np.isfinite(y)
    diff = np.abs(x[valid] - y[valid])
    rel = diff / y[valid]
    return {"steps": int(valid.sum()), "median_abs": float(np.median(diff)), "max_abs": float(diff.max()),
            "median_rel": float(np.median(rel)), "p99_rel": float(np.percentile(rel, 99)), "max_rel": float(rel.max()),
            "pearson": float(np.corrcoef(x[valid], y[valid])[0, 1])}


def plot(path: Path, runs: dict, analyses: dict, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    int8, flt = runs["int8 TFLite"]["scores"], runs["float"]["scores"]
    units = list(int8)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    colors = plt.get_cmap("tab10").colors
    for k, unit in enumerate(units[:PLOTTED]):
        life = len(int8[unit])
        to_failure = np.arange(life - 1, -1, -1)
        left.plot(to_failure, int8[unit], color=colors[k], lw=1.4, label=f"engine {unit} ({life} cycles)")
        left.plot(to_failure, flt[unit], color=colors[k], lw=0.9, ls="--")
    left.plot([], [], color="k", lw=1.4, label="int8 TFLite (runtime)")
    left.plot([], [], color="k", lw=0.9, ls="--", label="float reference")
    left.set_title(f"{PLOTTED} held-out engines, one reading per step")
    # every held-out engine (int8) and the median over engines at each cycle-to-failure
    longest = max(len(s) for s in int8.values())
    grid = np.full((len(units), longest), np.nan)
    for k, unit in enumerate(units):
        s = int8[unit]
        right.plot(np.arange(len(s) - 1, -1, -1), s, color="0.6", lw=0.6)
        grid[k, :len(s)] = s[::-1]
    counts = np.sum(np.isfinite(grid), axis=0)
    shown = counts >= len(units) // 2  # cycles-to-failure that at least half the engines have scored
    median = np.full(longest, np.nan)
    median[shown] = np.nanmedian(grid[:, shown], axis=0)
    right.plot(np.arange(longest), median, color="C3", lw=2.2, label="median over engines (int8)")
    right.plot([], [], color="0.6", lw=0.6, label=f"each of the {len(units)} held-out engines (int8)")
    right.set_title(f"all {len(units)} held-out engines")
    for axis in (left, right):
        for name, style in (("int8 TFLite", "-"), ("float", ":")):
            axis.axhline(analyses[name]["threshold"], color="k", ls=style, lw=1.0,
                         label=f"threshold, {name} (p{PERCENTILE:g} of healthy scores): {analyses[name]['threshold']:.2f}")
        axis.set_yscale("log")
        axis.set_xlim(max(len(int8[u]) for u in (units[:PLOTTED] if axis is left else units)) + 5, 0)
        axis.set_xlabel("cycles to failure")
        axis.grid(True, which="both", alpha=0.25)
        axis.legend(fontsize=7.5, loc="upper left")
    left.set_ylabel(f"anomaly score: reconstruction MSE of the last {window} cycles")
    fig.suptitle("C-MAPSS FD001 LSTM autoencoder (trained on healthy early cycles): score rises toward failure", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--calibration", type=Path, default=CALIBRATION)
    parser.add_argument("--out", type=Path, help="bundle directory (default: a temporary directory)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--window-samples", type=int, help="passed to convert (its default: 1000)")
    parser.add_argument("--eval-windows", type=int, help="passed to convert (its default: 1000)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)

    meta = json.loads(args.model.with_suffix(".json").read_text())
    raw = load_cmapss(TRAIN_SET, CMAPSS_FD001_SENSORS)
    by_unit = dict(zip(raw.extras["units"], raw.sequences))
    lives = {unit: by_unit[unit] for unit in meta["held_out_units"]}
    train_units = set(meta["train_units"])
    assert not train_units & set(lives), "held-out engines overlap the training engines"

    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.out or Path(scratch) / "autoencoder_bundle"
        seconds = convert(args.model, bundle, args.calibration, args.window_samples, args.eval_windows)
        manifest = json.loads((bundle / "manifest.json").read_text())
        report = json.loads((bundle / "report.json").read_text())
        window = int(manifest["window"])
        started = time.perf_counter()
        runs = stream(bundle, lives)
        streamed = time.perf_counter() - started

    analyses = {name: analyse(run["scores"], window) for name, run in runs.items()}
    agree = {name: agreement(runs[name]["scores"], runs["float"]["scores"]) for name in ("int8 TFLite", "int8 ONNX")}
    plot(args.plot, runs, analyses, window)

    name = args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model
    print(f"{name}: window {window}, converted in {seconds:.0f} s; {len(lives)} held-out engines "
          f"({sum(len(v) for v in lives.values())} readings) streamed through 3 runtimes in {streamed:.0f} s")
    print(f"int8 TFLite model: {runs['int8 TFLite']['model_file']}; "
          + ", ".join(f"{n} {r['us_per_step']:.0f} us/step" for n, r in runs.items()) + " (Python loop, this machine)")
    print(f"\nper engine: healthy = windows ending in the first {recipe.HEALTHY_FRACTION:.0%} of the life; "
          f"last = the last {recipe.LAST_CYCLES} cycles; rho = Spearman(score, cycle); lead = cycles left at the first "
          f"crossing of the threshold after the healthy cycles")
    header = (f"{'unit':>5}{'life':>6} | {'int8 healthy':>12}{'int8 last':>10}{'ratio':>7}{'rho':>7}{'lead':>6} | "
              f"{'float healthy':>13}{'float last':>11}{'ratio':>7}{'rho':>7}{'lead':>6}")
    print(header)
    print("-" * len(header))
    i8, fl = analyses["int8 TFLite"]["engines"], analyses["float"]["engines"]
    lead = lambda v: "-" if v["lead"] is None else str(v["lead"])  # noqa: E731
    for unit in lives:
        a, b = i8[unit], fl[unit]
        print(f"{unit:>5}{a['life']:>6} | {a['healthy_mean']:>12.3f}{a['last_mean']:>10.3f}{a['ratio']:>7.1f}{a['spearman']:>7.3f}"
              f"{lead(a):>6} | {b['healthy_mean']:>13.3f}{b['last_mean']:>11.3f}{b['ratio']:>7.1f}{b['spearman']:>7.3f}{lead(b):>6}")
    print()
    header = (f"{'model':<12}{'healthy':>9}{'last 30':>9}{'ratio':>8}{'(min)':>7}{'rho':>7}{'(min)':>7}{'threshold':>11}"
              f"{'alarmed':>9}{'lead':>6}{'(range)':>10}{'sustained':>11}{'(range)':>10}{'healthy>thr':>13}")
    print("medians over the held-out engines (min: the worst engine); threshold = p99 of the healthy scores; alarmed = engines whose "
          "score crossed it after the healthy cycles, before failure; lead = cycles left at that first crossing; sustained = "
          "cycles left from where it stayed above until failure")
    print(header)
    print("-" * len(header))
    span = lambda lo, hi: "-" if lo is None else f"{lo}-{hi}"  # noqa: E731
    number = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    for n, a in analyses.items():
        print(f"{n:<12}{a['median_healthy_mean']:>9.3f}{a['median_last_mean']:>9.3f}{a['median_ratio']:>8.1f}{a['min_ratio']:>7.1f}"
              f"{a['median_spearman']:>7.3f}{a['min_spearman']:>7.3f}{a['threshold']:>11.3f}"
              f"{a['alarmed']:>5}/{len(lives):<3}{number(a['median_lead']):>6}{span(a['min_lead'], a['max_lead']):>10}"
              f"{number(a['median_sustained_lead']):>11}{span(a['min_sustained_lead'], a['max_sustained_lead']):>10}"
              f"{a['healthy_cycles_above']:>7}/{a['healthy_cycles']}")
    print("\nper-step score vs the float reference (every scored step of every held-out life)")
    for n, g in agree.items():
        print(f"{n:<12} |diff| median {g['median_abs']:.4f}, max {g['max_abs']:.3f}; relative median {g['median_rel']:.2%}, "
              f"p99 {g['p99_rel']:.2%}, max {g['max_rel']:.2%}; Pearson r {g['pearson']:.5f} over {g['steps']} steps")
    print(f"\nconverter's report (held-out healthy windows, {report['held_out']['windows']} of {report['held_out']['window']} cycles): "
          "relative RMSE (RMSE / std of the float output)")
    fidelity = {}
    for n in ("tflite int8", "onnx int8"):
        m = report["models"][n]
        fidelity[n] = {"relative_rmse": m["relative_rmse"], "anomaly_score_relative_rmse": m["anomaly_score"]["relative_rmse"],
                       "anomaly_score_max_abs_error": m["anomaly_score"]["max_abs_error"]}
        print(f"{n:<12} reconstruction {m['relative_rmse']:.2%}, anomaly score {m['anomaly_score']['relative_rmse']:.2%} "
              f"(max abs {m['anomaly_score']['max_abs_error']:.4f})")
    print(f"\nplot: {args.plot}")
    if args.json:
        print(json.dumps({"analyses": {n: {k: v for k, v in a.items()} for n, a in analyses.items()},
                          "agreement": agree, "fidelity": fidelity, "convert_seconds": seconds,
                          "us_per_step": {n: r["us_per_step"] for n, r in runs.items()}}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
