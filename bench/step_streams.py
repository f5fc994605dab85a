"""Stepping a subset of K streams in one call, against K single-stream runtimes.

The gateway case: K devices on one Pi, readings arriving independently; each call steps the
m devices that have a new reading (``StreamRuntime.step_streams``). The baseline is what a
gateway would do without it: one runtime per device, m ``step()`` calls. Same process, same
readings (FD001 test engines), interleaved repeats; per-reading time, min/median/max over
repeats, and the ratio to the baseline measured in the same repeat.

    python bench/step_streams.py [--bundle DIR] [--streams 8] [--calls 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import edgelstm
    from edgelstm.recipes.cmapss import load as load_cmapss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a bundle (default: convert the C-MAPSS example into build/)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="int8")
    args = parser.parse_args(argv)
    bundle = args.bundle or _bundle()
    K = args.streams
    readings = np.concatenate(load_cmapss()["test"].sequences).astype(np.float32)
    rng = np.random.default_rng(0)
    print(f"bundle {bundle}, model {args.model}, {K} streams, {args.calls} calls per repeat, {args.repeats} repeats")
    print(f"{'ready per call':>15}{'step_streams us/reading':>26}{'K runtimes us/reading':>24}{'ratio (min/med/max)':>24}")
    for m in sorted({1, 2, K // 2, K}):
        subsets = [np.sort(rng.choice(K, m, replace=False)) for _ in range(args.calls)]
        ours, theirs, ratios = [], [], []
        for _ in range(args.repeats):
            gateway = edgelstm.load(bundle, model=args.model, streams=K, on_bad_input="skip")
            alone = [edgelstm.load(bundle, model=args.model, on_bad_input="skip") for _ in range(K)]
            position = 0
            started = time.perf_counter()
            for subset in subsets:
                gateway.step_streams(readings[position:position + m], subset)
                position = (position + m) % (len(readings) - K)
            a = (time.perf_counter() - started) / (args.calls * m) * 1e6
            position = 0
            started = time.perf_counter()
            for subset in subsets:
                for row, k in enumerate(subset):
                    alone[k].step(readings[position + row])
                position = (position + m) % (len(readings) - K)
            b = (time.perf_counter() - started) / (args.calls * m) * 1e6
            ours.append(a), theirs.append(b), ratios.append(a / b)
        print(f"{m:>15}{np.median(ours):>26.2f}{np.median(theirs):>24.2f}"
              f"{f'{min(ratios):.2f} / {np.median(ratios):.2f} / {max(ratios):.2f}':>24}")
    return 0


def _bundle() -> Path:
    out = ROOT / "build" / "step_streams_bundle"
    if not (out / "manifest.json").exists():
        from edgelstm.convert import ConvertOptions, convert

        convert(ConvertOptions(model=ROOT / "examples/cmapss_fd001_lstm.keras", scaler=ROOT / "examples/cmapss_fd001_lstm.scaler.json",
                               calibration=ROOT / "calibration/cmapss-fd001.json", out=out, formats=["tflite"],
                               quant=["int8", "float32"], attribution_sequences=0, progress=False))
    return out


if __name__ == "__main__":
    sys.exit(main())
