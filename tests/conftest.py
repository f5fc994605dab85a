"""Shared fixtures: Keras models built and saved here, and one converted C-MAPSS bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_MODEL = ROOT / "examples" / "cmapss_fd001_lstm.keras"
EXAMPLE_SCALER = ROOT / "examples" / "cmapss_fd001_lstm.scaler.json"
RECIPE = ROOT / "calibration" / "cmapss-fd001.json"
TEST_SET = ROOT / "calibration" / "cmapss_fd001" / "test_FD001.txt"


def run_cli(*args, check=True):
    """Run ``python -m edgelstm`` in a subprocess; return the CompletedProcess."""
    result = subprocess.run(
        [sys.executable, "-m", "edgelstm", *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"edgelstm {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def keras():
    import keras as keras_module

    keras_module.utils.set_random_seed(0)
    return keras_module


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


def randomize_batchnorm(model, seed=0):
    """Give BatchNormalization layers non-trivial statistics (fresh ones are the identity)."""
    generator = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            weights = layer.get_weights()
            layer.set_weights([np.abs(generator.normal(1.0, 0.5, w.shape)).astype("float32") + 0.1 for w in weights])


def bundle_stepper(bundle_dir, file: str):
    """A bundle's step model driven as the runtime drives it: raw readings in. The stepper
    normalises them where the manifest says the model takes normalised ones; a model that
    takes raw readings normalises them itself (edgelstm.convert.export.tflite_normalize)."""
    import json

    from edgelstm.runtime.steppers import OnnxStepper, TFLiteStepper

    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    entry = next(e for e in manifest["models"] if e["file"] == file)
    stepper = (TFLiteStepper if file.endswith(".tflite") else OnnxStepper)(Path(bundle_dir) / file)
    if entry.get("input", "normalized") == "normalized":
        normalization = manifest["input"]["normalization"]
        stepper.set_normalization(np.asarray(normalization["offset"]), np.asarray(normalization["scale"]))
    return stepper


@pytest.fixture(scope="session")
def cmapss_bundle(tmp_path_factory):
    """The shipped example model converted through the CLI to int8/float32 TFLite and ONNX."""
    out = tmp_path_factory.mktemp("bundle") / "cmapss"
    run_cli(
        "convert", EXAMPLE_MODEL, "--calibration", RECIPE, "--scaler", EXAMPLE_SCALER,
        "--eval", TEST_SET, "--formats", "tflite,onnx", "--quant", "int8,float32", "--out", out, "--quiet",
    )
    return out


class ListSink:
    """A sink that keeps every event in a list (the gateway and model-update tests read them)."""

    name = "list"

    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)

    def close(self):
        return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a metrics endpoint under test)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, every: float = 0.01) -> bool:
    """Poll ``condition()`` every ``every`` seconds until true or ``timeout`` seconds pass: a wait
    with a deadline, not a fixed sleep (``every``: for a condition that costs a query)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
