"""Run one int8 TFLite step model the same way on x86-64 and on aarch64, compare bit for bit.

This one file runs on both sides: natively on the workstation, then under
``qemu-aarch64-static -cpu cortex-a72`` (Raspberry Pi 4) / ``cortex-a76`` (Pi 5).
``scripts/aarch64_check.sh`` sets everything up and calls it; by hand:

    python scripts/aarch64_check.py run --bundle DIR --out x86.npz [--label x86_64]
    qemu-aarch64-static -cpu cortex-a72 -L ROOTFS ROOTFS/usr/bin/python3.11 \\
        scripts/aarch64_check.py run --bundle DIR --out a72.npz --label "aarch64 cortex-a72"
    python scripts/aarch64_check.py compare x86.npz a72.npz

``run`` loads DIR/step_int8.tflite (or ``--model FILE``: the CPU runtime's
``step_int8_stream.tflite``, float readings in, normalised by float ops in the model) with
edgelstm's ``TFLiteStepper`` (one thread), feeds
``numpy.random.default_rng(0)`` normal values of shape (steps, n_features), and saves per
step the quantized int8 input, the raw int8 ``y`` tensor and the float ``y`` returned,
plus the final raw state. A window-model bundle (DIR/window_int8.tflite, no step model) is
run with ``TFLiteWindowModel``, one sliding window of those values per step.
``compare`` checks every array with ``numpy.array_equal``.

Exit codes: 0 pass (or run done), 1 mismatch, 2 setup failure (one line: ``SETUP FAILED: ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

T_START = time.perf_counter()

MODEL_FILE = "step_int8.tflite"
WINDOW_MODEL_FILE = "window_int8.tflite"  # a window-model bundle (e.g. the C-MAPSS autoencoder)


def setup_failed(reason: str, detail: str | None = None) -> int:
    if detail:
        sys.stderr.write(detail.rstrip() + "\n")
    print(f"SETUP FAILED: {reason}", flush=True)
    return 2


def _import_failure(what: str, exc: BaseException) -> str:
    """One line naming the import that failed and the frame it failed in."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{what} failed on {platform.machine()}: {type(exc).__name__}: {exc}{where}"


def _dist_version(module_name: str) -> tuple[str, str]:
    """(distribution, version) that provides a top-level module, or ('?', '?')."""
    try:
        from importlib import metadata

        top = module_name.split(".")[0]
        dists = metadata.packages_distributions().get(top) or [top]
        for dist in dists:
            try:
                return dist, metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    except Exception:  # noqa: BLE001 - metadata is best effort
        pass
    return "?", "?"


def _cpu_features(np) -> list:
    try:
        feats = np._core._multiarray_umath.__cpu_features__  # numpy >= 2
    except AttributeError:
        try:
            feats = np.core._multiarray_umath.__cpu_features__  # numpy 1.x
        except AttributeError:
            return []
    return sorted(k for k, v in feats.items() if v)


def raw_state(stepper) -> list:
    """The state exactly as the interpreter holds it (int8 for an int8 model), copied."""
    return [s.copy() for s in stepper.state]


def cmd_run(args) -> int:
    try:
        import numpy as np
    except Exception as exc:  # noqa: BLE001
        return setup_failed(_import_failure("import numpy", exc), traceback.format_exc())
    if args.model:
        model_file = args.model
    else:
        model_file = MODEL_FILE if os.path.isfile(os.path.join(args.bundle, MODEL_FILE)) else WINDOW_MODEL_FILE
    window_model = model_file.startswith("window")
    class_name = "TFLiteWindowModel" if window_model else "TFLiteStepper"
    try:
        if window_model:
            from edgelstm.runtime.window_models import TFLiteWindowModel as model_class
        else:
            from edgelstm.runtime.steppers import TFLiteStepper as model_class
    except Exception as exc:  # noqa: BLE001
        return setup_failed(_import_failure(f"importing edgelstm's {class_name}", exc), traceback.format_exc())

    model = os.path.join(args.bundle, model_file)
    if not os.path.isfile(model):
        return setup_failed(f"{model} does not exist")
    t_load = time.perf_counter()
    try:
        kwargs = {"threads": 1}
        if args.interpreter:
            kwargs["interpreter"] = args.interpreter
        stepper = model_class(model, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return setup_failed(_import_failure(f"{class_name}({model!r})", exc), traceback.format_exc())
    t_loaded = time.perf_counter()

    module = type(stepper.interpreter).__module__
    dist, version = _dist_version(module)
    n_features = int(stepper.inputs["x"]["shape"][-1])
    batch = int(stepper.inputs["x"]["shape"][0])
    length = stepper.window if window_model else 1
    x = np.random.default_rng(args.seed).standard_normal((args.steps + length - 1, n_features)).astype(np.float32)

    x_q, y_raw, y_float = [], [], []
    try:
        stepper.reset()
        t_steps = time.perf_counter()
        for t in range(args.steps):  # a window model gets the window ending at step t, as the runtime feeds it
            if window_model:
                y = stepper.run(np.repeat(x[None, t : t + length], batch, axis=0))
            else:
                y = stepper.step(np.repeat(x[t : t + 1], batch, axis=0))
            x_q.append(stepper._x.copy())  # the quantized input the interpreter saw
            y_raw.append(stepper._y.copy())  # the interpreter's own int8 y tensor
            y_float.append(np.array(y, dtype=np.float32, copy=True))
        t_done = time.perf_counter()
        state = raw_state(stepper)
    except Exception as exc:  # noqa: BLE001
        return setup_failed(_import_failure(f"stepping the model with {class_name}", exc), traceback.format_exc())

    meta = {
        "label": args.label or platform.machine(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "interpreter_module": module,
        "interpreter_dist": dist,
        "interpreter_version": version,
        "engine": getattr(stepper, "engine", "?"),
        "steps": args.steps,
        "seed": args.seed,
        "batch": batch,
        "n_features": n_features,
        "y_dtype": str(y_raw[0].dtype),
        "state_dtypes": [str(s.dtype) for s in state],
        "load_s": round(t_loaded - t_load, 3),
        "steps_s": round(t_done - t_steps, 3),
        "process_s": round(t_done - T_START, 3),
        "cpu_features": _cpu_features(np),
        "model": os.path.abspath(model),
    }
    arrays = {
        "x": x,
        "x_q": np.stack(x_q),
        "y_raw": np.stack(y_raw),
        "y": np.stack(y_float),
        "meta": np.array(json.dumps(meta)),
    }
    for k, s in enumerate(state):
        arrays[f"state_{k}"] = np.asarray(s)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    np.savez(args.out, **arrays)
    print(
        f"{meta['label']}: {args.steps} steps in {meta['steps_s']:.2f} s "
        f"(load {meta['load_s']:.2f} s, process {meta['process_s']:.2f} s); {describe(meta)}",
        flush=True,
    )
    return 0


def describe(meta: dict) -> str:
    text = (
        f"{meta['interpreter_module']} ({meta['interpreter_dist']} {meta['interpreter_version']}), "
        f"numpy {meta['numpy']}, Python {meta['python']} {meta['machine']}"
    )
    if meta["machine"] in ("aarch64", "arm64"):
        feats = set(meta.get("cpu_features", []))
        text += f", dotprod {'yes' if 'ASIMDDP' in feats else 'no'}"
    return text


def _first_bad_step(a, b):
    """Steps (first axis) where two arrays differ: (first, count, max |diff|)."""
    import numpy as np

    diff = a != b
    rows = np.nonzero(diff.reshape(diff.shape[0], -1).any(axis=1))[0]
    if rows.size == 0:
        return None
    if a.dtype.kind in "iu":
        max_diff = int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))
    else:
        max_diff = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return int(rows[0]), int(rows.size), max_diff


