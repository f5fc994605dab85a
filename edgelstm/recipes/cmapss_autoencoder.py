"""C-MAPSS FD001 anomaly-score recipe: an LSTM autoencoder trained on healthy early cycles.

The model reconstructs a window of the last ``WINDOW`` (30) cycles of the 14 FD001 sensors:
Input (30, 14) -> LSTM 16 -> RepeatVector 30 -> LSTM 16 (sequences) -> TimeDistributed Dense
14. It only ever sees healthy windows, so its reconstruction error (mean squared error over the
window, in normalised units: what the runtime's window mode returns per step) stays at the
sensor-noise level while an engine is healthy and grows as the sensors drift toward failure.
Converted (``edgelstm convert ... --scaler``), ``edgelstm.load(bundle).step(reading)`` returns
that score per raw reading (NaN for the first 29).

Choices:

- **Engines.** The 20 training engines of :func:`edgelstm.recipes.cmapss.validation_split`
  (fold 0; the RUL recipe's validation engines) are held out whole: none of their cycles is
  used for training, the scaler or the calibration file. They are run to failure, so the score
  can be judged over whole lives (``bench/autoencoder.py``, ``tests/test_autoencoder_cmapss.py``).
  The other 80 engines give the training data. ``examples/cmapss_fd001_autoencoder.json``
  lists both sets.
- **Healthy = the first 30 % of each life** (``HEALTHY_FRACTION``; at least one window). On
  the 100 training engines (z-scores against their first 30 %, signed toward the end-of-life
  direction, averaged over sensors), the fleet mean drift per tenth of life is -0.03, 0.01,
  0.09 | 0.21, 0.35, 0.57, 0.89, 1.36, 2.08, 3.23 std: flat through 30 % of life, rising
  after. A fixed cycle count would be unfair to short lives: engines start with different
  wear, and (same measure) the 25 shortest-lived (128-174 cycles) already sit 0.29 std toward
  failure at cycles 40-60 while the 25 longest (230-362) sit at -0.15. 30 % of life is 38-108
  cycles (a 128-cycle engine still gives 9 windows); 2,551 healthy windows from the 80 engines.
  Knowing the life is needed only to pick training data, never at run time.
- **Scaler**: z-score fitted on those healthy cycles only (the same 14 sensors and the same
  ``*.scaler.json`` format as :mod:`edgelstm.recipes.cmapss`), so a score of ~0.5 means
  "healthy noise" and drift is measured in healthy standard deviations.
- **Window 30**: the RUL window model's length; it averages the per-cycle sensor noise
  (30 x 14 values per score) while still following a drift that builds over ~100 cycles.
  W = 20 was noisier (median Spearman 0.68 vs 0.82-0.88); W = 40 ranks as well (0.88) but
  leaves a 128-cycle engine one healthy window and doubles the unrolled graph a Pi runs.
- **Units 16**: as good as 32 within the seed spread (table), half the work per step.
- **Training**: Adam 2e-3, cosine decay over 60 epochs, batch 64, MSE, last epoch kept (no
  early stopping: nothing failure-related is looked at while training). 33-46 s of training
  on a 2-core machine (under 1 minute for the whole command). Seeded with ``keras.utils.set_random_seed`` and TF op determinism: two
  runs gave bit-identical weights here.

Model selection (``--select``: trained on 60 engines, judged on the 20 engines of
``validation_split`` fold 1, never the held-out fold 0; float Keras; ratio = mean score over
the last 30 cycles / over the healthy cycles, rho = Spearman(score, cycle) per engine; median
over the 20 engines, worst engine in brackets):

==============================  ============  ============  =====
configuration                   ratio         rho           time
==============================  ============  ============  =====
units 32, seed 0                7.7 (2.9)     0.82 (0.58)   41 s
units 32, seed 1 / seed 2       7.7 / 9.0     0.83 / 0.88   35 s
units 32, GaussianNoise 0.3     7.2 (2.8)     0.85 (0.54)   39 s
units 32, 120 epochs            8.4 (3.1)     0.84 (0.54)   81 s
units 32, window 20             6.6 (2.4)     0.68 (0.40)   38 s
units 32, window 40 (*)         6.2 (2.4)     0.88 (0.66)   50 s
units 16, seed 0 / seed 1       8.3 / 8.3     0.84 / 0.87   35 s
units 16, 120 epochs            7.6 (2.9)     0.85 (0.52)   50 s
CHOSEN: units 16, 60 epochs, trained on all 80 engines, judged on the 20 held-out engines:
  float Keras                   10.0 (3.4)    0.86 (0.51)   46 s
==============================  ============  ============  =====

(*) its healthy windows are other cycles, so its ratio is not comparable.

Outputs of ``python -m edgelstm.recipes.cmapss_autoencoder --out examples/cmapss_fd001_autoencoder.keras``:
the model; ``.scaler.json`` beside it; ``.json`` beside it (engines, configuration, the
held-out float scores); and ``calibration/cmapss_fd001_healthy.npz`` (``--calibration-out``):
the healthy cycles of the 80 training engines in raw sensor units, one array per engine,
180 KB, for ``convert --calibration`` (give ``--scaler`` too: an ``.npz`` names no
normalisation).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgelstm.convert.calibration_data import CMAPSS_FD001_SENSORS, load_cmapss
from edgelstm.runtime.normalization import Normalization
from .cmapss import data_dir, validation_split

WINDOW = 30  # cycles per window (the RUL window model's, and FD001's shortest test engine has 31)
HEALTHY_FRACTION = 0.3  # the first 30 % of each training engine's life is "healthy"
LAST_CYCLES = 30  # "near failure": the last 30 cycles of a life
UNITS = 16
HELD_OUT = 20  # training engines held out whole (validation_split fold 0: the RUL recipe's validation engines)

# The chosen configuration (see the module docstring for what else was tried).
CONFIG = dict(units=UNITS, noise=0.0, lr=2e-3, batch_size=64, epochs=60)


def healthy_length(life: int, fraction: float = HEALTHY_FRACTION, window: int = WINDOW) -> int:
    """Cycles counted as healthy at the start of a ``life``-cycle run-to-failure engine (at least one window)."""
    return max(window, int(fraction * life))


def load(directory: Path | None = None, fold: int = 0, exclude_fold: int | None = None, window: int = WINDOW) -> dict:
    """FD001 training engines (raw, 14 sensors), the engine split, and the scaler fitted on the
    healthy cycles of the training engines only.

    ``held`` (validation_split fold ``fold``) is held out whole; ``exclude_fold`` also drops a
    second fold from training (model selection: train on 60, judge on that fold's 20 lives).
    """
    directory = directory or data_dir()
    raw = load_cmapss(directory / "train_FD001.txt", CMAPSS_FD001_SENSORS)
    n = len(raw.sequences)
    train_idx, held_idx = validation_split(n, HELD_OUT, fold=fold)
    if exclude_fold is not None:
        _, dropped = validation_split(n, HELD_OUT, fold=exclude_fold)
        train_idx = [i for i in train_idx if i not in set(dropped)]
    healthy = [raw.sequences[i][: healthy_length(len(raw.sequences[i]), window=window)] for i in train_idx]
    scaler = Normalization.fit("zscore", np.concatenate(healthy))
    return {"sequences": raw.sequences, "units": raw.extras["units"], "train": train_idx, "held": held_idx,
            "healthy": healthy, "scaler": scaler, "window": window}


def windows(sequences: list, window: int = WINDOW) -> np.ndarray:
    """Every ``window``-cycle window (stride 1) of ``sequences``: ``(count, window, features)``."""
    return np.concatenate([np.stack([s[t:t + window] for t in range(len(s) - window + 1)]) for s in sequences]).astype(np.float32)


def build_model(n_features: int, window: int = WINDOW, units: int = UNITS, noise: float = 0.0, lr: float = 2e-3,
                compile: bool = True):
    """Input (W, F) -> [GaussianNoise] -> LSTM u -> RepeatVector W -> LSTM u (sequences) -> TimeDistributed Dense F."""
    import keras

    L = keras.layers
    layers = [keras.Input((window, n_features))]
    if noise:
        layers.append(L.GaussianNoise(noise))
    layers += [L.LSTM(units), L.RepeatVector(window), L.LSTM(units, return_sequences=True),
               L.TimeDistributed(L.Dense(n_features))]
    model = keras.Sequential(layers)
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    return model


def _cosine(lr: float, epoch: int, epochs: int, floor: float = 1e-5) -> float:
    return floor + 0.5 * (lr - floor) * (1.0 + np.cos(np.pi * epoch / epochs))


def train(seed: int = 0, window: int = WINDOW, units: int = CONFIG["units"], noise: float = CONFIG["noise"],
          lr: float = CONFIG["lr"], batch_size: int = CONFIG["batch_size"], epochs: int = CONFIG["epochs"],
          fold: int = 0, exclude_fold: int | None = None, verbose: int = 0) -> tuple:
    """Train on every healthy window of the training engines; returns ``(model, data)``.

    Adam ``lr`` with a cosine decay over ``epochs``, batch ``batch_size``, MSE; the last epoch is
    kept (nothing failure-related is looked at while training). Seeded (``keras.utils.set_random_seed``
    and TF op determinism).
    """
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass
    data = load(fold=fold, exclude_fold=exclude_fold, window=window)
    x = windows([data["scaler"].apply(s) for s in data["healthy"]], window)
    model = build_model(x.shape[-1], window, units, noise, lr)
    for epoch in range(epochs):
        model.optimizer.learning_rate.assign(_cosine(lr, epoch, epochs))
        history = model.fit(x, x, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs} loss {history.history['loss'][0]:.4f}", flush=True)
    data["train_windows"] = int(len(x))
    data["train_loss"] = float(history.history["loss"][0])
    data["train_seconds"] = round(time.perf_counter() - started, 1)
    data["window"] = window
    return model, data


# ---------------------------------------------------------------- scoring a life


def reconstruction_scores(model, sequence: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Float Keras anomaly score per cycle of a normalised ``sequence``: NaN for the first
    ``window - 1`` cycles, then the mean squared reconstruction error of the window ending there
    (what the runtime's window mode returns per step)."""
    x = windows([sequence], window)
    y = model.predict(x, verbose=0, batch_size=512)
    out = np.full(len(sequence), np.nan)
    out[window - 1:] = np.mean((y - x) ** 2, axis=(1, 2))
    return out


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    values = np.asarray(values)
    sorter = np.argsort(values, kind="mergesort")
    inverse = np.empty(len(values), np.intp)
    inverse[sorter] = np.arange(len(values))
    ordered = values[sorter]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = np.cumsum(first)[inverse]
    bounds = np.r_[np.nonzero(first)[0], len(values)]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks)."""
    ra, rb = rank(np.asarray(a, np.float64)), rank(np.asarray(b, np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


def summarize_life(scores: np.ndarray, window: int = WINDOW, last: int = LAST_CYCLES) -> dict:
    """One run-to-failure life's per-cycle scores (NaN before the window fills): mean over its
    healthy cycles (windows that end within :func:`healthy_length`), mean over its last ``last``
    cycles, their ratio, and the Spearman correlation of score with cycle (every scored cycle)."""
    scores = np.asarray(scores, np.float64)
    life = len(scores)
    healthy = scores[window - 1:healthy_length(life, window=window)]
    final = scores[-last:]
    cycles = np.arange(window - 1, life)
    return {"life": life, "healthy_cycles": healthy_length(life, window=window), "healthy_mean": float(np.mean(healthy)),
            "last_mean": float(np.mean(final)), "ratio": float(np.mean(final) / np.mean(healthy)),
            "spearman": spearman(cycles, scores[window - 1:])}


def first_alarm(scores: np.ndarray, threshold: float, window: int = WINDOW) -> dict:
    """Where a life's score first exceeds ``threshold`` after its healthy cycles: ``lead`` is the
    cycles left before failure at that cycle (None: never); ``sustained_lead`` the cycles left
    when it last rose above it (from there on it stays above until failure; None: it ends below);
    ``healthy_exceed`` counts healthy-part cycles above it (false alarms)."""
    scores = np.asarray(scores, np.float64)
    life = len(scores)
    start = healthy_length(life, window=window)
    above = np.nonzero(scores[start:] > threshold)[0]
    cycle = None if len(above) == 0 else int(start + above[0])
    below = np.nonzero(~(scores[start:] > threshold))[0]
    sustained = None if len(above) == 0 or scores[-1] <= threshold else int(start + (below[-1] + 1 if len(below) else 0))
    return {"cycle": cycle, "lead": None if cycle is None else life - 1 - cycle,
            "sustained_lead": None if sustained is None else life - 1 - sustained,
            "healthy_exceed": int(np.sum(scores[window - 1:start] > threshold))}


def evaluate(score_life, data: dict, engines=None) -> dict:
    """``score_life(raw (T, F)) -> (T,)`` over held-out lives: per-engine summaries and medians."""
    engines = data["held"] if engines is None else engines
    per = {}
    for i in engines:
        per[int(data["units"][i])] = summarize_life(score_life(data["sequences"][i]), data.get("window", WINDOW))
    return {"engines": per,
            "median_ratio": float(np.median([v["ratio"] for v in per.values()])),
            "median_spearman": float(np.median([v["spearman"] for v in per.values()])),
            "min_ratio": float(min(v["ratio"] for v in per.values())),
            "min_spearman": float(min(v["spearman"] for v in per.values()))}


def write_calibration(path: Path, data: dict) -> None:
    """The healthy cycles of the training engines, raw sensor units, one array per engine (an
    ``.npz`` ``--calibration`` reads as one sequence per array)."""
    arrays = {f"unit_{int(data['units'][i]):03d}": s.astype(np.float32) for i, s in zip(data["train"], data["healthy"])}
    np.savez_compressed(path, **arrays)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="train the C-MAPSS FD001 LSTM autoencoder (anomaly score) on healthy early cycles")
    parser.add_argument("--out", type=Path, required=True, help=".keras file to write; .scaler.json and .json (metadata) beside it")
    parser.add_argument("--calibration-out", type=Path,
                        default=Path(__file__).resolve().parents[2] / "calibration" / "cmapss_fd001_healthy.npz",
                        help="healthy calibration sequences to write (.npz; default calibration/cmapss_fd001_healthy.npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=CONFIG["epochs"])
    parser.add_argument("--units", type=int, default=CONFIG["units"])
    parser.add_argument("--noise", type=float, default=CONFIG["noise"])
    parser.add_argument("--lr", type=float, default=CONFIG["lr"])
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--select", action="store_true",
                        help="model selection run: train without validation fold 1 too and score that fold (writes nothing but --out)")
    args = parser.parse_args(argv)
    model, data = train(seed=args.seed, window=args.window, units=args.units, noise=args.noise, lr=args.lr,
                        epochs=args.epochs, exclude_fold=1 if args.select else None, verbose=2)
    scaler = data["scaler"]
    judged = validation_split(len(data["sequences"]), HELD_OUT, fold=1)[1] if args.select else data["held"]
    result = evaluate(lambda raw: reconstruction_scores(model, scaler.apply(raw), args.window), data, judged)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    scaler_path = args.out.with_suffix(".scaler.json")
    scaler_path.write_text(json.dumps(scaler.to_json(), indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k != "engines"}
    meta = {
        "description": "LSTM autoencoder on C-MAPSS FD001: trained on the healthy early cycles of the training engines; "
                       "the held-out engines' whole lives were never used in training",
        "recipe": "python -m edgelstm.recipes.cmapss_autoencoder",
        "features": CMAPSS_FD001_SENSORS,
        "window": args.window,
        "healthy_fraction": HEALTHY_FRACTION,
        "train_units": [int(data["units"][i]) for i in data["train"]],
        "held_out_units": [int(data["units"][i]) for i in data["held"]],
        "config": dict(units=args.units, noise=args.noise, lr=args.lr, batch_size=CONFIG["batch_size"], epochs=args.epochs,
                       seed=args.seed),
        "train_windows": data["train_windows"],
        "train_loss": data["train_loss"],
        "train_seconds": data["train_seconds"],
        ("selection_fold1" if args.select else "held_out_float_keras"): summary,
    }
    if not args.select:
        args.calibration_out.parent.mkdir(parents=True, exist_ok=True)
        write_calibration(args.calibration_out, data)
        meta["calibration"] = str(args.calibration_out.name)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(dict(meta, engines=result["engines"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
