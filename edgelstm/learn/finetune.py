"""``edgelstm finetune``: a low-learning-rate fine-tune on device data, gated on held-out machines.

The guide's continuous-learning step, done so that a worse model never reaches a device:

1. The model (a Keras 3 ``.keras`` or a legacy HDF5 file; the C-MAPSS recipe's streaming
   model outputs RUL in cycles at every step) and its z-score scaler (``MODEL.scaler.json``
   beside it, or ``--scaler``) are loaded; the data is an ``edgelstm dataset`` file.
2. The labelled lives are split **by machine** (never by reading) into a fine-tuning part and a
   validation part (``val_share``, seeded); with no ``--gate`` data, a further ``gate_share``
   of the machines is held out for the decision.
3. Fine-tune with the recipe's loss (MSE on RUL / cap, padded steps weighted 0), Adam at a low
   learning rate (default 1e-4), early stopping on the validation machines' test-like cuts
   (every cycle of a life whose true RUL is in 5..145 with 31 cycles before it, as the FD001
   test engines are cut), the best epoch kept.
4. Old and new are scored on the gate machines, the same way (RMSE and the PHM08 score); with
   ``calibration`` the accepted model is also converted (int8 TFLite, ``OUT_bundle/``) and its
   int8 model scored there, stepped through the runtime (``gate.after_int8``).
   The update is **accepted** only when the new model's RMSE is lower by at least
   ``min_gain`` cycles and its PHM08 score is not higher; otherwise it is rejected and no model
   is written, so nothing can be converted by mistake.

``update.json`` (beside ``--out``) records the data, the split, the epochs, the scores before
and after, and the decision; converting the accepted model (``edgelstm convert``) and scoring
its int8 model is the next, separate step.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from edgelstm.errors import InputError

from .dataset import load_dataset


def _load_model(path: Path) -> tuple:
    """``(model, its Keras module)``: Keras 3 first; an HDF5 file Keras 3 cannot read (written by
    Keras 2 / tf-keras, e.g. with ``time_major``) with tf-keras when it is installed."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False), keras
    except Exception as exc:  # Keras says what it could not read
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if path.suffix.lower() in (".h5", ".hdf5"):
        try:
            import tf_keras
        except ImportError:
            raise InputError(f"{path}: Keras 3 cannot load this Keras 2 file ({first}); install tf-keras to fine-tune it") from None
        try:
            return tf_keras.models.load_model(path, compile=False), tf_keras
        except Exception as exc:
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    raise InputError(f"{path}: cannot be loaded as a Keras model ({first})")


def _load_scaler(path: Path) -> tuple:
    try:
        data = json.loads(path.read_text())
        return np.asarray(data["offset"], np.float32), np.asarray(data["scale"], np.float32)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a scaler file (JSON with offset and scale): {exc}") from None


def _split(n: int, share: float, rng) -> tuple:
    order = rng.permutation(n)
    held = max(1, int(round(n * share))) if n > 2 else 0
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())


def _cut_scores(model, sequences: list, cap: float) -> dict:
    """RMSE and PHM08 at every test-like cut of run-to-failure lives: each cycle whose true RUL is
    in 5..145 with at least 31 cycles before it, as the FD001 test engines are cut (the truth
    uncapped, as FD001 scores). The model is causal, so one pass over a life scores all its cuts;
    every cut rather than a sample keeps the decision from hanging on a few cuts."""
    from edgelstm.recipes.cmapss import CUT_RUL, MIN_PREFIX, pad, scores

    usable = [s for s in sequences if len(s) >= MIN_PREFIX + CUT_RUL[0]]
    if not usable:
        raise InputError(f"no life long enough to score (each needs at least {MIN_PREFIX + CUT_RUL[0]} cycles)")
    x, _, _ = pad(usable)
    predicted = model.predict(x, verbose=0, batch_size=len(x))[:, :, 0]
    guesses, truth = [], []
    for row, life in enumerate(usable):
        remaining = np.arange(len(life) - 1, -1, -1)
        cuts = (remaining >= CUT_RUL[0]) & (remaining <= CUT_RUL[1]) & (np.arange(len(life)) >= MIN_PREFIX - 1)
        guesses.append(predicted[row, :len(life)][cuts])
        truth.append(remaining[cuts])
    result = scores(np.concatenate(guesses), np.concatenate(truth))
    result["phm08_per_cut"] = result["phm08"] / max(result.pop("engines"), 1)
    return dict(result, cuts=int(sum(len(t) for t in truth)), lives=len(usable))


