"""Cost of drift / saturation / stuck-sensor tracking on the step (ratio in one run).

    python bench/monitor.py [BUNDLE]

Steps the same int8 bundle with ``monitor=False`` and ``monitor=True`` (defaults: window 25,
evaluation every 10 readings), alternating rounds to share the machine's noise, and prints
the median per-step times and their ratio. Goal from the issue: at most 10 % more.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgelstm  # noqa: E402
from edgelstm.runtime.profiler import readings  # noqa: E402


def main() -> int:
    scratch = None
    if len(sys.argv) > 1:
        bundle = Path(sys.argv[1])
    else:
        import contextlib
        import io

        from edgelstm.cli.demo import _convert, EXAMPLE_MODEL, EXAMPLE_SCALER

        scratch = tempfile.TemporaryDirectory()
        bundle = Path(scratch.name) / "bundle"
        with contextlib.redirect_stdout(io.StringIO()):
            _convert(EXAMPLE_MODEL, EXAMPLE_SCALER, bundle, progress=False)
    plain, watched = edgelstm.load(bundle, monitor=False), edgelstm.load(bundle)
    data = list(readings(plain.bundle, 1000, 1)[:, 0])
    times = {"off": [], "on": []}
    for _ in range(7):
        for name, runtime in (("off", plain), ("on", watched)):
            step = runtime.step
            start = time.perf_counter()
            for _ in range(20):
                for x in data:
                    step(x)
            times[name].append((time.perf_counter() - start) / (20 * len(data)) * 1e6)
    off, on = np.median(times["off"]), np.median(times["on"])
    evaluate = watched.monitor.evaluate
    start = time.perf_counter()
    for _ in range(2000):
        evaluate()
    per_evaluation = (time.perf_counter() - start) / 2000 * 1e6
    print(f"step() without monitoring {off:.2f} us, with {on:.2f} us: {on / off:.2f}x (+{100 * (on / off - 1):.0f} %; goal <= +10 %)")
    print(f"one evaluation {per_evaluation:.1f} us every {watched.monitor.t.every} readings "
          f"({per_evaluation / watched.monitor.t.every:.2f} us per step); the ring-buffer copy per step is the rest")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
