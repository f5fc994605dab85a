"""The learning loop: reading logs -> labelled lives -> a gated fine-tune.

The logs are written by the real bridge (a simulator on a pty, the int8 LiteRT runtime, the CSV
sink with ``readings``), with drops and device restarts; the labels are checked against the
known RUL of C-MAPSS training engines (run to failure). A fine-tune that makes validation
worse is rejected and writes no model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import edgelstm
from edgelstm.errors import InputError
from edgelstm.learn.dataset import Dataset, build, load_dataset, make_dataset, read_events
from edgelstm.learn.logs import read_logs
from edgelstm.recipes import cmapss
from firmware_bridge.bridge import Bridge
from firmware_bridge.simulator import Faults, Simulator
from firmware_bridge.sinks import CsvFileSink, SinkError
from firmware_bridge.transport import PtyLink

from .conftest import ROOT

EXAMPLE = ROOT / "examples" / "cmapss_fd001_lstm.keras"


@pytest.fixture(scope="module")
def train_engines():
    return cmapss.load()["train"].sequences


def _log(bundle, path, engines, faults, rotate_bytes=None):
    """Play ``engines`` one after the other (each a new machine) through the bridge, logging readings."""
    runtime = edgelstm.load(bundle)
    sink = CsvFileSink(path, runtime.output_size, readings=runtime.feature_names, rotate_bytes=rotate_bytes)
    truths = []
    with PtyLink() as link:
        bridge = Bridge(link.path, runtime, sinks=[sink], device="pump", backoff=(0.02, 0.2)).start()
        assert link.wait_for_reader(10)
        for engine in engines:
            before = bridge.ledger["total"]
            bridge.restart_stream()
            simulator = Simulator([engine], rate=2000, faults=faults)
            truths.append(simulator.play(link.write))
            assert bridge.wait(lambda: bridge.ledger["total"] >= before + len(engine) and
                               bridge.ledger["outcomes"]["in_flight"] == 0, 20)
        bridge.stop()
    return truths


def test_logs_with_gaps_and_restarts_become_the_right_labelled_lives(cmapss_bundle, train_engines, tmp_path):
    engines = [train_engines[0], train_engines[1]]  # 192 and 287 cycles, run to failure
    faults = Faults(drop_every=23, restart_every=70)  # readings lost on the wire; the device restarts mid-life
    truths = _log(cmapss_bundle, tmp_path / "field.csv", engines, faults, rotate_bytes=20_000)
    files = sorted(tmp_path.glob("field*.csv"))
    assert len(files) > 3  # rotated by size
    # the failures by host time (a sequence number repeats within a life once the device restarted)
    logged = read_logs(files).devices["pump"]
    ends = np.cumsum([len(e) - t.dropped for e, t in zip(engines, truths)]) - 1  # each engine's last logged row
    assert len(logged.time) == ends[-1] + 1
    events = tmp_path / "maintenance.csv"
    events.write_text("device,time,kind\n" + "".join(f"pump,{float(logged.time[end])!r},failure\n" for end in ends))
    dataset = make_dataset(files, events, tmp_path / "data.npz")
    again = load_dataset(tmp_path / "data.npz")
    assert len(again.sequences) == len(dataset.sequences) == 2 and not again.unlabelled
    for engine, truth, x, y in zip(engines, truths, again.sequences, again.targets):
        assert truth.dropped > 0 and truth.restarts > 0
        assert len(x) == len(engine)  # every cycle, the lost ones filled
        assert np.array_equal(y, np.minimum(125, np.arange(len(engine) - 1, -1, -1)))  # the known RUL, capped
        number = np.arange(1, len(engine) + 1)  # the simulator's drops: every 23rd, never before a restart or at the end
        kept = ~((number % faults.drop_every == 0) & (number % faults.restart_every != 0) & (number != len(engine)))
        assert np.array_equal(x[kept], engine[kept])  # the readings themselves, exactly
    device = again.report["devices"]["pump"]
    assert device["filled"] == sum(t.dropped for t in truths) and device["restarts"] >= sum(t.restarts for t in truths)


def test_a_service_and_a_run_in_progress_are_kept_unlabelled_and_times_work(cmapss_bundle, train_engines, tmp_path):
    engines = [train_engines[2][:120], train_engines[3]]
    _log(cmapss_bundle, tmp_path / "log.csv", engines + [train_engines[4][:50]], Faults())
    logs = read_logs([tmp_path / "log.csv"])
    times = logs.devices["pump"].time
    ends = np.cumsum([len(e) for e in engines]) - 1
    events = tmp_path / "events.csv"
    events.write_text("device,time,kind\n" + f"pump,{float(times[ends[0]])!r},service\npump,{float(times[ends[1]])!r},failure\n")
    dataset = build(logs, read_events(events))
    assert len(dataset.sequences) == 1 and np.array_equal(dataset.sequences[0], engines[1])
    assert [len(u) for u in dataset.unlabelled] == [120, 50]  # serviced early (RUL unknown), still running
    lives = dataset.report["devices"]["pump"]["lives"]
    assert [life["kind"] for life in lives] == ["service", "failure", "in_progress"]


@pytest.mark.parametrize("text, words", [
    ("device,when,kind\n", ":1: the header is device,when,kind"),
    ("device,seq,kind\npump,12,broke\n", ":2: kind 'broke'"),
    ("device,time,kind\npump,yesterday,failure\n", ":2: time 'yesterday' is not Unix seconds"),
])
def test_bad_event_files_are_refused_by_line(tmp_path, text, words):
    path = tmp_path / "events.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        read_events(path)


def test_a_log_without_readings_or_with_another_header_is_refused(cmapss_bundle, tmp_path):
    plain = tmp_path / "plain.csv"
    CsvFileSink(plain, 1).close()
    with pytest.raises(InputError, match="plain.csv:1: the header is time,device,seq"):
        read_logs([plain])
    with pytest.raises(SinkError, match="the file's header is"):  # appending rows of another layout: refused
        CsvFileSink(plain, 1, readings=["a", "b"])


def _cmapss_dataset(path, engines):
    Dataset(features=list(range(engines[0].shape[1])), sequences=engines, targets=cmapss.train_targets(engines),
            devices=[f"e{i}" for i in range(len(engines))]).save(path)


def test_a_fine_tune_that_makes_validation_worse_is_rejected_and_writes_no_model(train_engines, tmp_path):
    data = tmp_path / "data.npz"
    _cmapss_dataset(data, train_engines[:12])
    out = tmp_path / "new.keras"
    result = subprocess.run([sys.executable, "-m", "edgelstm", "finetune", str(EXAMPLE), "--data", str(data), "--out",
                             str(out), "--lr", "0.5", "--epochs", "2", "--patience", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 3, result.stderr  # rejected
    record = json.loads((tmp_path / "update.json").read_text())
    assert record["accepted"] is False and record["out"] is None and not out.exists()
    assert "no epoch improved" in record["reason"] or "RMSE changed" in record["reason"]
    assert record["split"]["gate_lives"] >= 1 and record["gate"]["before"]["rmse"] > 0


def test_the_int8_model_of_an_update_is_scored_like_the_float_one(train_engines, tmp_path):
    """``finetune --calibration``: the accepted model is converted and its int8 model scored on the
    gate machines through the runtime; on the shipped example it lands within a cycle of float."""
    import keras

    from edgelstm.learn.finetune import _cut_scores, _int8_scores, _load_scaler

    model = tmp_path / "m.keras"
    keras.saving.load_model(EXAMPLE, compile=False).save(model)
    (tmp_path / "m.scaler.json").write_text(EXAMPLE.with_suffix(".scaler.json").read_text())
    offset, scale = _load_scaler(tmp_path / "m.scaler.json")
    lives = [(e - offset) / scale for e in train_engines[80:90]]
    int8, bundle = _int8_scores(model, ROOT / "calibration/cmapss-fd001.json", lives, offset, scale)
    floating = _cut_scores(keras.saving.load_model(model, compile=False), lives, 125.0)
    assert int8["cuts"] == floating["cuts"] > 500 and abs(int8["rmse"] - floating["rmse"]) < 1.0, (int8, floating)
    assert (tmp_path / "m_bundle" / "manifest.json").exists() and bundle.endswith("m_bundle")


def test_a_legacy_hdf5_model_fine_tunes(train_engines, tmp_path):
    """tf-keras (Keras 2) models: an HDF5 file it wrote loads, fine-tunes and is saved as .keras."""
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(0)
    legacy = tf_keras.Sequential([tf_keras.Input((None, 14)), tf_keras.layers.LSTM(8, return_sequences=True),
                                  tf_keras.layers.Dense(1)])
    legacy.save(tmp_path / "old.h5")
    (tmp_path / "old.scaler.json").write_text(EXAMPLE.with_suffix(".scaler.json").read_text())
    data = tmp_path / "data.npz"
    _cmapss_dataset(data, train_engines[:12])
    from edgelstm.learn.finetune import finetune

    record = finetune(tmp_path / "old.h5", data, tmp_path / "new.keras", lr=1e-2, epochs=2, patience=2)
    assert record["gate"]["before"]["rmse"] > 0 and record["training"]["epochs_run"] >= 1
    assert record["accepted"] == (tmp_path / "new.h5").exists()  # a Keras 2 model stays a Keras 2 file
