"""The device side's budgets, each a ratio measured in one process, min / median / max over rounds.

    python bench/device_budget.py [--bundle DIR] [--steps 20000] [--rounds 5]

On the C-MAPSS int8 stream model (LiteRT, one thread), per round, each pair measured in
alternating blocks of 250 calls in CPU time (this machine is shared: its speed changes over
seconds), **means** per call (the monitor's cost comes in bursts every few readings, which a
median hides):

- ``step()`` against the bare ``invoke()`` of the same interpreter (goal <= 1.3x), for the int8
  stream model and the float32 one (float state: what the dynamic-range CPU default also has);
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


def _paired_means_us(first, second, inputs, steps: int, block: int = 250, setup=(None, None)) -> tuple:
    """Mean CPU time per call of ``first`` and ``second`` (each fed ``inputs`` in order, cycled),
    measured in alternating blocks of ``block`` calls, which goes first swapping each time: a
    shared machine's speed changes over seconds, and both sides then see the same changes.
    ``setup[side]()``, when given, runs before each of that side's blocks, outside the clock."""
    n, clock = len(inputs), time.thread_time_ns
    spent, done = [0, 0], [0, 0]
    calls = (first, second)
    for round_ in range(max(steps // block, 1)):
        for side in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            call, k = calls[side], done[side]
            if setup[side] is not None:
                setup[side]()
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
    engines = [e.astype(np.float32) for e in load_cmapss()["test"].sequences]
    real = np.concatenate(engines)
    std = real.std(0)
    stuck = np.repeat(real[:1], 64, axis=0)
    drifting = real[: args.steps].copy()
    drifting[:, 3] += (np.arange(len(drifting)) % 1000) * (3 * std[3] / 100)  # s7; restarts every 1000 readings
    # engine by engine, each from a reset (a gateway starts a stream per machine): the same faults from cycle 30 on
    first = np.concatenate([np.arange(len(e)) == 0 for e in engines])
    cycle = np.concatenate([np.arange(len(e)) for e in engines])
    drifting_each = real.copy()
    drifting_each[:, 3] += np.maximum(cycle - 30, 0) * (3 * std[3] / 100)
    stuck_each = real.copy()
    stuck_each[cycle >= 30, 7] = np.repeat(real[cycle == 30, 7], [len(e) - 30 for e in engines if len(e) > 30])
    scenarios = {"real": (real, None), "stuck": (stuck, None), "drifting": (drifting, None),
                 "real, per engine": (real, first), "stuck, per engine": (stuck_each, first),
                 "drifting, per engine": (drifting_each, first)}
    many = np.stack([real[k::256][:50] for k in range(256)], axis=1)  # (50, 256, features): 256 engines at once
    results = {key: [] for key in ["step/invoke", "step/invoke, float32"] + [f"monitor {label}" for label in scenarios]
               + ["256 streams"]}
    absolute = {key: [] for key in ["invoke", "step", "invoke, float32", "step, float32"]
                + [f"step+monitor {label}" for label in scenarios] + ["256 streams per stream"]}
    looks = {}
    print(f"bundle {bundle}, {args.steps} steps per measurement, {args.rounds} rounds (means per call)")
    for _ in range(args.rounds):
        bare = edgelstm.load(bundle, model="int8", monitor=False)
        invoke = bare._stepper.invoke
        bare.step(real[0])
        t_invoke, t_step = _paired_means_us(lambda _x: invoke(), bare.step, real, args.steps)
        # the float model's state is float (copied as float32 values, its outputs checked for NaN)
        floats = edgelstm.load(bundle, model="float32", monitor=False)
        float_invoke = floats._stepper.invoke
        floats.step(real[0])
        f_invoke, f_step = _paired_means_us(lambda _x: float_invoke(), floats.step, real, args.steps)
        timings = {}
        for label, (data, starts) in scenarios.items():
            # one runtime, its monitor attached for one side's blocks only: two runtimes (even
            # with a monitor that does nothing) differed by -0.3 to +1.6 us per step here
            watched = edgelstm.load(bundle, model="int8", monitor=True)
            monitor = watched.monitor
            detach, attach = (lambda: setattr(watched, "monitor", None)), (lambda: setattr(watched, "monitor", monitor))
            step, inputs = watched.step, data
            if starts is not None:  # a new engine: reset first (the monitor's reset is counted with it)
                reset = watched.reset
                inputs = np.arange(len(data))
                step = lambda k, step=step, reset=reset, data=data, starts=starts: (  # noqa: E731
                    reset() if starts[k] else None, step(data[k]))
            examined = []
            full_look = monitor._examine
            monitor._examine = lambda *a, full_look=full_look, examined=examined: (examined.append(1), full_look(*a))
            timings[f"off {label}"], timings[f"on {label}"] = _paired_means_us(
                step, step, inputs, args.steps, setup=(detach, attach))
            monitor._examine = full_look
            looks[label] = (len(examined), len(monitor.events) + monitor.events_dropped, args.steps // 2)
        wide = edgelstm.load(bundle, model="int8", streams=256, monitor=False)
        per_stream = _mean_us(wide.step, many, max(args.steps // 100, 50)) / 256
        results["step/invoke"].append(t_step / t_invoke)
        results["step/invoke, float32"].append(f_step / f_invoke)
        absolute["invoke, float32"].append(f_invoke)
        absolute["step, float32"].append(f_step)
        for label in scenarios:
            results[f"monitor {label}"].append(timings[f"on {label}"] / timings[f"off {label}"] - 1.0)
        results["256 streams"].append(per_stream / timings["off real"])
        absolute["invoke"].append(t_invoke)
        absolute["step"].append(t_step)
        for label in scenarios:
            absolute[f"step+monitor {label}"].append(timings[f"on {label}"])
        absolute["256 streams per stream"].append(per_stream)
    goals = dict({key: "<= +10 %" for key in results if key.startswith("monitor")},
                 **{"step/invoke": "<= 1.3x", "step/invoke, float32": "<= 1.3x", "256 streams": "<= 0.1x"})
    print(f"\n{'ratio':<30}{'min / median / max':>24}{'goal':>12}")
    for key, values in results.items():
        v = np.array(values)
        text = (f"{v.min() * 100:+.0f} / {np.median(v) * 100:+.0f} / {v.max() * 100:+.0f} %" if key.startswith("monitor")
                else f"{v.min():.3f} / {np.median(v):.3f} / {v.max():.3f}x")
        print(f"{key:<30}{text:>24}{goals[key]:>12}")
    print(f"\n{'mean per call, us':<36}{'min / median / max':>24}")
    for key, values in absolute.items():
        v = np.array(values)
        print(f"{key:<36}{f'{v.min():.2f} / {np.median(v):.2f} / {v.max():.2f}':>24}")
    print("\nthe monitor's full looks and events per 1000 monitored readings (last round):")
    for label, (examined, events, readings) in looks.items():
        print(f"  {label:<24}{examined * 1000 / readings:6.1f} full looks{events * 1000 / readings:6.1f} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
