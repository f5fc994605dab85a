"""Conversion wall time and int8 vs float32 file sizes (one process, ratios in one run).

    python bench/convert.py

Converts the shipped C-MAPSS example model (two LSTMs, 64 and 32 units) to TFLite and ONNX
in float32 and int8, times the whole conversion and each stage, and prints file sizes with
the int8/float32 ratio per format.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgelstm.convert.pipeline import ConvertOptions, convert  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "bundle"
        options = ConvertOptions(
            model=ROOT / "examples" / "cmapss_fd001_lstm.keras",
            calibration=ROOT / "calibration" / "cmapss-fd001.json",
            scaler=ROOT / "examples" / "cmapss_fd001_lstm.scaler.json",
            eval_data=ROOT / "calibration" / "cmapss_fd001" / "test_FD001.txt",
            out=out,
            formats=["tflite", "onnx"],
            quant=["float32", "int8"],
            progress=False,
        )
        start = time.perf_counter()
        manifest = convert(options)
        first = time.perf_counter() - start
        start = time.perf_counter()
        convert(options)  # warm: TensorFlow already imported and initialised
        second = time.perf_counter() - start
        sizes = {(m["format"], m["quant"]): m["bytes"] for m in manifest["models"]}
        report = json.loads((out / "report.json").read_text())
    print(f"conversion wall time: {first:.1f} s cold (TensorFlow import included), {second:.1f} s warm")
    print(f"{'format':<8}{'float32 B':>12}{'int8 B':>10}{'int8/float32':>14}")
    for fmt in ("tflite", "onnx"):
        f32, i8 = sizes[(fmt, "float32")], sizes[(fmt, "int8")]
        print(f"{fmt:<8}{f32:>12}{i8:>10}{i8 / f32:>14.3f}")
    for name, metrics in report["models"].items():
        print(f"{name:<16} RMSE/std {100 * metrics['relative_rmse']:.2f}%  max abs {metrics['max_abs_error']:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
