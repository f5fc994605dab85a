"""C-MAPSS FD001 results table: the shipped models, float and int8, on the 100 test engines.

    python bench/cmapss.py [--lstm MODEL.keras] [--window-model MODEL.keras] [--out DIR] [--json]

Trains nothing. Each model (default ``examples/cmapss_fd001_lstm_128x64.keras`` and, if present,
``examples/cmapss_fd001_window30.keras``; the scaler is the ``.scaler.json`` beside it) is
converted with the command line a user would type::

    python -m edgelstm convert MODEL --calibration calibration/cmapss-fd001.json --scaler SCALER
        --eval calibration/cmapss_fd001/test_FD001.txt --formats tflite,onnx --quant int8,float32
        --out DIR --quiet [--window 30]

and then scored with the streaming runtime on each test engine's last cycle against
``RUL_FD001.txt`` (RMSE and PHM08 from ``edgelstm.recipes.cmapss.scores``):

- float: ``edgelstm.load(DIR, backend="numpy")`` (the float32 numpy reference, equal to Keras),
- int8 TFLite: ``edgelstm.load(DIR)``,
- int8 ONNX: ``edgelstm.load(DIR, backend="onnxruntime", model="int8")``.

Every engine is fed from its first cycle, one reading per step, raw sensor values (the
runtime applies the scaler). The streaming model's output at the last cycle is the score. A
bundle converted with ``--window 30`` runs window mode (NaN until 30 readings, then the model
over the last 30 readings from a fresh state); a test engine shorter than 30 cycles would be
left-padded to 30 by repeating its first reading (FD001's shortest test engine has 31
cycles, so no padding happens; the count is printed).

Published FD001 results (same protocol: 14 sensors, RUL cap 125-130, last cycle of each test
engine) are printed beside them for comparison: LSTM (Zheng et al. 2017) RMSE 16.14, score
338; deep CNN (Li et al. 2018) RMSE 12.61, score 273.7.
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
from edgelstm.recipes.cmapss import scores, test_truth  # noqa: E402

RECIPE = ROOT / "calibration" / "cmapss-fd001.json"
TEST_SET = ROOT / "calibration" / "cmapss_fd001" / "test_FD001.txt"
DEFAULT_LSTM = ROOT / "examples" / "cmapss_fd001_lstm_128x64.keras"
if not DEFAULT_LSTM.exists():  # made by `python -m edgelstm.recipes.cmapss --out <that file>`; else the demo's model
    DEFAULT_LSTM = ROOT / "examples" / "cmapss_fd001_lstm.keras"
DEFAULT_WINDOW = ROOT / "examples" / "cmapss_fd001_window30.keras"
WINDOW = 30
PUBLISHED = [("LSTM, Zheng et al. 2017 (published)", 16.14, 338.0), ("deep CNN, Li et al. 2018 (published)", 12.61, 273.7)]
RUNS = {
    "float": dict(backend="numpy"),
    "int8 TFLite": {},
    "int8 ONNX": dict(backend="onnxruntime", model="int8"),
}


def scaler_for(model: Path) -> Path:
    return model.with_suffix(".scaler.json")


def convert(model: Path, out: Path, window: int | None) -> float:
    command = [sys.executable, "-m", "edgelstm", "convert", str(model), "--calibration", str(RECIPE),
               "--scaler", str(scaler_for(model)), "--eval", str(TEST_SET), "--formats", "tflite,onnx",
               "--quant", "int8,float32", "--out", str(out), "--quiet"]
    if window:
        command += ["--window", str(window)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"conversion of {model} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def left_pad(engine: np.ndarray, length: int) -> np.ndarray:
    """Repeat the first reading so the engine has at least ``length`` rows."""
    if len(engine) >= length:
        return engine
    return np.concatenate([np.repeat(engine[:1], length - len(engine), axis=0), engine])


def score_bundle(bundle: Path, engines: list, truth: np.ndarray, window: int | None) -> dict:
    import edgelstm

    results = {}
    # np.errstate: the numpy reference's sigmoid overflows exp() for large negative gate
    # pre-activations of the window model; the result (0) is right, the warning is noise.
    for name, options in RUNS.items():
        runtime = edgelstm.load(bundle, **options)
        last = []
        for engine in engines:
            runtime.reset()
            sequence = left_pad(engine, window) if window else engine
            with np.errstate(over="ignore"):
                last.append(float(runtime.run(np.ascontiguousarray(sequence, np.float32))[-1, 0]))
        last = np.array(last)
        if not np.isfinite(last).all():
            raise SystemExit(f"{bundle} {name}: non-finite output at the last cycle")
        results[name] = scores(last, truth)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lstm", type=Path, default=DEFAULT_LSTM, help="streaming (sequence-output) model")
    parser.add_argument("--window-model", type=Path, default=DEFAULT_WINDOW,
                        help=f"{WINDOW}-cycle window model (skipped if the file does not exist)")
    parser.add_argument("--out", type=Path, help="directory for the bundles (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)

    engines = load_cmapss(TEST_SET, CMAPSS_FD001_SENSORS).sequences
    truth = test_truth()
    models = [("streaming LSTM (whole trajectory)", args.lstm, None)]
    if args.window_model.exists():
        models.append((f"window LSTM ({WINDOW} cycles)", args.window_model, WINDOW))
    else:
        print(f"note: {args.window_model} not found; window model skipped")
    short = sum(len(e) < WINDOW for e in engines)

    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        base = args.out or Path(scratch)
        for label, model, window in models:
            bundle = base / (model.stem + "_bundle")
            seconds = convert(model, bundle, window)
            started = time.perf_counter()
            rows[label] = score_bundle(bundle, engines, truth, window)
            print(f"{label}: {model.relative_to(ROOT) if model.is_relative_to(ROOT) else model}, "
                  f"converted in {seconds:.0f} s, scored in {time.perf_counter() - started:.0f} s", flush=True)

    print(f"\nC-MAPSS FD001, {len(engines)} test engines, last cycle vs RUL_FD001.txt "
          f"(window model: {short} engines shorter than {WINDOW} cycles left-padded by repeating the first reading)")
    header = f"{'model':<38}" + "".join(f"{name + ' RMSE':>18}{name + ' PHM08':>18}" for name in RUNS)
    print(header)
    print("-" * len(header))
    for label, result in rows.items():
        print(f"{label:<38}" + "".join(f"{result[n]['rmse']:>18.2f}{result[n]['phm08']:>18.1f}" for n in RUNS))
    for label, rmse, phm in PUBLISHED:
        print(f"{label:<38}{rmse:>18.2f}{phm:>18.1f}")
    if args.json:
        print(json.dumps({"models": rows, "published": {label: {"rmse": r, "phm08": p} for label, r, p in PUBLISHED}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
