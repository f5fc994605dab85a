"""The int8 LSTM cell state as one int8 tensor per group against c = c_hi + c_lo (residual), one run.

    python bench/cell_state.py [--repeats 5] [--steps 20000]

Converts the shipped C-MAPSS model (LSTM 64, LSTM 32, Dense 1) twice, ``--cell-state single`` and
``--cell-state residual``, calibrated on the FD001 training engines, and measures on the 100 test
engines streamed one cycle per step from a zero state: the int8 error of every step as RMSE / std of
the float output (from the runtime itself, against the numpy reference, not from the bundle's
report), the test-set RMSE at each engine's last cycle (against RUL_FD001.txt, as ``edgelstm demo``
scores it), and the cost per step:
``step()`` and the bare ``invoke()`` of the stream model, min / median / max over ``--repeats``
rounds of ``--steps`` calls each, both models alternating in this one process. Ratios are residual
over single.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import edgelstm  # noqa: E402
from edgelstm.convert import ConvertOptions, convert  # noqa: E402
from edgelstm.convert.calibration_data import load_cmapss  # noqa: E402
from edgelstm.model.network_file import load_network_file  # noqa: E402
from edgelstm.model.reference import Reference  # noqa: E402
from edgelstm.recipes.cmapss import test_truth  # noqa: E402
from edgelstm.runtime.normalization import Normalization  # noqa: E402

MODEL = ROOT / "examples" / "cmapss_fd001_lstm.keras"
SCALER = ROOT / "examples" / "cmapss_fd001_lstm.scaler.json"
RECIPE = ROOT / "calibration" / "cmapss-fd001.json"
TEST = ROOT / "calibration" / "cmapss_fd001" / "test_FD001.txt"


def errors(bundle: Path, engines: list) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    network = load_network_file(bundle / "network.npz", manifest["network"])
    normalization = Normalization.from_json(manifest["input"]["normalization"], manifest["input"]["n_features"])
    reference = Reference(network)
    runtime = edgelstm.load(bundle, model="step_int8_stream.tflite", monitor=False)
    expected, got = [], []
    for engine in engines:
        expected.append(reference.run(normalization.apply(engine))[0][:, 0])
        runtime.reset()
        got.append(runtime.run(engine)[:, 0])
    every_expected, every_got = np.concatenate(expected), np.concatenate(got)
    truth = test_truth()  # as edgelstm demo scores it
    last = np.array([g[-1] for g in got])
    return {
        "relative_rmse_every_step": float(np.sqrt(np.mean((every_got - every_expected) ** 2)) / np.std(every_expected)),
        "test_rmse_int8": float(np.sqrt(np.mean((last - truth) ** 2))),
        "test_rmse_float": float(np.sqrt(np.mean((np.array([e[-1] for e in expected]) - truth) ** 2))),
        "report_relative_rmse": json.loads((bundle / "report.json").read_text())["models"]["tflite int8 stream"]["relative_rmse"],
    }


def timings(bundles: dict, reading: np.ndarray, repeats: int, steps: int) -> dict:
    runtimes = {name: edgelstm.load(path, model="step_int8_stream.tflite", monitor=False) for name, path in bundles.items()}
    samples = {}
    for _ in range(repeats):
        for name, runtime in runtimes.items():
            for label, call in (("step", lambda: runtime.step(reading)), ("invoke", runtime._stepper.invoke)):
                for _ in range(1000):
                    call()
                start = time.perf_counter_ns()
                for _ in range(steps):
                    call()
                samples.setdefault(f"{name} {label}", []).append((time.perf_counter_ns() - start) / steps / 1000)
    return {key: {"min": min(v), "median": float(np.median(v)), "max": max(v)} for key, v in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    engines = load_cmapss(TEST).sequences
    bundles, results = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for cell_state in ("single", "residual"):
            out = Path(scratch) / cell_state
            convert(ConvertOptions(model=MODEL, calibration=RECIPE, scaler=SCALER, eval_data=TEST, out=out,
                                   formats=["tflite"], quant=["int8", "float32"], cell_state=cell_state,
                                   attribution_sequences=0, progress=False))
            bundles[cell_state] = out
            results[cell_state] = errors(out, engines)
        reading = np.asarray(json.loads((bundles["single"] / "manifest.json").read_text())["input"]["calibration_stats"]["mean"],
                             np.float32)
        times = timings(bundles, reading, args.repeats, args.steps)
    print(f"C-MAPSS FD001 LSTM 64/32, 100 test engines streamed from a zero state ({sum(map(len, engines))} steps)")
    print(f"{'cell state':<12}{'int8 RMSE/std':>15}{'report says':>13}{'test RMSE int8':>16}{'(float)':>9}"
          f"{'step() us min/med/max':>26}{'invoke() us min/med/max':>26}")
    for name in ("single", "residual"):
        r, s, i = results[name], times[f"{name} step"], times[f"{name} invoke"]
        print(f"{name:<12}{100 * r['relative_rmse_every_step']:>14.2f}%{100 * r['report_relative_rmse']:>12.2f}%"
              f"{r['test_rmse_int8']:>16.2f}{r['test_rmse_float']:>9.2f}"
              f"{s['min']:>10.2f}/{s['median']:.2f}/{s['max']:.2f}{i['min']:>14.2f}/{i['median']:.2f}/{i['max']:.2f}")
    ratio = times["residual step"]["median"] / times["single step"]["median"]
    print(f"residual / single: error {results['residual']['relative_rmse_every_step'] / results['single']['relative_rmse_every_step']:.2f}x, "
          f"step() median {ratio:.2f}x, invoke() median "
          f"{times['residual invoke']['median'] / times['single invoke']['median']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
