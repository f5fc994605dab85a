"""Calibration sources: arrays, CSV with a group column, C-MAPSS text, recipes; normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgelstm.convert.calibration_data import load_calibration, CMAPSS_FD001_SENSORS
from edgelstm.convert.recording import record
from edgelstm.errors import CalibrationError
from edgelstm.convert.importers import load_network
from edgelstm.runtime.normalization import Normalization

from .conftest import EXAMPLE_MODEL, RECIPE, TEST_SET


def test_npy_npz_and_single_sequence(tmp_path, rng):
    batch = rng.normal(size=(3, 8, 2)).astype("float32")
    np.save(tmp_path / "a.npy", batch)
    assert len(load_calibration(tmp_path / "a.npy").sequences) == 3
    np.save(tmp_path / "one.npy", batch[0])
    assert load_calibration(tmp_path / "one.npy").n_steps == 8
    np.savez(tmp_path / "ragged.npz", first=batch[0, :5], second=batch[1])
    loaded = load_calibration(tmp_path / "ragged.npz")
    assert [len(s) for s in loaded.sequences] == [5, 8]


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationError, match="without pickle"):
        load_calibration(tmp_path / "obj.npy")


def test_csv_with_group_column_and_named_features(tmp_path):
    (tmp_path / "d.csv").write_text("machine,temp,vib,rpm\n1,20,0.1,1000\n1,21,0.2,1001\n\n2,30,0.3,900\n")
    loaded = load_calibration(tmp_path / "d.csv", features=["temp", "vib"], group="machine")
    assert loaded.feature_names == ["temp", "vib"]
    assert [len(s) for s in loaded.sequences] == [2, 1]
    assert np.allclose(np.concatenate(loaded.sequences), [[20, 0.1], [21, 0.2], [30, 0.3]])
    (tmp_path / "bad.csv").write_text("temp,vib\n1,2\n3,oops\n")
    with pytest.raises(CalibrationError, match="line 3"):
        load_calibration(tmp_path / "bad.csv")
    with pytest.raises(CalibrationError, match="pressure not in header"):
        load_calibration(tmp_path / "d.csv", features=["pressure"])


def test_cmapss_text_and_shipped_recipe():
    test = load_calibration(TEST_SET)
    assert len(test.sequences) == 100 and test.n_steps == 13096 and test.feature_names == CMAPSS_FD001_SENSORS
    recipe = load_calibration(RECIPE)
    assert len(recipe.sequences) == 100 and recipe.n_steps == 20631 and recipe.normalization == "zscore"


def test_normalisation_round_trip_and_scaler_files(tmp_path):
    data = np.array([[1.0, 5.0], [3.0, 5.0]])
    z = Normalization.fit("zscore", data)
    assert z.scale[1] == 1.0  # constant feature: no division by zero
    again = Normalization.from_json(json.loads(json.dumps(z.to_json())), 2)
    assert np.allclose(again.apply(data), z.apply(data))
    (tmp_path / "s.json").write_text(json.dumps({"mean": [0, 1], "std": [2, 2]}))
    assert np.allclose(Normalization.from_file(tmp_path / "s.json", 2).apply([[2, 3]]), [[1, 1]])
    (tmp_path / "bad.json").write_text(json.dumps({"mean": [0], "std": [1]}))
    with pytest.raises(CalibrationError, match="1 values, the model has 2 features"):
        Normalization.from_file(tmp_path / "bad.json", 2)


def test_recorded_state_ranges_come_from_real_trajectories():
    network = load_network(EXAMPLE_MODEL)
    sequences = [s[:30] for s in load_calibration(TEST_SET).sequences[:5]]
    norm = Normalization.fit("zscore", np.concatenate(sequences))
    recording = record(network, [norm.apply(s) for s in sequences])
    assert recording.n_steps == 150
    assert set(recording.state_ranges) == {"h_0", "c_0", "h_1", "c_1"}
    lo, hi = recording.state_ranges["h_0"]
    assert -1.0 <= lo < 0 < hi <= 1.0
    assert np.all(recording.states["h_0"][0] == 0)  # each sequence starts from a zero state