def cmd_compare(args) -> int:
    import numpy as np

    try:
        ref = np.load(args.reference)
        got = np.load(args.candidate)
        meta_ref = json.loads(str(ref["meta"]))
        meta_got = json.loads(str(got["meta"]))
    except Exception as exc:  # noqa: BLE001
        return setup_failed(f"cannot read results: {type(exc).__name__}: {exc}")
    a, b = meta_ref["label"], meta_got["label"]
    header = f"{b} vs {a}"

    if not np.array_equal(ref["x"], got["x"]):
        bad = _first_bad_step(ref["x"], got["x"]) if ref["x"].shape == got["x"].shape else None
        return setup_failed(f"{header}: the generated float inputs differ (numpy RNG?), first step {bad and bad[0]}")

    keys_ref = sorted(k for k in ref.files if k.startswith("state_"))
    keys_got = sorted(k for k in got.files if k.startswith("state_"))
    problems = []
    first_y = None
    for key in ("x_q", "y_raw", "y"):
        if ref[key].shape != got[key].shape or ref[key].dtype != got[key].dtype:
            problems.append(f"{key} shape/dtype {ref[key].shape}/{ref[key].dtype} vs {got[key].shape}/{got[key].dtype}")
            continue
        bad = _first_bad_step(ref[key], got[key])
        if bad is not None:
            first, count, max_diff = bad
            problems.append(f"{key} differs at {count}/{ref[key].shape[0]} steps, first step {first}, max |diff| {max_diff}")
            if key == "y_raw":
                first_y = first
    if keys_ref != keys_got:
        problems.append(f"state tensors {keys_ref} vs {keys_got}")
    else:
        for key in keys_ref:
            if not np.array_equal(ref[key], got[key]):
                n = int(np.count_nonzero(ref[key] != got[key])) if ref[key].shape == got[key].shape else -1
                problems.append(f"final {key} differs in {n}/{ref[key].size} values")

    steps = meta_ref["steps"]
    timing = f"run time {a} {meta_ref['process_s']:.1f} s, {b} {meta_got['process_s']:.1f} s"
    sides = f"[{a}: {describe(meta_ref)}] [{b}: {describe(meta_got)}]"
    if not problems:
        print(
            f"PASS {header}: y {meta_ref['y_dtype']} of all {steps} steps and {len(keys_ref)} final state "
            f"tensors bit-identical; {timing}",
            flush=True,
        )
        print(f"     {sides}", flush=True)
        return 0
    where = f"first mismatching step {first_y}" if first_y is not None else "no y mismatch"
    print(f"FAIL {header}: {where}; " + "; ".join(problems) + f"; {timing}", flush=True)
    print(f"     {sides}", flush=True)
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="step the bundle's int8 model and save raw outputs to an .npz")
    run.add_argument("--bundle", required=True, help="bundle directory holding step_int8.tflite")
    run.add_argument("--model", help="the model file in the bundle (default: step_int8.tflite, else window_int8.tflite); "
                                     "step_int8_stream.tflite takes raw float readings and normalises them itself")
    run.add_argument("--out", required=True, help=".npz file to write")
    run.add_argument("--steps", type=int, default=500)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--label", default=None, help="name of this side in the report (default: the machine)")
    run.add_argument("--interpreter", default=None, help="litert, tflite_runtime or tensorflow (default: first found)")
    cmp_ = sub.add_parser("compare", help="compare two .npz files written by run")
    cmp_.add_argument("reference")
    cmp_.add_argument("candidate")
    args = parser.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
