"""The device side's budgets, each a ratio measured in one process, min / median / max over rounds.

    python bench/device_budget.py [--bundle DIR] [--steps 20000] [--rounds 5]

On the C-MAPSS int8 stream model (LiteRT, one thread), per round, each pair measured in
alternating blocks of 250 calls in CPU time (this machine is shared: its speed changes over
seconds), **means** per call (the monitor's cost comes in bursts every few readings, which a
median hides):

- ``step()`` against the bare ``invoke()`` of the same interpreter (goal <= 1.3x);
- ``step()`` with the drift monitor against without, on real readings (the FD001 test engines
  cycled), on a stuck sensor (one reading repeated) and on a drifting one (sensor s7 moving
  away at 3 std per 100 readings) (goal <= +10 % each);
- one call stepping 256 streams, per stream, against one stream's ``step()`` (goal <= 0.1x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _paired_means_us(first, second, inputs, steps: int, block: int = 250) -> tuple:
    """Mean CPU time per call of ``first`` and ``second`` (each fed ``inputs`` in order, cycled),
    measured in alternating blocks of ``block`` calls, which goes first swapping each time: a
    shared machine's speed changes over seconds, and both sides then see the same changes."""
    n, clock = len(inputs), time.thread_time_ns
    spent, done = [0, 0], [0, 0]
    calls = (first, second)
    for round_ in range(max(steps // block, 1)):
        for side in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            call, k = calls[side], done[side]
            started = clock()
            for j in range(k, k + block):
                call(inputs[j % n])
            spent[side] += clock() - started
            done[side] += block
    return spent[0] / done[0] / 1e3, spent[1] / done[1] / 1e3


def _mean_us(call, inputs, steps: int) -> float:
    n = len(inputs)
    started = time.perf_counter()
    for k in range(steps):
        call(inputs[k % n])
    return (time.perf_counter() - started) / steps * 1e6


def main(argv=None) -> int:
    import edgelstm
    from edgelstm.recipes.cmapss import load as load_cmapss
    from step_streams import _bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    bundle = args.bundle or _bundle()
    real = np.concatenate(load_cmapss()["test"].sequences).astype(np.float32)
    std = real.std(0)
    stuck = np.repeat(real[:1], 64, axis=0)
    drifting = real[: args.steps].copy()
    drifting[:, 3] += (np.arange(len(drifting)) % 1000) * (3 * std[3] / 100)  # s7; restarts every 1000 readings
    many = np.stack([real[k::256][:50] for k in range(256)], axis=1)  # (50, 256, features): 256 engines at once
    results = {key: [] for key in ("step/invoke", "monitor real", "monitor stuck", "monitor drifting", "256 streams")}
    absolute = {key: [] for key in ("invoke", "step", "step+monitor real", "step+monitor stuck", "step+monitor drifting",
                                    "256 streams per stream")}
    print(f"bundle {bundle}, {args.steps} steps per measurement, {args.rounds} rounds (means per call)")
    for _ in range(args.rounds):
        bare = edgelstm.load(bundle, model="int8", monitor=False)
        watched = edgelstm.load(bundle, model="int8", monitor=True)
        invoke = bare._stepper.invoke
        bare.step(real[0])
        t_invoke, t_step = _paired_means_us(lambda _x: invoke(), bare.step, real, args.steps)
        timings = {}
        for label, data in (("real", real), ("stuck", stuck), ("drifting", drifting)):
            bare.reset(), watched.reset()
            timings[f"off {label}"], timings[f"on {label}"] = _paired_means_us(bare.step, watched.step, data, args.steps)
        wide = edgelstm.load(bundle, model="int8", streams=256, monitor=False)
        per_stream = _mean_us(wide.step, many, max(args.steps // 100, 50)) / 256
        results["step/invoke"].append(t_step / t_invoke)
        for label in ("real", "stuck", "drifting"):
            results[f"monitor {label}"].append(timings[f"on {label}"] / timings[f"off {label}"] - 1.0)
        results["256 streams"].append(per_stream / timings["off real"])
        absolute["invoke"].append(t_invoke)
        absolute["step"].append(t_step)
        for label in ("real", "stuck", "drifting"):
            absolute[f"step+monitor {label}"].append(timings[f"on {label}"])
        absolute["256 streams per stream"].append(per_stream)
    goals = {"step/invoke": "<= 1.3x", "monitor real": "<= +10 %", "monitor stuck": "<= +10 %",
             "monitor drifting": "<= +10 %", "256 streams": "<= 0.1x"}
    print(f"\n{'ratio':<20}{'min / median / max':>28}{'goal':>12}")
    for key, values in results.items():
        v = np.array(values)
        text = (f"{v.min() * 100:+.0f} / {np.median(v) * 100:+.0f} / {v.max() * 100:+.0f} %" if key.startswith("monitor")
                else f"{v.min():.3f} / {np.median(v):.3f} / {v.max():.3f}x")
        print(f"{key:<20}{text:>28}{goals[key]:>12}")
    print(f"\n{'mean per call, us':<26}{'min / median / max':>28}")
    for key, values in absolute.items():
        v = np.array(values)
        print(f"{key:<26}{f'{v.min():.2f} / {np.median(v):.2f} / {v.max():.2f}':>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
