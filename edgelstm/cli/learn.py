"""``edgelstm dataset`` and ``edgelstm finetune``: the learning loop's workstation commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("dataset", help="turn bridge reading logs and maintenance events into labelled training data")
    p.add_argument("logs", type=Path, nargs="+", help="CSV logs of `edgelstm bridge --log-readings` (rotated ones too)")
    p.add_argument("--events", type=Path, required=True,
                   help="maintenance.csv: device,time,kind or device,seq,kind rows (kind failure or service)")
    p.add_argument("--out", type=Path, required=True, help="the dataset to write (.npz, plain arrays)")
    p.add_argument("--cap", type=float, default=125.0, help="RUL cap, as the recipe caps it (default 125)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_run_dataset)

    f = sub.add_parser("finetune", help="fine-tune a model on device data at a low learning rate, gated on held-out machines")
    f.add_argument("model", type=Path, help="the running model (.keras or legacy .h5; outputs RUL per step)")
    f.add_argument("--data", type=Path, required=True, help="a dataset from `edgelstm dataset`")
    f.add_argument("--out", type=Path, required=True, help="the fine-tuned model (.keras); written only when accepted")
    f.add_argument("--scaler", type=Path, help="the model's scaler JSON (default: MODEL.scaler.json)")
    f.add_argument("--gate", type=Path, help="held-out machines (a dataset) for the decision (default: a share of --data)")
    f.add_argument("--replay", type=Path, help="a dataset of what the model was trained on, mixed into the fine-tuning "
                                                "lives so the update does not forget it")
    f.add_argument("--calibration", type=Path, help="convert an accepted model with this calibration data (int8 TFLite, "
                                                     "OUT_bundle/) and score its int8 model on the gate machines too")
    f.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    f.add_argument("--warmup", type=int, default=0,
                   help="epochs over which the learning rate rises to --lr; patience counts after them (default 0)")
    f.add_argument("--epochs", type=int, default=30, help="at most this many epochs (default 30)")
    f.add_argument("--patience", type=int, default=5, help="stop after this many epochs without a better validation RMSE")
    f.add_argument("--min-gain", type=float, default=0.0, help="accept only when the gate RMSE falls by more (cycles)")
    f.add_argument("--seed", type=int, default=0, help="seed of the machine split and the training (default 0)")
    f.add_argument("--verbose", action="store_true", help="one line per epoch")
    f.add_argument("--json", action="store_true", help="print update.json on stdout")
    f.set_defaults(handler=_run_finetune)


def _run_dataset(args) -> int:
    from edgelstm.learn.dataset import make_dataset

    dataset = make_dataset(args.logs, args.events, args.out, cap=args.cap)
    report = dataset.report
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.out}: {report['labelled_lives']} labelled lives ({report['labelled_cycles']} cycles), "
          f"{report['unlabelled_runs']} unlabelled runs; {report['repeated_rows_dropped']} repeated rows dropped")
    for device, entry in report["devices"].items():
        print(f"  {device}: {entry['readings']} readings, {len(entry['lives'])} lives, {entry['restarts']} restarts, "
              f"{entry['missing_cycles']} missing cycles ({entry['filled']} filled)")
    return 0


def _run_finetune(args) -> int:
    from edgelstm.learn.finetune import finetune

    record = finetune(args.model, args.data, args.out, scaler_path=args.scaler, gate_path=args.gate,
                      replay_path=args.replay, lr=args.lr, warmup=args.warmup,
                      epochs=args.epochs, patience=args.patience, min_gain=args.min_gain, seed=args.seed,
                      verbose=args.verbose, calibration=args.calibration)
    if args.json:
        print(json.dumps(record, indent=2))
    gate = record["gate"]
    print(f"{'accepted' if record['accepted'] else 'REJECTED'}: {record['reason']}; gate RMSE "
          f"{gate['before']['rmse']:.2f} -> {gate['after']['rmse']:.2f}, PHM08 {gate['before']['phm08']:.0f} -> "
          f"{gate['after']['phm08']:.0f}; {args.out.parent / 'update.json'}", file=sys.stderr)
    return 0 if record["accepted"] else 3
