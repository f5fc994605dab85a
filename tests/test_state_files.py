"""State files and set_state are all or nothing: every field is checked before anything changes.

An interrupted save leaves a temporary beside the file; the next save removes the stale ones.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import edgelstm
from edgelstm.errors import BundleError


def _stepped(bundle, **options):
    runtime = edgelstm.load(bundle, **options)
    mean = np.asarray(runtime.bundle.manifest["input"]["calibration_stats"]["mean"], np.float32)
    std = np.asarray(runtime.bundle.manifest["input"]["calibration_stats"]["std"], np.float32)
    for k in range(5):
        runtime.step(mean + 0.3 * k * std)
    return runtime


def _unchanged(runtime, before):
    after = runtime.get_state()
    assert all(np.array_equal(before["raw"][k], after["raw"][k]) for k in before["raw"])
    assert np.array_equal(before["steps"], after["steps"])


@pytest.mark.parametrize("damage, field", [
    (lambda s: s.pop("raw") and s.pop("state"), "state.h_0"),
    (lambda s: s["raw"].update({n: v.astype(np.float32) + 1000.7 for n, v in s["raw"].items()}), "raw."),
    (lambda s: s.update(steps=np.array([-3])), "steps"),
    (lambda s: s.update(steps=np.array([1.5])), "steps"),
    (lambda s: s["raw"].update({n: v[:, :3] for n, v in s["raw"].items()}), "shape"),
    (lambda s: s.update(bundle_id="somebody-else"), "bundle"),
])
def test_a_damaged_state_changes_nothing_and_names_the_field(cmapss_bundle, damage, field):
    runtime = _stepped(cmapss_bundle)
    damaged = runtime.get_state()
    damaged["state"] = dict(damaged["state"])
    damaged["raw"] = dict(damaged["raw"])
    if field != "state.h_0":
        damaged["model"] = runtime.model_file
    damage(damaged)
    fresh = _stepped(cmapss_bundle)
    fresh.step(np.asarray(fresh.bundle.manifest["input"]["calibration_stats"]["mean"], np.float32))
    before = fresh.get_state()
    with pytest.raises(BundleError, match=field):
        fresh.set_state(damaged)
    _unchanged(fresh, before)


def test_a_float_state_with_nan_is_refused(cmapss_bundle):
    runtime = _stepped(cmapss_bundle, model="float32")
    state = runtime.get_state()
    state["raw"] = {n: np.full_like(v, np.nan) for n, v in state["raw"].items()}
    before = runtime.get_state()
    with pytest.raises(BundleError, match="NaN"):
        runtime.set_state(state)
    _unchanged(runtime, before)


def test_a_tampered_state_file_is_refused_naming_file_and_field(cmapss_bundle, tmp_path):
    runtime = _stepped(cmapss_bundle)
    path = tmp_path / "state.npz"
    runtime.save_state(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["steps"] = np.array(["many"])
    np.savez(path, **arrays)
    before = runtime.get_state()
    with pytest.raises(BundleError, match=r"state\.npz: state field 'steps'"):
        runtime.load_state(path)
    _unchanged(runtime, before)


def test_the_next_save_removes_stale_temporaries_of_interrupted_saves(cmapss_bundle, tmp_path):
    from edgelstm.runtime.stream import STALE_TEMPORARY_SECONDS

    runtime = _stepped(cmapss_bundle)
    path = tmp_path / "state.npz"
    stale = [tmp_path / f".state.npz.{k}" for k in range(35)]
    for leftover in stale:
        leftover.write_bytes(b"half a state")
        old = time.time() - 2 * STALE_TEMPORARY_SECONDS
        os.utime(leftover, (old, old))
    fresh = tmp_path / ".state.npz.now"  # a save of this very moment (another process) is left alone
    fresh.write_bytes(b"in progress")
    runtime.save_state(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".state.npz.now", "state.npz"]
    restored = edgelstm.load(cmapss_bundle)
    restored.load_state(path)
    assert np.array_equal(restored.steps, runtime.steps)