def _int8_scores(model_path: Path, calibration, gate_lives: list, offset, scale) -> tuple:
    """Convert ``model_path`` (int8 TFLite) and score it like :func:`_cut_scores`, stepping each
    gate life through the runtime in raw units (the runtime normalises)."""
    import edgelstm
    from edgelstm.convert.pipeline import ConvertOptions, convert
    from edgelstm.recipes.cmapss import CUT_RUL, MIN_PREFIX, scores

    bundle = model_path.with_name(model_path.stem + "_bundle")
    convert(ConvertOptions(model=model_path, calibration=Path(calibration), scaler=model_path.with_suffix(".scaler.json"),
                           out=bundle, formats=["tflite"], quant=["int8"], attribution_sequences=0, progress=False))
    runtime = edgelstm.load(bundle, model="int8")
    guesses, truth = [], []
    for life in gate_lives:
        if len(life) < MIN_PREFIX + CUT_RUL[0]:
            continue
        runtime.reset()
        predicted = runtime.run(life * scale + offset)[:, 0]
        remaining = np.arange(len(life) - 1, -1, -1)
        cuts = (remaining >= CUT_RUL[0]) & (remaining <= CUT_RUL[1]) & (np.arange(len(life)) >= MIN_PREFIX - 1)
        guesses.append(predicted[cuts])
        truth.append(remaining[cuts])
    result = scores(np.concatenate(guesses), np.concatenate(truth))
    result.pop("engines")
    return dict(result, cuts=int(sum(len(t) for t in truth))), str(bundle)


