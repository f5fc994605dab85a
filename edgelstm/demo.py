"""``edgelstm demo``: the README's first command, on the shipped C-MAPSS FD001 example.

Converts the example model that the project's own recipe trained
(``examples/cmapss_fd001_lstm.keras``, two LSTMs of 64 and 32 units and a Dense head,
predicting remaining useful life in cycles) with the shipped calibration recipe, to int8
TFLite and int8 ONNX, measures both against the float reference on the 100 test engines,
and prints the fidelity report.
"""

from __future__ import annotations

from pathlib import Path

from .errors import EdgeLSTMError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_MODEL = ROOT / "examples" / "cmapss_fd001_lstm.keras"
EXAMPLE_SCALER = ROOT / "examples" / "cmapss_fd001_lstm.scaler.json"
RECIPE = ROOT / "calibration" / "cmapss-fd001.json"
TEST_SET = ROOT / "calibration" / "cmapss_fd001" / "test_FD001.txt"


def run_demo(out: Path, progress: bool = True) -> int:
    from .cli import main as cli_main

    for needed in (EXAMPLE_MODEL, EXAMPLE_SCALER, RECIPE, TEST_SET):
        if not needed.exists():
            raise EdgeLSTMError(f"demo file {needed} missing: run the demo from a checkout of the repository")
    print(f"edgelstm demo: converting {EXAMPLE_MODEL.name} (C-MAPSS FD001 RUL model) into {out}")
    argv = [
        "convert", str(EXAMPLE_MODEL),
        "--calibration", str(RECIPE),
        "--scaler", str(EXAMPLE_SCALER),
        "--eval", str(TEST_SET),
        "--formats", "tflite,onnx",
        "--quant", "int8,float32",
        "--out", str(out),
    ]
    if not progress:
        argv.append("--quiet")
    return cli_main(argv)
