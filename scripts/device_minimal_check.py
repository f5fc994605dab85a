"""Install ``edgelstm[runtime]`` alone into a fresh virtual environment and run a bundle there.

    python scripts/device_minimal_check.py BUNDLE [--venv DIR] [--tflite-runtime]

This is what a Raspberry Pi gets: numpy and LiteRT, nothing from the converting side. In
the venv it measures the import time of edgelstm, the time to load the bundle, the
resident memory after one step, and lists the modules of TensorFlow, Keras and onnx that
got imported (there must be none). Prints a JSON object with the figures.

``--tflite-runtime``: the older device stack instead: ``tflite-runtime`` 2.14 (deprecated
upstream, numpy<2 only, so it cannot share an environment with numpy 2) and edgelstm without
its dependencies, run with ``backend="tflite_runtime"``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import edgelstm
t1 = time.perf_counter()
import numpy as np
rt = edgelstm.load(sys.argv[1], backend=sys.argv[2])
t2 = time.perf_counter()
y = rt.step(np.full(rt.n_features, 1.0, np.float32) * 0 + np.asarray(rt.bundle.manifest["input"]["calibration_stats"]["mean"], np.float32))
rss = 0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        rss = int(line.split()[1]) / 1024
from edgelstm.runtime.targets import list_targets
targets = list_targets()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "onnx", "h5py"))
print(json.dumps({"import_edgelstm_ms": (t1 - t0) * 1e3, "load_bundle_ms": (t2 - t1) * 1e3, "rss_mb": rss,
                  "backend": rt.backend, "model": rt.model_file, "y": [float(v) for v in y], "heavy_modules": heavy, "targets": targets}))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--venv", type=Path, help="where to make the venv (default: a temporary directory)")
    parser.add_argument("--tflite-runtime", action="store_true", help="tflite-runtime 2.14 + numpy<2 instead of LiteRT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = args.venv or Path(scratch) / "venv"
        venv.EnvBuilder(with_pip=True, clear=True).create(where)
        python = where / "bin" / "python"
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if args.tflite_runtime:
            install = subprocess.run(pip + ["tflite-runtime==2.14.0", "numpy<2", "jsonschema>=4.17"], capture_output=True, text=True)
            if install.returncode == 0:
                install = subprocess.run(pip + ["--no-deps", str(ROOT)], capture_output=True, text=True)
        else:
            install = subprocess.run(pip + [f"{ROOT}[runtime]"], capture_output=True, text=True)
        if install.returncode != 0:
            print(json.dumps({"error": "pip install failed", "stderr": install.stderr[-2000:]}))
            return 2
        listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                                capture_output=True, text=True, check=True)
        packages = sorted(p["name"].lower() for p in json.loads(listed.stdout) if p["name"].lower() not in ("pip", "setuptools", "wheel"))
        backend = "tflite_runtime" if args.tflite_runtime else "auto"
        probe = subprocess.run([str(python), "-c", PROBE, str(args.bundle.resolve()), backend], capture_output=True, text=True, cwd=scratch)
        if probe.returncode != 0:
            print(json.dumps({"error": "probe failed", "stderr": probe.stderr[-2000:]}))
            return 2
        result = json.loads(probe.stdout.strip().splitlines()[-1])
        result["installed_packages"] = packages
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