def finetune(model_path, data_path, out, scaler_path=None, gate_path=None, replay_path=None, lr: float = 1e-4, epochs: int = 30,
             patience: int = 5, val_share: float = 0.2, gate_share: float = 0.25, seed: int = 0, min_gain: float = 0.0,
             warmup: int = 0,
             batch_size: int = 10, cap: float = 125.0, verbose: bool = False, calibration=None) -> dict:
    """Fine-tune, gate, write ``out`` (accepted only) and ``update.json``; returns the update record."""
    from edgelstm.recipes.cmapss import pad

    started = time.perf_counter()
    model_path, out = Path(model_path), Path(out)
    scaler_path = Path(scaler_path) if scaler_path else model_path.with_suffix(".scaler.json")
    if not scaler_path.exists():
        raise InputError(f"{scaler_path}: no scaler beside the model (give --scaler FILE.json)")
    offset, scale = _load_scaler(scaler_path)
    data = load_dataset(data_path)
    if len(data.features) != len(offset):
        raise InputError(f"{data_path}: {len(data.features)} features, the scaler {scaler_path} has {len(offset)}")
    lives = [((s - offset) / scale).astype(np.float32) for s in data.sequences]
    targets = list(data.targets)
    rng = np.random.default_rng(seed)
    if gate_path:
        gate = load_dataset(gate_path)
        gate_lives = [((s - offset) / scale).astype(np.float32) for s in gate.sequences]
        pool = list(range(len(lives)))
    else:
        pool, gate_index = _split(len(lives), gate_share, rng)
        gate_lives = [lives[i] for i in gate_index]
    train_index, val_index = _split(len(pool), val_share, rng)
    train_index, val_index = [pool[i] for i in train_index], [pool[i] for i in val_index]
    if len(train_index) < 1 or len(val_index) < 1 or len(gate_lives) < 1:
        raise InputError(f"{data_path}: {len(lives)} labelled lives; fine-tuning needs machines for training, "
                         "validation and the gate (at least 3, or 2 and --gate)")
    model, keras = _load_model(model_path)
    before_gate = _cut_scores(model, gate_lives, cap)
    val_lives = [lives[i] for i in val_index]
    before_val = _cut_scores(model, val_lives, cap)
    fit_lives, fit_targets = [lives[i] for i in train_index], [targets[i] for i in train_index]
    replayed = 0
    if replay_path:  # what the model was trained on, mixed in so the update does not forget it
        replay = load_dataset(replay_path)
        fit_lives += [((s - offset) / scale).astype(np.float32) for s in replay.sequences]
        fit_targets += list(replay.targets)
        replayed = len(replay.sequences)
    x, y, weight = pad(fit_lives, fit_targets)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse", weighted_metrics=[])
    keras.utils.set_random_seed(seed)
    best = {"rmse": before_val["rmse"], "epoch": 0, "weights": model.get_weights()}
    history, waited = [], 0
    for epoch in range(1, epochs + 1):
        # warm-up (opt-in): the rate rises linearly over the first ``warmup`` epochs and patience counts
        # only after them. On four engine splits of the demo (docs/learning.md) it let 3 updates through
        # instead of 2, but the test-set gain summed over the splits was the same, and on the default
        # split the int8 RMSE after was not lower, so it is off by default
        model.optimizer.learning_rate.assign(lr * min(1.0, epoch / (warmup + 1)) if warmup else lr)
        # the recipe's loss: MSE in cycles is its MSE on RUL / cap times cap^2, and Adam's steps do not
        # depend on that constant (the model outputs cycles; the reported loss is divided back)
        loss = model.fit(x, y, sample_weight=weight, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        result = _cut_scores(model, val_lives, cap)
        history.append({"epoch": epoch, "loss": float(loss.history["loss"][0]) / cap**2, "val_rmse": result["rmse"]})
        if verbose:
            print(f"epoch {epoch}/{epochs} loss {history[-1]['loss']:.5f} val RMSE {result['rmse']:.2f}", flush=True)
        if result["rmse"] < best["rmse"]:
            best, waited = {"rmse": result["rmse"], "epoch": epoch, "weights": model.get_weights()}, 0
        elif epoch > warmup:
            waited += 1
            if waited >= patience:
                break
    model.set_weights(best["weights"])
    after_gate = _cut_scores(model, gate_lives, cap)
    gain = before_gate["rmse"] - after_gate["rmse"]
    accepted = gain > min_gain and after_gate["phm08"] <= before_gate["phm08"] and best["epoch"] > 0
    reason = ("the gate machines' RMSE fell by {:.2f} cycles and PHM08 did not rise".format(gain) if accepted else
              "no epoch improved on the validation machines" if best["epoch"] == 0 else
              f"the gate machines' RMSE changed by {-gain:+.2f} cycles (needs < -{min_gain:g})"
              if gain <= min_gain else f"PHM08 rose from {before_gate['phm08']:.0f} to {after_gate['phm08']:.0f}")
    record = {
        "accepted": bool(accepted), "reason": reason, "model": str(model_path), "data": str(data_path),
        "out": str(out) if accepted else None, "scaler": str(scaler_path),
        "split": {"train_lives": len(train_index), "replayed_lives": replayed, "validation_lives": len(val_index),
                  "gate_lives": len(gate_lives),
                  "gate": str(gate_path) if gate_path else f"{gate_share:g} of the data's machines", "seed": seed},
        "training": {"lr": lr, "warmup": warmup, "epochs_run": len(history), "best_epoch": best["epoch"], "patience": patience,
                     "history": history},
        "validation": {"before": before_val, "after": {"rmse": best["rmse"]}},
        "gate": {"before": before_gate, "after": after_gate},
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if accepted:
        if keras.__name__ == "tf_keras" and out.suffix.lower() not in (".h5", ".hdf5"):
            out = out.with_suffix(".h5")  # a Keras 2 model stays a Keras 2 file (the converter reads both)
            record["out"] = str(out)
        model.save(out)
        shutil.copyfile(scaler_path, out.with_suffix(".scaler.json"))
        if calibration:  # convert the accepted model and score its int8 model on the gate machines too
            record["gate"]["after_int8"], record["bundle"] = _int8_scores(out, calibration, gate_lives, offset, scale)
    elif out.exists():
        out.unlink()  # an older accepted model under this name must not be taken for this run's
    (out.parent / "update.json").write_text(json.dumps(record, indent=2))
    return record
