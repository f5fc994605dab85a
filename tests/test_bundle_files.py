"""A bundle's files are its own regular files: links, FIFOs and devices are refused by name, fast.

A model file linked to /dev/zero or a FIFO used to hang ``load()``; one linked to a file outside
the bundle with a matching hash loaded it. Each case runs in a subprocess with a deadline, so a
hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT


def _load(bundle, timeout=60) -> subprocess.CompletedProcess:
    code = ("import sys, edgelstm\n"
            "from edgelstm.errors import BundleError\n"
            f"try:\n    edgelstm.load({str(bundle)!r})\nexcept BundleError as exc:\n    print(exc); sys.exit(2)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.fixture()
def bundle(cmapss_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(cmapss_bundle, copy)
    return copy


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/passwd"])
def test_a_model_file_linked_elsewhere_is_refused(bundle, target):
    model = bundle / "step_int8_stream.tflite"
    model.unlink()
    model.symlink_to(target)
    result = _load(bundle)
    assert result.returncode == 2 and "step_int8_stream.tflite" in result.stdout and "symbolic link" in result.stdout
    assert "root:" not in result.stdout + result.stderr  # nothing of the outside file was shown


def test_a_link_to_an_identical_file_outside_the_bundle_is_refused(bundle, tmp_path):
    model = bundle / "step_int8_stream.tflite"
    outside = tmp_path / "elsewhere.tflite"
    shutil.copyfile(model, outside)  # same bytes, same hash
    model.unlink()
    model.symlink_to(outside)
    result = _load(bundle)
    assert result.returncode == 2 and "symbolic link" in result.stdout


def test_a_fifo_in_place_of_a_model_is_refused_without_waiting(bundle):
    model = bundle / "step_int8.tflite"
    model.unlink()
    os.mkfifo(model)
    result = _load(bundle, timeout=30)
    assert result.returncode == 2 and "step_int8.tflite" in result.stdout and "FIFO" in result.stdout


def test_a_linked_or_oversized_manifest_is_refused(bundle, tmp_path):
    from edgelstm.runtime.bundle import MAX_MANIFEST_BYTES

    real = tmp_path / "manifest.json"
    shutil.move(bundle / "manifest.json", real)
    (bundle / "manifest.json").symlink_to(real)
    result = _load(bundle)
    assert result.returncode == 2 and "manifest.json" in result.stdout and "symbolic link" in result.stdout
    (bundle / "manifest.json").unlink()
    with open(bundle / "manifest.json", "wb") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)
    result = _load(bundle)
    assert result.returncode == 2 and "a manifest is at most" in result.stdout
