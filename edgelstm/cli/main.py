"""The ``edgelstm`` command line.

Every subcommand exits 0 on success and, on a user error, prints one line
``edgelstm: error: <what, where>`` to stderr and exits 2: an :class:`EdgeLSTMError`, a file
that cannot be opened, a module a missing extra would install (the message names the extra),
or an argument argparse refuses (before any work starts). Anything else is a bug: one line,
exit 1. ``--debug`` (anywhere on the line) shows the traceback instead. ``--json`` prints a
machine-readable result on stdout instead of tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgelstm.errors import EdgeLSTMError
from edgelstm.runtime.targets import FORMATS, QUANTS  # what convert knows; a device profile names one of them


def _csv_list(text: str) -> list:
    return [item.strip() for item in text.split(",") if item.strip()]


def _choices_list(choices: tuple, allow_all: bool = False):
    """An argparse type: a comma list whose every item is one of ``choices`` (or ``all``)."""

    def parse(text: str) -> list:
        items = _csv_list(text)
        if allow_all and items == ["all"]:
            return list(choices)
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"{', '.join(unknown) or repr(text)}: choose from {', '.join(choices)}" + (" or 'all'" if allow_all else ""))
        return items

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return value


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a trained LSTM model into a bundle of int8 step models")
    p.add_argument("model", type=Path, help="Keras 3 .keras archive, Keras 2 HDF5 file or ONNX file (torch.onnx export)")
    p.add_argument("--calibration", required=True, type=Path, help=".npy/.npz/.csv/C-MAPSS .txt or a recipe .json")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--target", default="x86_64", help="device profile from targets/ (default x86_64)")
    p.add_argument("--formats", type=_choices_list(FORMATS), help="comma list of tflite,onnx (default: the target's)")
    p.add_argument("--quant", type=_choices_list(QUANTS, allow_all=True),
                   help="comma list of int8,float16,dynamic,float32,int16x8 or 'all' (default: the target's)")
    p.add_argument("--normalization", choices=("none", "zscore", "minmax"), help="fit this on the calibration data")
    p.add_argument("--scaler", type=Path, help="JSON scaler the model was trained with (overrides --normalization)")
    p.add_argument("--features", type=_csv_list, help="feature columns (CSV) or C-MAPSS columns")
    p.add_argument("--group", help="CSV column that groups rows into sequences")
    p.add_argument("--eval", dest="eval_data", type=Path, help="held-out data for the report (default: a share of the calibration data)")
    p.add_argument("--holdout", type=_fraction, default=0.2, help="share of calibration sequences held out (default 0.2)")
    p.add_argument("--max-samples", type=_positive_int, default=20_000, help="representative steps for the TFLite quantizer (default 20000)")
    p.add_argument("--onnx-samples", type=_positive_int, default=2_000, help="representative steps for onnxruntime's quantizer (default 2000; it holds all in memory)")
    p.add_argument("--long-steps", type=_positive_int, default=10_000, help="length of the long-stream drift check")
    p.add_argument("--window", type=_positive_int, help="window length: of a window model (Bidirectional, autoencoder, Conv1D, "
                   "go_backwards) whose input shape does not fix it; or of a step model trained on fixed windows "
                   "(the runtime then runs it over the last N readings)")
    p.add_argument("--window-samples", type=_positive_int, default=1_000, help="window models: representative windows for the quantizers (default 1000)")
    p.add_argument("--eval-windows", type=_positive_int, default=1_000, help="window models, and step models given --window: held-out windows the report measures, at each window's last step (default 1000)")
    p.add_argument("--cell-groups", type=_positive_int, default=4, help="max cell-state tensors per LSTM layer, grouped by range (default 4; 1 = one)")
    p.add_argument("--grid-search", action="store_true",
                   help="int8 TFLite: choose activation grids for the streamed output error on the calibration sequences "
                        "(edgelstm/convert/grid_search.py; FD001 LSTM 3.25 -> ~2.8 %%, ~20 s more)")
    p.add_argument("--gru-state", choices=("single", "residual"), default="single",
                   help="int8 TFLite GRU hidden state: one int8 tensor (default) or h = h_hi + h_lo (slower step)")
    p.add_argument("--cell-state", choices=("residual", "single"), default="residual",
                   help="int8 TFLite LSTM cell state: residual (c = c_hi + c_lo, two int8 tensors, default) or single "
                        "(one int8 tensor per group: fewer ops, larger error)")
    p.add_argument("--attribution-sequences", type=int, default=16,
                   help="held-out sequences the int8 error attribution replays in numpy (default 16; 0: no attribution)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_convert)


def _run_convert(args) -> int:
    from edgelstm.convert.pipeline import ConvertOptions, convert
    from edgelstm.convert.fidelity import format_table
    quant = args.quant
    options = ConvertOptions(
        model=args.model,
        calibration=args.calibration,
        out=args.out,
        target=args.target,
        formats=args.formats,
        quant=quant,
        normalization=args.normalization,
        scaler=args.scaler,
        features=args.features,
        group=args.group,
        eval_data=args.eval_data,
        holdout=args.holdout,
        max_samples=args.max_samples,
        onnx_samples=args.onnx_samples,
        long_steps=args.long_steps,
        cell_groups=args.cell_groups,
        attribution_sequences=args.attribution_sequences,
        cell_state=args.cell_state,
        grid_search=args.grid_search,
        gru_state=args.gru_state,
        window=args.window,
        window_samples=args.window_samples,
        eval_windows=args.eval_windows,
        progress=not (args.quiet or args.json),
    )
    manifest = convert(options)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    report = json.loads((args.out / "report.json").read_text())
    print(f"bundle {args.out} ({manifest['bundle_id']}), target {manifest['target']['name']}")
    for m in manifest["models"]:
        line = f"  {m['file']:<24}{m['bytes']:>9} bytes  ops: {', '.join(m['ops'])}"
        print(line)
        if "edgetpu" in m:
            verdict = "compatible" if m["edgetpu"]["compatible"] else "NOT compatible: " + "; ".join(m["edgetpu"]["problems"])
            print(f"  {'':<24}Edge TPU: {verdict}")
    for skipped in report.get("skipped", []):
        print(f"  skipped {skipped['format']} {skipped['quant']}: {skipped['reason']}")
    print()
    print(format_table(report))
    if (args.out / "report.png").exists():
        print(f"plot: {args.out / 'report.png'}")
    if len({m["quant"] for m in manifest["models"]}) > 1:
        from edgelstm.convert.sweep import format_sweep, sweep

        print()
        print(format_sweep(sweep(args.out)))
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect", help="describe a model file, a .tflite/.onnx file or a bundle",
        description="Describe a model file, a .tflite/.onnx file or a bundle. With a Coral target (--target coral-usb "
                    "or coral-devboard) check every op and tensor of the int8 TFLite model (a bundle's int8-in/int8-out "
                    "model) against the Edge TPU's rules: which ops map to the Edge TPU, where the compiler would stop "
                    "mapping and which ops would run on the CPU, and print the edgetpu_compiler and bundle-add commands. "
                    "Exits 0 whatever the verdict (2 on an error of inspect itself); --strict exits 1 unless the whole "
                    "model maps to the Edge TPU without errors.")
    p.add_argument("path", type=Path, help="a model file (.keras, .h5, .onnx), a .tflite/.onnx step model or a bundle directory")
    p.add_argument("--target", help="check against a target profile (e.g. coral-usb)")
    p.add_argument("--strict", action="store_true",
                   help="with a Coral target: exit 1 unless every op maps to the Edge TPU and nothing is an error")
    p.add_argument("--json", action="store_true", help="print everything (including the per-op Edge TPU mapping) as JSON")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args) -> int:
    from edgelstm.errors import TargetError
    from edgelstm.convert.inspect import inspect_path, format_inspection

    result = inspect_path(args.path, target=args.target)
    if args.strict and "edgetpu" not in result:
        raise TargetError("--strict checks Edge TPU compatibility: give a Coral target, e.g. --target coral-usb")
    print(json.dumps(result, indent=2) if args.json else format_inspection(result))
    if args.strict and not result["edgetpu"]["compatible"]:
        return 1
    return 0


def _add_bundle_add(sub) -> None:
    p = sub.add_parser("bundle-add", help="add a file (e.g. the *_edgetpu.tflite from edgetpu_compiler) to a bundle, with its hash")
    p.add_argument("bundle", type=Path, help="the bundle directory")
    p.add_argument("file", type=Path, help="the file to copy into it and list with its sha256")
    p.set_defaults(handler=_run_bundle_add)


def _run_bundle_add(args) -> int:
    from edgelstm.runtime.bundle import Bundle

    entry = Bundle.open(args.bundle).add_file(args.file)
    print(f"added {entry['file']} (sha256 {entry['sha256'][:12]}...) to {args.bundle}")
    return 0


def _add_targets(sub) -> None:
    p = sub.add_parser("targets", help="list the device profiles")
    p.set_defaults(handler=_run_targets)


def _run_targets(args) -> int:
    from edgelstm.runtime.targets import list_targets, load_target

    for name in list_targets():
        target = load_target(name)
        print(f"{name:<16}{target.description}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="C-MAPSS FD001 end to end: convert, score, stream engines over a pty bridge")
    p.add_argument("--out", type=Path, default=Path("edgelstm-demo"), help="output folder (default ./edgelstm-demo)")
    p.add_argument("--engines", type=int, default=3, help="test engines to stream through the bridge (default 3)")
    p.add_argument("--rate", type=float, default=500.0, help="cycles per second the simulated device sends (default 500)")
    p.add_argument("--every", type=int, default=10, help="print every N-th cycle's prediction (default 10)")
    p.add_argument("--retrain", action="store_true", help="train the model with the recipe instead of using the shipped one")
    p.add_argument("--epochs", type=int, default=60, help="training epochs with --retrain")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--update", action="store_true",
                   help="the learning loop instead: a first model on 40 training engines, 40 more run to failure through "
                        "the bridge with reading logs, dataset, gated fine-tune, convert, hot swap, test set before/after")
    p.add_argument("--split-seed", type=int, default=None,
                   help="with --update: another split of the 100 training engines into base, field and gate "
                        "(default 2026)")
    p.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    if args.update:
        from .demo_update import run_update_demo

        return run_update_demo(args.out, progress=not args.quiet, split_seed=args.split_seed)
    from .demo import run_demo

    return run_demo(args.out, progress=not args.quiet, engines=args.engines, rate=args.rate, retrain=args.retrain,
                    epochs=args.epochs, every=args.every)


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="per-step latency, throughput and memory of a bundle, per backend")
    p.add_argument("bundle", type=Path, help="the bundle directory")
    p.add_argument("--backend", default="auto", help="auto, all, or a comma list of litert,tflite_runtime,tensorflow,onnxruntime,numpy")
    p.add_argument("--model", type=_csv_list, help="model file(s) or quantization(s) of the bundle (default: the manifest's)")
    p.add_argument("--steps", type=_positive_int, default=10_000, help="timed steps per model and backend (default 10000)")
    p.add_argument("--warmup", type=int, default=500, help="untimed steps first (default 500)")
    p.add_argument("--streams", type=_positive_int, default=1, help="streams stepped per call (default 1)")
    p.add_argument("--threads", type=_positive_int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--json", dest="json_out", type=Path, help="write the result as JSON to this file")
    p.add_argument("--plot", type=Path, help="write a latency histogram PNG (needs matplotlib)")
    p.set_defaults(handler=_run_profile)


def _run_profile(args) -> int:
    from edgelstm.runtime.profiler import format_table, plot, profile, write_json

    backends = tuple(_csv_list(args.backend))
    result = profile(args.bundle, backends=backends, steps=args.steps, warmup=args.warmup,
                     streams=args.streams, threads=args.threads, models=args.model)
    print(format_table(result))
    if args.json_out:
        write_json(result, args.json_out)
    if args.plot:
        print(f"plot: {args.plot}" if plot(result, args.plot) else "no plot: matplotlib is not installed")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="stream readings from a CSV file or stdin through a bundle, one step per line")
    p.add_argument("bundle", type=Path, help="the bundle directory")
    p.add_argument("--input", default="-", help="CSV file of readings, or - for stdin (default)")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default jsonl)")
    p.add_argument("--backend", default="auto", help="auto (default), litert, tflite_runtime, tensorflow, onnxruntime or numpy")
    p.add_argument("--on-bad-input", choices=("error", "skip", "hold"), default="error",
                   help="a bad reading stops the run (error, default), is skipped, or has its bad values held at the last good ones")
    p.add_argument("--state", type=Path, help="resume from this state file if it exists and save to it at the end")
    p.add_argument("--ignore-column", action="append", metavar="NAME",
                   help="a header column that is not a feature (a timestamp, a unit id): dropped (repeatable)")
    p.add_argument("--by-position", action="store_true",
                   help="map the columns to the model's features in order, whatever the header says")
    p.set_defaults(handler=_run_run)


def _run_run(args) -> int:
    from .run import run_stream

    return run_stream(args)


def build_parser() -> argparse.ArgumentParser:
    from edgelstm import __version__

    parser = argparse.ArgumentParser(prog="edgelstm", description="edgelstm: trained LSTM and GRU models to int8 step models on small Linux devices (convert, run, bridge, profile, watch).")
    parser.add_argument("--version", action="version", version=f"edgelstm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_convert, _add_inspect, _add_targets, _add_run, _add_profile, _add_bundle_add):
        add(sub)
    from .learn import add_commands as add_learning_commands

    add_learning_commands(sub)
    try:
        from firmware_bridge.cli import add_commands as add_bridge_commands
    except ImportError:  # installed without the bridge's dependencies (pyserial, cobs)
        add_bridge_commands = None
    if add_bridge_commands:
        add_bridge_commands(sub)
    return parser


#: Which extra installs a module a subcommand may miss on this install.
EXTRAS = {"tensorflow": "convert", "keras": "convert", "h5py": "convert", "onnx": "convert", "tqdm": "convert",
          "matplotlib": "convert", "onnxruntime": "onnx-runtime", "serial": "bridge", "cobs": "bridge",
          "paho": "bridge", "prometheus_client": "bridge", "ai_edge_litert": "runtime"}
#: Subcommands that run on the workstation: a module they miss comes with the convert extra.
WORKSTATION_COMMANDS = ("convert", "inspect", "demo", "dataset", "finetune")


def missing_extra_message(command: str, module: str) -> str:
    top = (module or "").split(".")[0]
    extra = "convert" if command in WORKSTATION_COMMANDS else EXTRAS.get(top)
    if extra is None:
        return f"{command} needs the Python module {module!r}, which is not installed"
    return f"{command} needs {top!r}, which this install lacks: pip install 'edgelstm[{extra}]'"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("edgelstm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one error path for every subcommand
        if debug:
            raise
        code, message = describe_failure(args.command, exc)
        print(f"edgelstm: {message}", file=sys.stderr)
        return code


def describe_failure(command: str, exc: Exception) -> tuple:
    """``(exit code, one line)`` for an exception that ended a subcommand."""
    if isinstance(exc, EdgeLSTMError):
        return 2, f"error: {exc}"
    if isinstance(exc, ModuleNotFoundError):
        return 2, f"error: {missing_extra_message(command, exc.name)}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return 2, f"error: {exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        return 2, f"error: {exc}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return 1, (f"internal error in '{command}': {type(exc).__name__}" + (f": {first}" if first else "")
               + " (a bug in edgelstm; rerun with --debug for the traceback)")


if __name__ == "__main__":
    sys.exit(main())
